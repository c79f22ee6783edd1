"""Rows of the stand-in dataset: identity and dirt flags by hash, one block of CSV text at a time.

:func:`make_block` turns rows ``[start, end)`` into CSV lines (and truth lines). Decisions that
other rows must be able to see (style, cluster, artist, title, which dirt a row carries) come from
:func:`songrec.generate_plan.uniform`; the rest (audio features, lyrics, album, scores) from a numpy
Generator seeded with ``(seed, block number)``. Blocks are fixed at ``BLOCK_ROWS`` rows, so the bytes
do not depend on how Spark partitions the blocks.
"""

from dataclasses import dataclass

import numpy as np

from songrec.generate_plan import (
    BLOCK_ROWS,
    S_ALBUM,
    S_ARTIST_MODE,
    S_ARTIST_NL,
    S_ARTIST_PICK,
    S_BADDATE,
    S_BADNUM,
    S_CO1,
    S_CO2,
    S_CROSS_STYLE,
    S_DUP,
    S_JUNK,
    S_LONG,
    S_MULTI,
    S_MULTI2,
    S_NALB,
    S_NULL,
    S_NULL_COL,
    S_QNL,
    S_QUOTED,
    S_REREL,
    S_REREL_SRC,
    S_SCRIPT,
    S_SHORT,
    S_SIM,
    S_TITLE_NL,
    S_TITLE_P,
    S_TITLE_W1,
    S_TITLE_W2,
    S_TITLE_W3,
    SIMILAR_TRIES,
    Plan,
    hash64,
)  # fmt: skip
from songrec.generate_text import artist_name, non_latin_name
from songrec.schema import RAW_COLUMNS

DIRT_KINDS = [
    "null_cell", "junk_emotion", "bad_number", "bad_date", "short_row", "long_row", "duplicate", "quoted_newline",
    "non_latin",
]  # fmt: skip
COL = {name: i for i, name in enumerate(RAW_COLUMNS)}
# Which cell an empty-cell row loses: mostly Album, like the published file.
_NULL_COLS = np.array([COL[c] for c in ["Album", "Genre", "emotion", "Key", "Release Date", "text", "Length", "song"]])
_NULL_CDF = np.cumsum([0.7, 0.06, 0.05, 0.05, 0.05, 0.04, 0.03, 0.02])
_MULTI_ARTIST = 0.15
_QUOTED_ARTIST = 0.003
_CROSS_STYLE = 0.10  # share of a style's songs by artists of another style
_WINDOW = 0.5  # share by artists tied to the song's cluster neighbourhood (the rest: style-wide, skewed)


@dataclass
class Flags:
    """Hash-decided facts about rows (see :func:`flags`)."""

    dup: np.ndarray
    rerelease: np.ndarray
    null: np.ndarray
    null_col: np.ndarray
    junk: np.ndarray
    bad_number: np.ndarray
    bad_date: np.ndarray
    short: np.ndarray
    long: np.ndarray
    newline: np.ndarray
    title_nl: np.ndarray

    @property
    def hard(self) -> np.ndarray:
        """Rows that are not a clean catalogue entry of their own (never a similar-song target)."""
        no_title = self.null & (self.null_col == COL["song"])
        return (
            self.dup
            | self.rerelease
            | self.bad_number
            | self.bad_date
            | self.short
            | self.long
            | self.newline
            | no_title
        )


def flags(plan: Plan, rows: np.ndarray) -> Flags:
    """Dirt and re-release decisions of ``rows`` (hash of seed and row index)."""
    r, u = plan.rates, plan.u
    return Flags(
        dup=(u(rows, S_DUP) < r["duplicate"]) & (rows % BLOCK_ROWS != 0),
        rerelease=u(rows, S_REREL) < r["rerelease"],
        null=u(rows, S_NULL) < r["null_cell"],
        null_col=_NULL_COLS[np.minimum(np.searchsorted(_NULL_CDF, u(rows, S_NULL_COL)), len(_NULL_COLS) - 1)],
        junk=u(rows, S_JUNK) < r["junk_emotion"],
        bad_number=u(rows, S_BADNUM) < r["bad_number"],
        bad_date=u(rows, S_BADDATE) < r["bad_date"],
        short=u(rows, S_SHORT) < r["short_row"],
        long=u(rows, S_LONG) < r["long_row"],
        newline=u(rows, S_QNL) < r["quoted_newline"],
        title_nl=u(rows, S_TITLE_NL) < r["non_latin"] / 2,
    )


@dataclass
class Identity:
    """Who a row is: cluster, style, the row its artist and title come from, artists."""

    k: np.ndarray
    cluster: np.ndarray
    style: np.ndarray
    id_row: np.ndarray  # itself, or the row it re-releases
    artist: np.ndarray
    co1: np.ndarray  # -1 = none
    co2: np.ndarray


def identity(plan: Plan, rows: np.ndarray, fl: Flags) -> Identity:
    """Cluster, style and artists of ``rows``; a re-release takes its source row's artist and title."""
    k = plan.to_k(rows)
    cluster = np.searchsorted(plan.cluster_end, k, side="right")
    style = plan.cluster_style[cluster]
    start, size = plan.cluster_start(cluster), plan.cluster_end[cluster] - plan.cluster_start(cluster)
    src_k = start + (plan.u(rows, S_REREL_SRC) * size).astype(np.int64)
    src = plan.to_row(src_k)
    rerelease = fl.rerelease & (src_k != k) & ~flags(plan, src).hard
    id_row = np.where(rerelease, src, rows)

    u = plan.u
    a0, a1 = plan.artist_start[style], plan.artist_start[style + 1]
    n_art = a1 - a0
    mode, pick = u(id_row, S_ARTIST_MODE), u(id_row, S_ARTIST_PICK)
    n_cl = np.maximum(plan.style_clusters[style], 1)
    win = np.maximum(2, np.ceil(2 * n_art / n_cl)).astype(np.int64)
    local_w = (plan.cluster_rank[cluster] * n_art // n_cl + (pick * win).astype(np.int64)) % n_art
    local_p = (n_art * pick**2).astype(np.int64)
    own = a0 + np.where(mode < _CROSS_STYLE + _WINDOW, local_w, local_p)
    other_style = (u(id_row, S_CROSS_STYLE) * plan.styles).astype(np.int64)
    o0, o1 = plan.artist_start[other_style], plan.artist_start[other_style + 1]
    other = o0 + ((o1 - o0) * pick**2).astype(np.int64)
    artist = np.where(mode < _CROSS_STYLE, other, own)

    multi = u(id_row, S_MULTI) < _MULTI_ARTIST
    co1 = a0 + (n_art * u(id_row, S_CO1)).astype(np.int64)
    co2 = a0 + (n_art * u(id_row, S_CO2)).astype(np.int64)
    co1 = np.where(multi & (co1 != artist), co1, -1)
    co2 = np.where(multi & (co1 >= 0) & (u(id_row, S_MULTI2) < 0.2) & (co2 != artist) & (co2 != co1), co2, -1)
    return Identity(k=k, cluster=cluster, style=style, id_row=id_row, artist=artist, co1=co1, co2=co2)


def artist_names(plan: Plan, ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Names of artists ``ids`` and whether each is non-Latin."""
    uniq, back = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    quoted = (plan.u(uniq, S_QUOTED) < _QUOTED_ARTIST).tolist()
    non_latin = plan.u(uniq, S_ARTIST_NL) < plan.rates["non_latin"] / 2
    script = np.where(non_latin, (plan.u(uniq, S_SCRIPT) * 5).astype(np.int64), -1).tolist()
    code = ((uniq * plan.artist_mult) % plan.name_cap).tolist()
    words = plan.name_words
    names = [artist_name(c, words, q, s) for c, q, s in zip(code, quoted, script, strict=True)]
    return [names[b] for b in back.tolist()], non_latin[back]


def titles(plan: Plan, id_rows: np.ndarray, fl: Flags) -> list[str]:
    """Titles of the songs whose identity rows are ``id_rows`` (``fl`` = their flags)."""
    words, n = plan.name_words, len(plan.name_words)
    p = plan.u(id_rows, S_TITLE_P)
    w = [(plan.u(id_rows, s) * n).astype(np.int64).tolist() for s in (S_TITLE_W1, S_TITLE_W2, S_TITLE_W3)]
    script = (plan.u(id_rows, S_SCRIPT) * 5).astype(np.int64)
    out = []
    for i, (pi, nl) in enumerate(zip(p.tolist(), fl.title_nl.tolist(), strict=True)):
        a, b, c = words[w[0][i]], words[w[1][i]], words[w[2][i]]
        if nl:
            out.append(non_latin_name(int(id_rows[i]), int(script[i])))
        elif pi < 0.06:
            out.append(a)
        elif pi < 0.45:
            out.append(f"{a} {b}")
        elif pi < 0.70:
            out.append(f"{a} {b} {c}")
        elif pi < 0.78:
            out.append(f"{a} of the {b}")
        elif pi < 0.85:
            out.append(f"{a} {b} (Remix)")
        elif pi < 0.92:
            out.append(f"{a}, {b}")
        elif pi < 0.96:
            out.append(f'"{a}" {b}')
        else:
            out.append(f"{a} & {b} {c}")
    return out


def albums(plan: Plan, artist: np.ndarray, id_rows: np.ndarray, rerelease: np.ndarray) -> list[str]:
    """Album names: each artist has 1-4 albums; a re-release sits on a compilation or deluxe album."""
    n_alb = 1 + (plan.u(artist, S_NALB) * 4).astype(np.int64)
    number = np.where(rerelease, 9, (plan.u(id_rows, S_ALBUM) * n_alb).astype(np.int64))
    h = hash64(plan.seed, artist * 16 + number, S_ALBUM).tolist()
    words, n = plan.name_words, len(plan.name_words)
    out = []
    for hv, rr in zip(h, rerelease.tolist(), strict=True):
        a, b, c, pat = words[hv % n], words[(hv >> 16) % n], words[(hv >> 32) % n], (hv >> 48) % 10
        if rr:
            out.append(f"Greatest Hits, Vol. {hv % 4 + 1}" if pat < 5 else f"{a} {b} (Deluxe Edition)")
        elif pat < 3:
            out.append(f"{a} {b}")
        elif pat < 5:
            out.append(a)
        elif pat == 5:
            out.append(f"The {a} {b}")
        elif pat == 6:
            out.append(f"{a}, {b} & {c}")
        elif pat == 7:
            out.append(f'"{a}" Live at the {b}')
        elif pat == 8:
            out.append(f"{a} {b} EP")
        else:
            out.append(f"Songs of {a} and {b}")
    return out


def similar_rows(plan: Plan, rows: np.ndarray, idn: Identity) -> np.ndarray:
    """Three distinct clean rows of each row's cluster (same style), shape (n, 3)."""
    start = plan.cluster_start(idn.cluster)
    size = plan.cluster_end[idn.cluster] - start
    ids = rows[:, None] * SIMILAR_TRIES + np.arange(SIMILAR_TRIES)[None, :]
    cand_k = start[:, None] + (plan.u(ids, S_SIM) * size[:, None]).astype(np.int64)
    cand = plan.to_row(cand_k)
    ok = ~flags(plan, cand.ravel()).hard.reshape(cand.shape) & (cand_k != idn.k[:, None])
    out = np.empty((len(rows), 3), dtype=np.int64)
    for i in range(len(rows)):
        picked = list(dict.fromkeys(cand[i][ok[i]].tolist()))[:3]
        if len(picked) < 3:
            picked = _fallback(plan, int(idn.style[i]), int(rows[i]), picked)
        out[i] = picked
    return out


def _fallback(plan: Plan, style: int, row: int, picked: list[int]) -> list[int]:
    """Fill up to three targets from the rest of the style (then any style) for small clusters."""
    clusters = np.nonzero(plan.cluster_style == style)[0]
    ranges = [(int(plan.cluster_start(np.array([c]))[0]), int(plan.cluster_end[c])) for c in clusters]
    ranges.append((0, plan.rows))
    for lo, hi in ranges:
        k = np.arange(lo, hi)
        cand = plan.to_row(k)
        good = cand[~flags(plan, cand).hard & (cand != row)].tolist()
        picked += [c for c in good if c not in picked][: 3 - len(picked)]
        if len(picked) == 3:
            return picked
    return (picked + [row] * 3)[:3]


def quote(field: str) -> str:
    """RFC 4180 minimal quoting, like the published file: quote only fields with , " or a newline."""
    if "," in field or '"' in field or "\n" in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def csv_line(fields: list[str]) -> str:
    """One CSV record (no line terminator)."""
    return ",".join(map(quote, fields))
