"""Answer "songs like this one" from a finished run, without starting Spark.

Lookups read ``songs/`` and one bucket of ``neighbors/`` with DuckDB; ``--like`` profiles are
encoded with the saved encoder and searched exactly over ``embeddings/`` (numpy).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from songrec.errors import InputError, SongrecError

log = logging.getLogger(__name__)

OUT_COLUMNS = ["rank", "artist", "title", "genre", "emotion", "score"]

# Features a --like profile may set, with their valid range (raw units, as in songs/).
LIKE_RANGES: dict[str, tuple[float, float]] = {
    "tempo": (30, 250),
    "loudness_db": (-60, 5),
    "length_s": (10, 3600),
    "release_year": (1900, 2100),
    "time_signature": (1, 12),
    "explicit": (0, 1),
    "popularity": (0, 100),
    "energy": (0, 100),
    "danceability": (0, 100),
    "positiveness": (0, 100),
    "speechiness": (0, 100),
    "liveness": (0, 100),
    "acousticness": (0, 100),
    "instrumentalness": (0, 100),
}
LIKE_ALIASES = {"loudness": "loudness_db", "length": "length_s", "year": "release_year", "valence": "positiveness"}


class NotFound(SongrecError):
    """No song matches; ``suggestions`` holds close titles."""

    def __init__(self, message: str, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.suggestions = suggestions or []


class Ambiguous(SongrecError):
    """Several songs match; ``matches`` lists (song_id, artist, title)."""

    def __init__(self, message: str, matches: list[tuple[int, str, str]]) -> None:
        super().__init__(message)
        self.matches = matches


class UsageError(SongrecError):
    """A bad request (unknown feature, out-of-range value)."""


@dataclass
class Run:
    """Locations of one run's tables, each resolved once: one lookup reads one version of every table,
    even when a job commits a new one meanwhile (the old version stays for ``io.KEEP_SECONDS``)."""

    root: Path
    _tables: dict[str, Path] = field(default_factory=dict, init=False, repr=False, compare=False)
    _files: dict[tuple[str, str], list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def table(self, name: str) -> Path:
        """The table's committed version folder (its link resolved on the first call, see songrec.io)."""
        if name not in self._tables:
            path = self.root / name
            if not path.exists():
                raise InputError(f"{path} does not exist: is {self.root} a finished songrec run?")
            self._tables[name] = path.resolve()
        return self._tables[name]

    def files(self, name: str, part: str = "") -> list[str]:
        """The Parquet files of a table (or of one of its partitions), for ``read_parquet(?)``: passed as a
        list parameter, a path with quotes or glob characters (``'``, ``[``, ``*``) is taken as it is."""
        if (name, part) not in self._files:
            folder = self.table(name) / part if part else self.table(name)
            found = sorted(str(p) for p in folder.rglob("*.parquet") if not p.name.startswith(("_", ".")))
            if not found:
                raise InputError(f"{folder} holds no Parquet files: is {self.root} a finished songrec run?")
            self._files[name, part] = found
        return list(self._files[name, part])


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    return con


def resolve_song(run: Run, title: str | None, artist: str | None = None, song_id: int | None = None) -> int:
    """Find one song's id by ``song_id`` or by title (and artist), case-insensitively."""
    con = _connect()
    songs = run.files("songs")
    if song_id is not None:
        row = con.execute("SELECT song_id FROM read_parquet(?) WHERE song_id = ?", [songs, song_id]).fetchone()
        if row is None:
            raise NotFound(f"no song with id {song_id}")
        return int(row[0])
    query = "SELECT song_id, artist, title FROM read_parquet(?) WHERE lower(title) = lower(?)"
    params: list = [songs, title]
    if artist:
        query += " AND (lower(artist) = lower(?) OR list_contains(list_transform(artists, a -> lower(a)), lower(?)))"
        params += [artist, artist]
    rows = con.execute(query + " ORDER BY artist, song_id", params).fetchall()
    if len(rows) == 1:
        return int(rows[0][0])
    if len(rows) > 1:
        raise Ambiguous(f"{len(rows)} songs are titled {title!r}: add --artist NAME or --id SONG_ID", rows)
    close = con.execute(
        "SELECT DISTINCT title, jaro_winkler_similarity(lower(title), lower(?)) AS s FROM read_parquet(?) "
        "ORDER BY s DESC, title LIMIT 5",
        [title, songs],
    ).fetchall()
    who = f" by {artist!r}" if artist else ""
    raise NotFound(f"no song titled {title!r}{who}", [t for t, _ in close])


def neighbors_of(run: Run, song_id: int, k: int) -> list[dict]:
    """The song's top-``k`` neighbours with catalogue columns, reading one bucket of neighbors/."""
    import json

    con = _connect()
    table = run.table("neighbors")
    try:
        manifest = json.loads((table / "_manifest.json").read_text())
        buckets = int(manifest["buckets"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{table / '_manifest.json'} is missing or unreadable ({exc}): rerun the knn job") from None
    bucket = song_id % buckets  # Python's % is pmod for a positive modulus
    rows = con.execute(
        """
        SELECT n.rank, s.artist, s.title, s.genre, s.emotion, n.score, n.neighbor_id
        FROM (SELECT * FROM read_parquet(?) WHERE song_id = ? AND rank <= ?) n
        JOIN read_parquet(?) s ON s.song_id = n.neighbor_id
        ORDER BY n.rank
        """,
        [run.files("neighbors", f"bucket={bucket}"), song_id, k, run.files("songs")],
    ).fetchall()
    return [dict(zip([*OUT_COLUMNS, "song_id"], r, strict=True)) for r in rows]


def song_row(run: Run, song_id: int) -> dict:
    """artist, title, genre, emotion of one song."""
    con = _connect()
    row = con.execute(
        "SELECT artist, title, genre, emotion FROM read_parquet(?) WHERE song_id = ?", [run.files("songs"), song_id]
    ).fetchone()
    return dict(zip(["artist", "title", "genre", "emotion"], row, strict=True))


def parse_like(spec: str) -> dict[str, str]:
    """Parse ``"energy=80,genre=pop"`` into a dict, naming bad parts."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            raise UsageError(f"--like expects name=value pairs separated by commas, got {part!r}")
        name, value = (s.strip() for s in part.split("=", 1))
        out[LIKE_ALIASES.get(name.lower(), name.lower())] = value
    if not out:
        raise UsageError("--like needs at least one name=value pair")
    return out


def like_profile(run: Run, spec: str) -> dict[str, np.ndarray]:
    """Build a one-row features batch from a ``--like`` spec; unset features take catalogue means."""
    import json

    from songrec.schema import NUMERIC_FEATURES

    meta = run.table("meta")
    vocab = json.loads((meta / "vocab.json").read_text())
    stats = json.loads((meta / "stats.json").read_text())["numeric"]
    feats = json.loads((meta / "features.json").read_text())
    wanted = parse_like(spec)
    valid = sorted([*LIKE_RANGES, "genre", "emotion"])
    unknown = sorted(set(wanted) - set(valid))
    if unknown:
        raise UsageError(f"unknown feature(s) {unknown}; valid: {', '.join(valid)}")
    numeric = np.zeros(len(NUMERIC_FEATURES), dtype=np.float32)  # standardised: 0 = catalogue mean
    for name, raw in wanted.items():
        if name in ("genre", "emotion"):
            continue
        lo, hi = LIKE_RANGES[name]
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not a number (valid range {lo:g}..{hi:g})") from None
        if not lo <= value <= hi:
            raise UsageError(f"{name}={raw} is out of range; valid range {lo:g}..{hi:g}")
        st = stats[name]
        if st.get("mean") is not None:  # a column with no value in the catalogue is 0 (its mean) for every song
            numeric[NUMERIC_FEATURES.index(name)] = (value - st["mean"]) / (st.get("std") or 1.0)
    genres = np.zeros(int(feats["genre_dim"]), dtype=np.float32)
    genre_idx = 0
    if "genre" in wanted:
        token = wanted["genre"].lower()
        if token not in vocab["genre"]:
            raise UsageError(f"unknown genre {token!r}; valid genres: {', '.join(sorted(vocab['genre'][1:]))}")
        genre_idx = vocab["genre"].index(token)
        genres[genre_idx] = 1.0
    emotion_idx = 0
    if "emotion" in wanted:
        label = wanted["emotion"].lower()
        if label not in vocab["emotion"]:
            raise UsageError(f"unknown emotion {label!r}; valid: {', '.join(sorted(vocab['emotion'][1:]))}")
        emotion_idx = vocab["emotion"].index(label)
    return {
        "numeric": numeric[None, :],
        "genres": genres[None, :],
        "lyrics": np.zeros((1, int(feats["lyrics_dim"])), dtype=np.float32),
        "artist_idx": np.zeros(1, dtype=np.int64),
        "genre_idx": np.array([genre_idx], dtype=np.int64),
        "emotion_idx": np.array([emotion_idx], dtype=np.int64),
    }


def recommend_like(run: Run, spec: str, k: int) -> list[dict]:
    """Nearest songs to a ``--like`` profile: encode it, exact inner-product search over embeddings/."""
    import pyarrow.parquet as pq

    from songrec.model import encode_batch, load_encoder

    batch = like_profile(run, spec)
    encoder = load_encoder(run.table("model").as_uri())
    query = encode_batch(encoder, batch)[0]
    table = pq.read_table(run.table("embeddings"), columns=["song_id", "vector"])
    ids = table.column("song_id").to_numpy()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(len(ids), -1).astype(np.float32, copy=False)
    scores = vectors @ query
    top = np.lexsort((ids, -scores))[:k]
    con = _connect()
    rows = con.execute(
        "SELECT song_id, artist, title, genre, emotion FROM read_parquet(?) WHERE list_contains(?, song_id)",
        [run.files("songs"), [int(i) for i in ids[top]]],
    ).fetchall()
    meta = {r[0]: r[1:] for r in rows}
    return [
        dict(zip(OUT_COLUMNS + ["song_id"], [rank, *meta[int(ids[i])], float(scores[i]), int(ids[i])], strict=True))
        for rank, i in enumerate(top, start=1)
    ]
