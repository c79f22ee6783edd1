"""The hidden structure of the stand-in dataset and the identity of every row.

A :class:`Plan` is built once on the driver from the seed and the row count: styles (audio-feature
profile, genre and emotion mix, key and explicit habits, lyric vocabulary), clusters of songs inside
each style (the "songs like this" neighbourhoods), and the artist pools. It is small (kilobytes per
thousand clusters) and is broadcast to the tasks.

A row's *identity* (style, cluster, artist, title, which dirt it carries) is a pure function of
``(seed, row index)`` through a counter-based hash, so that any task can name any other row: that is
how "Similar Song n" points at a real row of the same cluster without a shuffle. Clusters are
contiguous ranges of a pseudo-random permutation of the row indices, so a cluster's members are
spread over the whole file.
"""

import math
from dataclasses import dataclass

import numpy as np

from songrec.generate_text import (
    COMMON_WORDS,
    CONTENT_WORDS,
    GENRES,
    artist_name_capacity,
    pseudo_words,
    title_words,
    token_table,
)

BLOCK_ROWS = 256  # rows per generation block; part of the file's definition (changing it changes the bytes)
SIMILAR_TRIES = 12  # cluster members drawn per row to find three valid, distinct similar songs

# Audio features of a style profile: (name, low mean, high mean, song spread, clip low, clip high).
FEATURES: list[tuple[str, float, float, float, float, float]] = [
    ("popularity", 25, 55, 15, 0, 100),
    ("energy", 30, 85, 14, 0, 100),
    ("danceability", 35, 80, 12, 0, 100),
    ("positiveness", 20, 75, 16, 0, 100),
    ("speechiness", 3, 25, 6, 0, 100),
    ("liveness", 8, 22, 8, 0, 100),
    ("acousticness", 3, 70, 15, 0, 100),
    ("instrumentalness", 0, 25, 8, 0, 100),
    ("tempo", 80, 150, 18, 30, 200),
    ("loudness", -12, -4, 2.0, -40, 2),
    ("length", 170, 260, 40, 30, 900),
]
F = {name: i for i, (name, *_) in enumerate(FEATURES)}
# Style means spread over this fraction of each feature's range, cluster offsets this many song spreads:
# raw audio features alone separate styles only partly, and a cluster's songs sit close together.
_STYLE_SPREAD = 0.6
_CLUSTER_SPREAD = 0.8

# Hash streams: one per independent decision about a row (or an artist / an album).
(S_ARTIST_MODE, S_ARTIST_PICK, S_CROSS_STYLE, S_MULTI, S_MULTI2, S_CO1, S_CO2, S_TITLE_P, S_TITLE_W1, S_TITLE_W2,
 S_TITLE_W3, S_TITLE_NL, S_SCRIPT, S_DUP, S_DUP_SRC, S_REREL, S_REREL_SRC, S_NULL, S_NULL_COL, S_JUNK, S_BADNUM,
 S_BADDATE, S_SHORT, S_LONG, S_QNL, S_QUOTED, S_ARTIST_NL, S_NALB, S_ALBUM, S_SIM) = range(1, 31)  # fmt: skip

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def hash64(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """A 64-bit hash of ``(seed, stream, id)`` for every id: the generator's counter-based randomness."""
    key = _mix(np.array([(seed * 1_000_003 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _mix((np.asarray(ids).astype(np.uint64) * _GOLDEN) ^ key)


def uniform(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per id, fixed by ``(seed, stream, id)``."""
    return (hash64(seed, ids, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class Plan:
    """Everything a task needs to generate any block of rows (see the module docstring)."""

    seed: int
    rows: int
    styles: int
    rates: dict[str, float]
    perm_a: int
    perm_a_inv: int
    perm_b: int
    cluster_end: np.ndarray  # exclusive end of each cluster in permuted index space
    cluster_style: np.ndarray
    cluster_rank: np.ndarray  # position of the cluster among its style's clusters
    cluster_offset: np.ndarray  # (clusters, features): the neighbourhood's shift from the style mean
    cluster_topic: np.ndarray  # (clusters, 8): word ids the cluster's lyrics favour
    cluster_genre: np.ndarray  # the cluster's favourite genre token
    cluster_emotion: np.ndarray
    cluster_year: np.ndarray
    style_clusters: np.ndarray  # clusters per style
    style_mean: np.ndarray  # (styles, features)
    style_sd: np.ndarray
    style_key_cdf: np.ndarray  # (styles, 12)
    style_major: np.ndarray
    style_explicit: np.ndarray
    style_hiphop: np.ndarray  # probability that a song of the style carries the "hip hop" token
    style_genres: np.ndarray  # (styles, 5) genre token ids, most typical first
    style_genre_cdf: np.ndarray  # (styles, 5)
    genre_cdf: np.ndarray  # global genre popularity (the noise in every song's genre list)
    style_emotion_cdf: np.ndarray  # (styles, 6)
    style_year: np.ndarray
    style_ts_cdf: np.ndarray  # (styles, 3): 4/4, 3/4, 5/4
    style_vocab: np.ndarray  # (styles, vocab) word ids
    artist_start: np.ndarray  # (styles + 1,): style s owns artists [start[s], start[s+1])
    artist_mult: int  # artist id -> name code: (id * artist_mult) % name_cap, a bijection
    name_cap: int
    tokens: np.ndarray  # lyric words (common, content, invented) in three spellings (token_table)
    name_words: list[str]
    common_cdf: np.ndarray  # Zipf weights of the common words (ids 0..n_common)

    @property
    def n_artists(self) -> int:
        """Artists in all styles."""
        return int(self.artist_start[-1])

    def cluster_start(self, c: np.ndarray) -> np.ndarray:
        """Start (in permuted index space) of clusters ``c``."""
        return np.where(c > 0, self.cluster_end[np.maximum(c - 1, 0)], 0)

    def to_row(self, k: np.ndarray) -> np.ndarray:
        """Permuted index -> row index."""
        return (self.perm_a * np.asarray(k, dtype=np.int64) + self.perm_b) % self.rows

    def to_k(self, rows: np.ndarray) -> np.ndarray:
        """Row index -> permuted index (the inverse of :meth:`to_row`)."""
        return (self.perm_a_inv * ((np.asarray(rows, dtype=np.int64) - self.perm_b) % self.rows)) % self.rows

    def u(self, ids: np.ndarray, stream: int) -> np.ndarray:
        """Per-id uniforms for ``stream`` (see :func:`uniform`)."""
        return uniform(self.seed, ids, stream)


def _coprime(rng: np.random.Generator, n: int) -> int:
    """A random multiplier in [n/3, 2n/3] coprime with ``n`` (an affine permutation of range(n))."""
    if n <= 3:
        return 1
    while True:
        a = int(rng.integers(max(1, n // 3), max(2, 2 * n // 3)))
        if math.gcd(a, n) == 1:
            return a


def build_plan(seed: int, rows: int, styles: int, artists_per_style: int, rates: dict[str, float]) -> Plan:
    """Draw the hidden structure for ``rows`` songs in ``styles`` styles from ``seed`` (driver side)."""
    rng = np.random.default_rng([seed, 0x51AB])
    n_feat = len(FEATURES)
    lo, hi, sd = (np.array([f[i] for f in FEATURES], dtype=np.float64) for i in (1, 2, 3))

    # Clusters of ~30 songs; each belongs to one style, styles of uneven size.
    style_weight = rng.gamma(3.0, size=styles)
    style_weight /= style_weight.sum()
    sizes = 6 + rng.poisson(26, size=rows // 6 + 2)
    ends = np.cumsum(sizes)
    n_clusters = int(np.searchsorted(ends, rows) + 1)
    cluster_end = np.minimum(ends[:n_clusters], rows).astype(np.int64)
    cluster_style = rng.choice(styles, size=n_clusters, p=style_weight).astype(np.int32)
    cluster_rank = np.zeros(n_clusters, dtype=np.int32)
    style_clusters = np.zeros(styles, dtype=np.int32)
    for c, s in enumerate(cluster_style):
        cluster_rank[c] = style_clusters[s]
        style_clusters[s] += 1
    style_rows = np.bincount(cluster_style, weights=np.diff(cluster_end, prepend=0), minlength=styles)

    # Style profiles overlap on purpose: means are spread about as widely as songs are within a style.
    style_mean = (lo + hi) / 2 + _STYLE_SPREAD * (hi - lo) * (rng.random((styles, n_feat)) - 0.5)
    hip = np.zeros(styles, dtype=bool)
    for s in rng.permutation(styles):  # hip hop styles until they hold ~60% of the rows
        if style_rows[hip].sum() >= 0.6 * rows:
            break
        hip[s] = True
    style_mean[hip, F["speechiness"]] += 10
    style_mean[hip, F["instrumentalness"]] *= 0.3
    style_sd = sd * rng.uniform(0.8, 1.2, size=(styles, n_feat))
    cluster_offset = (_CLUSTER_SPREAD * sd * rng.standard_normal((n_clusters, n_feat))).astype(np.float32)

    # Genres: a few home tokens per style, drawn by a global popularity so that popular tokens are
    # shared by many styles (hip hop styles sometimes use the "hip-hop" spelling).
    popularity = np.zeros(len(GENRES))
    popularity[2:] = 1.0 / rng.permutation(np.arange(1, len(GENRES) - 1)) ** 0.8
    popularity /= popularity.sum()
    style_genres = np.stack([rng.choice(len(GENRES), size=5, replace=False, p=popularity) for _ in range(styles)])
    spelled = hip & (rng.random(styles) < 0.3)
    spelled[np.argmax(hip)] = True  # at least one style spells it "hip-hop", like the published file
    style_genres[spelled, 0] = 1
    genre_w = rng.dirichlet(np.full(5, 1.2), size=styles)
    cluster_genre = style_genres[cluster_style, rng.integers(0, 5, size=n_clusters)]

    # Lyric vocabulary: per style 80 real and 80 invented words from shared pools (real words overlap
    # between many styles, invented ones between few). Word ids count from the common words.
    invented = pseudo_words(max(400, 8 * styles), rng)
    n_common, n_real = len(COMMON_WORDS), len(CONTENT_WORDS)
    style_vocab = n_common + np.stack([
        np.concatenate([rng.choice(n_real, 80, replace=False), n_real + rng.choice(len(invented), 80, replace=False)])
        for _ in range(styles)
    ])  # fmt: skip
    cluster_topic = style_vocab[cluster_style[:, None], rng.integers(0, 160, size=(n_clusters, 8))]
    common_w = 1.0 / np.arange(1, n_common + 1) ** 0.9

    total_artists = artists_per_style * styles if artists_per_style > 0 else max(styles, round(rows / 4.3))
    per_style = np.maximum(1, np.round(total_artists * style_rows / max(rows, 1))).astype(np.int64)
    name_words = title_words()
    cap = max(artist_name_capacity(len(name_words)), int(per_style.sum()))
    perm_a = _coprime(rng, rows)
    ts = np.stack([np.ones(styles), rng.uniform(0, 0.06, styles), rng.uniform(0, 0.02, styles)], axis=1)
    return Plan(
        seed=seed,
        rows=rows,
        styles=styles,
        rates=dict(rates),
        perm_a=perm_a,
        perm_a_inv=pow(perm_a, -1, rows) if rows > 1 else 0,
        perm_b=int(rng.integers(0, rows)),
        cluster_end=cluster_end,
        cluster_style=cluster_style,
        cluster_rank=cluster_rank,
        cluster_offset=cluster_offset,
        cluster_topic=cluster_topic.astype(np.int32),
        cluster_genre=cluster_genre.astype(np.int32),
        cluster_emotion=rng.integers(0, 6, size=n_clusters).astype(np.int8),
        cluster_year=rng.normal(0, 3, size=n_clusters).astype(np.float32),
        style_clusters=style_clusters,
        style_mean=style_mean,
        style_sd=style_sd,
        style_key_cdf=np.cumsum(rng.dirichlet(np.full(12, 0.6), size=styles), axis=1),
        style_major=rng.uniform(0.3, 0.8, size=styles),
        style_explicit=np.where(hip, rng.uniform(0.3, 0.7, size=styles), rng.uniform(0.02, 0.2, size=styles)),
        style_hiphop=np.where(hip, 0.95, 0.06),
        style_genres=style_genres.astype(np.int32),
        genre_cdf=np.cumsum(popularity),
        style_genre_cdf=np.cumsum(genre_w, axis=1),
        style_emotion_cdf=np.cumsum(rng.dirichlet(np.full(6, 0.8), size=styles), axis=1),
        style_year=rng.uniform(1975, 2018, size=styles),
        style_ts_cdf=np.cumsum(ts / ts.sum(axis=1, keepdims=True), axis=1),
        style_vocab=style_vocab.astype(np.int32),
        artist_start=np.concatenate([[0], np.cumsum(per_style)]).astype(np.int64),
        artist_mult=_coprime(rng, cap),
        name_cap=cap,
        tokens=token_table(COMMON_WORDS + CONTENT_WORDS + invented),
        name_words=name_words,
        common_cdf=np.cumsum(common_w) / common_w.sum(),
    )
