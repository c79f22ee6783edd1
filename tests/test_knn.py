"""The neighbour table against exact numpy search, on small clustered unit vectors (real Spark + hnswlib)."""

import importlib.util
import os
import pickle
import shutil
from pathlib import Path

import duckdb
import hnswlib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, make_cfg

from songrec import io
from songrec.errors import InputError
from songrec.knn import _build_shards, _load_embeddings, build_index, build_neighbors, locality_order, query_shard


def load_job(name: str):
    """``main`` of jobs/NAME.py (jobs/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def clustered(n: int, dim: int = 16, clusters: int = 20, seed: int = 0, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (like learned embeddings: dense local structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def song_ids(n: int, seed: int = 1) -> np.ndarray:
    """Distinct signed 64-bit ids (like xxhash64 song ids: negative ones included)."""
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(-(2**62), 2**62, n * 2, dtype=np.int64))[:n]


def write_embeddings(spark, cfg, ids: np.ndarray, vectors: np.ndarray) -> None:
    """An embeddings/ table (schema.EMBEDDINGS) in two files, written with pyarrow."""
    out = io.local_path(cfg.path("embeddings"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    vectors = np.asarray(vectors, np.float32)
    for part, rows in enumerate(np.array_split(np.arange(len(ids)), 2)):
        flat = pa.array(vectors[rows].ravel(), pa.float32())
        vec = pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1) * vectors.shape[1], pa.int32()), flat)
        pq.write_table(
            pa.table({"song_id": pa.array(ids[rows], pa.int64()), "vector": vec}), out / f"part-{part}.parquet"
        )


def write_rows(cfg, ids: list[int | None], vectors: list[list[float]]) -> None:
    """An embeddings/ table in one file from Python lists: rows ``write_embeddings`` cannot hold (ragged, null ids)."""
    out = io.local_path(cfg.path("embeddings"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    table = pa.table({"song_id": pa.array(ids, pa.int64()), "vector": pa.array(vectors, pa.list_(pa.float32()))})
    pq.write_table(table, out / "part-0.parquet")


def read_table(spark, cfg) -> pd.DataFrame:
    pdf = spark.read.parquet(cfg.path("neighbors")).toPandas()
    return pdf.sort_values(["song_id", "rank"]).reset_index(drop=True)


def exact_topk(ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(ids, sims.shape), -sims), axis=1)[:, :k]
    return ids[order], np.take_along_axis(sims, order, 1)


def by_song(table: pd.DataFrame) -> dict[int, np.ndarray]:
    return {int(s): g["neighbor_id"].to_numpy() for s, g in table.groupby("song_id")}


def test_recall_and_table_invariants(spark, tmp_path):
    cfg = make_cfg(tmp_path)  # test.yaml: k=10, shards=3, default M / ef_construction / ef
    n, k = 3000, cfg.knn.k
    ids, vectors = song_ids(n), clustered(n)
    write_embeddings(spark, cfg, ids, vectors)
    manifest = build_neighbors(spark, cfg)
    table = read_table(spark, cfg)

    exact_ids, exact_scores = exact_topk(ids, vectors, k)
    got = by_song(table)
    recall = np.mean([len(set(got[int(s)]) & set(exact_ids[i])) / k for i, s in enumerate(ids)])
    assert recall >= 0.99, recall

    assert len(got) == n and (table["song_id"] != table["neighbor_id"]).all()
    counts = table.groupby("song_id")["rank"].agg(["count", "min", "max"])
    assert (counts["count"] == k).all() and (counts["min"] == 1).all() and (counts["max"] == k).all()
    assert (table.groupby("song_id")["score"].diff().dropna() <= 0).all()  # non-increasing within a song
    # score is the inner product (float32 rounding of hnswlib's 1 - distance)
    pos = {int(s): i for i, s in enumerate(ids)}
    dots = np.einsum("ij,ij->i", vectors[table["song_id"].map(pos)], vectors[table["neighbor_id"].map(pos)])
    np.testing.assert_allclose(table["score"], dots, atol=1e-5)
    assert (table["bucket"] == np.mod(table["song_id"], cfg.knn.buckets)).all()
    assert manifest["n"] == n and manifest["k"] == k and manifest["shards"] == 3 and sum(manifest["shard_rows"]) == n
    # one build time per shard, measured inside its task
    assert len(manifest["timings"]["shard_build_s"]) == 3 and min(manifest["timings"]["shard_build_s"]) > 0
    assert io.read_json(cfg.path("neighbors", "_manifest.json"))["index"]["M"] == cfg.knn.M

    # One file per bucket, sorted by (song_id, rank); a DuckDB lookup reads one small file.
    root = io.local_path(cfg.path("neighbors"))
    bucket_dirs = sorted(root.glob("bucket=*"))
    assert len(bucket_dirs) == cfg.knn.buckets
    for d in bucket_dirs:
        (f,) = list(d.glob("*.parquet"))
        keys = pd.read_parquet(f, columns=["song_id", "rank"])
        assert keys.equals(keys.sort_values(["song_id", "rank"]).reset_index(drop=True))
    song = int(ids[17])
    bucket = song % cfg.knn.buckets
    files = duckdb.sql(f"SELECT DISTINCT filename FROM read_parquet('{root}/bucket={bucket}/*.parquet', filename=true)")
    assert len(files.fetchall()) == 1
    rows = duckdb.sql(
        f"SELECT neighbor_id FROM read_parquet('{root}/*/*.parquet', hive_partitioning=true) "
        f"WHERE bucket = {bucket} AND song_id = {song} ORDER BY rank"
    ).fetchall()
    assert [r[0] for r in rows] == list(got[song])


def test_shards_merge_equals_one_exhaustive_index(spark, tmp_path):
    n, k = 600, 10
    cfg = make_cfg(tmp_path, "knn.shards=4", f"knn.ef={n}", f"knn.k={k}")
    ids, vectors = song_ids(n, seed=3), clustered(n, dim=8, seed=3)
    write_embeddings(spark, cfg, ids, vectors)
    build_neighbors(spark, cfg)
    got = by_song(read_table(spark, cfg))

    one = hnswlib.Index(space="ip", dim=8)
    one.init_index(max_elements=n, M=cfg.knn.M, ef_construction=cfg.knn.ef_construction, random_seed=1)
    one.add_items(vectors, ids.view(np.uint64))
    one.set_ef(n)
    labels, dist = one.knn_query(vectors, k=k + 1)
    labels = labels.view(np.int64)
    pos = {int(s): i for i, s in enumerate(ids)}
    for i, s in enumerate(ids):
        ref = labels[i][labels[i] != s][:k]
        kth = float(vectors[i] @ vectors[pos[int(ref[-1])]])
        differ = set(got[int(s)]) ^ set(ref)
        # sets may differ only by neighbours tied with the k-th score (up to float rounding)
        assert all(abs(float(vectors[i] @ vectors[pos[int(d)]]) - kth) < 1e-6 for d in differ), s


def test_locality_order_groups_similar_songs():
    n, clusters = 3000, 20
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((clusters, 16))
    label = rng.integers(0, clusters, n)
    x = centres[label] + 0.05 * rng.standard_normal((n, 16))
    vectors = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = song_ids(n, seed=8)

    order = locality_order(ids, vectors, anchors=64)
    assert sorted(order.tolist()) == list(range(n))  # a permutation: every song is queried once
    # in row order a song's cluster changes at ~95% of steps; in locality order only between groups
    assert np.count_nonzero(np.diff(label) != 0) > 0.9 * n
    assert np.count_nonzero(np.diff(label[order]) != 0) <= 64
    # the same rows in another order get the same permutation of the same songs
    shuffled = rng.permutation(n)
    np.testing.assert_array_equal(ids[shuffled][locality_order(ids[shuffled], vectors[shuffled], anchors=64)],
                                  ids[order])  # fmt: skip
    assert locality_order(ids[:0], vectors[:0]).shape == (0,)


def test_two_runs_give_identical_tables(spark, tmp_path):
    n = 1500
    ids, vectors = song_ids(n, seed=5), clustered(n, seed=5)
    tables = []
    for run in ("a", "b"):
        cfg = make_cfg(tmp_path / run)
        write_embeddings(spark, cfg, ids, vectors)
        build_neighbors(spark, cfg)
        tables.append(read_table(spark, cfg))
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_shard_files_written_by_tasks_equal_the_streamed_ones(spark, tmp_path):
    """Local mode's build (each task writes its index file) and the cluster one (indexes streamed through
    the driver) leave byte-identical files: the same graphs reach the query pass either way."""
    n = 900
    cfg = make_cfg(tmp_path, "knn.shards=3")
    write_embeddings(spark, cfg, song_ids(n, seed=6), clustered(n, seed=6))
    df, _, _, sizes = _load_embeddings(spark, cfg)
    files = {}
    for shared_disk in (True, False):
        workdir = tmp_path / f"work-{shared_disk}"
        workdir.mkdir()
        shards = _build_shards(df, cfg, workdir, shared_disk=shared_disk)
        assert sorted(shards) == sorted(sizes) and min(seconds for _, seconds in shards.values()) > 0
        assert sorted(p.name for p in workdir.iterdir()) == sorted(Path(path).name for path, _ in shards.values())
        files[shared_disk] = {s: Path(path).read_bytes() for s, (path, _) in shards.items()}
    assert files[True] == files[False]
    index = pickle.loads(files[True][0])
    assert index.get_current_count() == sizes[0]


@pytest.mark.parametrize(
    ("n", "shards", "k"),
    [(5, 3, 10), (11, 3, 10), (30, 8, 10)],
    ids=["n_below_k", "n_equals_k_plus_1", "shards_smaller_than_k"],
)
def test_small_catalogues_get_min_k_n_minus_1(spark, tmp_path, n, shards, k):
    cfg = make_cfg(tmp_path, f"knn.shards={shards}", f"knn.k={k}")
    ids, vectors = song_ids(n, seed=n), clustered(n, dim=4, clusters=3, seed=n)
    write_embeddings(spark, cfg, ids, vectors)
    manifest = build_neighbors(spark, cfg)
    table = read_table(spark, cfg)
    expect = min(k, n - 1)
    assert manifest["k_effective"] == expect
    assert (table.groupby("song_id").size() == expect).all() and table["song_id"].nunique() == n
    exact_ids, _ = exact_topk(ids, vectors, expect)
    got = by_song(table)
    assert all(set(got[int(s)]) == set(exact_ids[i]) for i, s in enumerate(ids))  # small: exact


def test_exact_duplicate_vectors(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    base = clustered(200, dim=8, seed=9)
    vectors = np.vstack([base, base[:50], base[:50]])  # 50 songs with two identical copies each
    ids = song_ids(len(vectors), seed=9)
    write_embeddings(spark, cfg, ids, vectors)
    build_neighbors(spark, cfg)
    table = read_table(spark, cfg)
    assert (table["song_id"] != table["neighbor_id"]).all()
    assert (table.groupby("song_id").size() == cfg.knn.k).all()
    for i in range(50):
        twins = {int(ids[i]), int(ids[200 + i]), int(ids[250 + i])}
        for s in twins:
            top2 = table[(table["song_id"] == s) & (table["rank"] <= 2)]
            assert set(top2["neighbor_id"]) == twins - {s}
            assert (top2["score"] > 0.9999).all()
            # equal scores are ordered by neighbour id
            assert top2["neighbor_id"].is_monotonic_increasing


def test_empty_missing_and_oversized_inputs_are_clear_errors(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        build_neighbors(spark, cfg)
    write_embeddings(spark, cfg, np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    with pytest.raises(InputError, match="empty"):
        build_neighbors(spark, cfg)
    write_embeddings(spark, cfg, song_ids(100), clustered(100, dim=4))
    small = make_cfg(tmp_path, "knn.max_shard_rows=10")
    with pytest.raises(InputError, match="knn.max_shard_rows"):
        build_neighbors(spark, small)


def test_vectors_not_unit_length_are_renormalised(spark, tmp_path):
    n = 300
    ids, vectors = song_ids(n, seed=4), clustered(n, dim=8, seed=4)
    tables = []
    for run, scale in (("unit", 1.0), ("scaled", 3.0)):
        cfg = make_cfg(tmp_path / run, f"knn.ef={n}")
        write_embeddings(spark, cfg, ids, vectors * np.float32(scale))
        build_neighbors(spark, cfg)
        tables.append(read_table(spark, cfg))
    unit, scaled = tables
    pd.testing.assert_frame_equal(scaled.drop(columns="score"), unit.drop(columns="score"))
    np.testing.assert_allclose(scaled["score"], unit["score"], atol=1e-6)
    # still cosines of the unit vectors, not inner products of the scaled ones (9x larger)
    pos = {int(s): i for i, s in enumerate(ids)}
    dots = np.einsum("ij,ij->i", vectors[scaled["song_id"].map(pos)], vectors[scaled["neighbor_id"].map(pos)])
    np.testing.assert_allclose(scaled["score"], dots, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("ragged", r"column vector has lengths 4\.\.5; all must be equal"),
        ("all_zero", "1 rows have an all-zero vector"),
        ("null_id", "1 rows have a null song_id"),
        ("one_song", "holds one song"),
        ("nan", "2 rows have a vector with NaN, infinite or null values"),
    ],
    ids=["ragged", "all_zero", "null_id", "one_song", "nan"],
)
def test_bad_embeddings_are_clear_errors(spark, tmp_path, case, match):
    cfg = make_cfg(tmp_path)
    ids, vectors = song_ids(30, seed=7).tolist(), clustered(30, dim=4, seed=7).tolist()
    if case == "ragged":
        vectors[7] = [*vectors[7], 0.0]
    elif case == "all_zero":
        vectors[7] = [0.0] * 4
    elif case == "null_id":
        ids[7] = None
    elif case == "nan":  # a diverged model: its rows would get no neighbours and vanish from the table
        vectors[7][1], vectors[8][0] = float("nan"), float("inf")
    else:
        ids, vectors = ids[:1], vectors[:1]
    write_rows(cfg, ids, vectors)
    with pytest.raises(InputError, match=match):
        build_neighbors(spark, cfg)
    assert not io.exists(cfg.path("neighbors"), spark)


class FailingQueries:
    """A real hnswlib index whose ``knn_query`` raises as hnswlib does when the graph yields too few results."""

    def __init__(self, index):
        self.index = index
        self.calls = 0

    def knn_query(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")

    def __getattr__(self, name):
        return getattr(self.index, name)


@pytest.mark.parametrize(("n", "k"), [(200, 5), (4, 10)], ids=["shard_bigger_than_k", "shard_smaller_than_k"])
def test_query_shard_falls_back_to_exact_search(tmp_path, n, k):
    cfg = make_cfg(tmp_path, f"knn.k={k}")
    ids, vectors = song_ids(n + 20, seed=11), clustered(n + 20, dim=8, seed=11)
    # Twins: equal scores, ordered by id, and each one's query drops itself by id, not by score. (This pair's
    # tie never straddles the cut at k+1 candidates: that case is test_exact_fallback_breaks_ties_at_the_cut_by_id.)
    vectors[3] = vectors[2]
    index = FailingQueries(build_index(ids[:n], vectors[:n], cfg.knn))
    nbr, score = query_shard(index, ids, vectors, k)  # the shard's own songs, then 20 songs of another shard
    assert index.calls == 1

    # exact reference: every shard song a candidate, self excluded, padded with empty slots when n <= k
    sims = np.pad(vectors @ vectors[:n].T, ((0, 0), (0, k)), constant_values=-np.inf)
    sims[np.arange(n), np.arange(n)] = -np.inf
    cand = np.r_[ids[:n], np.zeros(k, np.int64)]
    order = np.lexsort((np.broadcast_to(cand, sims.shape), -sims), axis=1)[:, :k]
    exact_ids, exact_scores = cand[order], np.take_along_axis(sims, order, 1)
    valid = np.isfinite(exact_scores)
    assert nbr.shape == score.shape == (n + 20, k) and valid.sum() == n * min(k, n - 1) + 20 * min(k, n)
    np.testing.assert_array_equal(np.isfinite(score), valid)
    np.testing.assert_array_equal(nbr[valid], exact_ids[valid])
    np.testing.assert_allclose(score[valid], exact_scores[valid], atol=1e-6)
    assert nbr[2, 0] == ids[3] and nbr[3, 0] == ids[2]


def test_exact_fallback_breaks_ties_at_the_cut_by_id(tmp_path):
    """Equal scores across the cut keep the smallest ids (the fallback used to keep them in hnswlib's hash-map
    order of labels, so a larger tied id could displace a smaller one)."""
    k, n = 2, 10
    cfg = make_cfg(tmp_path, f"knn.k={k}")
    ids = song_ids(n, seed=12)  # ascending
    vectors = np.repeat(clustered(1, dim=8, seed=12), n, axis=0)  # ten songs with one vector: all scores tie
    nbr, score = query_shard(FailingQueries(build_index(ids, vectors, cfg.knn)), ids, vectors, k)
    assert np.isfinite(score).all() and (score == score[0, 0]).all()
    # each song's neighbours are the two smallest other ids
    expected = [[ids[j] for j in range(n) if j != i][:k] for i in range(n)]
    np.testing.assert_array_equal(nbr, expected)


def test_failed_run_leaves_previous_table_readable(spark, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path)
    write_embeddings(spark, cfg, song_ids(300), clustered(300, dim=8))
    build_neighbors(spark, cfg)
    before = read_table(spark, cfg)

    write_embeddings(spark, cfg, song_ids(300, seed=2), clustered(300, dim=8, seed=2))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before commit")

    monkeypatch.setattr(io, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        build_neighbors(spark, cfg)
    pd.testing.assert_frame_equal(read_table(spark, cfg), before)
    staging = io.local_path(cfg.path("_staging"))
    assert not staging.exists() or not os.listdir(staging)


def test_job_main_exit_codes(spark, tmp_path):
    main = load_job("knn")
    cfg = make_cfg(tmp_path)
    args = ["--conf-file", str(ROOT / "conf" / "test.yaml"), "--set", f"root={Path(cfg.root)}"]
    assert main(args) == 1  # no embeddings/: one clear error line, exit 1
    write_embeddings(spark, cfg, song_ids(50), clustered(50, dim=4))
    assert main(args) == 0
    assert io.read_json(cfg.path("neighbors", "_manifest.json"))["n"] == 50
