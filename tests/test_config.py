"""The typed config: defaults, overrides, and errors that name the key."""

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
        ("preprocess.multiline=perhaps", "preprocess.multiline"),
        ("generate.dirt.junk_emotion=0.9", "generate.dirt.junk_emotion"),
        ("knn.k.x=1", "knn.k"),
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


def test_round_trip_through_dict():
    cfg = load_config(None, ["knn.k=5", 'spark.conf={"a.b": "c"}'])
    assert from_dict(cfg.to_dict()) == cfg


def test_to_uri_keeps_schemes(tmp_path):
    assert to_uri("hdfs:///data/x.csv") == "hdfs:///data/x.csv"
    assert to_uri(str(tmp_path / "a")) == f"file://{tmp_path}/a"
