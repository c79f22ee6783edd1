"""Every table's columns and types, in one place.

The README's schema tables are checked against these StructTypes by ``tests/test_readme.py``;
change them here first.
"""

from pyspark.sql import types as T

SCHEMA_VERSION = 1

# The published file's 39 columns, in order (DESIGN.md, "Facts about the raw dataset").
RAW_COLUMNS: list[str] = [
    "Artist(s)", "song", "text", "Length", "emotion", "Genre", "Album", "Release Date", "Key", "Tempo",
    "Loudness (db)", "Time signature", "Explicit", "Popularity", "Energy", "Danceability", "Positiveness",
    "Speechiness", "Liveness", "Acousticness", "Instrumentalness", "Good for Party", "Good for Work/Study",
    "Good for Relaxation/Meditation", "Good for Exercise", "Good for Running", "Good for Yoga/Stretching",
    "Good for Driving", "Good for Social Gatherings", "Good for Morning Routine",
    "Similar Artist 1", "Similar Song 1", "Similarity Score 1",
    "Similar Artist 2", "Similar Song 2", "Similarity Score 2",
    "Similar Artist 3", "Similar Song 3", "Similarity Score 3",
]  # fmt: skip

# Raw 0-100 integer audio features -> clean column names.
PERCENT_COLUMNS: dict[str, str] = {
    "Popularity": "popularity",
    "Energy": "energy",
    "Danceability": "danceability",
    "Positiveness": "positiveness",
    "Speechiness": "speechiness",
    "Liveness": "liveness",
    "Acousticness": "acousticness",
    "Instrumentalness": "instrumentalness",
}

# Raw "Good for ..." 0/1 flags -> clean column names.
GOOD_FOR_COLUMNS: dict[str, str] = {
    "Good for Party": "good_for_party",
    "Good for Work/Study": "good_for_work_study",
    "Good for Relaxation/Meditation": "good_for_relaxation_meditation",
    "Good for Exercise": "good_for_exercise",
    "Good for Running": "good_for_running",
    "Good for Yoga/Stretching": "good_for_yoga_stretching",
    "Good for Driving": "good_for_driving",
    "Good for Social Gatherings": "good_for_social_gatherings",
    "Good for Morning Routine": "good_for_morning_routine",
}

# The six real emotion labels; anything else normalises to UNKNOWN_EMOTION (see parse.py).
EMOTIONS: list[str] = ["joy", "sadness", "anger", "fear", "love", "surprise"]
UNKNOWN_EMOTION = "unknown"
UNKNOWN_TOKEN = "<unk>"  # index 0 of every vocabulary

# Numeric model inputs, in the order of features.numeric (standardised with meta/stats.json):
# the seed's audio features, flags and tempo, plus loudness, duration, release year, beats per bar,
# mode and the key's pitch class one-hot.
NUMERIC_FEATURES: list[str] = [
    "tempo", "loudness_db", "length_s", "release_year", "time_signature", "explicit",
    "popularity", "energy", "danceability", "positiveness", "speechiness", "liveness", "acousticness",
    "instrumentalness", *GOOD_FOR_COLUMNS.values(), "key_major",
    *[f"key_{p}" for p in range(12)],
]  # fmt: skip

SONGS = T.StructType([
    T.StructField("song_id", T.LongType(), False),
    T.StructField("artist", T.StringType(), False),
    T.StructField("artists", T.ArrayType(T.StringType(), False), False),
    T.StructField("title", T.StringType(), False),
    T.StructField("album", T.StringType(), True),
    T.StructField("genre", T.StringType(), True),
    T.StructField("genres", T.ArrayType(T.StringType(), False), False),
    T.StructField("emotion", T.StringType(), False),
    T.StructField("release_date", T.DateType(), True),
    T.StructField("release_year", T.IntegerType(), True),
    T.StructField("length_s", T.IntegerType(), True),
    T.StructField("key", T.StringType(), True),
    T.StructField("key_pitch", T.IntegerType(), True),
    T.StructField("key_mode", T.StringType(), True),
    T.StructField("tempo", T.IntegerType(), True),
    T.StructField("loudness_db", T.DoubleType(), True),
    T.StructField("time_signature", T.IntegerType(), True),
    T.StructField("explicit", T.BooleanType(), True),
    *[T.StructField(c, T.IntegerType(), True) for c in PERCENT_COLUMNS.values()],
    *[T.StructField(c, T.BooleanType(), True) for c in GOOD_FOR_COLUMNS.values()],
    T.StructField("similar_songs", T.ArrayType(T.StructType([
        T.StructField("artist", T.StringType(), True),
        T.StructField("title", T.StringType(), True),
        T.StructField("score", T.DoubleType(), True),
    ]), False), False),
    T.StructField("similar_song_ids", T.ArrayType(T.LongType(), False), False),
    T.StructField("source_file", T.StringType(), False),
])  # fmt: skip

FEATURES = T.StructType([
    T.StructField("song_id", T.LongType(), False),
    T.StructField("split", T.StringType(), False),  # "train" | "val", by hash of song_id
    T.StructField("numeric", T.ArrayType(T.FloatType(), False), False),  # NUMERIC_FEATURES, standardised
    T.StructField("genres", T.ArrayType(T.FloatType(), False), False),  # multi-hot over meta vocab genre
    T.StructField("lyrics", T.ArrayType(T.FloatType(), False), False),  # hashed bag of words, L2-normalised
    T.StructField("artist_idx", T.IntegerType(), False),  # primary artist, 0 = unknown
    T.StructField("genre_idx", T.IntegerType(), False),  # primary genre, 0 = unknown
    T.StructField("emotion_idx", T.IntegerType(), False),  # 0 = unknown
])  # fmt: skip

REJECTS = T.StructType([
    T.StructField("source_file", T.StringType(), False),
    T.StructField("reason", T.StringType(), False),  # a code from REJECT_REASONS
    T.StructField("detail", T.StringType(), True),  # which column and value
    T.StructField("raw", T.StringType(), True),  # the raw fields joined as JSON, or the raw line (cut at 1 Mi chars)
])  # fmt: skip

REJECT_REASONS: dict[str, str] = {
    "malformed_row": "wrong number of fields (short or long row, or a broken quoted newline)",
    "too_long": "a cell over parse.MAX_CELL_BYTES (1 MiB): junk or a runaway quoted field",
    "encoding": "a NUL byte, or bytes not valid in preprocess.encoding (Spark reads them as U+FFFD)",
    "missing_required": "artist or title is empty",
    "bad_number": "a numeric column does not parse or is out of range",
    "bad_date": "Release Date does not parse",
    "bad_key": "Key is not a pitch and mode",
    "bad_length": "Length is not MM:SS",
    "bad_flag": "a 0/1 or Yes/No column holds something else",
}

EMBEDDINGS = T.StructType([
    T.StructField("song_id", T.LongType(), False),
    T.StructField("vector", T.ArrayType(T.FloatType(), False), False),  # unit length
])  # fmt: skip

NEIGHBORS = T.StructType([
    T.StructField("song_id", T.LongType(), False),
    T.StructField("rank", T.IntegerType(), False),  # 1..K
    T.StructField("neighbor_id", T.LongType(), False),
    T.StructField("score", T.FloatType(), False),  # cosine similarity
    T.StructField("bucket", T.IntegerType(), False),  # pmod(song_id, knn.buckets): the file it lives in
])  # fmt: skip


def markdown_table(struct: T.StructType) -> str:
    """The README's rendering of a schema (tests/test_readme.py checks the README against it)."""
    rows = [f"| `{f.name}` | {f.dataType.simpleString()} | {'yes' if f.nullable else 'no'} |" for f in struct.fields]
    return "\n".join(["| column | type | nullable |", "|---|---|---|", *rows])
