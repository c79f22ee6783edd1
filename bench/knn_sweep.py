"""Sweep hnswlib's M, ef_construction and ef on the job's own sharding; the config's defaults are the baseline.

    .venv/bin/python bench/knn_sweep.py --embeddings data/run-551443/embeddings   # the full-size run's vectors
    .venv/bin/python bench/knn_sweep.py --n 50000                                  # generated clustered vectors

Each graph is built as the job builds it: songs split into --shards near-equal shards (here by
``song_id mod S``: song_id is itself a hash, so this splits as evenly as the job's
``pmod(xxhash64(song_id), S)``), one index per shard with ``songrec.knn.build_index``
(single-threaded insertion in song_id order), all shards at once (one thread each, like the job's
tasks). Then, for each ef, every song of a --query-sample is asked of every shard with
``songrec.knn.query_shard`` (all cores) and the candidates merged with ``merge_candidates``: that
time is scaled to all N songs. The sample is queried in row order, not in the job's
``locality_order``: a sparse sample gains little from it, and the sweep compares index settings.
Recall@10 is tie-aware against exact search on a --sample of songs.
Prints build seconds, the estimated query-all and build + query seconds, their ratio to the default
setting's, recall@10, and the peak resident memory of this process.
"""

import argparse
import dataclasses
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from knn import clustered, read_embeddings, recall_at_10  # noqa: E402

from songrec import metrics  # noqa: E402
from songrec.config import KnnConf, load_config  # noqa: E402
from songrec.knn import build_index, merge_candidates, query_shard  # noqa: E402

CORES = os.cpu_count() or 1
GRID = "16,100:64,96,128;12,64:128;16,40:128;8,48:128;24,150:48,64"


def parse_grid(text: str) -> list[tuple[int, int, list[int]]]:
    """``"M,efc:ef,ef;..."`` -> ``[(M, ef_construction, [ef, ...]), ...]``."""
    out = []
    for part in filter(None, text.split(";")):
        graph, efs = part.split(":")
        m, efc = (int(x) for x in graph.split(","))
        out.append((m, efc, [int(e) for e in efs.split(",")]))
    return out


def build_shards(ids: np.ndarray, vectors: np.ndarray, shard: np.ndarray, conf: KnnConf) -> tuple[list, float]:
    parts = [np.flatnonzero(shard == s) for s in range(conf.shards)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conf.shards) as pool:  # hnswlib releases the GIL while it inserts
        indexes = list(pool.map(lambda rows: build_index(ids[rows], vectors[rows], conf), parts))
    return indexes, time.perf_counter() - t0


def query_all(
    indexes: list, ids: np.ndarray, vectors: np.ndarray, k: int, ef: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Merged top-k neighbour ids of each row (``[B, k]``), which slots are filled, and the seconds it took."""
    t0 = time.perf_counter()
    cand_ids, cand_scores = [], []
    for index in indexes:
        index.set_ef(ef)
        index.set_num_threads(CORES)
        nbr, score = query_shard(index, ids, vectors, k)
        cand_ids.append(nbr)
        cand_scores.append(score)
    nbr, _, valid = merge_candidates(np.hstack(cand_ids), np.hstack(cand_scores), k)
    return nbr, valid, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", default=str(ROOT / "data" / "bench" / "run" / "embeddings"))
    parser.add_argument("--n", type=int, default=50_000, help="generated songs when --embeddings is absent")
    parser.add_argument("--dim", type=int, default=32, help="dimension of generated vectors")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sample", type=int, default=2000, help="songs whose recall@10 is measured")
    parser.add_argument("--query-sample", type=int, default=20000, help="songs whose query time is scaled to N")
    parser.add_argument("--shards", type=int, default=None, help="knn.shards (default: conf/local.yaml)")
    parser.add_argument("--grid", default=GRID, help=f"'M,ef_construction:ef,ef;...' (default {GRID})")
    args = parser.parse_args(argv)

    defaults = load_config(ROOT / "conf" / "local.yaml").knn
    shards = args.shards or defaults.shards
    source = Path(args.embeddings)
    if source.exists():
        ids, vectors = read_embeddings(source)
        origin = f"embeddings {source}"
    else:
        ids, vectors = clustered(args.n, args.dim, seed=0)
        origin = f"generated clustered unit vectors (no {source})"
    n, k = len(ids), args.k
    print(f"N={n} dim={vectors.shape[1]} K={k} shards={shards} cores={CORES}; {origin}", flush=True)

    rng = np.random.default_rng(7)
    sample = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    timed_rows = rng.choice(n, size=min(args.query_sample, n), replace=False)
    ref, ref_scores = metrics.exact_topk(vectors[sample], sample, vectors, k)
    order = np.argsort(ids)
    shard = (ids.view(np.uint64) % np.uint64(shards)).astype(np.int64)

    grid = parse_grid(args.grid)
    base_key = (defaults.M, defaults.ef_construction, defaults.ef)
    if not any((m, efc) == base_key[:2] and defaults.ef in efs for m, efc, efs in grid):
        grid.insert(0, (defaults.M, defaults.ef_construction, [defaults.ef]))  # the baseline is always measured
    rows = []
    for m, efc, efs in grid:
        conf = dataclasses.replace(defaults, M=m, ef_construction=efc, shards=shards, k=k)
        indexes, build_s = build_shards(ids, vectors, shard, conf)
        for ef in efs:
            found_ids, valid, _ = query_all(indexes, ids[sample], vectors[sample], k, ef)
            found = np.where(valid, order[np.searchsorted(ids[order], found_ids)], metrics.MISSING)
            rec = recall_at_10(vectors, sample, ref, ref_scores, found)
            _, _, secs = query_all(indexes, ids[timed_rows], vectors[timed_rows], k, ef)
            query_s = secs * n / len(timed_rows)
            rows.append((m, efc, build_s, ef, rec, query_s))
            print(f"  M={m} ef_construction={efc} build {build_s:.1f}s ef={ef} recall@10 {rec:.4f} "
                  f"query all ~{query_s:.1f}s", flush=True)  # fmt: skip
        del indexes

    base = next(r for r in rows if (r[0], r[1], r[3]) == base_key)
    base_total = base[2] + base[5]
    print(f"\nN={n}, {shards} shards, K={k}, recall@10 vs exact on {len(sample)} songs; query time from "
          f"{len(timed_rows)} songs scaled to N; baseline = config defaults M={base_key[0]}, "
          f"ef_construction={base_key[1]}, ef={base_key[2]}")  # fmt: skip
    print(f"{'M':>4}{'ef_c':>6}{'build s':>9}{'ef':>5}{'recall@10':>11}{'query s':>9}{'total s':>9}{'x default':>11}")
    for m, efc, build_s, ef, rec, query_s in rows:
        total = build_s + query_s
        ratio = total / base_total
        print(f"{m:>4}{efc:>6}{build_s:>9.1f}{ef:>5}{rec:>11.4f}{query_s:>9.1f}{total:>9.1f}{ratio:>11.2f}")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
