"""The preprocess stage end to end in local Spark: tables, counts, rejects, vocabularies, failures."""

import csv
import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, make_cfg

from songrec import schema
from songrec.config import ConfigError, local_path
from songrec.errors import InputError
from songrec.preprocess import preprocess

GOOD_ROWS = 150
EMOTIONS = ["joy", "sadness", "Love", "angry", "pink", "fear"]
GENRES = ["hip hop,pop", "pop", "rock,hip hop", "hip hop"]
DATES = ["29th April 2013", "April 29, 2013", "2013-04-29", "2013", "1st May 1999"]
KEYS = ["A# Maj", "D min", "C maj", "G# min"]
SMALL = ["preprocess.row_group_rows=16", "train.num_processes=2"]


def good_row(i: int) -> dict[str, str]:
    """A clean raw row; song ``i + 1`` (when it exists) is its first similar song."""
    row = {
        "Artist(s)": f"Artist {i % 5}" + (f",Guest {i}" if i % 4 == 0 else ""),
        "song": f"Song {i}",
        "text": f'[Verse 1] love word{i % 3}, "quoted" baby  [Chorus] oh yeah {i}',
        "Length": f"0{2 + i % 5}:{(i * 7) % 60:02d}",
        "emotion": EMOTIONS[i % len(EMOTIONS)],
        "Genre": GENRES[i % len(GENRES)],
        "Album": f"Album {i % 3}",
        "Release Date": DATES[i % len(DATES)],
        "Key": KEYS[i % len(KEYS)],
        "Tempo": str(80 + i % 90),
        "Loudness (db)": f"-{i % 9}.25db",
        "Time signature": "4/4" if i % 3 else "3/4",
        "Explicit": "Yes" if i % 2 else "No",
    }
    row |= {raw: str((i * 7 + k * 3) % 101) for k, raw in enumerate(schema.PERCENT_COLUMNS)}
    row |= {raw: str((i + k) % 2) for k, raw in enumerate(schema.GOOD_FOR_COLUMNS)}
    row |= {
        "Similar Artist 1": f"Artist {(i + 1) % 5}",
        "Similar Song 1": f"Song {i + 1}",
        "Similarity Score 1": "0.99",
    }
    row |= {"Similar Artist 2": "Nobody", "Similar Song 2": "Unknown Song", "Similarity Score 2": "0.97"}
    row |= {"Similar Artist 3": "", "Similar Song 3": "", "Similarity Score 3": ""}
    return row


def dirty_rows() -> list[tuple[str, list[str] | str]]:
    """``(expected outcome, fields or raw line)``: one row per kind of dirt."""

    def bad(i: int, **changes: str) -> list[str]:
        row = good_row(i) | {k.replace("_", " "): v for k, v in changes.items()}
        return [row[c] for c in schema.RAW_COLUMNS]

    base = [good_row(200)[c] for c in schema.RAW_COLUMNS]
    return [
        ("malformed_row", "Short Artist,Short Song,a few words"),
        ("malformed_row", [*base, "extra field"]),
        ("missing_required", bad(201, **{"Artist(s)": " "})),
        ("bad_number", bad(202, Popularity="150")),
        ("bad_number", bad(203, Tempo="fast")),
        ("bad_date", bad(204, Release_Date="31st Febtember 2001")),
        ("bad_key", bad(205, Key="H maj")),
        ("bad_length", bad(206, Length="3.47")),
        ("bad_flag", bad(207, Explicit="maybe")),
        ("bad_number", bad(208, Energy="NaN")),
        ("duplicate", [good_row(0)[c] for c in schema.RAW_COLUMNS]),
        ("duplicate", bad(1, song="  SONG   1 ", Album="Deluxe")),
        # Less complete copies of songs 5 and 6: the row with more filled cells is kept, whatever the row hash says.
        ("duplicate", bad(5, Album="", Tempo="")),
        ("duplicate", bad(6, Album="", Tempo="")),
        ("clean", bad(209, Album="", Tempo="")),
        # A rejected copy of a clean song, and one bad row twice: rejects, never counted as duplicates.
        ("bad_number", bad(2, Tempo="fast")),
        ("bad_number", bad(210, Popularity="-1")),
        ("bad_number", bad(210, Popularity="-1")),
    ]


def write_csv(path: Path, rows: list[list[str] | str], header: list[str] | None = None) -> None:
    """RFC 4180 CSV (quote and escape ``"``) with the raw header; a str row is written as a raw line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header or schema.RAW_COLUMNS)
        for row in rows:
            if isinstance(row, str):
                f.write(row + "\n")
            else:
                writer.writerow(row)


def sample_rows() -> list[list[str] | str]:
    good = [[good_row(i)[c] for c in schema.RAW_COLUMNS] for i in range(GOOD_ROWS)]
    return good + [row for _, row in dirty_rows()]


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def table(spark, uri: str) -> list:
    """Every row of a table, sorted (order-independent comparison)."""
    return sorted(spark.read.parquet(uri).collect(), key=repr)


@pytest.fixture(scope="module")
def small(spark, tmp_path_factory):
    """The hand-written sample preprocessed once: (cfg, result)."""
    cfg = make_cfg(tmp_path_factory.mktemp("pre_small"), *SMALL)
    write_csv(Path(cfg.input), sample_rows())
    return cfg, preprocess(spark, cfg)


@pytest.fixture(scope="module")
def small_again(spark, small, tmp_path_factory):
    """The same input run a second time through the job's ``main`` into another root."""
    cfg, _ = small
    root = tmp_path_factory.mktemp("pre_again") / "run"
    code = load_job("preprocess")(
        ["--conf-file", str(ROOT / "conf" / "test.yaml"), "--set", f"input={cfg.input}", "--set", f"root={root}"]
        + [arg for s in SMALL for arg in ("--set", s)]
    )
    assert code == 0
    return dataclasses.replace(cfg, root=str(root))


def test_expected_warnings_are_quiet(spark, small):
    """The CSV reader's "header does not conform" and parquet-mr's row-group dump are our own doing: silenced."""
    from songrec.preprocess import QUIET_LOGGERS

    jvm = spark._jvm
    for name in QUIET_LOGGERS:
        jvm.java.lang.Class.forName(name)  # a logger named after a class that moved would silence nothing
        assert str(jvm.org.apache.logging.log4j.LogManager.getLogger(name).getLevel()) == "ERROR", name


def test_counts_reconcile(small):
    cfg, result = small
    counts = json.loads(local_path(cfg.path("meta", "counts.json")).read_text())
    assert set(counts) == {"read", "clean", "duplicates", "rejected"}
    outcomes = [o for o, _ in dirty_rows()]
    assert counts == {
        "read": GOOD_ROWS + len(outcomes),
        "clean": GOOD_ROWS + outcomes.count("clean"),
        "duplicates": outcomes.count("duplicate"),
        "rejected": sum(o not in {"clean", "duplicate"} for o in outcomes),
    }
    assert counts["read"] == counts["clean"] + counts["duplicates"] + counts["rejected"]
    assert {k: result[k] for k in counts} == counts


def test_schemas_match_contract(spark, small):
    cfg, _ = small
    for name, expected in [("songs", schema.SONGS), ("features", schema.FEATURES), ("rejects", schema.REJECTS)]:
        got = spark.read.parquet(cfg.path(name)).schema
        assert [(f.name, f.dataType.simpleString()) for f in got] == [
            (f.name, f.dataType.simpleString()) for f in expected
        ], name


def test_rejects_name_reason_column_and_source(spark, small):
    cfg, _ = small
    rejects = spark.read.parquet(cfg.path("rejects")).collect()
    expected = sorted(o for o, _ in dirty_rows() if o not in {"clean", "duplicate"})
    assert sorted(r.reason for r in rejects) == expected
    assert all(r.reason in schema.REJECT_REASONS for r in rejects)
    assert all(r.source_file.endswith("spotify_dataset.csv") and r.raw for r in rejects)
    details = {r.detail for r in rejects}
    assert "column 'Popularity' has unusable value '150'" in details
    assert "column 'Energy' has unusable value 'NaN'" in details
    assert "column 'Release Date' has unusable value '31st Febtember 2001'" in details
    assert "column 'Artist(s)' is empty" in details
    assert {"row has 3 fields, expected 39", "row has 40 fields, expected 39"} <= details
    short = next(r for r in rejects if r.detail == "row has 3 fields, expected 39")
    assert short.raw == "Short Artist,Short Song,a few words"
    typed = next(r for r in rejects if r.reason == "bad_key")
    assert json.loads(typed.raw)["Key"] == "H maj"


def test_songs_values(spark, small):
    cfg, _ = small
    songs = {r.title: r for r in spark.read.parquet(cfg.path("songs")).collect()}
    assert len(songs) == GOOD_ROWS + 1
    s4 = songs["Song 4"]
    assert (s4.artist, s4.artists, s4.genres, s4.genre) == (
        "Artist 4",
        ["Artist 4", "Guest 4"],
        ["hip hop", "pop"],
        "hip hop",
    )
    assert (s4.length_s, s4.release_year, s4.key_pitch, s4.key_mode) == (6 * 60 + 28, 1999, 10, "major")
    assert (s4.loudness_db, s4.tempo, s4.time_signature, s4.explicit) == (-4.25, 84, 4, False)
    assert [songs[f"Song {i}"].emotion for i in range(6)] == ["joy", "sadness", "love", "anger", "unknown", "fear"]
    assert [(songs[f"Song {i}"].album, songs[f"Song {i}"].tempo) for i in (5, 6)] == [("Album 2", 85), ("Album 0", 86)]
    nulls = songs["Song 209"]
    assert nulls.album is None and nulls.tempo is None
    ids = {r.title: r.song_id for r in songs.values()}
    assert songs["Song 10"].similar_song_ids == [ids["Song 11"]]  # "Nobody - Unknown Song" is not in the catalogue
    assert [s.title for s in songs["Song 10"].similar_songs] == ["Song 11", "Unknown Song"]


def test_vocabularies_frequency_ordered(spark, small):
    cfg, _ = small
    vocab = json.loads(local_path(cfg.path("meta", "vocab.json")).read_text())
    assert all(v[0] == schema.UNKNOWN_TOKEN for v in vocab.values())
    assert vocab["genre"][1:] == ["hip hop", "pop", "rock"]
    assert "unknown" not in vocab["emotion"] and set(vocab["emotion"][1:]) == {
        "joy",
        "sadness",
        "love",
        "anger",
        "fear",
    }
    songs = spark.read.parquet(cfg.path("songs"))
    counts = {r.artist: r["count"] for r in songs.groupBy("artist").count().collect()}
    freq = [counts[a] for a in vocab["artist"][1:]]
    assert freq == sorted(freq, reverse=True) and set(vocab["artist"][1:]) == set(counts)


def test_features_vectors(spark, small):
    cfg, _ = small
    meta = json.loads(local_path(cfg.path("meta", "features.json")).read_text())
    vocab = json.loads(local_path(cfg.path("meta", "vocab.json")).read_text())
    rows = spark.read.parquet(cfg.path("features")).collect()
    assert len(rows) == GOOD_ROWS + 1 == meta["rows"]["train"] + meta["rows"]["val"]
    assert meta["rows"]["val"] > 0 and meta["numeric"] == schema.NUMERIC_FEATURES
    assert meta["genre_dim"] == len(vocab["genre"]) and meta["lyrics_dim"] == cfg.preprocess.lyrics_dim
    for r in rows:
        assert len(r.numeric) == len(schema.NUMERIC_FEATURES) and len(r.genres) == len(vocab["genre"])
        assert math.isclose(np.linalg.norm(r.lyrics), 1.0, rel_tol=1e-5)
        assert sum(r.genres) >= 1 and r.genre_idx >= 1 and r.split in {"train", "val"}
    numeric = np.array([r.numeric for r in rows])
    assert np.allclose(numeric.mean(axis=0), 0, atol=1e-4)  # standardised (nulls become the mean, 0)
    # Row groups: ~row_group_rows rows each, counted from the footers.
    files = sorted(local_path(cfg.path("features")).glob("*.parquet"))
    groups = [
        pq.ParquetFile(f).metadata.row_group(i).num_rows
        for f in files
        for i in range(pq.ParquetFile(f).metadata.num_row_groups)
    ]
    assert len(files) == meta["files"] and len(groups) == meta["row_groups"] >= 4 * cfg.train.num_processes
    rg = cfg.preprocess.row_group_rows
    for f in files:  # exactly row_group_rows rows in every group but a file's last, which holds the rest
        sizes = [
            pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).metadata.num_row_groups)
        ]
        assert sizes[:-1] == [rg] * (len(sizes) - 1) and 0 < sizes[-1] <= rg, (f.name, sizes)
    assert max(groups) == rg


def test_deterministic_and_job_main(spark, small, small_again):
    cfg, _ = small
    for name in ("songs", "features", "rejects"):
        assert table(spark, cfg.path(name)) == table(spark, small_again.path(name)), name
    for name in ("counts.json", "vocab.json", "stats.json", "features.json"):
        assert local_path(cfg.path("meta", name)).read_text() == local_path(small_again.path("meta", name)).read_text()


def test_failed_runs_leave_previous_outputs(spark, small, small_again, tmp_path):
    before = {n: table(spark, small_again.path(n)) for n in ("songs", "features", "rejects")}
    meta_before = local_path(small_again.path("meta", "counts.json")).read_text()
    bad = tmp_path / "bad.csv"
    write_csv(bad, [["x"] * 39], header=["Artist"] + schema.RAW_COLUMNS[1:])
    with pytest.raises(InputError, match="bad.csv.*missing \\['Artist\\(s\\)'\\], unexpected \\['Artist'\\]"):
        preprocess(spark, dataclasses.replace(small_again, input=str(bad)))
    too_big = dataclasses.replace(small_again.preprocess, row_group_rows=100000, features_files=1)
    with pytest.raises(ConfigError, match="needs at least 8 .*lower preprocess.row_group_rows"):
        preprocess(spark, dataclasses.replace(small_again, preprocess=too_big))
    assert {n: table(spark, small_again.path(n)) for n in before} == before
    assert local_path(small_again.path("meta", "counts.json")).read_text() == meta_before
    assert not any(local_path(small_again.path("_staging")).iterdir())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (",".join(schema.RAW_COLUMNS).encode() + b"\n", "has a header but no rows"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "is not a text file"),
        (
            (",".join(schema.RAW_COLUMNS[:-1]) + ",Extra\n").encode(),
            "missing \\['Similarity Score 3'\\], unexpected \\['Extra'\\]",
        ),
    ],
)
def test_bad_input_files(spark, tmp_path, content, message):
    cfg = make_cfg(tmp_path)
    path = Path(cfg.input)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"spotify_dataset.csv.*{message}"):
        preprocess(spark, cfg)
    assert not local_path(cfg.path()).exists()


def test_missing_input(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(InputError, match="spotify_dataset.csv does not exist"):
        preprocess(spark, cfg)
    empty = tmp_path / "raw"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no data files"):
        preprocess(spark, dataclasses.replace(cfg, input=str(empty)))
    main = load_job("preprocess")
    assert (
        main(
            [
                "--conf-file",
                str(ROOT / "conf" / "test.yaml"),
                "--set",
                f"input={tmp_path / 'nope.csv'}",
                "--set",
                f"root={tmp_path / 'r'}",
            ]
        )
        == 1
    )


def test_folder_input_and_quoted_newlines(spark, tmp_path):
    """A folder of two files; a quoted newline in the lyrics is one row with multiline, broken rows without."""
    rows = [[good_row(i)[c] for c in schema.RAW_COLUMNS] for i in range(80)]
    rows[3][2] = "first line\nsecond line, with a comma"
    folder = tmp_path / "raw"
    write_csv(folder / "part-a.csv", rows[:40])
    write_csv(folder / "part-b.csv", rows[40:])
    (folder / "_truth.csv").write_text("ignored\n")
    overrides = ["preprocess.features_files=2", "train.num_processes=1", "preprocess.row_group_rows=16"]
    multi = make_cfg(tmp_path / "m", f"input={folder}", "preprocess.multiline=true", *overrides)
    result = preprocess(spark, multi)
    assert (result["read"], result["clean"], result["rejected"], result["files"]) == (80, 80, 0, 2)
    sources = {r.source_file.rsplit("/", 1)[1] for r in spark.read.parquet(multi.path("songs")).collect()}
    assert sources == {"part-a.csv", "part-b.csv"}
    single = make_cfg(tmp_path / "s", f"input={folder}", "preprocess.multiline=false", *overrides)
    result = preprocess(spark, single)
    assert result["read"] == result["clean"] + result["duplicates"] + result["rejected"]
    assert result["clean"] == 79 and result["rejected"] >= 1
    reasons = {r.reason for r in spark.read.parquet(single.path("rejects")).collect()}
    assert "malformed_row" in reasons


def test_generated_sample_reconciles(spark, preprocessed):
    """The generator's own small run (shared fixture): counts reconcile and features are shardable."""
    counts = json.loads(local_path(preprocessed.path("meta", "counts.json")).read_text())
    assert counts["read"] == counts["clean"] + counts["duplicates"] + counts["rejected"]
    assert counts["read"] == preprocessed.generate.rows and counts["rejected"] > 0 and counts["duplicates"] > 0
    meta = json.loads(local_path(preprocessed.path("meta", "features.json")).read_text())
    assert meta["row_groups"] >= 4 * preprocessed.train.num_processes
    assert spark.read.parquet(preprocessed.path("songs")).count() == counts["clean"]
