"""`songrec recommend` against a finished small run: lookups, ambiguity, suggestions, --like, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from songrec.cli import main
from songrec.config import local_path


@pytest.fixture(scope="module")
def run_dir(finished):
    return str(local_path(finished.path()))


@pytest.fixture(scope="module")
def songs(run_dir):
    con = duckdb.connect()
    return con.execute(f"SELECT song_id, artist, title FROM read_parquet('{run_dir}/songs/*.parquet')").fetchall()


def _unique_title(songs):
    counts = {}
    for _, _, title in songs:
        counts[title.lower()] = counts.get(title.lower(), 0) + 1
    return next(row for row in songs if counts[row[2].lower()] == 1)


def test_by_title_prints_ranked_table(run_dir, songs, capsys):
    song_id, artist, title = _unique_title(songs)
    assert main(["recommend", title, "--run", run_dir, "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert f"songs like {title!r} by {artist}" in out
    lines = [line for line in out.splitlines() if line[:1].isdigit()]
    assert [int(line.split()[0]) for line in lines] == [1, 2, 3, 4, 5]


def test_by_id_json_matches_the_table(run_dir, songs, capsys):
    song_id = songs[0][0]
    assert main(["recommend", "--id", str(song_id), "--run", run_dir, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    con = duckdb.connect()
    expected = con.execute(
        f"SELECT neighbor_id, score FROM read_parquet('{run_dir}/neighbors/*/*.parquet', hive_partitioning=true) "
        "WHERE song_id = ? AND rank <= 10 ORDER BY rank",
        [song_id],
    ).fetchall()
    assert [r["song_id"] for r in rows] == [e[0] for e in expected]
    assert [r["score"] for r in rows] == pytest.approx([e[1] for e in expected])
    assert song_id not in [r["song_id"] for r in rows]


def test_csv_format(run_dir, songs, capsys):
    assert main(["recommend", "--id", str(songs[1][0]), "--run", run_dir, "--format", "csv", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "rank,artist,title,genre,emotion,score,song_id" and len(lines) == 4


def test_ambiguous_title_lists_candidates(run_dir, songs, tmp_path, capsys):
    by_title = {}
    for row in songs:
        by_title.setdefault(row[2].lower(), []).append(row)
    dup = next((rows for rows in by_title.values() if len(rows) > 1), None)
    if dup is None:
        pytest.skip("the small generated catalogue has no repeated title")
    assert main(["recommend", dup[0][2], "--run", run_dir]) == 2
    err = capsys.readouterr().err
    assert "--artist" in err and all(f"--id {r[0]}" in err for r in dup[:20])
    # --artist resolves it
    assert main(["recommend", dup[0][2], "--artist", dup[0][1], "--run", run_dir, "-k", "2"]) == 0


def test_not_found_suggests_close_titles(run_dir, songs, capsys):
    _, _, title = _unique_title(songs)
    typo = title[:-1] + ("x" if title[-1] != "x" else "y")
    assert main(["recommend", typo, "--run", run_dir]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "closest titles:" in err and title in err


def test_like_profile(run_dir, capsys):
    """The profile is standardised with the run's own statistics, encoded by the saved encoder, and the catalogue
    searched exactly: the lists equal a brute-force search over embeddings/ for a profile built here by hand."""
    import numpy as np
    import pyarrow.parquet as pq

    from songrec.model import encode_batch, load_encoder
    from songrec.schema import NUMERIC_FEATURES

    spec = "energy=80,danceability=70,tempo=120,emotion=joy"
    assert main(["recommend", "--like", spec, "--run", run_dir, "-k", "4", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)

    run = Path(run_dir)
    stats = json.loads((run / "meta" / "stats.json").read_text())["numeric"]
    vocab = json.loads((run / "meta" / "vocab.json").read_text())
    feats = json.loads((run / "meta" / "features.json").read_text())
    numeric = np.zeros((1, len(NUMERIC_FEATURES)), np.float32)  # standardised: 0 = the catalogue mean
    for name, value in {"energy": 80, "danceability": 70, "tempo": 120}.items():
        numeric[0, NUMERIC_FEATURES.index(name)] = (value - stats[name]["mean"]) / stats[name]["std"]
    batch = {
        "numeric": numeric, "genres": np.zeros((1, feats["genre_dim"]), np.float32),
        "lyrics": np.zeros((1, feats["lyrics_dim"]), np.float32), "artist_idx": np.zeros(1, np.int64),
        "genre_idx": np.zeros(1, np.int64), "emotion_idx": np.array([vocab["emotion"].index("joy")], np.int64),
    }  # fmt: skip
    query = encode_batch(load_encoder(str(run / "model")), batch)[0]
    table = pq.read_table(run / "embeddings", columns=["song_id", "vector"])
    ids = table.column("song_id").to_numpy()
    scores = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32) @ query
    top = np.lexsort((ids, -scores))[:4]
    assert [r["song_id"] for r in rows] == ids[top].tolist()
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["score"] for r in rows], scores[top], rtol=1e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("energy=180", "out of range"),
        ("colour=red", "valid:"),
        ("emotion=smug", "unknown emotion"),
        ("tempo", "name=value"),
    ],
)
def test_like_errors_name_the_problem(run_dir, spec, message, capsys):
    assert main(["recommend", "--like", spec, "--run", run_dir]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_and_usage_errors(tmp_path, capsys):
    assert main(["recommend", "x", "--run", str(tmp_path / "nope")]) == 1
    assert "finished songrec run" in capsys.readouterr().err
    assert main(["recommend", "--run", str(tmp_path)]) == 2


def test_console_script_is_installed_and_fast(run_dir, songs, tmp_path):
    """The console script answers without Spark: here pyspark cannot even be imported."""
    import os

    songrec = Path(sys.executable).parent / "songrec"  # the venv's console script
    assert songrec.is_file(), "the songrec console script is not installed (pip install -e .)"
    blocker = tmp_path / "no_pyspark" / "pyspark"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('pyspark is not installed on this box')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    out = subprocess.run(
        [str(songrec), "recommend", "--id", str(songs[2][0]), "--run", run_dir], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert " s from " in out.stderr


def test_a_run_folder_with_quotes_and_glob_characters(run_dir, songs, tmp_path, capsys):
    """Paths go to DuckDB as parameters: a quote or a bracket in the run folder's name is taken as it is."""
    import shutil

    copy = tmp_path / "o'neil [lake]" / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    song_id, _, title = _unique_title(songs)
    assert main(["recommend", title, "--run", str(copy), "-k", "3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert main(["recommend", "--id", str(song_id), "--run", run_dir, "-k", "3", "--format", "json"]) == 0
    assert rows == json.loads(capsys.readouterr().out) and len(rows) == 3

    (copy / "neighbors" / "_manifest.json").unlink()  # e.g. only the Parquet files were copied
    assert main(["recommend", "--id", str(song_id), "--run", str(copy)]) == 1
    assert "_manifest.json is missing or unreadable" in capsys.readouterr().err


def test_one_lookup_reads_one_version_of_each_table(run_dir, tmp_path):
    """A Run resolves each table's link once: a commit during a lookup does not mix two versions."""
    import shutil

    from songrec import io
    from songrec.recommend import Run

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, symlinks=True)
    run = Run(copy)
    before = run.files("songs")
    staging = tmp_path / "staging-songs"
    shutil.copytree(copy / "songs", staging)
    io.commit(str(staging), str(copy / "songs"))  # a new version of songs/ while the lookup runs

    assert run.files("songs") == before and all(Path(f).exists() for f in before)
    fresh = Run(copy).files("songs")
    assert [Path(f).name for f in fresh] == [Path(f).name for f in before]
    assert {Path(f).parent for f in fresh}.isdisjoint({Path(f).parent for f in before})
