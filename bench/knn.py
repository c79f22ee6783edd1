"""Benchmark the neighbour-table job against single-node and Spark-native alternatives, same vectors, one run.

    .venv/bin/python bench/knn.py                      # data/bench/run/embeddings if present, else --n generated
    .venv/bin/python bench/knn.py --n 20000 --scales 1,2   # quick validation size

Methods (K = --k, recall@10 against exact search on a --sample of songs, tie-aware):
  1. songrec knn job: Spark local[*] + hnswlib shards + merge (songrec.knn.build_neighbors)
  2. hnswlib, one index in one process (build with all cores + query every song, in the job's locality
     order; the same queries in row order are timed beside it): the single-node ceiling
  3. PyNNDescent all-pairs kNN graph (cosine), numba compile excluded by a warm-up
  4. Spark ML BucketedRandomProjectionLSH.approxSimilarityJoin, threshold tuned for ~K matches, reduced to top-K
  5. exact numpy blocked brute force over all songs (the reference)
Then the job alone at --scales x the songs (generated clustered vectors).
Prints wall time, ratio to (2), recall@10 and peak RSS of the process tree (Python + Spark JVM + workers).
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from songrec import metrics  # noqa: E402
from songrec.config import load_config  # noqa: E402

CORES = os.cpu_count() or 1


class PeakRss:
    """Poll the RSS of this process and all its descendants (the Spark JVM and its Python workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def clustered(n: int, dim: int, seed: int, clusters: int = 200, spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Song-like ids and unit vectors around ``clusters`` centres (dense local structure, like embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.unique(rng.integers(-(2**62), 2**62, int(n * 1.01) + 10, dtype=np.int64))
    return rng.permutation(ids)[:n], x


def write_embeddings(root: Path, ids: np.ndarray, vectors: np.ndarray, files: int = 8) -> None:
    out = root / "embeddings"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(np.arange(len(ids)), files)):
        flat = pa.array(vectors[rows].ravel(), pa.float32())
        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32) * vectors.shape[1], pa.int32())
        table = pa.table(
            {"song_id": pa.array(ids[rows], pa.int64()), "vector": pa.ListArray.from_arrays(offsets, flat)}
        )
        pq.write_table(table, out / f"part-{part:03d}.parquet")


def read_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path, columns=["song_id", "vector"])
    ids = table.column("song_id").to_numpy()
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().astype(np.float32).reshape(len(ids), -1)
    return ids, vectors


def recall_at_10(
    vectors: np.ndarray, sample: np.ndarray, ref: np.ndarray, ref_scores: np.ndarray, lists: np.ndarray
) -> float:
    """Tie-aware recall@10 (@k when k < 10) of ``lists``, the sample songs' neighbour positions ``[S, k]``
    (``metrics.MISSING`` = empty slot), against the exact top-k ``ref`` / ``ref_scores`` of the same sample."""
    found_scores = np.where(
        lists == metrics.MISSING, -np.inf, np.einsum("sd,skd->sk", vectors[sample], vectors[np.maximum(lists, 0)])
    )
    return metrics.recall_at(lists, ref, ref_scores, found_scores, min(10, lists.shape[1]))


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, int]:
    with PeakRss() as rss:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, rss.peak


def run_job(spark, root: Path, k: int, shards: int) -> Callable[[], np.ndarray]:
    """A call that runs the songrec job on root/embeddings (K = k, S = shards) and returns its manifest."""
    from songrec.knn import build_neighbors

    cfg = load_config(ROOT / "conf" / "local.yaml", [f"root={root}", f"knn.k={k}", f"knn.shards={shards}"])

    def go() -> dict:
        return build_neighbors(spark, cfg)

    return go


def job_lists(root: Path, ids: np.ndarray, sample: np.ndarray, k: int) -> np.ndarray:
    """Sample songs' lists from the job's table, as catalogue positions."""
    table = pq.read_table(root / "neighbors", columns=["song_id", "rank", "neighbor_id"]).to_pandas()
    table = table[table["song_id"].isin(ids[sample])]
    pos = {int(s): i for i, s in enumerate(ids)}
    where = {int(ids[p]): r for r, p in enumerate(sample)}
    out = np.full((len(sample), k), metrics.MISSING, np.int64)
    for s, rank, nb in table.itertuples(index=False):
        out[where[int(s)], rank - 1] = pos[int(nb)]
    return out


def hnsw_single(vectors: np.ndarray, k: int, m: int, ef_c: int, ef: int, split: dict) -> np.ndarray:
    """One index over all songs (all cores), every song queried in locality order as the job does.

    ``split`` receives ``build_s``, ``query_s`` and the ``index`` (for the row-order comparison).
    """
    import hnswlib

    from songrec.knn import locality_order

    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=m, ef_construction=ef_c, random_seed=100)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=CORES)
    index.set_ef(max(ef, k + 1))
    t1 = time.perf_counter()
    order = locality_order(np.arange(len(vectors)), vectors)
    labels = np.empty((len(vectors), k + 1), np.uint64)
    labels[order], _ = index.knn_query(np.ascontiguousarray(vectors[order]), k=k + 1, num_threads=CORES)
    split.update(build_s=t1 - t0, query_s=time.perf_counter() - t1, index=index)
    return drop_self(labels.astype(np.int64), k)


def drop_self(labels: np.ndarray, k: int) -> np.ndarray:
    own = labels == np.arange(len(labels))[:, None]
    out = np.full((len(labels), k), metrics.MISSING, np.int64)
    for i in range(len(labels)):
        row = labels[i][~own[i]][:k]
        out[i, : len(row)] = row
    return out


def pynndescent_graph(vectors: np.ndarray, k: int, neighbors: int) -> np.ndarray:
    """The all-pairs graph with ``neighbors`` per song (> k + 1 buys recall), cut to the top k."""
    from pynndescent import NNDescent

    index = NNDescent(vectors, metric="cosine", n_neighbors=max(neighbors, k + 1), random_state=0, n_jobs=CORES)
    labels, _ = index.neighbor_graph
    return drop_self(labels.astype(np.int64), k)


def pynndescent_warm_up(vectors: np.ndarray, k: int) -> None:
    """Compile numba's kernels on a small slice first, so that the timed run measures the search only."""
    from pynndescent import NNDescent

    NNDescent(vectors[:2000], metric="cosine", n_neighbors=k + 1, random_state=0, n_jobs=CORES)


def spark_lsh(
    spark, vectors: np.ndarray, k: int, threshold: float, tables: int, bucket: float
) -> Callable[[], np.ndarray]:
    """Prepare the vectors as a cached Spark ML DataFrame (not timed); return the timed fit + join + top-K."""
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = [(i, Vectors.dense(v.tolist())) for i, v in enumerate(vectors)]
    df = spark.createDataFrame(rows, ["id", "features"]).repartition(CORES * 4).cache()
    df.count()
    return lambda: _lsh_join(df, len(vectors), k, threshold, tables, bucket, BucketedRandomProjectionLSH, Window, F)


def _lsh_join(df, n: int, k: int, threshold: float, tables: int, bucket: float, lsh, Window, F) -> np.ndarray:  # noqa: N803
    model = lsh(
        inputCol="features", outputCol="hashes", bucketLength=threshold * bucket, numHashTables=tables, seed=1
    ).fit(df)
    pairs = model.approxSimilarityJoin(df, df, threshold, distCol="dist").select(
        F.col("datasetA.id").alias("a"), F.col("datasetB.id").alias("b"), "dist"
    )
    w = Window.partitionBy("a").orderBy("dist", "b")
    top = pairs.where("a != b").withColumn("r", F.row_number().over(w)).where(F.col("r") <= k).toPandas()
    df.unpersist()
    out = np.full((n, k), metrics.MISSING, np.int64)
    out[top["a"].to_numpy(), top["r"].to_numpy() - 1] = top["b"].to_numpy()
    return out


def exact_all(vectors: np.ndarray, k: int, block: int = 32768, queries: int = 4096) -> np.ndarray:
    out = np.empty((len(vectors), k), np.int64)
    for lo in range(0, len(vectors), queries):
        q = np.arange(lo, min(lo + queries, len(vectors)))
        out[q], _ = metrics.exact_topk(vectors[q], q, vectors, k, block)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", default=str(ROOT / "data" / "bench" / "run" / "embeddings"))
    parser.add_argument("--n", type=int, default=551_443, help="generated songs when --embeddings is absent")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N songs of --embeddings (0 = all)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=None, help="knn.shards for the job (default: conf/local.yaml)")
    parser.add_argument("--scales", default="1,2,4", help="growth runs at these multiples of --scale-base ('' = none)")
    parser.add_argument("--scale-base", type=int, default=0, help="songs at scale 1 of the growth runs (0 = N)")
    parser.add_argument(
        "--pynndescent-neighbors", default="", help="comma list of PyNNDescent n_neighbors to time (default: k+1)"
    )
    parser.add_argument("--skip", default="", help="comma list of methods to skip: pynndescent,lsh,exact")
    parser.add_argument("--lsh-tables", type=int, default=4)
    parser.add_argument("--lsh-bucket", type=float, default=0.5, help="bucketLength as a multiple of the threshold")
    parser.add_argument(
        "--lsh-max-n", type=int, default=20000,
        help="skip LSH above this N: one random projection per table makes its candidate pairs grow as N^2",
    )  # fmt: skip
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    k = args.k
    knn_cfg = load_config(ROOT / "conf" / "local.yaml").knn
    args.shards = args.shards or knn_cfg.shards

    source = Path(args.embeddings)
    if source.exists():
        ids, vectors = read_embeddings(source)
        origin = f"embeddings {source}"
        if args.limit:
            ids, vectors = ids[: args.limit], vectors[: args.limit]
            origin += f", first {len(ids)} songs"
    else:
        ids, vectors = clustered(args.n, args.dim, seed=0)
        origin = f"generated clustered unit vectors (no {source})"
    n = len(ids)
    print(f"N={n} dim={vectors.shape[1]} K={k} cores={CORES} shards={args.shards}; {origin}", flush=True)

    rng = np.random.default_rng(7)
    sample = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    ref, ref_scores = metrics.exact_topk(vectors[sample], sample, vectors, k)

    def recall(lists: np.ndarray) -> float:
        return recall_at_10(vectors, sample, ref, ref_scores, lists)

    from songrec.spark import get_spark, setup_logging

    setup_logging("WARNING")
    cfg = load_config(ROOT / "conf" / "local.yaml")
    # Not under spark-submit: the driver JVM starts here, so its heap must be set here (local mode: the whole cluster).
    cfg.spark.conf.update({"spark.ui.showConsoleProgress": "false", "spark.driver.memory": cfg.spark.driver_memory})
    spark, _ = get_spark(cfg, "bench-knn")
    work = Path(tempfile.mkdtemp(prefix="songrec-bench-knn-", dir=ROOT / "data" if (ROOT / "data").exists() else None))
    results: list[tuple[str, float, float, int]] = []
    try:
        write_embeddings(work, ids, vectors)
        manifest, secs, peak = timed(run_job(spark, work, k, args.shards))
        results.append(("1. songrec job (Spark + hnswlib shards)", secs, recall(job_lists(work, ids, sample, k)), peak))
        print(f"  job: {secs:.1f}s {manifest['timings']}", flush=True)
        params = (knn_cfg.M, knn_cfg.ef_construction, knn_cfg.ef)
        split: dict = {}
        lists, secs, peak = timed(lambda: hnsw_single(vectors, k, *params, split))
        results.append(("2. hnswlib single process", secs, recall(lists[sample]), peak))
        index = split.pop("index")
        t0 = time.perf_counter()
        index.knn_query(vectors, k=k + 1, num_threads=CORES)
        row_order_s = time.perf_counter() - t0
        del index
        print(f"  hnswlib single: build {split['build_s']:.1f}s, query every song {split['query_s']:.1f}s in "
              f"locality order (songrec.knn.locality_order) vs {row_order_s:.1f}s in row order "
              f"({split['query_s'] / row_order_s:.2f}x)", flush=True)  # fmt: skip
        if "pynndescent" not in skip:
            pynndescent_warm_up(vectors, k)
            widths = [int(x) for x in args.pynndescent_neighbors.split(",")] if args.pynndescent_neighbors else [k + 1]
            for nn in widths:
                lists, secs, peak = timed(lambda nn=nn: pynndescent_graph(vectors, k, nn))
                results.append((f"3. PyNNDescent kNN graph (n_neighbors={nn})", secs, recall(lists[sample]), peak))
        if "lsh" in skip or n > args.lsh_max_n:
            too_big = f"N={n} > --lsh-max-n={args.lsh_max_n}: its candidate pairs grow as N²"
            why = "--skip lsh" if "lsh" in skip else too_big
            print(f"  Spark LSH skipped ({why})", flush=True)
        else:
            # Euclidean distance on unit vectors: d = sqrt(2 - 2 cos); threshold = median K-th neighbour distance
            threshold = float(np.median(np.sqrt(np.maximum(2 - 2 * ref_scores[:, -1], 0))))
            lists, secs, peak = timed(spark_lsh(spark, vectors, k, threshold, args.lsh_tables, args.lsh_bucket))
            results.append((f"4. Spark BRP-LSH join (t={threshold:.3f})", secs, recall(lists[sample]), peak))
        if "exact" not in skip:
            lists, secs, peak = timed(lambda: exact_all(vectors, k))
            results.append(("5. exact numpy blocked", secs, recall(lists[sample]), peak))

        base = results[1][1]
        print(f"\nK={k}, N={n}, {CORES} cores, recall@10 vs exact on {len(sample)} songs")
        print(f"{'method':<44}{'wall s':>9}{'x hnswlib':>11}{'recall@10':>11}{'peak RSS GB':>13}")
        for name, secs, rec, peak in results:
            print(f"{name:<44}{secs:>9.1f}{secs / base:>11.2f}{rec:>11.4f}{peak / 2**30:>13.2f}")

        if args.scales:  # '' skips the growth runs
            unit = args.scale_base or n
            print(f"\nsongrec job at {args.scales} x {unit} songs (generated clustered vectors)")
            print(f"{'scale':>6}{'songs':>11}{'wall s':>9}{'x scale 1':>11}{'us/song':>9}")
            first = None
            for scale in [int(s) for s in args.scales.split(",")]:
                s_ids, s_vec = clustered(unit * scale, vectors.shape[1], seed=scale)
                write_embeddings(work, s_ids, s_vec)
                _, secs, _ = timed(run_job(spark, work, k, args.shards))
                first = first or secs
                print(
                    f"{scale:>6}{unit * scale:>11}{secs:>9.1f}{secs / first:>11.2f}{secs / (unit * scale) * 1e6:>9.1f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        spark.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\npeak RSS (getrusage self + children, KB-sum of maxima): {usage / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
