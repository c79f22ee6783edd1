"""One block of the stand-in dataset as CSV text: features, formats, lyrics, dirt.

:func:`make_block` turns rows ``[start, end)`` into CSV lines and truth lines. What other rows must
see (identity, dirt flags) comes from :mod:`songrec.generate_rows`; everything else from a numpy
Generator seeded with ``(seed, block number)``, so the bytes do not depend on Spark's partitioning.
"""

from dataclasses import dataclass

import numpy as np

from songrec.generate_plan import BLOCK_ROWS, FEATURES, S_DUP_SRC, F, Plan
from songrec.generate_rows import (
    COL,
    DIRT_KINDS,
    Flags,
    Identity,
    albums,
    artist_names,
    flags,
    identity,
    quote,
    similar_rows,
    titles,
)
from songrec.generate_text import GENRES, JUNK_EMOTIONS, MONTH_DAYS, MONTHS, PITCHES, block_lyrics
from songrec.schema import EMOTIONS

_BAD_NUMBER_COLS = [COL[c] for c in ["Tempo", "Popularity", "Energy", "Danceability", "Loudness (db)", "Positiveness"]]
_BAD_NUMBERS = ["abc", "1e309", "NaN", "-", "n/a", "12..5"]
_BAD_DATES = ["31st Febtember {y}", "{y}-99-99", "32nd March {y}", "31st April {y}", "0th May {y}", "soon"]
LYRIC_WORDS = 203  # median words per lyric before the chorus repeats (sets ~2 KB per row)


@dataclass
class Block:
    """One generated block: CSV lines, truth lines and what was planted."""

    data: str
    truth: str
    counts: dict[str, int]


def _features(plan: Plan, rng: np.random.Generator, idn: Identity) -> np.ndarray:
    """Audio features around the style mean shifted by the cluster offset, clipped to their ranges."""
    s, c = idn.style, idn.cluster
    x = plan.style_mean[s] + plan.cluster_offset[c] + plan.style_sd[s] * rng.standard_normal((len(s), len(FEATURES)))
    lo = np.array([f[4] for f in FEATURES])
    hi = np.array([f[5] for f in FEATURES])
    return np.clip(x, lo, hi)


def _good_for(x: np.ndarray) -> np.ndarray:
    """The nine "Good for" flags, derived from the audio features like the published file's."""
    e, d, p, s, a, i, t = (x[:, F[n]] for n in ("energy", "danceability", "positiveness", "speechiness",
                                                "acousticness", "instrumentalness", "tempo"))  # fmt: skip
    return np.stack([
        (d > 70) & (e > 60),                      # party
        (e < 50) & (s < 20) & (i > 10),           # work/study
        (e < 40) & (a > 50),                      # relaxation/meditation
        (e > 70) & (t > 115),                     # exercise
        (e > 65) & (t > 140),                     # running
        (e < 35) & (t < 100),                     # yoga/stretching
        (e > 55) & (p > 50),                      # driving
        (d > 60) & (p > 50),                      # social gatherings
        (p > 60) & (e > 40) & (e < 75),           # morning routine
    ], axis=1).astype(np.int8)  # fmt: skip


def _pick(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise inverse CDF: index of the first cdf entry above u, for (n, m) cdf and (n,) u."""
    return np.minimum((u[:, None] > cdf).sum(axis=1), cdf.shape[1] - 1)


def _genres(plan: Plan, rng: np.random.Generator, idn: Identity) -> list[str]:
    """Comma-joined genre tokens: the style's home genres, the cluster's favourite, often "hip hop"."""
    s, n = idn.style, len(idn.style)
    draws = plan.style_genres[s[:, None], _pick_many(plan.style_genre_cdf[s], rng.random((n, 3)))]
    noise = np.minimum(np.searchsorted(plan.genre_cdf, rng.random((n, 3))), len(GENRES) - 1)
    draws = np.where(rng.random((n, 3)) < 0.3, noise, draws)
    fav_first = rng.random(n) < 0.5
    count = 1 + (rng.random(n) > 0.45).astype(int) + (rng.random(n) > 0.8).astype(int)
    hip = rng.random(n) < plan.style_hiphop[s]
    hip_first = rng.random(n) < 0.6
    out = []
    for i in range(n):
        toks = [int(plan.cluster_genre[idn.cluster[i]])] if fav_first[i] else []
        toks = list(dict.fromkeys(toks + draws[i].tolist()))[: count[i]]
        names = [GENRES[t] for t in toks]
        if hip[i]:
            names = ["hip hop", *names] if hip_first[i] else [*names, "hip hop"]
        out.append(",".join(names))
    return out


def _pick_many(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """:func:`_pick` for several uniforms per row: (n, m) cdf, (n, j) u -> (n, j) indices."""
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), cdf.shape[1] - 1)


def _dates(plan: Plan, rng: np.random.Generator, idn: Identity) -> tuple[list[str], np.ndarray]:
    """Release dates as "29th April 2013" (valid calendar dates), and their years."""
    n = len(idn.style)
    year = np.clip(np.round(plan.style_year[idn.style] + plan.cluster_year[idn.cluster] + 7 * rng.standard_normal(n)),
                   1960, 2024).astype(int)  # fmt: skip
    month = rng.integers(0, 12, size=n)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = MONTH_DAYS[month] + ((month == 1) & leap)
    day = 1 + (rng.random(n) * days).astype(int)
    return [
        f"{d}{_ordinal(d)} {MONTHS[m]} {y}" for d, m, y in zip(day.tolist(), month.tolist(), year.tolist(), strict=True)
    ], year


def _ordinal(d: int) -> str:
    if 11 <= d % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")


def make_block(plan: Plan, start: int, end: int) -> Block:
    """Generate rows ``[start, end)`` (a whole block, ``start`` a multiple of ``BLOCK_ROWS``)."""
    rows = np.arange(start, end, dtype=np.int64)
    n = len(rows)
    fl = flags(plan, rows)
    idn = identity(plan, rows, fl)
    rng = np.random.default_rng([plan.seed, start // BLOCK_ROWS, 0xB10C])
    rerelease = idn.id_row != rows
    id_fl = flags(plan, idn.id_row)

    x = _features(plan, rng, idn)
    pitch = _pick(plan.style_key_cdf[idn.style], rng.random(n))
    major = rng.random(n) < plan.style_major[idn.style]
    ts = _pick(plan.style_ts_cdf[idn.style], rng.random(n))
    explicit = rng.random(n) < plan.style_explicit[idn.style]
    emo = np.where(rng.random(n) < 0.7, _pick(plan.style_emotion_cdf[idn.style], rng.random(n)),
                   plan.cluster_emotion[idn.cluster])  # fmt: skip
    dates, _ = _dates(plan, rng, idn)
    genres = _genres(plan, rng, idn)
    n_words = np.clip(rng.lognormal(np.log(LYRIC_WORDS), 0.35, size=n), 60, 1200).astype(int)
    text = block_lyrics(rng, n_words, plan.style_vocab[idn.style], plan.cluster_topic[idn.cluster], plan.common_cdf,
                        plan.tokens)  # fmt: skip

    names, art_nl = artist_names(plan, idn.artist)
    credits = _credits(plan, names, idn)
    title = titles(plan, idn.id_row, id_fl)
    album = albums(plan, idn.artist, idn.id_row, rerelease)
    sim = similar_rows(plan, rows, idn).ravel()
    sim_fl = flags(plan, sim)
    sim_artist = [quote(a) for a in artist_names(plan, identity(plan, sim, sim_fl).artist)[0]]
    sim_title = [quote(t) for t in titles(plan, sim, sim_fl)]
    score1 = rng.integers(975, 1000, size=n)
    score2 = score1 - rng.integers(1, 12, size=n)
    score3 = score2 - rng.integers(1, 12, size=n)
    scores = [[f"{a / 1000:.3f}", f"{b / 1000:.3f}", f"{c / 1000:.3f}"] for a, b, c in zip(
        score1.tolist(), score2.tolist(), score3.tolist(), strict=True)]  # fmt: skip
    dirt_pick = rng.integers(0, 1 << 30, size=(n, 3)).tolist()

    # Plain Python lists from here: the per-row loop must not index numpy arrays element by element.
    xi = np.rint(x).astype(int)
    good = _good_for(xi)  # from the printed integers, so that a reader can re-derive every flag
    length = [f"{s // 60:02d}:{s % 60:02d}" for s in xi[:, F["length"]].tolist()]
    key = [f"{PITCHES[p]} {'Maj' if m else 'min'}" for p, m in zip(pitch.tolist(), major.tolist(), strict=True)]
    loud = [f"{v:.2f}db" for v in x[:, F["loudness"]].tolist()]
    tempo = list(map(str, xi[:, F["tempo"]].tolist()))
    numbers = [list(map(str, r)) for r in np.concatenate([xi[:, :8], good], axis=1).tolist()]
    emotion = [EMOTIONS[e] for e in emo.tolist()]
    signature = [("4/4", "3/4", "5/4")[t] for t in ts.tolist()]
    yes_no = ["Yes" if e else "No" for e in explicit.tolist()]
    style = idn.style.tolist()
    dup, rerel, dirty = fl.dup.tolist(), rerelease.tolist(), _dirty(fl).tolist()
    no_title = (fl.null & (fl.null_col == COL["song"])).tolist()
    non_latin = (art_nl | id_fl.title_nl).tolist()
    dup_src = (start + plan.u(rows, S_DUP_SRC) * (rows - start)).astype(np.int64).tolist()
    newline = fl.newline.tolist()

    counts = dict.fromkeys([*DIRT_KINDS, "rerelease"], 0)
    lines: list[str] = []
    truth: list[str] = []
    for i in range(n):
        if dup[i]:
            lines.append(lines[dup_src[i] - start])
            counts["duplicate"] += 1
            continue
        lyric = text[i]
        if newline[i]:
            cut = lyric.find("  ")
            lyric = lyric[:cut] + "\n" + lyric[cut + 2 :] if cut > 0 else lyric + "\nOutro"
            counts["quoted_newline"] += 1
        f = [
            quote(credits[i]), quote(title[i]), quote(lyric), length[i], emotion[i], quote(genres[i]),
            quote(album[i]), dates[i], key[i], tempo[i], loud[i], signature[i], yes_no[i], *numbers[i],
        ]  # fmt: skip
        for j in range(3):
            f += [sim_artist[3 * i + j], sim_title[3 * i + j], scores[i][j]]
        if dirty[i]:
            _plant(f, fl, i, dirt_pick[i], counts)
        counts["non_latin"] += non_latin[i]
        counts["rerelease"] += rerel[i]
        lines.append(",".join(f))
        if not rerel[i] and not no_title[i]:
            truth.append(f"{quote(names[i])},{quote(title[i])},{style[i]}")
    return Block(data="\n".join(lines) + "\n", truth="\n".join(truth) + "\n" if truth else "", counts=counts)


def _credits(plan: Plan, names: list[str], idn: Identity) -> list[str]:
    """The Artist(s) cell: the primary artist, then any co-artists, comma-joined without spaces."""
    credits = list(names)
    for co in (idn.co1, idn.co2):
        at = np.nonzero(co >= 0)[0]
        if len(at):
            for i, name in zip(at.tolist(), artist_names(plan, co[at])[0], strict=True):
                credits[i] += "," + name
    return credits


def _dirty(fl: Flags) -> np.ndarray:
    """Rows with cell-level dirt for :func:`_plant` (the quoted newline is planted in the lyrics)."""
    return fl.null | fl.junk | fl.bad_number | fl.bad_date | fl.short | fl.long


def _plant(f: list[str], fl: Flags, i: int, pick: np.ndarray, counts: dict[str, int]) -> None:
    """Apply row ``i``'s dirt to its fields in place and count it."""
    a, b, c = (int(v) for v in pick)
    if fl.null[i]:
        f[int(fl.null_col[i])] = ""
        counts["null_cell"] += 1
    if fl.junk[i]:
        f[COL["emotion"]] = JUNK_EMOTIONS[a % len(JUNK_EMOTIONS)]
        counts["junk_emotion"] += 1
    if fl.bad_number[i]:
        f[_BAD_NUMBER_COLS[a % len(_BAD_NUMBER_COLS)]] = _BAD_NUMBERS[b % len(_BAD_NUMBERS)]
        counts["bad_number"] += 1
    if fl.bad_date[i]:
        f[COL["Release Date"]] = _BAD_DATES[b % len(_BAD_DATES)].format(y=1960 + c % 65)
        counts["bad_date"] += 1
    if fl.short[i]:
        del f[len(f) - 1 - c % 5 :]
        counts["short_row"] += 1
    if fl.long[i]:
        f.extend(["", "extra", "0.5"][: 1 + c % 3])
        counts["long_row"] += 1
