"""One typed configuration for every songrec job.

A config is a YAML file (``conf/local.yaml`` by default) read with ``yaml.safe_load`` into the
:class:`Config` dataclass tree, then adjusted by ``--set dotted.key=value`` overrides. Unknown or
mistyped keys, wrong types and out-of-range values are errors that name the key, raised before any
work starts.

Paths are URIs (``file://``, ``hdfs://``, ``s3a://``) or local paths; a relative local path is
resolved against the current working directory. Every output lives under ``root``; see
:meth:`Config.path`.
"""

import argparse
import dataclasses
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from songrec.errors import SongrecError

log = logging.getLogger(__name__)

LOSS_TERMS = ("numeric", "genre", "emotion", "artist", "lyrics", "contrast")  # the train.loss_* weights

DEFAULT_CONF = Path(__file__).resolve().parents[2] / "conf" / "local.yaml"


class ConfigError(SongrecError):
    """A configuration problem, with a message that names the key."""


@dataclass
class SparkConf:
    """How the job talks to Spark. ``spark-submit.sh`` turns these into submit options."""

    app_name: str = "songrec"
    master: str = "local[*]"
    driver_memory: str = "6g"
    executor_memory: str = "4g"
    executor_cores: int = 2
    num_executors: int = 0  # 0 = let the cluster manager decide
    shuffle_partitions: int = 16
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class DirtConf:
    """Rates (fraction of rows) of the kinds of dirt the generator plants."""

    null_cell: float = 0.0001
    junk_emotion: float = 0.002
    bad_number: float = 0.0005
    bad_date: float = 0.0005
    short_row: float = 0.0002
    long_row: float = 0.0002
    duplicate: float = 0.003
    quoted_newline: float = 0.0
    non_latin: float = 0.01


@dataclass
class GenerateConf:
    """The stand-in dataset: size, seed, hidden structure, dirt, output shape."""

    rows: int = 20000
    seed: int = 42
    styles: int = 48
    artists_per_style: int = 0  # 0 = scale with rows (about rows / 4.3 artists in all)
    partitions: int = 8
    parts: int = 0  # 0 = one CSV file like the published one; N = a folder of N part files
    rerelease: float = 0.002  # legit re-releases: same artist + title on another album (not dirt)
    dirt: DirtConf = field(default_factory=DirtConf)


@dataclass
class PreprocessConf:
    """Raw CSV -> songs/, features/, rejects/, meta/."""

    multiline: bool = False
    encoding: str = "UTF-8"
    val_fraction: float = 0.1
    max_artists: int = 200000  # artist vocabulary cap (most frequent first); the rest map to 0 = unknown
    min_artist_count: int = 1
    lyrics_dim: int = 256  # hashed lyric buckets in features/ (sublinear TF-IDF; 64 loses the topic words)
    features_files: int = 8
    row_group_rows: int = 8192  # small row groups so that many training ranks each get whole groups


@dataclass
class TrainConf:
    """Distributed autoencoder training."""

    num_processes: int = 2
    local_mode: bool = True
    use_gpu: str = "auto"  # auto | true | false
    batch_size: int = 512  # 4096 gave 50k songs 6 steps an epoch: too few to learn the clusters (hit 0.011 -> 0.043)
    max_epochs: int = 30
    patience: int = 4
    min_delta: float = 0.0005
    lr: float = 0.003
    weight_decay: float = 0.0001
    warmup_epochs: int = 1
    grad_clip: float = 1.0
    seed: int = 42
    shuffle_buffer: int = 20000
    latent_dim: int = 64  # 32 lost the fine structure kNN needs (50k generated songs: similar-song hit 0.027 -> 0.039)
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    artist_dim: int = 100
    genre_dim: int = 50
    emotion_dim: int = 25
    dropout: float = 0.05
    loss_numeric: float = 4.0
    loss_genre: float = 0.5  # all terms at 1: genre/emotion dominated the latent (agreement 0.99, style 0.51)
    loss_emotion: float = 1.0  # 0.5 with decode_views=2; one decoded view needs 1.0 (full size: emotion 0.67 -> 0.80)
    loss_artist: float = 0.5
    loss_lyrics: float = 16.0  # lyric topic words carry most of what makes two songs alike
    loss_contrast: float = 1.0  # in-batch InfoNCE between two dropout views of a song; 0 = off
    decode_views: int = 1  # with the contrast term: 1 = reconstruct the first view only, 2 = both (~1.5x the step)
    artist_negatives: int = 1024
    artist_dropout: float = 0.25  # fraction of songs whose artist input is hidden (id 0) in training
    schedule_epochs: int = 0  # cosine LR horizon in epochs; 0 = max_epochs
    reader_workers: int = 1  # Petastorm reader threads per rank; 1 keeps the data order deterministic
    sparse_artist: str = "auto"  # auto (sparse on CPU, dense on GPU) | true | false: the artist table's gradient
    retries: int = 1  # after a rank killed by a fatal signal (SIGSEGV in native code): resume from the checkpoint
    precision: str = "auto"  # auto (bf16 autocast on GPU and on CPUs with bf16 instructions) | bf16 | fp32
    checkpoint_dir: str = ""  # "" = root/_checkpoints/train (must be a POSIX path every rank can reach)


@dataclass
class EmbedConf:
    """Batched inference of the encoder in executors."""

    batch_size: int = 8192
    partitions: int = 0  # 0 = keep the partitioning of features/


@dataclass
class KnnConf:
    """Sharded hnswlib index and the neighbour table."""

    k: int = 20
    shards: int = 2  # one per core here: the shards build in parallel, each query visits both
    M: int = 16
    ef_construction: int = 100
    ef: int = 128  # full-size run, K=20: ef 64 gave recall@10 0.988, 128 gives 0.995 for 1.34x the knn stage time
    buckets: int = 64  # files of neighbors/: bucket = pmod(song_id, buckets)
    max_shard_rows: int = 2_000_000  # refuse shards larger than this (task memory bound)
    max_query_rows: int = 200_000  # songs one query task holds while it visits every shard
    query_partitions: int = 0  # 0 = ceil(N / max_query_rows) rounded up to a multiple of the default parallelism
    seed: int = 100  # hnswlib random_seed: same vectors + same seed = same graph


@dataclass
class EvaluateConf:
    """Recall against exact search and relevance against baselines."""

    sample: int = 2000
    seed: int = 7
    truth: str = ""  # generator truth file; "" = songrec.generate.truth_uri(cfg) when it exists
    block_rows: int = 32768  # catalogue rows per block of the exact (brute-force) search


@dataclass
class Config:
    """The whole run: where the input is, where outputs go, and each stage's settings."""

    input: str = "data/raw/spotify_dataset.csv"
    root: str = "data/run"
    log_level: str = "INFO"
    spark: SparkConf = field(default_factory=SparkConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    preprocess: PreprocessConf = field(default_factory=PreprocessConf)
    train: TrainConf = field(default_factory=TrainConf)
    embed: EmbedConf = field(default_factory=EmbedConf)
    knn: KnnConf = field(default_factory=KnnConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)

    def path(self, *parts: str) -> str:
        """Return the URI of ``root/part/...`` (a table or file of this run)."""
        return "/".join([to_uri(self.root).rstrip("/"), *parts])

    @property
    def input_uri(self) -> str:
        """The raw input as a URI."""
        return to_uri(self.input)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for logging, manifests and shipping to workers)."""
        return dataclasses.asdict(self)


def to_uri(path: str) -> str:
    """Turn a local path into an absolute ``file://`` URI; leave a URI with a scheme alone.

    Hadoop's own spelling ``file:/abs/path`` (one slash, as Spark prints paths) is a local path too.
    """
    path = _hadoop_file_uri(path)
    if "://" in path:
        return path
    # Not Path.as_uri(): Hadoop's Path(String) would encode its %20 again; Spark, Petastorm and our
    # local_path all take file:// plus the plain absolute path, spaces included.
    return "file://" + str(Path(path).expanduser().resolve())


def _hadoop_file_uri(uri: str) -> str:
    """``file:/abs`` (Hadoop's form) as ``file:///abs``; anything else unchanged."""
    if uri.startswith("file:/") and not uri.startswith("file://"):
        return "file://" + uri[len("file:") :]
    return uri


def local_path(uri: str) -> Path:
    """The local filesystem path of a ``file://`` URI or plain path; error for remote URIs."""
    uri = _hadoop_file_uri(uri)
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise ConfigError(f"{uri!r} is not a local path; this step needs a local file")
    return Path(uri).expanduser().resolve()


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML or ``--set`` value to the declared field type, or raise naming the key."""
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        # No setting means anything at nan or inf, and a range check such as `lr > 0` lets inf through.
        if number is None or not math.isfinite(number):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
        return number
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError:
                raise ConfigError(f"config key {key!r}: expected a list such as [256, 128], got {value!r}") from None
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(
                    f'config key {key!r}: expected a JSON mapping such as {{"spark.x": "1"}}, got {value!r} '
                    f"(or set one entry: --set {key}.spark.x=1)"
                ) from None
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(typ, types.UnionType):
        raise ConfigError(f"config key {key!r}: union types are not supported")
    raise ConfigError(f"config key {key!r}: unsupported type {typ!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, naming unknown keys with their full path."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<top>'!r}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(sorted(prefix + n for n in names))
        raise ConfigError(f"unknown config key(s) {[prefix + u for u in unknown]}; valid keys here: {valid}")
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value or {}, key + ".")
        else:
            kwargs[name] = _coerce(value, typ, key)
    return cls(**kwargs)


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b=c`` override to the raw nested dict (values parsed as YAML scalars)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    parts = key.split(".")
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:
        # spark.conf maps Spark's own dotted keys: `--set spark.conf.spark.executor.memoryOverhead=1g` sets one.
        parts = ["spark", "conf", ".".join(parts[2:])]
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is a value, not a section")
        node = child
    # Keep strings as typed (paths with ':' or '#'); _coerce converts to the declared type.
    node[parts[-1]] = raw


def validate(cfg: Config) -> None:
    """Check ranges and cross-field rules; raise ConfigError naming the key."""
    checks: list[tuple[bool, str]] = [
        (bool(cfg.input), "input: must name the raw CSV file or folder"),
        (bool(cfg.root), "root: must name the run's output root"),
        (cfg.generate.rows >= 1, "generate.rows: must be >= 1"),
        (cfg.generate.styles >= 2, "generate.styles: must be >= 2"),
        (cfg.generate.partitions >= 1, "generate.partitions: must be >= 1"),
        (cfg.generate.parts >= 0, "generate.parts: must be >= 0"),
        (0.0 <= cfg.generate.rerelease < 0.5, "generate.rerelease: must be in [0, 0.5)"),
        (cfg.generate.rows <= 1_000_000_000, "generate.rows: must be <= 1e9"),
        (0.0 < cfg.preprocess.val_fraction < 0.5, "preprocess.val_fraction: must be in (0, 0.5)"),
        (cfg.preprocess.lyrics_dim >= 1, "preprocess.lyrics_dim: must be >= 1"),
        (cfg.preprocess.features_files >= 1, "preprocess.features_files: must be >= 1"),
        (cfg.preprocess.row_group_rows >= 16, "preprocess.row_group_rows: must be >= 16"),
        (cfg.preprocess.max_artists >= 1, "preprocess.max_artists: must be >= 1"),
        (cfg.preprocess.min_artist_count >= 1, "preprocess.min_artist_count: must be >= 1"),
        (cfg.generate.artists_per_style >= 0, "generate.artists_per_style: must be >= 0"),
        (cfg.spark.shuffle_partitions >= 1, "spark.shuffle_partitions: must be >= 1"),
        (cfg.spark.executor_cores >= 1, "spark.executor_cores: must be >= 1"),
        (cfg.spark.num_executors >= 0, "spark.num_executors: must be >= 0"),
        (cfg.train.num_processes >= 1, "train.num_processes: must be >= 1"),
        (cfg.train.use_gpu in {"auto", "true", "false"}, "train.use_gpu: must be auto, true or false"),
        (cfg.train.sparse_artist in {"auto", "true", "false"}, "train.sparse_artist: must be auto, true or false"),
        (cfg.train.retries >= 0, "train.retries: must be >= 0"),
        (cfg.train.precision in {"auto", "bf16", "fp32"}, "train.precision: must be auto, bf16 or fp32"),
        (cfg.train.batch_size >= 1, "train.batch_size: must be >= 1"),
        (cfg.train.max_epochs >= 1, "train.max_epochs: must be >= 1"),
        (cfg.train.latent_dim >= 2, "train.latent_dim: must be >= 2"),
        (all(h >= 1 for h in cfg.train.hidden), "train.hidden: every layer width must be >= 1"),
        (cfg.train.artist_dim >= 1, "train.artist_dim: must be >= 1"),
        (cfg.train.genre_dim >= 1, "train.genre_dim: must be >= 1"),
        (cfg.train.emotion_dim >= 1, "train.emotion_dim: must be >= 1"),
        (cfg.train.warmup_epochs >= 0, "train.warmup_epochs: must be >= 0"),
        (cfg.train.min_delta >= 0, "train.min_delta: must be >= 0"),
        (cfg.train.weight_decay >= 0, "train.weight_decay: must be >= 0"),
        (cfg.train.grad_clip >= 0, "train.grad_clip: must be >= 0 (0 = no clipping)"),
        (0.0 <= cfg.train.dropout < 1.0, "train.dropout: must be in [0, 1)"),
        (cfg.train.lr > 0, "train.lr: must be > 0"),
        (0.0 <= cfg.train.artist_dropout < 1.0, "train.artist_dropout: must be in [0, 1)"),
        (cfg.train.schedule_epochs >= 0, "train.schedule_epochs: must be >= 0"),
        (cfg.train.reader_workers >= 1, "train.reader_workers: must be >= 1"),
        (cfg.train.patience >= 1, "train.patience: must be >= 1"),
        (cfg.train.artist_negatives >= 0, "train.artist_negatives: must be >= 0"),
        (cfg.train.decode_views in (1, 2), "train.decode_views: must be 1 or 2"),
        (cfg.train.shuffle_buffer >= 0, "train.shuffle_buffer: must be >= 0"),
        *[(getattr(cfg.train, f"loss_{t}") >= 0, f"train.loss_{t}: must be >= 0") for t in LOSS_TERMS],
        (cfg.knn.k >= 1, "knn.k: must be >= 1"),
        (cfg.knn.shards >= 1, "knn.shards: must be >= 1"),
        (cfg.knn.M >= 2, "knn.M: must be >= 2"),
        (cfg.knn.ef_construction >= 1, "knn.ef_construction: must be >= 1"),
        (cfg.knn.ef >= 1, "knn.ef: must be >= 1"),
        (cfg.knn.buckets >= 1, "knn.buckets: must be >= 1"),
        (cfg.knn.max_shard_rows >= 1, "knn.max_shard_rows: must be >= 1"),
        (cfg.knn.max_query_rows >= 1, "knn.max_query_rows: must be >= 1"),
        (cfg.knn.query_partitions >= 0, "knn.query_partitions: must be >= 0"),
        (cfg.embed.batch_size >= 1, "embed.batch_size: must be >= 1"),
        (cfg.embed.partitions >= 0, "embed.partitions: must be >= 0"),
        (cfg.evaluate.sample >= 1, "evaluate.sample: must be >= 1"),
        (cfg.evaluate.block_rows >= 1, "evaluate.block_rows: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            key = message.split(":", 1)[0]
            raise ConfigError(f"bad config value: {message}, got {_value(cfg, key)!r}")
    for name, rate in dataclasses.asdict(cfg.generate.dirt).items():
        if not 0.0 <= rate < 0.5:
            raise ConfigError(f"bad config value: generate.dirt.{name}: must be in [0, 0.5), got {rate}")


def _value(cfg: Config, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg`` (for error messages)."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def load_config(conf_file: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``conf_file`` (default ``conf/local.yaml``), apply ``key=value`` overrides, validate."""
    path = Path(conf_file) if conf_file else DEFAULT_CONF
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (used on workers)."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def log_effective(cfg: Config) -> None:
    """Log the effective config once, as YAML."""
    log.info("effective config:\n%s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The options every job takes: ``--conf-file`` and repeatable ``--set key=value``."""
    parser.add_argument("--conf-file", default=str(DEFAULT_CONF), help="YAML config (default: conf/local.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
        help="override one config key, e.g. --set root=/tmp/run1 (repeatable)",
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by :func:`add_config_args` options."""
    return load_config(args.conf_file, args.overrides)
