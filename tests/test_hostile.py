"""Hostile raw input to the preprocess stage (issue 6).

Every case ends one of two ways: a clear error that names the file and the problem, with nothing
written and the previous outputs under root left as they were; or rows in rejects/ with a reason,
with every input row accounted for (meta/counts.json: read = clean + duplicates + rejected).

The choices, as a data engineer would make them:

- missing, empty, whitespace-only and header-only files, a wrong header, a binary file: a clear error
  before any work. A header with no rows is an export that failed, not a catalogue of zero songs, and
  the later stages cannot run on zero rows anyway.
- Latin-1 (or any text not in ``preprocess.encoding``): an error naming the fix when the start of the
  file shows it (the usual case: a whole file in the wrong encoding); set ``preprocess.encoding`` and
  it is decoded, giving the same song ids as the UTF-8 spelling. An undecodable row further on
  (Spark reads the bytes as U+FFFD) is rejected as ``encoding``: guessing would give "Beyonc\ufffd" an
  id of its own.
- CRLF line endings: the same clean rows as LF, in both CSV reading modes.
- a 50 MB cell: rejected as ``too_long`` (no song has MBs of lyrics: it is junk or a runaway quote),
  and never tokenised; its reject keeps the first MiB.
- a row of 100 fields: ``malformed_row``. A NUL byte in a data row: ``encoding`` (only NULs in the
  header line or among undecodable bytes make the whole file binary).
- ``1e309``, ``NaN``, ``inf``: ``bad_number`` (not finite); ``-0`` is zero and clean.
"""

import csv
import dataclasses
import gzip
import io
import json
import random
import re
from pathlib import Path

import pytest
from conftest import make_cfg
from pyspark.sql import functions as F
from test_preprocess import good_row

from songrec import parse, schema
from songrec.config import local_path
from songrec.errors import InputError
from songrec.preprocess import HEAD_BYTES, check_input_file, preprocess

SMALL = ["preprocess.row_group_rows=16", "train.num_processes=1"]
HEAD_ROWS = 300  # clean rows that fill more than the HEAD_BYTES the start-up check reads
BIG_CELL = 50 * 2**20
COL = schema.RAW_COLUMNS.index


def clean_row(i: int) -> list[str]:
    """A clean raw row; odd rows fill the last column too (a stray CR would land in it)."""
    row = good_row(i)
    if i % 2:
        row |= {
            "Similar Artist 3": f"Artist {(i + 2) % 5}",
            "Similar Song 3": f"Song {i + 2}",
            "Similarity Score 3": "0.5",
        }
    return [row[c] for c in schema.RAW_COLUMNS]


def with_cells(i: int, **cells: str) -> list[str]:
    """Clean row ``i`` with some raw cells replaced (keys are raw column names, ``_`` for a space)."""
    row = clean_row(i)
    for name, value in cells.items():
        row[COL(name.replace("_", " "))] = value
    return row


# (reason or "clean", row) for odd numbers in numeric columns.
NUMBERS = [
    ("bad_number", with_cells(1000, Tempo="1e309")),
    ("bad_number", with_cells(1001, **{"Loudness (db)": "1e309"})),
    ("bad_number", with_cells(1002, Energy="NaN")),
    ("bad_number", with_cells(1003, **{"Similarity Score 1": "inf"})),
    ("bad_number", with_cells(1004, Danceability="-inf")),
    ("bad_number", with_cells(1005, Positiveness="Infinity")),
    ("clean", with_cells(1006, Tempo="-0")),
    ("clean", with_cells(1007, **{"Loudness (db)": "-0"})),
    ("clean", with_cells(1008, Popularity="-0")),
]
NUMBER_DETAILS = {
    "column 'Tempo' has unusable value '1e309'",
    "column 'Loudness (db)' has unusable value '1e309'",
    "column 'Energy' has unusable value 'NaN'",
    "column 'Similarity Score 1' has unusable value 'inf'",
    "column 'Danceability' has unusable value '-inf'",
    "column 'Positiveness' has unusable value 'Infinity'",
}


def csv_text(rows: list[list[str]], newline: str = "\n", header: bool = True) -> str:
    """RFC 4180 CSV text (with the raw header unless ``header`` is false)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    if header:
        writer.writerow(schema.RAW_COLUMNS)
    writer.writerows(rows)
    return out.getvalue()


def good_text(newline: str = "\n") -> str:
    """The head of clean rows plus the numeric edge cases: what every run below has in common."""
    return csv_text([clean_row(i) for i in range(HEAD_ROWS)] + [row for _, row in NUMBERS], newline)


def snapshot(cfg) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under root (the table versions behind the links)."""
    root = local_path(cfg.path())
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_staging" not in p.parts
    }


def read_counts(cfg) -> dict[str, int]:
    return json.loads(local_path(cfg.path("meta", "counts.json")).read_text())


def tables_without_source(spark, cfg) -> dict[str, list]:
    """songs/ and features/ rows sorted, without ``source_file`` (the file names differ between runs)."""
    out = {}
    for name in ("songs", "features"):
        df = spark.read.parquet(cfg.path(name))
        out[name] = sorted(df.drop("source_file").collect(), key=repr)
    return out


@pytest.fixture(scope="module")
def hostile(spark, tmp_path_factory):
    """One file: clean head, odd numbers, then a 100-field row, NUL bytes, Latin-1 bytes and a 50 MB cell
    (all past the start-up check's head, as in a big file); preprocessed once. (cfg, result)."""
    cfg = make_cfg(tmp_path_factory.mktemp("hostile"), *SMALL)
    path = Path(cfg.input)
    path.parent.mkdir(parents=True)
    head = good_text().encode()
    assert len(head) > HEAD_BYTES
    with path.open("wb") as f:
        f.write(head)
        f.write(csv_text([clean_row(2000) + [f"extra {k}" for k in range(61)]], header=False).encode())
        f.write(csv_text([with_cells(2001, song="Song\x00 2001")], header=False).encode())
        f.write(csv_text([with_cells(2002, text="lyrics with a \x00 inside")], header=False).encode())
        f.write(csv_text([with_cells(2003, **{"Artist(s)": "Beyoncé"})], header=False).encode("latin-1"))
        f.write(csv_text([with_cells(2004, text=("la " * BIG_CELL)[:BIG_CELL])], header=False).encode())
    return cfg, preprocess(spark, cfg)


def test_hostile_rows_are_rejected_with_reasons_and_counted(spark, hostile):
    cfg, result = hostile
    hostile_rows = 5
    rejected_numbers = sum(o == "bad_number" for o, _ in NUMBERS)
    counts = read_counts(cfg)
    assert counts == {
        "read": HEAD_ROWS + len(NUMBERS) + hostile_rows,
        "clean": HEAD_ROWS + len(NUMBERS) - rejected_numbers,
        "duplicates": 0,
        "rejected": rejected_numbers + hostile_rows,
    }
    assert counts["read"] == counts["clean"] + counts["duplicates"] + counts["rejected"]
    assert {k: result[k] for k in counts} == counts

    rejects = spark.read.parquet(cfg.path("rejects")).collect()
    assert len(rejects) == counts["rejected"]
    assert all(r.reason in schema.REJECT_REASONS and r.source_file.endswith("spotify_dataset.csv") for r in rejects)
    got = sorted((r.reason, r.detail) for r in rejects)
    assert got == sorted(
        [("bad_number", d) for d in NUMBER_DETAILS]
        + [
            ("malformed_row", "row has 100 fields, expected 39"),
            ("encoding", "row holds a NUL byte"),
            ("encoding", "row holds a NUL byte"),
            ("encoding", "row holds bytes that are not text in preprocess.encoding (read as U+FFFD)"),
            ("too_long", f"row has a cell of {BIG_CELL} bytes, over the limit of {parse.MAX_CELL_BYTES}"),
        ]
    )
    by_detail = {r.detail: r for r in rejects}
    assert by_detail["row has 100 fields, expected 39"].raw.endswith(",extra 60")
    latin1 = by_detail["row holds bytes that are not text in preprocess.encoding (read as U+FFFD)"]
    assert json.loads(latin1.raw)["Artist(s)"] == "Beyonc\ufffd"
    big = next(r for r in rejects if r.reason == "too_long")
    assert len(big.raw) == parse.MAX_CELL_BYTES  # cut, not the whole 50 MB


def test_odd_numbers(spark, hostile):
    cfg, _ = hostile
    songs = {r.title: r for r in spark.read.parquet(cfg.path("songs")).collect()}
    assert songs["Song 1006"].tempo == 0 and songs["Song 1007"].loudness_db == 0.0
    assert songs["Song 1008"].popularity == 0
    assert not any(f"Song {i}" in songs for i in [*range(1000, 1006), *range(2000, 2005)])
    stats = json.loads(local_path(cfg.path("meta", "stats.json")).read_text())
    assert all(all(map(_finite, s.values())) for s in stats["numeric"].values())


def _finite(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and abs(x) < float("inf"))


@pytest.fixture(scope="module", params=[False, True], ids=["lines", "multiline"])
def crlf(spark, request, tmp_path_factory):
    """The clean head and the odd numbers with CRLF line endings, read in both CSV modes."""
    cfg = make_cfg(tmp_path_factory.mktemp("crlf"), *SMALL, f"preprocess.multiline={request.param}")
    path = Path(cfg.input)
    path.parent.mkdir(parents=True)
    path.write_bytes(good_text("\r\n").encode())
    assert b"\r\n" in path.read_bytes()
    preprocess(spark, cfg)
    return cfg


def test_crlf_gives_the_same_clean_rows_as_lf(spark, hostile, crlf):
    """Same songs/, features/, vocabularies and statistics as the LF rows of the hostile run."""
    lf, _ = hostile
    counts = read_counts(crlf)
    assert counts["clean"] == read_counts(lf)["clean"] and counts["read"] == HEAD_ROWS + len(NUMBERS)
    assert sorted(r.detail for r in spark.read.parquet(crlf.path("rejects")).collect()) == sorted(NUMBER_DETAILS)
    assert tables_without_source(spark, crlf) == tables_without_source(spark, lf)
    for name in ("vocab.json", "stats.json"):
        assert local_path(crlf.path("meta", name)).read_text() == local_path(lf.path("meta", name)).read_text()


def test_latin1_decodes_when_configured(spark, tmp_path):
    """Latin-1 bytes, an error when read as UTF-8 (BAD_FILES), decode with preprocess.encoding set."""
    rows = [clean_row(i) for i in range(40)]
    rows[0][COL("Artist(s)")] = "Beyoncé"
    rows[1][COL("song")] = "Café del Mar"
    cfg = make_cfg(tmp_path, *SMALL, "preprocess.encoding=ISO-8859-1")
    path = Path(cfg.input)
    path.parent.mkdir(parents=True)
    path.write_bytes(csv_text(rows).encode("latin-1"))
    result = preprocess(spark, cfg)
    assert (result["read"], result["clean"], result["rejected"]) == (40, 40, 0)
    songs = spark.read.parquet(cfg.path("songs"))
    got = {r.title: (r.artist, r.song_id) for r in songs.where(F.col("title").isin("Song 0", "Café del Mar")).collect()}
    expected = spark.createDataFrame([("Beyoncé", "Song 0"), ("Artist 1", "Café del Mar")], "a string, t string")
    ids = {r.t: (r.a, r.id) for r in expected.select("a", "t", parse.song_id_col("a", "t").alias("id")).collect()}
    assert got == ids  # decoded, with the ids of the UTF-8 spellings


def _random_bytes(n: int) -> bytes:
    return random.Random(6).randbytes(n)


BAD_FILES = [
    ("missing", None, "does not exist"),
    ("empty", b"", "is empty"),
    ("blank", b"\n \r\n\n", "is empty"),
    ("header_only", (",".join(schema.RAW_COLUMNS) + "\n").encode(), "has a header but no rows"),
    ("header_only_crlf", (",".join(schema.RAW_COLUMNS) + "\r\n\r\n").encode(), "has a header but no rows"),
    (
        "semicolons",
        (";".join(schema.RAW_COLUMNS) + "\n" + ";".join(clean_row(0)) + "\n").encode(),
        re.escape("header does not match the 39 expected columns; missing ['Artist(s)', 'song',"),
    ),
    (
        "reordered",
        csv_text([clean_row(0)]).replace("Artist(s),song", "song,Artist(s)", 1).encode(),
        re.escape("header has the expected columns in another order (first: 'song')"),
    ),
    ("random_bytes", _random_bytes(5000), re.escape("is not a text file (it holds NUL bytes)")),
    ("gzip_named_csv", gzip.compress(csv_text([clean_row(0)]).encode()), re.escape("is not a text file")),
    ("utf16", csv_text([clean_row(0)]).encode("utf-16"), re.escape("is not a text file")),
    (
        "latin1",
        csv_text([with_cells(0, **{"Artist(s)": "Beyoncé"})]).encode("latin-1"),
        re.escape("is not UTF-8 text (undecodable byte at offset ")
        + r"\d+\); set preprocess.encoding if it is text in another encoding",
    ),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_fail_naming_file_and_problem(spark, hostile, tmp_path, name, content, message):
    """Errors before any work: the message names the file, root keeps the previous run's outputs."""
    previous, _ = hostile
    path = tmp_path / f"{name}.csv"
    if content is not None:
        path.write_bytes(content)
    before = snapshot(previous)
    with pytest.raises(InputError, match=f"{re.escape(path.name)}.*{message}"):
        preprocess(spark, dataclasses.replace(previous, input=str(path)))
    assert snapshot(previous) == before
    staging = local_path(previous.path("_staging"))
    assert not staging.exists() or not any(staging.iterdir())


def test_start_up_check_passes_compressed_csv_and_a_nul_in_a_row(spark, tmp_path):
    """A ``.csv.gz`` is decompressed by its name; a NUL in an early data row is that row's reject, not binary."""
    path = tmp_path / "songs.csv.gz"
    path.write_bytes(gzip.compress(csv_text([clean_row(i) for i in range(5)]).encode()))
    check_input_file(spark, path.as_uri(), "UTF-8")
    path = tmp_path / "nul.csv"
    path.write_bytes(csv_text([clean_row(0), with_cells(1, song="Song\x00 1")]).encode())
    check_input_file(spark, path.as_uri(), "UTF-8")


def test_more_ranks_than_row_groups_fails_before_training(spark, hostile):
    from songrec.train import run_training

    cfg, _ = hostile
    groups = json.loads(local_path(cfg.path("meta", "features.json")).read_text())["row_groups"]
    ranks = groups + 1
    wide = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_processes=ranks))
    message = rf"has {groups} row group\(s\) but training uses {ranks} ranks, which need at least {ranks}"
    with pytest.raises(InputError, match=message):
        run_training(spark, wide)
    assert not local_path(cfg.path("model")).exists() and not local_path(cfg.path("_checkpoints")).exists()
