"""Model inputs from clean songs: vocabularies, normalisation statistics and feature vectors.

All per-row work is Spark built-ins or JVM ML transformers, except the lyric tokeniser, which runs
on Arrow batches in the Python workers (:func:`lyrics_vector`); only the small vocabulary and
statistics results are collected to the driver.
"""

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
from pyspark.ml.feature import IDF, CountVectorizerModel, Normalizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from songrec import schema
from songrec.config import Config

log = logging.getLogger(__name__)

# Section tags such as "[Verse 1]" say nothing about a song's words.
_TAG = r"\[[^\]]*\]"
_NON_WORD = r"[^\p{L}\p{N}']+"
HASH_SEED = 42  # Spark ML HashingTF's MurmurHash3 seed: the same buckets as the HashingTF this module used before


def lyrics_vector(df: DataFrame, text_col: str, dim: int, out_col: str) -> DataFrame:
    """Replace ``text_col`` by ``out_col``: the hashed term counts of the text in ``dim`` buckets (``array<float>``).

    Words are lower-cased runs of letters, digits and apostrophes; ``[Verse 1]`` tags are dropped; a
    word's bucket is MurmurHash3 (x86, 32-bit, seed 42) of its UTF-8 bytes, non-negative modulo ``dim``:
    exactly Spark ML's ``HashingTF``, which this replaces, so the buckets are the ones earlier runs had.
    The work runs in ``mapInArrow`` on Arrow batches (:func:`bucket_counts`): ``HashingTF`` on ``split``
    words turned every word into a Java String in a Scala Seq (``bench/preprocess.py``: the read/parse
    step of the full-size file 254 s with it, 172 s with this; docs/design.md). Every other column
    passes through unchanged.
    :func:`lyrics_weighted` turns the counts into the model input once the catalogue's IDF is known
    (:func:`lyrics_idf`).
    """
    fields = [f for f in df.schema.fields if f.name != text_col]
    out = T.StructType([*fields, T.StructField(out_col, T.ArrayType(T.FloatType(), False), False)])
    return df.mapInArrow(partial(_lyrics_batches, text_col=text_col, out_col=out_col, dim=dim), out)


def _lyrics_batches(batches: Iterator[Any], text_col: str, out_col: str, dim: int) -> Iterator[Any]:
    import pyarrow as pa

    for batch in batches:
        at = batch.schema.get_field_index(text_col)
        keep = [i for i in range(batch.num_columns) if i != at]
        yield pa.RecordBatch.from_arrays(
            [*(batch.column(i) for i in keep), bucket_counts(batch.column(at), dim)],
            names=[*(batch.schema.names[i] for i in keep), out_col],
        )


def bucket_counts(text: Any, dim: int) -> Any:
    """Hashed word counts of each string of a pyarrow array (NULL = no words): a ``list<float>`` array, ``dim`` a row.

    Rows that are ASCII once their ``[...]`` tags are gone (nearly all lyrics) are tokenised by a numpy
    scan of their bytes (:func:`_ascii_words`); the others by pyarrow's (RE2) regex split
    (:func:`_regex_words`), which finds the same words in ASCII text: the split alone cost more than the
    whole function does now (docs/design.md: 11.3 -> 5.5 s per 100k full-size lyrics). Each distinct
    word is hashed once (scikit-learn's MurmurHash3, which gives Spark's ``HashingTF`` values, tail
    bytes included).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(text)
    tidy = pc.replace_substring_regex(pc.fill_null(text, ""), pattern=_TAG, replacement=" ")
    is_ascii = pc.string_is_ascii(tidy).to_numpy(zero_copy_only=False)
    word_rows, word_buckets = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for mask, tokenise in ((is_ascii, _ascii_words), (~is_ascii, _regex_words)):
        where = np.flatnonzero(mask)
        if len(where):
            local_rows, words = tokenise(tidy if len(where) == rows else tidy.take(pa.array(where)))
            word_rows.append(where[local_rows])
            word_buckets.append(_word_buckets(words, dim))
    flat = np.concatenate(word_rows) * dim + np.concatenate(word_buckets)
    counts = np.bincount(flat, minlength=rows * dim).astype(np.float32)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * dim)
    return pa.ListArray.from_arrays(offsets, pa.array(counts, pa.float32()))


# Bytes of a word in ASCII text (the ASCII members of [\p{L}\p{N}']), and ASCII lower-casing.
_WORD_BYTE = np.zeros(256, bool)
_WORD_BYTE[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'", np.uint8)] = True
_LOWER_BYTE = np.arange(256, dtype=np.uint8)
_LOWER_BYTE[ord("A") : ord("Z") + 1] += 32


def _ascii_words(strings: Any) -> tuple[np.ndarray, Any]:
    """``(row of each word, the words lower-cased)`` of an ASCII string array: maximal runs of ``[A-Za-z0-9']``.

    The same words as :func:`_regex_words` on ASCII text, found by a scan of the array's bytes.
    """
    import pyarrow as pa

    _, offset_buf, data_buf = strings.buffers()
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(offset_buf, width)[strings.offset : strings.offset + len(strings) + 1].astype(np.int64)
    data = np.zeros(0, np.uint8) if data_buf is None else np.frombuffer(data_buf, np.uint8)[offsets[0] : offsets[-1]]
    offsets -= offsets[0]
    word = _WORD_BYTE[data]
    filled = np.diff(offsets) > 0
    first, last = offsets[:-1][filled], offsets[1:][filled] - 1  # each non-empty row's ends: words stop there
    start, end = word.copy(), word.copy()
    start[1:] &= ~word[:-1]
    end[:-1] &= ~word[1:]
    start[first], end[last] = word[first], word[last]
    starts, ends = np.flatnonzero(start), np.flatnonzero(end)
    packed = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(ends - starts + 1, out=packed[1:])
    words = pa.StringArray.from_buffers(
        len(starts), pa.py_buffer(packed.astype(np.int32)), pa.py_buffer(_LOWER_BYTE[data[word]])
    )
    per_row = np.diff(np.searchsorted(starts, offsets))
    return np.repeat(np.arange(len(strings)), per_row), words


def _regex_words(strings: Any) -> tuple[np.ndarray, Any]:
    """``(row of each word, the words lower-cased)``: pyarrow's RE2 split on runs of non-word characters."""
    import pyarrow as pa
    import pyarrow.compute as pc

    split = pc.split_pattern_regex(pc.utf8_lower(strings), pattern=_NON_WORD)
    rows = np.repeat(np.arange(len(strings)), pc.list_value_length(split).to_numpy(zero_copy_only=False))
    words = pc.list_flatten(split)
    real = pc.greater(pc.binary_length(words), 0).to_numpy(zero_copy_only=False)  # not the ends' empty strings
    return rows[real], words.filter(pa.array(real))


def _word_buckets(words: Any, dim: int) -> np.ndarray:
    """The hash bucket of each word (MurmurHash3 x86_32, seed ``HASH_SEED``, non-negative modulo ``dim``)."""
    import pyarrow.compute as pc
    from sklearn.utils import murmurhash3_32

    encoded = pc.dictionary_encode(words)
    buckets = np.array([murmurhash3_32(w, seed=HASH_SEED) % dim for w in encoded.dictionary.to_pylist()], np.int64)
    return buckets[encoded.indices.to_numpy(zero_copy_only=False)]


def lyrics_idf(songs: DataFrame, col: str) -> list[float]:
    """Inverse document frequency of each hash bucket over the catalogue, ``log((n + 1) / (df + 1))``."""
    model = IDF(inputCol="_tf", outputCol="_idf").fit(songs.select(array_to_vector(col).alias("_tf")))
    return [round(float(w), 6) for w in model.idf]


def lyrics_weighted(df: DataFrame, col: str, idf: list[float]) -> DataFrame:
    """Replace ``col`` (hashed counts, ``array<float>``) by sublinear TF-IDF, L2-normalised, as ``array<float>``.

    Why not raw counts: a song's few topic words are what sets it apart, and common words fill every
    lyric; measured on 50k generated songs (256 buckets), lyrics alone found 0.18 of the planted
    similar songs with ``log1p(tf) * idf`` against 0.05 with raw counts. A song without words gets
    all zeros.
    """
    weights = F.array(*[F.lit(float(w)) for w in idf])
    df = df.withColumn("_w", array_to_vector(F.zip_with(F.col(col), weights, lambda a, b: F.log1p(a) * b)))
    # The L2 norm as a JVM transformer, not a lambda: Spark's optimiser inlines a norm column into the
    # per-element lambda that divides by it (256 x 256 operations a row, minutes on 50k songs).
    df = Normalizer(p=2.0, inputCol="_w", outputCol="_unit").transform(df)
    return df.withColumn(col, vector_to_array("_unit", dtype="float32")).drop("_w", "_unit")


def build_vocab(counts: list[tuple[str, int]], max_size: int | None = None, min_count: int = 1) -> list[str]:
    """``[(token, count)]`` -> ``["<unk>", most frequent, ...]``; ties broken by token.

    Args:
        counts: token frequencies (tokens unique, no NULL).
        max_size: keep at most this many tokens (besides ``<unk>``).
        min_count: drop tokens seen fewer times.
    """
    ordered = sorted(
        (c for c in counts if c[1] >= min_count and c[0] != schema.UNKNOWN_TOKEN), key=lambda c: (-c[1], c[0])
    )
    if max_size is not None:
        ordered = ordered[:max_size]
    return [schema.UNKNOWN_TOKEN, *[token for token, _ in ordered]]


def _counts(df: DataFrame, column: Column) -> list[tuple[str, int]]:
    rows = df.select(column.alias("t")).where(F.col("t").isNotNull()).groupBy("t").count().collect()
    return [(r["t"], int(r["count"])) for r in rows]


def vocabularies(songs: DataFrame, cfg: Config) -> dict[str, list[str]]:
    """Artist (primary, capped), genre (every token) and emotion vocabularies of the clean songs."""
    pre = cfg.preprocess
    vocab = {
        "artist": build_vocab(_counts(songs, F.col("artist")), pre.max_artists, pre.min_artist_count),
        "genre": build_vocab(_counts(songs, F.explode("genres"))),
        # "unknown" emotions map to index 0 with every other unknown, so it is not a token of its own.
        "emotion": build_vocab(_counts(songs, F.when(F.col("emotion") != schema.UNKNOWN_EMOTION, F.col("emotion")))),
    }
    log.info("vocabulary sizes: %s", {k: len(v) for k, v in vocab.items()})
    return vocab


def numeric_columns() -> dict[str, Column]:
    """``schema.NUMERIC_FEATURES`` as double Columns of a songs/ frame (booleans 0/1, key one-hot)."""
    songs_cols = {f.name for f in schema.SONGS.fields}
    columns: dict[str, Column] = {}
    for name in schema.NUMERIC_FEATURES:
        if name == "key_major":
            expr = (F.col("key_mode") == "major").cast("double")
        elif name.startswith("key_") and name[4:].isdigit():
            expr = (F.col("key_pitch") == int(name[4:])).cast("double")
        elif name in songs_cols:
            expr = F.col(name).cast("double")  # int/double/boolean -> double never fails
        else:
            raise KeyError(f"numeric feature {name!r} has no source column in songs/")
        columns[name] = expr
    return columns


def numeric_stats(songs: DataFrame) -> dict[str, Any]:
    """Mean, population std, min, max and null count of every numeric feature, in one Spark pass."""
    aggs = []
    for name, expr in numeric_columns().items():
        aggs += [
            F.avg(expr).alias(f"{name}|mean"),
            F.stddev_pop(expr).alias(f"{name}|std"),
            F.min(expr).alias(f"{name}|min"),
            F.max(expr).alias(f"{name}|max"),
            F.count_if(expr.isNull()).alias(f"{name}|nulls"),
        ]
    row = songs.agg(*aggs).first().asDict()
    stats = {}
    for name in schema.NUMERIC_FEATURES:
        entry = {k: row[f"{name}|{k}"] for k in ("mean", "std", "min", "max", "nulls")}
        entry = {k: (float(v) if v is not None else None) for k, v in entry.items()}
        entry["nulls"] = int(entry["nulls"] or 0)
        stats[name] = entry
    return {"numeric": stats}


def split_col(song_id: Column, val_fraction: float) -> Column:
    """``"val"`` when ``pmod(xxhash64(song_id), 10000) < val_fraction * 10000``, else ``"train"``."""
    bucket = F.pmod(F.xxhash64(song_id), F.lit(10000))
    return F.when(bucket < int(round(val_fraction * 10000)), "val").otherwise("train")


def _lookup(tokens: list[str], key: Column) -> Column:
    """Index of ``key`` in ``tokens`` (a small vocabulary, as a literal map); 0 when absent or NULL."""
    if len(tokens) <= 1:
        return F.lit(0)
    mapping = F.create_map(*[F.lit(x) for i, t in enumerate(tokens[1:], 1) for x in (t, i)])
    return F.coalesce(F.try_element_at(mapping, key), F.lit(0))


def genre_multi_hot(df: DataFrame, col: str, genres: list[str], out_col: str) -> DataFrame:
    """Add ``out_col``: ``array<float>`` over ``genres`` (a vocabulary, ``<unk>`` first), 1.0 where the row's
    ``col`` list holds that genre; position 0 is set when the list holds a genre not in the vocabulary.

    Spark ML's ``CountVectorizerModel`` (binary) looks each genre up in a hash map, where one
    ``array_contains`` per vocabulary genre (what this did before) compared every row's list with all ~90
    genres. Alone that column took 4-6 s instead of 12-19 s, but the whole features step gained only
    1-3 s (docs/design.md).
    """
    known = F.array(*[F.lit(g) for g in genres[1:]]).cast("array<string>")  # "<unk>" itself is not known
    unknown = (F.size(F.array_except(col, known)) > 0).cast("float")
    model = CountVectorizerModel.from_vocabulary(genres, inputCol=col, outputCol="_genre_vec", binary=True)
    hot = F.slice(vector_to_array("_genre_vec", dtype="float32"), 2, len(genres) - 1)  # without "<unk>"'s slot
    return model.transform(df).withColumn(out_col, F.concat(F.array(unknown), hot)).drop("_genre_vec")


def feature_frame(
    spark: SparkSession, songs: DataFrame, vocab: dict[str, list[str]], stats: dict[str, Any], cfg: Config
) -> DataFrame:
    """songs/ rows (plus the ``lyrics`` vector column) -> the features/ table (``schema.FEATURES``).

    Numeric features are standardised with ``stats`` (NULL -> 0 = the mean; a constant column has
    std 1 so it becomes all zeros); genres become a multi-hot over ``vocab["genre"]`` whose
    position 0 is set when a genre is not in the vocabulary.
    """
    numeric = []
    for name, expr in numeric_columns().items():
        s = stats["numeric"][name]
        mean = s["mean"] if s["mean"] is not None else 0.0
        std = s["std"] if s["std"] else 1.0
        numeric.append(F.coalesce(((expr - F.lit(mean)) / F.lit(std)).cast("float"), F.lit(0.0).cast("float")))

    genres = vocab["genre"]
    artists = spark.createDataFrame(
        [(a, i) for i, a in enumerate(vocab["artist"][1:], 1)], "artist string, artist_idx int"
    )
    df = songs.join(F.broadcast(artists), "artist", "left")
    df = lyrics_weighted(genre_multi_hot(df, "genres", genres, "_multi_hot"), "lyrics", stats["lyrics_idf"])
    return df.select(
        F.col("song_id"),
        split_col(F.col("song_id"), cfg.preprocess.val_fraction).alias("split"),
        F.array(*numeric).alias("numeric"),
        F.col("_multi_hot").alias("genres"),
        F.col("lyrics"),
        F.coalesce(F.col("artist_idx"), F.lit(0)).alias("artist_idx"),
        _lookup(genres, F.col("genre")).cast("int").alias("genre_idx"),
        _lookup(vocab["emotion"], F.col("emotion")).cast("int").alias("emotion_idx"),
    )
