"""Raw CSV cells -> typed values, as Spark Column expressions.

Every parser takes the raw string column and returns a Column that is NULL when the cell is empty
*or* does not parse; :func:`parse_rows` tells the two apart (a non-empty cell that parsed to NULL is
a reject). Everything here is a Spark built-in (no Python UDFs), and every conversion of untrusted
text goes through ``try_cast`` / ``try_to_timestamp`` because Spark 4 runs in ANSI mode, where a
plain ``cast`` of a malformed value fails the whole job.
"""

import re

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from songrec import schema

CORRUPT_COLUMN = "_corrupt_record"  # Spark's raw line of a row with the wrong number of fields
SOURCE_COLUMN = "source_file"

# Natural pitch classes; a sharp adds one, a flat takes one away (mod 12).
PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}

# Plausible ranges: a value outside is as unusable as one that does not parse (bad_number).
TEMPO_RANGE = (0, 300)
LOUDNESS_RANGE = (-100.0, 20.0)
PERCENT_RANGE = (0, 100)
SCORE_RANGE = (0.0, 1.0)
BEATS_RANGE = (1, 16)
YEAR_RANGE = (1900, 2100)

# Song lyrics run to tens of KB at most: a larger cell is junk or a runaway quoted field, and tokenising
# one of many MB would cost a task's memory for nothing (too_long).
MAX_CELL_BYTES = 1 << 20

_DAY_MONTH_YEAR = r"^\d{1,2} [A-Za-z]+ \d{4}$"  # 29 April 2013 (after dropping the ordinal suffix)
_MONTH_DAY_YEAR = r"^[A-Za-z]+ \d{1,2}, \d{4}$"  # April 29, 2013
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"  # 2013-04-29
_YEAR_ONLY = r"^\d{4}$"  # 2013


def cell(c: Column) -> Column:
    """The trimmed cell, NULL when empty or blank (empty input cells are nulls, not rejects)."""
    trimmed = F.trim(c)
    return F.when(trimmed != "", trimmed)


def normalise_name_col(c: Column) -> Column:
    """Lower case, trimmed, inner whitespace collapsed (the key for song_id)."""
    return F.lower(F.trim(F.regexp_replace(c, r"\s+", " ")))


def normalise_name(text: str) -> str:
    """Pure-Python twin of :func:`normalise_name_col` (for tests and drivers)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def split_list(c: Column) -> Column:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: split on commas, trimmed, empty tokens dropped."""
    # Regex trims instead of transform(..., trim): lambdas cannot be code-generated and run ~10x slower.
    tidy = F.regexp_replace(F.regexp_replace(F.coalesce(c, F.lit("")), r"\s*,\s*", ","), r"^\s+|\s+$", "")
    return F.array_remove(F.split(tidy, ","), "")


def primary(c: Column) -> Column:
    """The first non-empty token of a comma-joined list (NULL when there is none)."""
    return F.get(split_list(c), 0)


def song_id_col(artist_col: Column | str, title_col: Column | str) -> Column:
    """The stable song id: ``xxhash64(normalised primary artist + U+0001 + normalised title)``.

    ``artist_col`` may be the raw comma-joined ``Artist(s)`` cell or an already-primary artist: the
    first comma token is taken either way, so a "Similar Artist" resolves to the same id as the song
    whose primary artist it names. xxhash64 (seed 42) is stable across Spark versions and runs.
    """
    artist = primary(F.col(artist_col) if isinstance(artist_col, str) else artist_col)
    return _song_id(artist, F.col(title_col) if isinstance(title_col, str) else title_col)


def _song_id(artist: Column, title: Column) -> Column:
    """:func:`song_id_col` of an artist that is already one comma-free token (``primary`` would keep it)."""
    return F.xxhash64(F.concat_ws("\u0001", normalise_name_col(artist), normalise_name_col(title)))


def length_seconds(c: Column) -> Column:
    """``"03:47"`` -> 227; ``"1:02:03"`` (H:MM:SS) also accepted; anything else NULL."""
    return _length_seconds(cell(c))


def _length_seconds(s: Column) -> Column:
    pattern = r"^(?:(\d{1,2}):)?(\d{1,3}):([0-5]\d)$"
    ok = s.rlike(pattern)
    # Once the pattern matched, the parts are the ":"-separated fields (one regex pass instead of four).
    hours = F.when(F.substring_index(s, ":", -3) != F.substring_index(s, ":", -2), F.substring_index(s, ":", 1))
    hours = F.coalesce(hours.try_cast("int"), F.lit(0))
    minutes = F.substring_index(F.substring_index(s, ":", -2), ":", 1).try_cast("int")
    seconds = F.substring_index(s, ":", -1).try_cast("int")
    return F.when(ok, hours * 3600 + minutes * 60 + seconds)


def release_date(c: Column) -> tuple[Column, Column]:
    """Release Date -> ``(date, year)``.

    Accepts ``29th April 2013``, ``April 29, 2013`` (full or short month names, any case),
    ``2013-04-29`` and ``2013`` alone (year only, date NULL). A year outside 1900-2100 or an
    impossible day (``31st February``) gives NULL for both.
    """
    return _release_date(cell(c))


def _release_date(s: Column) -> tuple[Column, Column]:
    s = F.regexp_replace(s, r"(\d)(st|nd|rd|th)\b", "$1")
    s = F.regexp_replace(s, r"\s+", " ")

    def parsed(fmt_full: str, fmt_short: str) -> Column:
        return F.coalesce(F.try_to_timestamp(s, F.lit(fmt_full)), F.try_to_timestamp(s, F.lit(fmt_short)))

    ts = (
        F.when(s.rlike(_DAY_MONTH_YEAR), parsed("d MMMM yyyy", "d MMM yyyy"))
        .when(s.rlike(_MONTH_DAY_YEAR), parsed("MMMM d, yyyy", "MMM d, yyyy"))
        .when(s.rlike(_ISO_DATE), F.try_to_timestamp(s, F.lit("yyyy-MM-dd")))
    )
    date = ts.cast("date")  # timestamp -> date is total (no ANSI failure)
    year = F.when(s.rlike(_YEAR_ONLY), s.try_cast("int")).otherwise(F.year(date))
    ok = year.between(*YEAR_RANGE)
    return F.when(ok, date), F.when(ok, year)


def key_parts(c: Column) -> tuple[Column, Column]:
    """Key ``"A# Maj"`` / ``"D min"`` -> ``(pitch class 0-11, "major" | "minor")``; NULLs otherwise."""
    return _key_parts(cell(c))


def _key_parts(s: Column) -> tuple[Column, Column]:
    pattern = r"(?i)^([A-G])([#b]?)\s*(maj|min|major|minor)$"
    ok = s.rlike(pattern)
    # Once the pattern matched: the letter is the first character, an accidental can only be the second
    # (the mode word starts with "m"), and only the mode word can hold "maj" (one regex pass, not four).
    letter = F.upper(F.substring(s, 1, 1))
    accidental = F.substring(s, 2, 1)
    natural = F.coalesce(*[F.when(letter == name, F.lit(pc)) for name, pc in PITCH_CLASS.items()])
    shift = F.when(accidental == "#", 1).when(accidental == "b", -1).otherwise(0)
    mode = F.when(F.lower(s).contains("maj"), "major").otherwise("minor")
    return F.when(ok, F.pmod(natural + shift, F.lit(12))), F.when(ok, mode)


def bounded_double(c: Column, low: float, high: float) -> Column:
    """A finite double within ``[low, high]``, else NULL (NaN, 1e309, text are all NULL)."""
    return _bounded_double(cell(c), low, high)


def _bounded_double(s: Column, low: float, high: float) -> Column:
    d = s.try_cast("double")
    return F.when(~F.isnan(d) & d.between(low, high), d)


def bounded_int(c: Column, low: int, high: int) -> Column:
    """An integer within ``[low, high]`` (``"55"`` or ``"55.0"``), else NULL."""
    return _bounded_int(cell(c), low, high)


def _bounded_int(s: Column, low: int, high: int) -> Column:
    d = _bounded_double(s, low, high)
    return F.when(d == F.floor(d), d.cast("int"))


def loudness_db(c: Column) -> Column:
    """``"-6.85db"`` (unit optional, any case) -> -6.85 within a plausible range."""
    return _loudness_db(cell(c))


def _loudness_db(s: Column) -> Column:
    number = F.regexp_extract(s, r"(?i)^([-+]?\d+(?:\.\d+)?)\s*(?:db)?$", 1)
    return _bounded_double(F.when(number != "", number), *LOUDNESS_RANGE)


def time_signature(c: Column) -> Column:
    """``"4/4"`` -> 4 (beats per bar); a plain ``"3"`` is accepted too."""
    return _time_signature(cell(c))


def _time_signature(s: Column) -> Column:
    beats = F.regexp_extract(s, r"^(\d{1,2})\s*(?:/\s*\d{1,2})?$", 1)
    return _bounded_int(F.when(beats != "", beats), *BEATS_RANGE)


def yes_no(c: Column) -> Column:
    """``Yes``/``No`` (also true/false, 1/0, any case) -> boolean; anything else NULL."""
    return _yes_no(cell(c))


def _yes_no(s: Column) -> Column:
    s = F.lower(s)
    return F.when(s.isin("yes", "true", "1"), True).when(s.isin("no", "false", "0"), False)


def zero_one(c: Column) -> Column:
    """A 0/1 flag (``"1.0"`` and true/false accepted) -> boolean; anything else NULL."""
    return _zero_one(cell(c))


def _zero_one(s: Column) -> Column:
    s = F.lower(s)
    return F.when(s.isin("1", "1.0", "true"), True).when(s.isin("0", "0.0", "false"), False)


def emotion(c: Column) -> Column:
    """Lower-cased label; ``angry`` -> anger; not one of the six labels (or empty) -> ``unknown``."""
    return _emotion(cell(c))


def _emotion(s: Column) -> Column:
    s = F.lower(s)
    s = F.when(s == "angry", "anger").otherwise(s)
    return F.when(s.isin(*schema.EMOTIONS), s).otherwise(F.lit(schema.UNKNOWN_EMOTION))


def field_count(line: Column) -> Column:
    """Fields in a raw CSV line: commas outside double quotes, plus one."""
    return F.size(F.split(line, r',(?=(?:[^"]*+"[^"]*+")*+[^"]*+$)'))


def raw_field(name: str) -> str:
    """Internal name of raw column ``name`` (Spark names are case-insensitive: "Album" would clash with "album")."""
    return f"_raw{schema.RAW_COLUMNS.index(name)}"


def _raw(name: str) -> Column:
    return F.col(raw_field(name))


def _cell_field(name: str) -> str:
    return f"_cell{schema.RAW_COLUMNS.index(name)}"


def _cell(name: str) -> Column:
    """The trimmed cell of raw column ``name``, computed once in :func:`parse_rows`' first projection."""
    return F.col(_cell_field(name))


def _cell_columns() -> list[str]:
    """Raw columns whose parsers start from the trimmed cell (the lists and the lyrics use the raw text)."""
    return [name for name in schema.RAW_COLUMNS if name not in ("Artist(s)", "Genre", "text")]


def _typed_columns() -> dict[str, Column]:
    """Every typed column parsed from the raw cells (NULL = empty or unparseable); needs the ``_cell*`` columns."""
    date, year = _release_date(_cell("Release Date"))
    pitch, mode = _key_parts(_cell("Key"))
    columns = {
        "artists": split_list(_raw("Artist(s)")),
        "title": _cell("song"),
        "album": _cell("Album"),
        "genres": split_list(_raw("Genre")),
        "emotion": _emotion(_cell("emotion")),
        "release_date": date,
        "release_year": year,
        "length_s": _length_seconds(_cell("Length")),
        "key": _cell("Key"),
        "key_pitch": pitch,
        "key_mode": mode,
        "tempo": _bounded_int(_cell("Tempo"), *TEMPO_RANGE),
        "loudness_db": _loudness_db(_cell("Loudness (db)")),
        "time_signature": _time_signature(_cell("Time signature")),
        "explicit": _yes_no(_cell("Explicit")),
    }
    columns |= {name: _bounded_int(_cell(raw), *PERCENT_RANGE) for raw, name in schema.PERCENT_COLUMNS.items()}
    columns |= {name: _zero_one(_cell(raw)) for raw, name in schema.GOOD_FOR_COLUMNS.items()}
    for i in (1, 2, 3):
        columns[f"_sim_artist{i}"] = _cell(f"Similar Artist {i}")
        columns[f"_sim_title{i}"] = _cell(f"Similar Song {i}")
        columns[f"_sim_score{i}"] = _bounded_double(_cell(f"Similarity Score {i}"), *SCORE_RANGE)
    return columns


def _checks() -> list[tuple[str, str, str]]:
    """``(reason, raw column, typed column)`` in priority order: the first failing check names the reject."""
    checks = [
        ("bad_length", "Length", "length_s"),
        ("bad_date", "Release Date", "release_year"),
        ("bad_key", "Key", "key_pitch"),
        ("bad_number", "Tempo", "tempo"),
        ("bad_number", "Loudness (db)", "loudness_db"),
        ("bad_number", "Time signature", "time_signature"),
    ]
    checks += [("bad_number", raw, name) for raw, name in schema.PERCENT_COLUMNS.items()]
    checks += [("bad_number", f"Similarity Score {i}", f"_sim_score{i}") for i in (1, 2, 3)]
    checks += [("bad_flag", "Explicit", "explicit")]
    checks += [("bad_flag", raw, name) for raw, name in schema.GOOD_FOR_COLUMNS.items()]
    return checks


def _drop_nulls(array: Column, element_type: T.DataType) -> Column:
    """``array`` without NULL elements (array_compact is a lambda underneath, which defeats code generation)."""
    return F.array_except(array, F.array(F.lit(None).cast(element_type)))


def parse_rows(raw: DataFrame) -> DataFrame:
    """Raw rows (the 39 string columns named by :func:`raw_field`, ``_corrupt_record``, ``source_file``) -> typed rows.

    The result has the songs/ columns except ``similar_song_ids``, plus ``text`` (the lyrics; NULL for
    a rejected row), ``reason`` / ``detail`` / ``raw`` (NULL for a clean row; see ``schema.REJECT_REASONS``;
    ``raw`` cut at ``MAX_CELL_BYTES`` characters), and two dedupe keys: ``_filled`` (non-empty cells) and
    ``_row_hash`` (hash of every raw cell).
    """
    raw_cols = [_raw(name) for name in schema.RAW_COLUMNS]
    # Each trimmed cell once, in its own projection: the typed parsers and the blank checks share it.
    cells = raw.select(
        *raw_cols, F.col(CORRUPT_COLUMN), F.col(SOURCE_COLUMN),
        *[cell(_raw(name)).alias(_cell_field(name)) for name in _cell_columns()],
    )  # fmt: skip
    typed = cells.select(
        *raw_cols, F.col(CORRUPT_COLUMN), F.col(SOURCE_COLUMN),
        *[expr.alias(name) for name, expr in _typed_columns().items()],
        *[_cell(raw_name).isNull().alias(f"_blank{i}") for i, (_, raw_name, _) in enumerate(_checks())],
    )  # fmt: skip

    longest = F.greatest(*[F.octet_length(c) for c in raw_cols])  # bytes: no scan of the text
    # Spark reads a byte that is not valid in preprocess.encoding as U+FFFD: a Latin-1 "é" in a UTF-8 read
    # would give the song another id than its right spelling, so such rows are rejected, not guessed at.
    joined = F.concat_ws("", *raw_cols)
    has_nul = joined.contains("\u0000")

    # The first failing check names the reject. Its number is computed once in its own projection (so
    # Spark does not inline the typed parsers into every use), and reason, column and value are small
    # CASEs on that number: one message per check would push the generated code past the JVM's 64 KB
    # method limit and off code generation (about 5x slower). element_at over literal arrays indexed by
    # the number looks neater but returned wrong values under whole-stage codegen in Spark 4.0.5.
    checks = [("malformed_row", "", F.col(CORRUPT_COLUMN).isNotNull())]
    checks += [("too_long", "", longest > MAX_CELL_BYTES)]
    checks += [("encoding", "", has_nul | joined.contains("\ufffd"))]
    checks += [("missing_required", "Artist(s)", F.get("artists", 0).isNull())]
    checks += [("missing_required", "song", F.col("title").isNull())]
    for i, (reason_code, raw_name, name) in enumerate(_checks()):
        blank = F.col(f"_blank{i}")  # empty cells are nulls, not rejects
        checks.append((reason_code, raw_name, ~blank & F.col(name).isNull()))
    typed = typed.withColumn("_bad", F.coalesce(*[F.when(bad, F.lit(i)) for i, (_, _, bad) in enumerate(checks)]))
    bad_no = F.col("_bad")
    reason = F.coalesce(*[F.when(bad_no == i, F.lit(code)) for i, (code, _, _) in enumerate(checks)])
    column = F.coalesce(*[F.when(bad_no == i, F.lit(name)) for i, (_, name, _) in enumerate(checks) if name])
    value = F.coalesce(*[F.when(bad_no == i, _raw(name)) for i, (_, name, _) in enumerate(checks) if name])
    fields = field_count(F.col(CORRUPT_COLUMN))
    detail = (
        F.when(reason == "malformed_row",
               F.format_string("row has %d fields, expected %d", fields, F.lit(len(schema.RAW_COLUMNS))))
        .when(reason == "too_long",
              F.format_string("row has a cell of %d bytes, over the limit of %d", longest, F.lit(MAX_CELL_BYTES)))
        .when(reason == "encoding",
              F.when(has_nul, F.lit("row holds a NUL byte"))
              .otherwise(F.lit("row holds bytes that are not text in preprocess.encoding (read as U+FFFD)")))
        .when(value.isNull() | (F.trim(value) == ""), F.format_string("column '%s' is empty", column))
        .otherwise(F.format_string("column '%s' has unusable value '%s'", column, F.substring(F.trim(value), 1, 120)))
    )  # fmt: skip
    raw_text = F.coalesce(F.col(CORRUPT_COLUMN), F.to_json(F.struct(*[_raw(n).alias(n) for n in schema.RAW_COLUMNS])))
    raw_text = F.substring(raw_text, 1, MAX_CELL_BYTES)  # a too_long row's raw text is cut, not copied whole

    similar = [
        F.when(
            F.col(f"_sim_artist{i}").isNotNull() | F.col(f"_sim_title{i}").isNotNull(),
            F.struct(
                F.col(f"_sim_artist{i}").alias("artist"),
                F.col(f"_sim_title{i}").alias("title"),
                F.col(f"_sim_score{i}").alias("score"),
            ),
        )
        for i in (1, 2, 3)
    ]
    similar_ids = [
        F.when(F.col(f"_sim_artist{i}").isNotNull() & F.col(f"_sim_title{i}").isNotNull(),
               song_id_col(f"_sim_artist{i}", f"_sim_title{i}")).alias(f"_sim_id{i}")
        for i in (1, 2, 3)
    ]  # fmt: skip
    filled = sum(F.when(c.isNotNull(), 1).otherwise(0) for c in raw_cols)
    typed_names = [c for c in _typed_columns() if not c.startswith("_sim_")]
    return typed.select(
        _song_id(F.get("artists", 0), F.col("title")).alias("song_id"),
        F.get("artists", 0).alias("artist"),
        F.get("genres", 0).alias("genre"),
        *typed_names,
        _drop_nulls(F.array(*similar), schema.SONGS["similar_songs"].dataType.elementType).alias("similar_songs"),
        *similar_ids,
        F.col(SOURCE_COLUMN),
        F.when(bad_no.isNull(), _raw("text")).alias("text"),  # only clean rows' lyrics are tokenised
        reason.alias("reason"),
        F.when(reason.isNotNull(), detail).alias("detail"),
        F.when(reason.isNotNull(), raw_text).alias("raw"),
        filled.alias("_filled"),
        F.xxhash64(*raw_cols).alias("_row_hash"),
    )
