"""The lyric tokeniser (Arrow batches in Spark's Python workers) against hand-counted words and Spark's own regex."""

import numpy as np
import pyarrow as pa
from pyspark.ml.feature import HashingTF
from pyspark.sql import functions as F
from sklearn.utils import murmurhash3_32

from songrec.features import _NON_WORD, _TAG, bucket_counts, lyrics_idf, lyrics_vector

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
