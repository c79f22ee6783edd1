"""The typed config: defaults, overrides, and errors that name the key."""

import importlib.util
import re
from pathlib import Path

import pytest

from songrec.config import Config, ConfigError, from_dict, load_config, to_uri

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml", "test.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "conf" / name)
    assert isinstance(cfg, Config)
    assert cfg.input and cfg.root


def test_defaults_and_top_level_keys(tmp_path):
    cfg = load_config(None, [f"input={tmp_path}/x.csv", f"root={tmp_path}/run1"])
    assert cfg.input == f"{tmp_path}/x.csv"
    assert cfg.path("songs") == f"file://{tmp_path}/run1/songs"
    assert cfg.knn.k == 20


def test_overrides_are_typed():
    cfg = load_config(None, ["knn.k=7", "train.hidden=[64,32]", "preprocess.multiline=true", "train.lr=1e-3"])
    assert cfg.knn.k == 7 and cfg.train.hidden == [64, 32]
    assert cfg.preprocess.multiline is True and cfg.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("knn.kk=3", "knn.kk"),
        ("nope=1", "nope"),
        ("knn.k=ten", "knn.k"),
        ("knn.k=0", "knn.k"),
        ("train.use_gpu=maybe", "train.use_gpu"),
        ("train.sparse_artist=yes", "train.sparse_artist"),
        ("preprocess.multiline=perhaps", "preprocess.multiline"),
        ("generate.dirt.junk_emotion=0.9", "generate.dirt.junk_emotion"),
        ("knn.k.x=1", "knn.k"),
        ("spark.conf=foo", "spark.conf"),
        ("train.hidden=[256,128", "train.hidden"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knn: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("knn:\n  kay: 3\n")
    with pytest.raises(ConfigError, match="knn.kay"):
        load_config(unknown)


def test_one_spark_setting_by_its_own_dotted_key():
    cfg = load_config(None, ["spark.conf.spark.executor.memoryOverhead=1g", 'spark.conf={"a.b": "c"}'])
    assert cfg.spark.conf == {"a.b": "c"}  # a whole mapping replaces what was there
    cfg = load_config(None, ["spark.conf.a.b=c", "spark.conf.spark.executor.memoryOverhead=1g"])
    assert cfg.spark.conf == {"a.b": "c", "spark.executor.memoryOverhead": "1g"}
    with pytest.raises(ConfigError, match=r"spark\.conf.*'conf' is a value"):  # one entry into a JSON string
        load_config(None, ['spark.conf={"a.b": "c"}', "spark.conf.spark.executor.memoryOverhead=1g"])


def test_round_trip_through_dict():
    cfg = load_config(None, ["knn.k=5", 'spark.conf={"a.b": "c"}'])
    assert from_dict(cfg.to_dict()) == cfg


def test_to_uri_keeps_schemes(tmp_path):
    from songrec.config import local_path

    assert to_uri("hdfs:///data/x.csv") == "hdfs:///data/x.csv"
    assert to_uri(str(tmp_path / "a")) == f"file://{tmp_path}/a"
    # Hadoop's one-slash form, as Spark prints a local path, is that local path (not ./file:/...).
    assert to_uri(f"file:{tmp_path}/a") == f"file://{tmp_path}/a" and local_path(f"file:{tmp_path}/a") == tmp_path / "a"
    assert load_config(None, [f"root=file:{tmp_path}/run"]).path("songs") == f"file://{tmp_path}/run/songs"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("knn:\n  k: 3\n  kk: 4\n", "['knn.kk']"),
        ("trian:\n  batch_size: 8\n", "['trian']"),
        ("generate:\n  dirt:\n    junk: 0.1\n", "['generate.dirt.junk']"),
    ],
)
def test_unknown_keys_in_a_file_name_the_full_path(tmp_path, text, named):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key(s) {named}; valid keys here: ")):
        load_config(conf)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("knn:\n  k: 3.5\n", "config key 'knn.k': expected an integer, got 3.5"),
        ("knn:\n  k: ten\n", "config key 'knn.k': expected an integer, got 'ten'"),
        ("knn:\n  k: true\n", "config key 'knn.k': expected an integer, got True"),
        ("knn: 5\n", "config key 'knn': expected a mapping, got 5"),
        ("train:\n  hidden: [64, x]\n", "config key 'train.hidden[1]': expected an integer, got 'x'"),
        ("train:\n  lr: fast\n", "config key 'train.lr': expected a finite number, got 'fast'"),
        ("train:\n  lr: .inf\n", "config key 'train.lr': expected a finite number, got inf"),
        ("train:\n  lr: .nan\n", "config key 'train.lr': expected a finite number, got nan"),
        (
            "preprocess:\n  multiline: perhaps\n",
            "config key 'preprocess.multiline': expected true/false, got 'perhaps'",
        ),
        ("root: [a, b]\n", "config key 'root': expected a string, got ['a', 'b']"),
        ("spark:\n  conf: [1]\n", "config key 'spark.conf': expected a mapping, got [1]"),
    ],
)
def test_wrong_types_name_the_key_and_value(tmp_path, text, message):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(conf)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("knn.k=-1", "knn.k: must be >= 1, got -1"),
        ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
        ("preprocess.row_group_rows=-5", "preprocess.row_group_rows: must be >= 16, got -5"),
        ("preprocess.features_files=0", "preprocess.features_files: must be >= 1, got 0"),
        ("train.num_processes=0", "train.num_processes: must be >= 1, got 0"),
        ("knn.shards=-2", "knn.shards: must be >= 1, got -2"),
        ("embed.batch_size=0", "embed.batch_size: must be >= 1, got 0"),
        ("train.hidden=[64,0]", "train.hidden: every layer width must be >= 1, got [64, 0]"),
        ("train.artist_dim=0", "train.artist_dim: must be >= 1, got 0"),
        ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
        ("train.loss_lyrics=-1", "train.loss_lyrics: must be >= 0, got -1.0"),
        ("spark.shuffle_partitions=0", "spark.shuffle_partitions: must be >= 1, got 0"),
        ("preprocess.val_fraction=0.7", "preprocess.val_fraction: must be in (0, 0.5), got 0.7"),
        ("train.lr=nan", "config key 'train.lr': expected a finite number, got 'nan'"),
        ("train.lr=-inf", "config key 'train.lr': expected a finite number, got '-inf'"),
    ],
)
def test_bad_sizes_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_yaml_is_loaded_safely(tmp_path):
    """A Python tag is refused by yaml.safe_load: nothing is constructed, nothing runs."""
    marker = tmp_path / "ran"
    conf = tmp_path / "evil.yaml"
    conf.write_text(f"root: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"evil\.yaml' is not valid YAML: .*tag:yaml\.org,2002:python/object/apply"):
        load_config(conf)
    assert not marker.exists()
    conf.write_text("knn: !!python/object:songrec.config.KnnConf {k: 3}\n")
    with pytest.raises(ConfigError, match="python/object:songrec.config.KnnConf"):
        load_config(conf)


@pytest.mark.parametrize("override", ["knn.k=-1", "preprocess.row_group_rows=-5", "knn.kk=3"])
def test_config_errors_stop_a_job_before_any_work(tmp_path, capsys, override):
    """jobs/preprocess.py exits 2 with one line naming the key, before Spark starts or root is made."""
    spec = importlib.util.spec_from_file_location("job_preprocess", ROOT / "jobs" / "preprocess.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    root = tmp_path / "run"
    args = ["--conf-file", str(ROOT / "conf" / "test.yaml"), "--set", f"root={root}", "--set", override]
    assert job.main(args) == 2
    err = capsys.readouterr().err
    assert "config error: " in err and override.split("=")[0] in err and "Traceback" not in err
    assert not root.exists()
