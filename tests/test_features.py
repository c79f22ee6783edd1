"""The lyric tokeniser (Arrow batches in Spark's Python workers) against hand-counted words and Spark's own regex;
the genre multi-hot against hand-made rows."""

import numpy as np
import pyarrow as pa
from pyspark.ml.feature import HashingTF
from pyspark.sql import functions as F
from sklearn.utils import murmurhash3_32

from songrec.features import (
    _NON_WORD,
    _TAG,
    _ascii_words,
    _regex_words,
    bucket_counts,
    genre_multi_hot,
    lyrics_idf,
    lyrics_vector,
)

TEXTS = [
    "[Verse 1] Hello, hello WORLD  don't stop",
    None,
    "",
    "Café niño -- über/naïve [Chorus]  café",
    "x2 (Repeat!) rock'n'roll 1999",
]


def bucket(word: str, dim: int) -> int:
    return murmurhash3_32(word, seed=42) % dim


def test_bucket_counts_hand_counted():
    dim = 64
    got = np.array(bucket_counts(pa.array(TEXTS), dim).to_pylist(), dtype=np.float32)
    assert got.shape == (len(TEXTS), dim)
    want = np.zeros_like(got)
    words = [
        ["hello", "hello", "world", "don't", "stop"],
        [],
        [],
        ["café", "niño", "über", "naïve", "café"],
        ["x2", "repeat", "rock'n'roll", "1999"],
    ]
    for row, ws in enumerate(words):
        for w in ws:
            want[row, bucket(w, dim)] += 1
    np.testing.assert_array_equal(got, want)


def _words_by_row(rows: np.ndarray, words: pa.Array, n: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(n)]
    for r, w in zip(rows.tolist(), words.to_pylist(), strict=True):
        out[r].append(w)
    return out


def test_ascii_scan_finds_the_regex_words():
    """The byte scan against the RE2 split on ASCII text: words touching row ends, empty and wordless rows,
    apostrophes, a sliced array (non-zero offset) and large_string offsets."""
    rng = np.random.default_rng(7)
    pieces = ["Don't", "STOP", "x2", "1999", "rock'n'roll", "'", "--", " ", "  ", ",", "!?", "a", "Z9", "\t", "''"]
    texts = ["", "word", "", "end.", "!start", "...", "", "'quoted'", "A", ""]
    texts += ["".join(rng.choice(pieces, rng.integers(0, 30))) for _ in range(400)]
    for array in (pa.array(texts), pa.array(["pad", *texts]).slice(1), pa.array(texts, pa.large_string())):
        want = _words_by_row(*_regex_words(array), len(texts))
        rows, words = _ascii_words(array)
        assert _words_by_row(rows, words, len(texts)) == want
        assert sum(map(len, want)) > 1000


def test_bucket_counts_same_for_a_row_alone_or_in_any_batch():
    """Rows of both paths mixed in one batch (non-ASCII rows, and a non-ASCII word inside a tag that goes)
    count as they do alone."""
    texts = [*TEXTS, "[Intro: Beyoncé] ok ok", "naïve x", "plain words here", None, "ünïcödé 'n' stuff"] * 3
    batch = np.array(bucket_counts(pa.array(texts), 16).to_pylist())
    alone = np.array([bucket_counts(pa.array([t], pa.string()), 16).to_pylist()[0] for t in texts])
    np.testing.assert_array_equal(batch, alone)
    assert batch[len(TEXTS)].sum() == 2  # the tag and its non-ASCII name are gone: "ok ok"


def test_buckets_are_hashingtfs(spark):
    """The buckets of the HashingTF this tokeniser replaced: same features/ for the same input as before."""
    words = ["hello", "don't", "café", "x", "ab", "abc", "abcd", "abcde", "niño", "rock'n'roll", "1999", "ünïcödé"]
    df = spark.createDataFrame([([w],) for w in words], "w array<string>")
    for dim in (7, 256):
        rows = HashingTF(inputCol="w", outputCol="v", numFeatures=dim).transform(df).collect()
        assert [int(r.v.indices[0]) for r in rows] == [bucket(w, dim) for w in words]


def test_spark_lyrics_vector_matches_sparks_own_split(spark):
    """Through mapInArrow: other columns pass unchanged, and every row's word count equals what Spark's Java
    regex split finds (the tokeniser before this one), on the hand cases and on generated-like lyrics."""
    rng = np.random.default_rng(0)
    vocab = ["love", "baby", "night", "don't", "fire", "mañana", "c'est", "la", "vie", "[Verse 2]", "oh-oh", "yeah!"]
    texts = TEXTS + [", ".join(rng.choice(vocab, 40)) for _ in range(300)]
    df = spark.createDataFrame([(i, t, i * 2) for i, t in enumerate(texts)], "id long, text string, other long")
    out = lyrics_vector(df.repartition(3), "text", 32, "lyrics").orderBy("id").toPandas()
    assert list(out.columns) == ["id", "other", "lyrics"]
    assert (out["other"] == out["id"] * 2).all() and len(out) == len(texts)
    np.testing.assert_array_equal(np.stack(out["lyrics"]), np.array(bucket_counts(pa.array(texts), 32).to_pylist()))
    words = F.split(F.lower(F.regexp_replace(F.coalesce("text", F.lit("")), _TAG, " ")), _NON_WORD)
    java = df.select("id", F.size(F.array_remove(words, "")).alias("n")).orderBy("id").toPandas()
    np.testing.assert_array_equal(np.stack(out["lyrics"]).sum(axis=1), java["n"])


def test_lyrics_idf_over_arrays(spark):
    counts = [[1.0, 0.0, 2.0], [0.0, 0.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    df = spark.createDataFrame([(c,) for c in counts], "lyrics array<float>")
    n, docs = 4, np.array([2, 0, 2])
    np.testing.assert_allclose(lyrics_idf(df, "lyrics"), np.log((n + 1) / (docs + 1)), atol=1e-6)


def test_genre_multi_hot_by_hand(spark):
    vocab = ["<unk>", "hip hop", "pop", "rock"]
    rows = [
        (1, ["pop", "hip hop"]),
        (2, ["rock", "rock"]),  # a repeat is still 1
        (3, ["pop", "zydeco"]),  # an unknown genre sets position 0 beside the known one
        (4, []),
        (5, ["<unk>"]),  # the vocabulary's own token is as unknown as any other
        (6, ["Pop"]),  # genres are matched as they are (preprocess lower-cases them)
    ]
    df = spark.createDataFrame(rows, "id int, genres array<string>")
    got = {r.id: r.hot for r in genre_multi_hot(df, "genres", vocab, "hot").collect()}
    assert got == {
        1: [0.0, 1.0, 1.0, 0.0],
        2: [0.0, 0.0, 0.0, 1.0],
        3: [1.0, 0.0, 1.0, 0.0],
        4: [0.0, 0.0, 0.0, 0.0],
        5: [1.0, 0.0, 0.0, 0.0],
        6: [1.0, 0.0, 0.0, 0.0],
    }
    only_unk = {r.id: r.hot for r in genre_multi_hot(df, "genres", ["<unk>"], "hot").collect()}
    assert only_unk == {1: [1.0], 2: [1.0], 3: [1.0], 4: [0.0], 5: [1.0], 6: [1.0]}
    assert genre_multi_hot(df, "genres", vocab, "hot").columns == ["id", "genres", "hot"]
