"""embeddings/ -> neighbors/: sharded hnswlib indexes, every song queried against every shard.

Two passes, so that no task holds all N vectors plus all shards:

1. **Build.** Songs are assigned to ``S = knn.shards`` shards by ``pmod(xxhash64(song_id), S)``
   (song_id is already a hash of artist and title, so shards are near-equal in size and a song
   keeps its shard across runs). ``groupBy(shard).applyInPandas`` builds one hnswlib index per
   shard (space ``ip`` on unit vectors, labels = the song_id bits as uint64) and pickles
   it. Insertion is single-threaded in song_id order so that the graph is reproducible;
   shards build in parallel as separate tasks, all in one job.
   In local mode each build task writes its pickled index straight to a file in the driver's temp
   directory (the Python workers run on the driver's machine); on a cluster the indexes come back as
   rows, cached, and the driver streams them to such files (``toLocalIterator``: one at a time).
2. **Query.** Executors open the index files (directly in local mode, through
   ``SparkContext.addFile`` on a cluster). The songs are hash-partitioned by song_id into
   ``ceil(N / knn.max_query_rows)`` query partitions, rounded up to a multiple of the default
   parallelism (or ``knn.query_partitions`` when set), so each holds about N / partitions songs;
   each partition (``mapInPandas``) puts its songs in locality order
   (:func:`locality_order`), loads the S indexes one at a time, asks each for k+1 candidates,
   drops the song itself by id, and merges the candidates into the global top-K right there:
   every candidate of a song is in the task that holds the song, so the merge needs no shuffle.
   Task memory: one shard index + one query partition + its candidates.

Ties in the merge are broken by neighbour id ascending; ``score`` is the inner product (cosine).
The table is written partitioned by ``bucket = pmod(song_id, knn.buckets)``, one file per bucket
sorted by (song_id, rank), with ``_manifest.json`` beside it, and committed atomically.
"""

import logging
import math
import pickle
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from songrec import io, schema
from songrec.config import Config
from songrec.errors import InputError

log = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3  # |norm - 1| above this counts as "not unit length" and is renormalised
LOCALITY_ANCHORS = 1024  # query order: songs grouped by the nearest of this many anchor songs
LOCALITY_BLOCK = 16384  # rows per block of the anchor similarity product (bounds its memory to ~64 MB)

_INDEX_SCHEMA = T.StructType([
    T.StructField("shard", T.IntegerType(), False),
    T.StructField("index", T.BinaryType(), False),
    T.StructField("seconds", T.DoubleType(), False),
])  # fmt: skip


def task_cpus(spark: SparkSession) -> int:
    """Cores a task may use (``spark.task.cpus``, default 1): the thread count inside a task."""
    return int(spark.conf.get("spark.task.cpus", "1") or 1)


def build_index(ids: np.ndarray, vectors: np.ndarray, cfg_knn: Any, threads: int = 1) -> Any:
    """One hnswlib inner-product index over ``vectors`` labelled by ``ids`` (int64 song ids).

    Rows are inserted in id order, single-threaded, so that the same rows give the same graph.
    ``threads`` is used for queries (``set_num_threads``); ``ef`` is set after the build.
    """
    import hnswlib

    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(
        max_elements=max(len(ids), 1), M=cfg_knn.M, ef_construction=cfg_knn.ef_construction,
        random_seed=cfg_knn.seed,
    )  # fmt: skip
    index.add_items(vectors, ids.view(np.uint64), num_threads=1)
    index.set_ef(max(cfg_knn.ef, cfg_knn.k + 1))
    index.set_num_threads(threads)
    return index


def query_shard(index: Any, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` candidates of each query row in one shard, the query song itself removed.

    Returns ``(neighbor_ids int64 [B, k], scores float32 [B, k])``; missing slots (a shard with
    fewer than k other songs) hold score ``-inf`` and id 0 or the query's own id: only the score marks them.
    """
    count = index.get_current_count()
    kq = min(k + 1, count)
    if kq == 0:
        return np.zeros((len(ids), k), np.int64), np.full((len(ids), k), -np.inf, np.float32)
    index.set_ef(max(index.ef, kq))
    try:
        labels, dist = index.knn_query(vectors, k=kq)
    except RuntimeError:
        # hnswlib raises when the graph yields fewer than kq results (tiny or duplicate-heavy
        # shards); fall back to exact search over the shard's own vectors.
        labels, dist = _exact_in_shard(index, vectors, kq)
    nbr = labels.view(np.int64)
    score = (1.0 - dist).astype(np.float32)
    score[nbr == ids[:, None]] = -np.inf  # drop self by id, never by distance
    order = np.lexsort((nbr, -score), axis=1)[:, :k]
    nbr, score = np.take_along_axis(nbr, order, 1), np.take_along_axis(score, order, 1)
    if nbr.shape[1] < k:
        pad = k - nbr.shape[1]
        nbr = np.pad(nbr, ((0, 0), (0, pad)))
        score = np.pad(score, ((0, 0), (0, pad)), constant_values=-np.inf)
    return nbr, score


def locality_order(ids: np.ndarray, vectors: np.ndarray, anchors: int = LOCALITY_ANCHORS) -> np.ndarray:
    """A permutation of the rows that puts similar vectors next to each other, for querying.

    Each row gets the nearest (largest inner product) of ``anchors`` anchor rows, the rows with the
    smallest song ids (song ids are hashes, so these are a spread sample); rows are sorted by anchor,
    then by id. Consecutive queries then walk the same parts of an index's graph, which are still in
    the CPU cache: on the full-size embeddings a query of a 274k-song shard took 175 us in this
    order against 260 us in row order (docs/design.md). Each query's answer is the same in any order.
    """
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    anchor = vectors[np.argsort(ids, kind="stable")[:anchors]].T
    key = np.concatenate([
        np.argmax(vectors[lo : lo + LOCALITY_BLOCK] @ anchor, axis=1) for lo in range(0, len(ids), LOCALITY_BLOCK)
    ])  # fmt: skip
    return np.lexsort((ids, key))


def _exact_in_shard(index: Any, vectors: np.ndarray, kq: int) -> tuple[np.ndarray, np.ndarray]:
    # In id order (the song_id's int64 order), so that the stable sort below keeps the smallest ids of a tie
    # at the cut; get_ids_list() comes in the order of hnswlib's hash map.
    labels = np.asarray(index.get_ids_list(), dtype=np.uint64)
    labels = labels[np.argsort(labels.view(np.int64), kind="stable")]
    base = np.asarray(index.get_items(labels), dtype=np.float32)
    sims = vectors @ base.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :kq]
    return labels[top], (1.0 - np.take_along_axis(sims, top, 1)).astype(np.float32)


def merge_candidates(nbr: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global top-``k`` per row from concatenated shard candidates ``[B, S*k]``.

    Sorted by score descending, ties by neighbour id ascending. Returns ``(nbr, score, valid)``
    with ``valid`` false for empty slots (``-inf`` scores).
    """
    order = np.lexsort((nbr, -score), axis=1)[:, :k]
    nbr, score = np.take_along_axis(nbr, order, 1), np.take_along_axis(score, order, 1)
    return nbr, score, np.isfinite(score)


def _load_embeddings(spark: SparkSession, cfg: Config) -> tuple[DataFrame, int, int, dict[int, int]]:
    """Read embeddings/, assign shards, check it in one pass; return ``(df, n, dim, rows per shard)``.

    Vectors that are not unit length are renormalised (with a warning); ragged, all-zero or non-finite
    (NaN, infinite, null values) vectors, null ids and an empty table are errors.
    """
    uri = cfg.path("embeddings")
    if not io.exists(uri, spark):
        raise InputError(f"{uri} does not exist: run the embed job first")
    df = spark.read.parquet(uri)
    missing = {"song_id", "vector"} - set(df.columns)
    if missing:
        raise InputError(f"{uri} lacks column(s) {sorted(missing)}")
    norm2 = F.aggregate("vector", F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x)
    df = df.select(
        "song_id", "vector", norm2.alias("_norm2"),
        F.pmod(F.xxhash64("song_id"), F.lit(cfg.knn.shards)).cast("int").alias("shard"),
    )  # fmt: skip
    per_shard = (
        df.groupBy("shard")
        .agg(
            F.count("*").alias("n"), F.min(F.size("vector")).alias("dmin"), F.max(F.size("vector")).alias("dmax"),
            F.sum((F.abs(F.sqrt("_norm2") - 1) > NORM_TOLERANCE).cast("long")).alias("off"),
            F.sum((F.col("_norm2") == 0).cast("long")).alias("zero"),
            F.sum(F.col("song_id").isNull().cast("long")).alias("null_ids"),
            F.sum(
                (F.col("_norm2").isNull() | F.isnan("_norm2") | (F.col("_norm2") == float("inf"))).cast("long")
            ).alias("nonfinite"),
        )
        .collect()
    )  # fmt: skip
    sizes = {int(r["shard"]): int(r["n"]) for r in per_shard}
    n = sum(sizes.values())
    if n == 0:
        raise InputError(f"{uri} is empty: no songs to index")
    if n < 2:
        raise InputError(f"{uri} holds one song: a neighbour table needs at least 2")
    dmin, dmax = min(r["dmin"] for r in per_shard), max(r["dmax"] for r in per_shard)
    off, zero, null_ids, nonfinite = (
        sum(int(r[c] or 0) for r in per_shard) for c in ("off", "zero", "null_ids", "nonfinite")
    )
    if dmin != dmax or not dmin:
        raise InputError(f"{uri}: column vector has lengths {dmin}..{dmax}; all must be equal")
    if null_ids:
        raise InputError(f"{uri}: {null_ids} rows have a null song_id")
    if nonfinite:
        raise InputError(
            f"{uri}: {nonfinite} rows have a vector with NaN, infinite or null values (did training diverge? "
            "see model/history.json)"
        )
    if zero:
        raise InputError(f"{uri}: {zero} rows have an all-zero vector (no direction to compare)")
    if off:
        log.warning("%s: %d vectors are not unit length; renormalising them", uri, off)
        df = df.withColumn("vector", F.transform("vector", lambda x: (x / F.sqrt("_norm2")).cast("float")))
    return df.drop("_norm2"), n, int(dmin), sizes


def _model_id(spark: SparkSession, cfg: Config) -> str | None:
    """The model that produced the embeddings: embeddings/_manifest.json, else model/model.json."""
    for uri in (cfg.path("embeddings", "_manifest.json"), cfg.path("model", "model.json")):
        if io.exists(uri, spark):
            model_id = io.read_json(uri, spark).get("model_id")
            if model_id:
                return str(model_id)
    return None


def _shard_file(workdir: Path, shard: int) -> Path:
    """Where shard ``shard``'s pickled index is kept (the name is unique, for ``SparkContext.addFile``)."""
    return workdir / f"songrec-knn-{workdir.name}-shard{shard}.bin"


def _build_shards(df: DataFrame, cfg: Config, workdir: Path, shared_disk: bool) -> dict[int, tuple[str, float]]:
    """Pass 1: build one index per shard in executors, each into a file under ``workdir`` on the driver's disk.

    ``shared_disk`` (local mode: the tasks' Python workers run on the driver's machine): each task writes
    its index file itself and only ``(shard, seconds)`` come back. Otherwise the pickled indexes come
    back as rows and the driver streams them to the files. Returns ``{shard: (path, build seconds inside
    its task)}``.
    """
    knn = cfg.knn

    def build(pdf: pd.DataFrame) -> pd.DataFrame:
        start = time.perf_counter()
        shard = int(pdf["shard"].iloc[0])
        ids = pdf["song_id"].to_numpy(np.int64)
        blob = pickle.dumps(build_index(ids, np.stack(pdf["vector"].to_numpy()), knn))
        if shared_disk:
            path = _shard_file(workdir, shard)
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")  # a retried task never leaves half a file
            partial.write_bytes(blob)
            partial.replace(path)
            blob = b""
        return pd.DataFrame({"shard": [shard], "index": [blob], "seconds": [time.perf_counter() - start]})

    built = df.groupBy("shard").applyInPandas(build, schema=_INDEX_SCHEMA)
    if shared_disk:
        # One job builds every shard at once (~114 MB a full-size shard that never crosses to the JVM).
        rows = built.select("shard", "seconds").collect()
        return {int(r["shard"]): (str(_shard_file(workdir, int(r["shard"]))), float(r["seconds"])) for r in rows}
    built = built.persist(StorageLevel.MEMORY_AND_DISK)
    shards: dict[int, tuple[str, float]] = {}
    try:
        # toLocalIterator runs one job per partition, only when the driver asks for it: streaming
        # straight from the build would build the shards one after another (docs/design.md). So every
        # shard is built at once first, then the driver streams them from the cache, one index at a time.
        built.count()
        for row in built.toLocalIterator():
            path = _shard_file(workdir, int(row["shard"]))
            path.write_bytes(row["index"])
            shards[int(row["shard"])] = (str(path), float(row["seconds"]))
    finally:
        built.unpersist()
    return shards


def _local(spark: SparkSession) -> bool:
    """Local mode: every task runs on the driver's machine and sees its disk."""
    return spark.sparkContext.master.startswith("local")


def _ship(spark: SparkSession, shards: dict[int, tuple[str, float]]) -> list[tuple[str, bool]]:
    """Make the index files readable by executors: ``(path or SparkFiles name, via_spark_files)``."""
    if _local(spark):
        # Executors are threads of this JVM on this machine: they open the driver's files directly.
        return [(shards[s][0], False) for s in sorted(shards)]
    for s in sorted(shards):
        spark.sparkContext.addFile(shards[s][0])
    return [(Path(shards[s][0]).name, True) for s in sorted(shards)]


def _query_all(df: DataFrame, files: list[tuple[str, bool]], k: int, buckets: int, threads: int) -> DataFrame:
    """Pass 2: each partition of songs visits every shard once and merges to its global top-K."""

    def query(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        parts = [b for b in batches if len(b)]
        if not parts:
            return
        pdf = pd.concat(parts, ignore_index=True)
        ids = pdf["song_id"].to_numpy(np.int64)
        vectors = np.stack(pdf["vector"].to_numpy()).astype(np.float32, copy=False)
        order = locality_order(ids, vectors)
        ids, vectors = ids[order], np.ascontiguousarray(vectors[order])
        cand_ids, cand_scores = [], []
        for name, via_spark_files in files:
            with open(SparkFiles.get(name) if via_spark_files else name, "rb") as fh:
                index = pickle.load(fh)
            index.set_num_threads(threads)
            nbr, score = query_shard(index, ids, vectors, k)
            del index
            cand_ids.append(nbr)
            cand_scores.append(score)
        nbr, score, valid = merge_candidates(np.hstack(cand_ids), np.hstack(cand_scores), k)
        rank = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), nbr.shape)
        song = np.broadcast_to(ids[:, None], nbr.shape)
        step = max(1, 100_000 // k)  # ~100k output rows per Arrow batch
        for lo in range(0, len(ids), step):
            sl = slice(lo, lo + step)
            keep = valid[sl]
            yield pd.DataFrame({
                "song_id": song[sl][keep], "rank": rank[sl][keep], "neighbor_id": nbr[sl][keep],
                "score": score[sl][keep], "bucket": np.mod(song[sl][keep], buckets).astype(np.int32),
            })  # fmt: skip

    return df.mapInPandas(query, schema=schema.NEIGHBORS)


def build_neighbors(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Build and commit ``neighbors/`` (+ ``_manifest.json``) from ``embeddings/``.

    Args:
        spark: the session.
        cfg: the run's config (``knn`` section).

    Returns:
        The manifest written beside the table (N, K, S, index parameters, timings, ...).

    Raises:
        InputError: embeddings/ is missing, empty, has ragged or zero vectors, or a shard would
            exceed ``knn.max_shard_rows``.
    """
    knn = cfg.knn
    t0 = time.perf_counter()
    df, n, dim, sizes = _load_embeddings(spark, cfg)
    k = min(knn.k, n - 1)
    if k < knn.k:
        log.warning("knn: knn.k=%d but the catalogue has %d songs: every song gets its %d other songs", knn.k, n, k)
    biggest = max(sizes.values())
    if biggest > knn.max_shard_rows:
        raise InputError(
            f"embeddings/: a shard of {biggest} rows exceeds knn.max_shard_rows={knn.max_shard_rows}; "
            f"raise knn.shards (now {knn.shards}) or knn.max_shard_rows"
        )
    threads = task_cpus(spark)
    cores = spark.sparkContext.defaultParallelism
    # A whole number of rounds: 3 partitions on 2 cores leave one core idle for a third of the pass.
    query_parts = knn.query_partitions or cores * math.ceil(math.ceil(n / knn.max_query_rows) / cores)
    log.info("knn: N=%d dim=%d K=%d shards=%d (largest %d rows), query partitions %d", n, dim, k, knn.shards,
             biggest, query_parts)  # fmt: skip

    workdir = Path(tempfile.mkdtemp(prefix=f"{uuid.uuid4().hex[:8]}-", dir=tempfile.gettempdir()))
    staging = io.staging_uri(cfg.path(), "neighbors")
    try:
        t_build = time.perf_counter()
        shards = _build_shards(df, cfg, workdir, shared_disk=_local(spark))
        build_s = time.perf_counter() - t_build
        shard_s = [round(shards[s][1], 3) for s in sorted(shards)]
        log.info("knn: built %d shard indexes in %.1fs (%.0f rows/s; seconds inside each shard's task: %s)",
                 len(shards), build_s, n / max(build_s, 1e-9), shard_s)  # fmt: skip
        t_query = time.perf_counter()
        songs = df.select("song_id", "vector").repartition(query_parts, "song_id")
        table = _query_all(songs, _ship(spark, shards), k, knn.buckets, threads)
        (
            table.repartition(knn.buckets, "bucket")
            .sortWithinPartitions("bucket", "song_id", "rank")
            .write.partitionBy("bucket")
            .parquet(staging)
        )
        query_s = time.perf_counter() - t_query
        log.info("knn: queried %d songs x %d shards and wrote the table in %.1fs (%.0f songs/s)",
                 n, len(shards), query_s, n / max(query_s, 1e-9))  # fmt: skip
        manifest = {
            "n": n, "k": knn.k, "k_effective": k, "dim": dim, "shards": knn.shards,
            "shard_rows": [sizes.get(s, 0) for s in range(knn.shards)], "buckets": knn.buckets,
            "bucket_rule": "pmod(song_id, buckets)",
            "index": {"library": "hnswlib", "space": "ip", "M": knn.M, "ef_construction": knn.ef_construction,
                      "ef": max(knn.ef, k + 1), "seed": knn.seed},
            "model_id": _model_id(spark, cfg),
            "timings": {"build_s": round(build_s, 3), "shard_build_s": shard_s, "query_write_s": round(query_s, 3),
                        "total_s": round(time.perf_counter() - t0, 3)},
            "recall": None,  # filled in by the evaluate job
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }  # fmt: skip
        io.write_json(f"{staging}/_manifest.json", manifest, spark)
        io.commit(staging, cfg.path("neighbors"), spark)
    except BaseException:
        io.discard(staging, spark)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log.info("knn: done in %.1fs", manifest["timings"]["total_s"])
    return manifest
