"""features/ + model/ -> embeddings/: the trained encoder applied to every song inside the executors.

The driver reads ``model/model.json`` and ``model/encoder.pt`` once and broadcasts their bytes
(a few MB); each Python worker rebuilds the encoder from them once (cached per model id, so reused
Python workers do not rebuild it per task) and encodes its partition in batches of
``embed.batch_size`` rows (Spark's Arrow batch size is set to it for the stage) with
``torch.set_num_threads(spark.task.cpus)``, so that concurrent tasks do not oversubscribe the
executor's cores. Vectors are L2-normalised by
:func:`songrec.model.encode_batch`, exactly as a plain Python process would compute them.
"""

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from songrec import io, schema
from songrec.config import Config
from songrec.errors import InputError
from songrec.spark import session_conf

log = logging.getLogger(__name__)

MODEL_FILES = ("model.json", "encoder.pt")
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
_ENCODERS: dict[str, Any] = {}  # model id -> encoder, per Python worker process


def _read_model_files(spark: SparkSession, model_uri: str) -> dict[str, bytes]:
    """Bytes of model.json and encoder.pt from any filesystem Spark can read."""
    blobs = {}
    for name in MODEL_FILES:
        uri = f"{model_uri}/{name}"
        if not io.exists(uri, spark):
            raise InputError(f"{uri} does not exist: run the train job first")
        if io.is_local(uri):
            blobs[name] = io.local_path(uri).read_bytes()
        else:
            blobs[name] = bytes(spark.read.format("binaryFile").load(uri).select("content").first()[0])
    return blobs


def encoder_from_bytes(blobs: dict[str, bytes]) -> Any:
    """The encoder rebuilt from model.json + encoder.pt bytes, cached per model id in this process."""
    from songrec.model import load_encoder

    info = json.loads(blobs["model.json"])
    key = str(info.get("model_id") or hash(blobs["encoder.pt"]))
    if key not in _ENCODERS:
        with tempfile.TemporaryDirectory(prefix="songrec-model-") as tmp:
            for name, data in blobs.items():
                (Path(tmp) / name).write_bytes(data)
            _ENCODERS[key] = load_encoder(tmp)
    return _ENCODERS[key]


def encode_frame(encoder: Any, pdf: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    """Encode a pandas frame of features/ rows in batches; yield (song_id, vector) frames."""
    from songrec.model import INPUT_COLUMNS, encode_batch

    for lo in range(0, len(pdf), batch_size):
        chunk = pdf.iloc[lo : lo + batch_size]
        batch = {
            c: np.stack(chunk[c].to_numpy()) if chunk[c].dtype == object else chunk[c].to_numpy() for c in INPUT_COLUMNS
        }
        vectors = encode_batch(encoder, batch)
        yield pd.DataFrame({"song_id": chunk["song_id"].to_numpy(np.int64), "vector": list(vectors)})


def embed(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Encode every song of ``features/`` and commit ``embeddings/`` (+ ``_manifest.json``).

    Args:
        spark: the session.
        cfg: the run's config (``embed`` section).

    Returns:
        ``{"rows", "dim", "model_id", "seconds", "rows_per_s"}``.

    Raises:
        InputError: features/ or model/ is missing, or features/ is empty.
    """
    from songrec.model import INPUT_COLUMNS

    t0 = time.perf_counter()
    features_uri = cfg.path("features")
    if not io.exists(features_uri, spark):
        raise InputError(f"{features_uri} does not exist: run the preprocess job first")
    blobs = _read_model_files(spark, cfg.path("model"))
    info = json.loads(blobs["model.json"])
    model_id = info.get("model_id")
    dim = int(info.get("model", {}).get("latent_dim", 0)) or None

    features = spark.read.parquet(features_uri)
    missing = {"song_id", *INPUT_COLUMNS} - set(features.columns)
    if missing:
        raise InputError(f"{features_uri} lacks column(s) {sorted(missing)}")
    features = features.select("song_id", *INPUT_COLUMNS)
    if cfg.embed.partitions:
        features = features.repartition(cfg.embed.partitions)

    shipped = spark.sparkContext.broadcast(blobs)
    threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    batch_size = cfg.embed.batch_size

    def encode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        torch.set_num_threads(threads)
        encoder = encoder_from_bytes(shipped.value)
        for pdf in batches:
            yield from encode_frame(encoder, pdf, batch_size)

    staging = io.staging_uri(cfg.path(), "embeddings")
    try:
        # mapInPandas hands the function Arrow batches of at most this many rows (default 10,000): match it to
        # embed.batch_size, so that a batch is what the config says and a larger batch_size takes effect.
        with session_conf(spark, ARROW_BATCH_CONF, str(batch_size)):
            features.mapInPandas(encode, schema=schema.EMBEDDINGS).write.parquet(staging)
        rows = spark.read.parquet(staging).count()
        if rows == 0:
            raise InputError(f"{features_uri} is empty: no songs to encode")
        seconds = time.perf_counter() - t0
        summary = {
            "rows": rows, "dim": dim, "model_id": model_id, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / max(seconds, 1e-9), 1), "batch_size": batch_size, "task_threads": threads,
        }  # fmt: skip
        io.write_json(f"{staging}/_manifest.json", summary, spark)
        io.commit(staging, cfg.path("embeddings"), spark)
    except BaseException:
        io.discard(staging, spark)
        raise
    finally:
        shipped.unpersist()
    log.info("embed: %d songs -> %s-d vectors in %.1fs (%.0f rows/s), model %s", rows, dim, seconds,
             summary["rows_per_s"], model_id)  # fmt: skip
    return summary
