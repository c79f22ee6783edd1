"""Data-lake consumers read neighbors/ and songs/ with their own tools and get the same answers."""

import json
import shutil

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest
from pyspark.sql import functions as F

from songrec.config import local_path


@pytest.fixture(scope="module")
def tables(finished):
    root = local_path(finished.path())
    return root / "neighbors", root / "songs"


def _sample_ids(songs_dir, n=25):
    ids = ds.dataset(songs_dir, format="parquet").to_table(columns=["song_id"]).column("song_id").to_pylist()
    return sorted(ids)[:: max(1, len(ids) // n)][:n]


def test_spark_duckdb_pyarrow_agree(spark, tables, finished):
    neighbors, songs = tables
    ids = _sample_ids(songs)
    by_spark = sorted(
        tuple(r)
        for r in spark.read.parquet(str(neighbors))
        .where(F.col("song_id").isin(ids))
        .select("song_id", "rank", "neighbor_id", "score")
        .collect()
    )
    con = duckdb.connect()
    by_duckdb = sorted(
        con.execute(
            f"SELECT song_id, rank, neighbor_id, score FROM read_parquet('{neighbors}/*/*.parquet', "
            f"hive_partitioning=true) WHERE song_id IN ({','.join(map(str, ids))})"
        ).fetchall()
    )
    table = ds.dataset(neighbors, format="parquet", partitioning="hive").to_table(
        columns=["song_id", "rank", "neighbor_id", "score"], filter=ds.field("song_id").isin(ids)
    )
    by_arrow = sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert len(by_spark) == len(ids) * finished.knn.k  # every sampled song has its K rows
    assert [r[:3] for r in by_spark] == [r[:3] for r in by_duckdb] == [r[:3] for r in by_arrow]
    for a, b, c in zip(by_spark, by_duckdb, by_arrow, strict=True):
        assert a[3] == pytest.approx(b[3]) == pytest.approx(c[3])


def test_single_song_lookup_reads_only_its_bucket(tables, tmp_path):
    neighbors, songs = tables
    manifest = json.loads((neighbors / "_manifest.json").read_text())
    copy = tmp_path / "neighbors"
    shutil.copytree(neighbors, copy)
    song_id = _sample_ids(songs, 3)[1]
    bucket = song_id % manifest["buckets"]
    con = duckdb.connect()
    whole = con.execute(
        f"SELECT rank, neighbor_id, score FROM read_parquet('{copy}/*/*.parquet', hive_partitioning=true) "
        f"WHERE song_id = {song_id} ORDER BY rank"
    ).fetchall()
    # Every other bucket's files are made unreadable as Parquet: a lookup that touched them would fail.
    for f in copy.glob("bucket=*/*.parquet"):
        if f.parent.name != f"bucket={bucket}":
            f.write_bytes(b"not parquet")
    files = list((copy / f"bucket={bucket}").glob("*.parquet"))
    assert len(files) == 1  # one small file per bucket
    rows = con.execute(
        f"SELECT rank, neighbor_id, score FROM read_parquet('{copy}/bucket={bucket}/*.parquet') "
        f"WHERE song_id = {song_id} ORDER BY rank"
    ).fetchall()
    assert rows == whole and [r[0] for r in rows] == list(range(1, len(rows) + 1)) and rows
    # The README's pandas lookup: partition pruning on the bucket skips the other buckets' files, but pyarrow
    # learns the schema from the first file's footer (bucket=0), so that one file must be readable too.
    shutil.copytree(neighbors / "bucket=0", copy / "bucket=0", dirs_exist_ok=True)
    nb = pd.read_parquet(copy, filters=[("bucket", "=", bucket), ("song_id", "=", song_id)])
    assert list(nb.sort_values("rank")[["rank", "neighbor_id", "score"]].itertuples(index=False, name=None)) == rows


def test_top10_with_titles_query_from_readme(tables):
    neighbors, songs = tables
    song_id = _sample_ids(songs, 3)[0]
    con = duckdb.connect()
    rows = con.execute(
        f"""
        SELECT n.rank, s.artist, s.title, n.score
        FROM read_parquet('{neighbors}/bucket={song_id % 8}/*.parquet') n
        JOIN read_parquet('{songs}/*.parquet') s ON s.song_id = n.neighbor_id
        WHERE n.song_id = ? AND n.rank <= 10
        ORDER BY n.rank
        """,
        [song_id],
    ).fetchall()
    assert len(rows) == 10
    scores = [r[3] for r in rows]
    assert scores == sorted(scores, reverse=True)
