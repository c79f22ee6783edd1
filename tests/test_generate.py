"""The stand-in dataset generator: schema and formats, determinism, output shapes, dirt, hidden structure."""

import collections
import csv
import datetime as dt
import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_cfg

from songrec.config import Config, local_path
from songrec.generate import generate, truth_uri
from songrec.generate_text import GENRES, JUNK_EMOTIONS
from songrec.schema import EMOTIONS, RAW_COLUMNS

COL = {name: i for i, name in enumerate(RAW_COLUMNS)}
NO_DIRT = [f"generate.dirt.{k}=0" for k in (
    "null_cell", "junk_emotion", "bad_number", "bad_date", "short_row", "long_row", "duplicate", "quoted_newline",
)]  # fmt: skip
HIGH_DIRT = [
    "generate.dirt.null_cell=0.02", "generate.dirt.junk_emotion=0.03", "generate.dirt.bad_number=0.02",
    "generate.dirt.bad_date=0.02", "generate.dirt.short_row=0.01", "generate.dirt.long_row=0.01",
    "generate.dirt.duplicate=0.03", "generate.dirt.quoted_newline=0.01", "generate.dirt.non_latin=0.05",
    "generate.rerelease=0.03",
]  # fmt: skip
DATE = re.compile(r"^(\d{1,2})(st|nd|rd|th) ([A-Z][a-z]+) (\d{4})$")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
FORMATS = {
    "Length": re.compile(r"^\d{2}:[0-5]\d$"),
    "Key": re.compile(r"^(C|C#|D|D#|E|F|F#|G|G#|A|A#|B) (Maj|min)$"),
    "Loudness (db)": re.compile(r"^-?\d{1,2}\.\d{2}db$"),
    "Time signature": re.compile(r"^[345]/4$"),
    "Explicit": re.compile(r"^(Yes|No)$"),
    "text": re.compile(r"^\[Verse 1\] \S.*  \[Chorus\] \S.*[^ ]$"),
}


def _run(spark, base: Path, *overrides: str) -> tuple[Config, dict]:
    cfg = make_cfg(base, *overrides)
    return cfg, generate(spark, cfg)


def _records(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _truth(cfg: Config) -> dict[tuple[str, str], int]:
    rows = _records(local_path(truth_uri(cfg)))
    assert rows[0] == ["artist", "title", "style"]
    return {(a, t): int(s) for a, t, s in rows[1:]}


@pytest.fixture(scope="module")
def clean(spark, tmp_path_factory) -> tuple[Config, dict]:
    """2000 rows without dirt: every row must meet every format."""
    return _run(spark, tmp_path_factory.mktemp("clean"), "generate.rows=2000", *NO_DIRT)


@pytest.fixture(scope="module")
def dirty(spark, tmp_path_factory) -> tuple[Config, dict]:
    """2000 rows with high dirt rates (including quoted newlines and re-releases)."""
    return _run(spark, tmp_path_factory.mktemp("dirty"), "generate.rows=2000", *HIGH_DIRT)


@pytest.fixture(scope="module")
def small(spark, tmp_path_factory) -> tuple[Config, dict]:
    """1000 rows, default dirt, two partitions: the reference for determinism and parts mode."""
    return _run(spark, tmp_path_factory.mktemp("small"), "generate.rows=1000", "generate.partitions=2")


def test_header_and_every_format(clean):
    cfg, summary = clean
    records = _records(local_path(cfg.input_uri))
    assert records[0] == RAW_COLUMNS
    rows = records[1:]
    assert len(rows) == summary["rows"] == 2000
    assert all(len(r) == 39 for r in rows)
    for r in rows:
        for name, pattern in FORMATS.items():
            assert pattern.match(r[COL[name]]), (name, r[COL[name]])
        assert r[COL["Artist(s)"]] and all(r[COL["Artist(s)"]].split(",")), r[0]
        assert r[COL["song"]] and r[COL["Album"]]
        assert r[COL["emotion"]] in EMOTIONS
        assert set(r[COL["Genre"]].split(",")) <= set(GENRES)
        day, suffix, month, year = DATE.match(r[COL["Release Date"]]).groups()
        assert suffix == ("th" if 11 <= int(day) <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(int(day) % 10, "th"))
        assert 1960 <= dt.date(int(year), MONTHS.index(month) + 1, int(day)).year <= 2024
        assert 30 <= int(r[COL["Tempo"]]) <= 200
        percent = [int(r[COL[c]]) for c in RAW_COLUMNS[13:21]]
        assert all(0 <= v <= 100 for v in percent)
        flags = [r[c] for c in range(21, 30)]
        assert set(flags) <= {"0", "1"}
        energy, dance = int(r[COL["Energy"]]), int(r[COL["Danceability"]])
        assert flags[0] == str(int(dance > 70 and energy > 60))  # Good for Party, derived
        scores = [float(r[COL[f"Similarity Score {n}"]]) for n in (1, 2, 3)]
        assert 0.95 <= scores[2] < scores[1] < scores[0] <= 0.999
    signatures = collections.Counter(r[COL["Time signature"]] for r in rows)
    assert signatures.most_common(1)[0][0] == "4/4" and signatures["4/4"] > 0.9 * len(rows)
    multi = np.mean(["," in r[0] for r in rows])
    assert 0.08 < multi < 0.25
    assert "\n" not in "".join(r[COL["text"]] for r in rows)


def test_size_genres_and_lyrics_look_like_the_published_file(clean):
    cfg, summary = clean
    assert 1500 <= summary["bytes"] / summary["rows"] <= 2500
    rows = _records(local_path(cfg.input_uri))[1:]
    tokens = collections.Counter(t for r in rows for t in r[COL["Genre"]].split(","))
    assert tokens.most_common(1)[0][0] == "hip hop"
    assert sum("hip hop" in r[COL["Genre"]].split(",") for r in rows) > len(rows) / 2
    assert tokens["hip-hop"] > 0
    raw = local_path(cfg.input_uri).read_text(encoding="utf-8")
    assert '""' in raw  # RFC 4180 doubled quotes inside quoted lyrics
    assert any("," in r[COL["text"]] and '"' in r[COL["text"]] for r in rows)


def test_similar_songs_are_real_rows_of_the_same_style(clean):
    cfg, _ = clean
    truth = _truth(cfg)
    rows = _records(local_path(cfg.input_uri))[1:]
    assert len(truth) >= 0.95 * len(rows)
    for r in rows:
        own = truth[(r[0].split(",")[0], r[1])]
        for n in (1, 2, 3):
            key = (r[COL[f"Similar Artist {n}"]], r[COL[f"Similar Song {n}"]])
            assert truth[key] == own, (r[0], r[1], key)
        assert len({(r[30], r[31]), (r[33], r[34]), (r[36], r[37])}) == 3


def _knn_same_style(features: np.ndarray, style: np.ndarray, k: int = 10) -> float:
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nn = np.argsort(-sims, axis=1)[:, :k]
    return float((style[nn] == style[:, None]).mean())


def test_hidden_styles_need_more_than_raw_audio_features(clean):
    """Raw audio features separate styles only partly; genres and lyrics add what a model can learn."""
    cfg, _ = clean
    truth = _truth(cfg)
    rows = [r for r in _records(local_path(cfg.input_uri))[1:] if (r[0].split(",")[0], r[1]) in truth]
    style = np.array([truth[(r[0].split(",")[0], r[1])] for r in rows])
    audio = np.array([[float(r[c]) for c in range(13, 21)] + [float(r[COL["Tempo"]])] for r in rows])
    audio = (audio - audio.mean(0)) / audio.std(0)
    genre = np.array([[g in r[COL["Genre"]].split(",") for g in GENRES] for r in rows], dtype=float)
    words = np.zeros((len(rows), 512))
    for i, r in enumerate(rows):
        for w in re.findall(r"[a-z]+", r[COL["text"]].lower()):
            words[i, int(hashlib.md5(w.encode()).hexdigest()[:6], 16) % 512] += 1
    words = np.log1p(words)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    chance = float(((np.bincount(style) / len(style)) ** 2).sum())
    raw = _knn_same_style(audio, style)
    combined = _knn_same_style(np.hstack([audio / 3, genre / 2, 1.5 * words]), style)
    assert chance * 1.5 < raw < 0.6
    assert combined > raw + 0.2


def test_same_seed_is_byte_identical_whatever_the_partitions(spark, small, tmp_path):
    cfg, _ = small
    again, _ = _run(spark, tmp_path / "again", "generate.rows=1000", "generate.partitions=3")
    other, _ = _run(spark, tmp_path / "other", "generate.rows=1000", "generate.partitions=2", "generate.seed=7")
    first = local_path(cfg.input_uri).read_bytes()
    assert local_path(again.input_uri).read_bytes() == first
    assert local_path(truth_uri(again)).read_bytes() == local_path(truth_uri(cfg)).read_bytes()
    assert local_path(other.input_uri).read_bytes() != first


def test_parts_mode_writes_a_folder_of_headed_parts_with_the_same_rows(spark, small, tmp_path):
    cfg, _ = small
    parts, summary = _run(spark, tmp_path, "generate.rows=1000", "generate.parts=3", "generate.partitions=2")
    folder = local_path(parts.input_uri)
    assert folder.is_dir()
    files = sorted(folder.glob("part-*.csv"))
    assert len(files) == 3
    header = (",".join(RAW_COLUMNS) + "\n").encode()
    bodies = []
    for f in files:
        data = f.read_bytes()
        assert data.startswith(header)
        bodies.append(data[len(header) :])
    assert b"".join(bodies) == local_path(cfg.input_uri).read_bytes()[len(header) :]
    assert truth_uri(parts).endswith("/_truth.csv") and local_path(truth_uri(parts)).is_file()
    assert summary["bytes"] == sum(f.stat().st_size for f in files)
    # Spark skips the _truth.csv sidecar when it reads the folder.
    df = spark.read.option("header", True).option("quote", '"').option("escape", '"').csv(parts.input_uri)
    assert df.count() == 1000


def test_dirt_is_planted_at_the_configured_rates(dirty):
    cfg, summary = dirty
    dirt, n = summary["dirt"], summary["rows"]
    rates = {"null_cell": 0.02, "junk_emotion": 0.03, "bad_number": 0.02, "bad_date": 0.02, "short_row": 0.01,
             "long_row": 0.01, "duplicate": 0.03, "quoted_newline": 0.01}  # fmt: skip
    for kind, rate in rates.items():
        assert 0.4 * rate * n <= dirt[kind] <= 1.8 * rate * n, (kind, dirt[kind])
    assert 0.2 * 0.05 * n <= dirt["non_latin"] <= 2 * 0.05 * n
    assert summary["rereleases"] > 0.01 * n

    records = _records(local_path(cfg.input_uri))[1:]
    lines = [tuple(r) for r in records]
    assert len(lines) - len(set(lines)) >= dirt["duplicate"]  # exact duplicate rows
    assert sum(any("\n" in field for field in r) for r in records) >= dirt["quoted_newline"]
    assert dirt["short_row"] <= sum(len(r) < 39 for r in records) <= dirt["short_row"] + dirt["duplicate"]
    assert dirt["long_row"] <= sum(len(r) > 39 for r in records) <= dirt["long_row"] + dirt["duplicate"]
    junk = sum(len(r) > 4 and r[COL["emotion"]] in JUNK_EMOTIONS for r in records)
    assert dirt["junk_emotion"] <= junk <= dirt["junk_emotion"] + dirt["duplicate"]
    assert sum(len(r) > 6 and r[COL["Album"]] == "" for r in records) > 0
    assert any(re.search(r"[\u0400-\u04ff\u0370-\u03ff\u0600-\u06ff\u3040-\u9fff\uac00-\ud7af]", r[0]) for r in records)
    assert any(r[0].count('"') >= 2 for r in records) or any(r[COL["song"]].startswith('"') for r in records)
    # Re-releases: the same artist and title on another album.
    albums = collections.defaultdict(set)
    for r in records:
        if len(r) == 39:
            albums[(r[0].split(",")[0], r[1])].add(r[COL["Album"]])
    assert sum(len(a) > 1 for a in albums.values()) > 0


def test_truth_uri_follows_the_input_shape(tmp_path):
    file_cfg = make_cfg(tmp_path)
    assert truth_uri(file_cfg) == (tmp_path / "raw" / "_spotify_dataset.truth.csv").as_uri()
    folder = tmp_path / "folder"
    folder.mkdir()
    assert truth_uri(make_cfg(tmp_path, f"input={folder}")) == f"{folder.as_uri()}/_truth.csv"
    assert truth_uri(make_cfg(tmp_path, f"input={tmp_path / 'new'}", "generate.parts=4")).endswith("new/_truth.csv")


def test_job_main_writes_the_file(spark, tmp_path):
    spec = importlib.util.spec_from_file_location("generate_job", ROOT / "jobs" / "generate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "job.csv"
    args = ["--conf-file", str(ROOT / "conf" / "test.yaml"), "--set", f"input={out}", "--set", f"root={tmp_path}",
            "--set", "generate.rows=300"]  # fmt: skip
    assert job.main(args) == 0
    assert len(_records(out)) == 301
    assert (tmp_path / "_job.truth.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or work files left


def test_generated_fixture(generated):
    records = _records(local_path(generated.input_uri))
    assert records[0] == RAW_COLUMNS and len(records) == 1 + generated.generate.rows
    assert local_path(truth_uri(generated)).is_file()
