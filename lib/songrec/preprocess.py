"""The preprocess stage: raw CSV -> songs/, features/, rejects/, meta/ (see docs/design.md).

read (header-checked files) -> parse (typed columns, a reject reason per bad row) -> dedupe by song_id
(rejected rows set aside, one cached pass) -> rejects/ -> vocabularies + statistics -> songs/ and
features/ -> meta/ -> commit. Every table is written to a staging location first and committed only
when all of them are complete, so a failed run leaves the previous outputs as they were. The commit
itself is four atomic link swaps, one table after another (milliseconds on a local disk): a reader
sees each table whole, but a process killed between two of them would leave the tables of two runs
side by side.
"""

import codecs
import csv
import logging
import math
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from songrec import features, io, parse, schema
from songrec.config import Config, ConfigError
from songrec.errors import InputError
from songrec.spark import session_conf
from songrec.timing import Laps

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 16  # enough for the header line and the start of the first row
# Spark's CSV reader flags a row with the wrong number of fields only when it tokenises every column;
# with column pruning on, a short or long row whose missing fields are not selected passes as clean.
CSV_PRUNING_CONF = "spark.sql.csv.parser.columnPruning.enabled"


def list_input_files(spark: SparkSession, uri: str) -> list[str]:
    """The data files of ``uri`` (a file, or a folder of files; names starting ``_`` or ``.`` skipped).

    Raises:
        InputError: the path does not exist, or the folder holds no data files or a sub-folder.
    """
    fs, path = io.hadoop_fs(spark, uri)
    if not fs.exists(path):
        raise InputError(f"input {uri} does not exist (set `input` to a CSV file or a folder of them)")
    status = fs.getFileStatus(path)
    if not status.isDirectory():
        return [status.getPath().toString()]
    files, folders = [], []
    for child in fs.listStatus(path):
        name = child.getPath().getName()
        if name.startswith(("_", ".")):
            continue
        (folders if child.isDirectory() else files).append(child.getPath().toString())
    if folders:
        raise InputError(f"input folder {uri} holds sub-folders {sorted(folders)}; put the CSV files directly in it")
    if not files:
        raise InputError(f"input folder {uri} holds no data files")
    return sorted(files)


def _read_head(spark: SparkSession, uri: str) -> tuple[bytes, bool]:
    """The first HEAD_BYTES of a file (decompressed when the name says so) and whether that is all of it."""
    fs, path = io.hadoop_fs(spark, uri)
    conf = spark._jsc.hadoopConfiguration()
    codec = spark._jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(path)
    stream = fs.open(path)
    try:
        reader = codec.createInputStream(stream) if codec is not None else stream
        data = bytes(reader.readNBytes(HEAD_BYTES + 1))
    finally:
        stream.close()
    return data[:HEAD_BYTES], len(data) <= HEAD_BYTES


def check_input_file(spark: SparkSession, uri: str, encoding: str) -> None:
    """Fail early, naming the file, when it is empty, not text, or its header is not the 39 raw columns.

    Raises:
        InputError: naming the file and the problem (missing/unexpected/reordered columns listed).
    """
    data, complete = _read_head(spark, uri)
    if not data.strip():
        raise InputError(f"input file {uri} is empty (expected a header line and rows)")
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise ConfigError(f"preprocess.encoding: unknown encoding {encoding!r}") from None
    # NUL bytes with undecodable bytes or in the header line mean a binary file (gzip, image, UTF-16 read
    # as UTF-8); a NUL inside a data row of a text file is that row's problem (rejected as `encoding`).
    nul = b"\x00" in data and not encoding.lower().replace("-", "").startswith(("utf16", "utf32"))
    not_text = f"input file {uri} is not a text file (it holds NUL bytes)"
    try:
        text = decoder.decode(data, final=complete)
    except UnicodeDecodeError as exc:
        if nul:
            raise InputError(not_text) from None
        raise InputError(
            f"input file {uri} is not {encoding} text (undecodable byte at offset {exc.start}); "
            "set preprocess.encoding if it is text in another encoding"
        ) from None
    text = text.lstrip("\ufeff")
    header_line, newline, rest = text.partition("\n")
    if nul and "\x00" in header_line:
        raise InputError(not_text)
    if not newline and not complete:
        raise InputError(f"input file {uri}: no header line in the first {HEAD_BYTES} bytes")
    header = [h.strip() for h in next(csv.reader([header_line.rstrip("\r")]))] if header_line.strip() else []
    missing = [c for c in schema.RAW_COLUMNS if c not in header]
    unexpected = [c for c in header if c not in schema.RAW_COLUMNS]
    if missing or unexpected:
        raise InputError(
            f"input file {uri}: header does not match the {len(schema.RAW_COLUMNS)} expected columns; "
            f"missing {missing}, unexpected {unexpected}"
        )
    if header != schema.RAW_COLUMNS:
        moved = next(c for c, e in zip(header, schema.RAW_COLUMNS, strict=False) if c != e)
        raise InputError(f"input file {uri}: header has the expected columns in another order (first: {moved!r})")
    if complete and not rest.strip():
        raise InputError(f"input file {uri} has a header but no rows")


def read_raw(spark: SparkSession, files: list[str], cfg: Config) -> DataFrame:
    """The raw rows of ``files`` as strings, with ``_corrupt_record`` and ``source_file``."""
    fields = [T.StructField(parse.raw_field(c), T.StringType(), True) for c in schema.RAW_COLUMNS]
    fields.append(T.StructField(parse.CORRUPT_COLUMN, T.StringType(), True))
    reader = spark.read.schema(T.StructType(fields)).options(
        header=True,
        enforceSchema=True,  # the header was checked by name in check_input_file
        quote='"',
        escape='"',  # RFC 4180 doubled quotes; Spark's default escape (\) shifts columns
        multiLine=cfg.preprocess.multiline,
        encoding=cfg.preprocess.encoding,
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=parse.CORRUPT_COLUMN,
    )
    return reader.csv(files).withColumn(parse.SOURCE_COLUMN, F.col("_metadata.file_path"))


def _write(df: DataFrame, uri: str, **options: Any) -> None:
    df.write.mode("errorifexists").options(**options).parquet(uri)


def _row_groups(spark: SparkSession, table_uri: str) -> tuple[int, int]:
    """``(row groups, files)`` of a Parquet folder, from the footers (pyarrow; Hadoop for remote URIs)."""
    fs, path = io.hadoop_fs(spark, table_uri)
    parts = [s.getPath() for s in fs.listStatus(path) if s.getPath().getName().endswith(".parquet")]
    groups = 0
    for part in parts:
        if part.toUri().getScheme() in (None, "file"):
            import pyarrow.parquet as pq

            groups += pq.ParquetFile(part.toUri().getPath()).metadata.num_row_groups
        else:
            jvm = spark._jvm
            hfile = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(part, spark._jsc.hadoopConfiguration())
            reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(hfile)
            try:
                groups += reader.getRowGroups().size()
            finally:
                reader.close()
    return groups, len(parts)


# Warnings that our own choices trigger and that would only mislead (driver JVM only: in local mode that is
# every task): parquet-mr's "Too much memory used" dump at every row group of the deliberate 1-byte target,
# and the CSV reader's "header does not conform to the schema", because the raw columns are read under
# internal names (``parse.raw_field``) once ``check_input_file`` has checked the header by name.
QUIET_LOGGERS = (
    "org.apache.parquet.hadoop.InternalParquetRecordWriter",
    "org.apache.spark.sql.catalyst.csv.CSVHeaderChecker",
)


def _quiet_expected_warnings(spark: SparkSession) -> None:
    jvm = spark._jvm
    for name in QUIET_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, jvm.org.apache.logging.log4j.Level.ERROR)


def _need_row_groups(cfg: Config) -> int:
    return 4 * cfg.train.num_processes


def _row_group_error(have: int, clean: int, cfg: Config) -> ConfigError:
    need = _need_row_groups(cfg)
    suggest = max(16, clean // need)
    return ConfigError(
        f"features/ would have {have} row groups but training with train.num_processes="
        f"{cfg.train.num_processes} needs at least {need} (4 per process); lower preprocess.row_group_rows "
        f"(now {cfg.preprocess.row_group_rows}) to at most {suggest} for {clean} rows"
    )


def _songs_table(songs: DataFrame) -> DataFrame:
    """songs/ columns: ``similar_song_ids`` = similar songs whose id is in the catalogue, in order."""
    df = songs
    ids = songs.select(F.col("song_id").alias("_hit"))
    for i in (1, 2, 3):
        # Broadcast joins keep songs' partitioning by song_id, so the write needs no further shuffle.
        hits = F.broadcast(ids.withColumnRenamed("_hit", f"_hit{i}"))
        df = df.join(hits, df[f"_sim_id{i}"] == hits[f"_hit{i}"], "left")
    # array_except drops the NULLs (misses) and repeats, keeping the order of the similar-song columns.
    resolved = F.array_except(F.array(*[F.col(f"_hit{i}") for i in (1, 2, 3)]), F.array(F.lit(None).cast("long")))
    df = df.withColumn("similar_song_ids", F.array_remove(resolved, F.col("song_id")))
    return df.select(*[f.name for f in schema.SONGS.fields])


def preprocess(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Run the stage; returns counts, row groups and per-step timings in seconds.

    Raises:
        InputError: a missing, empty, non-text or wrongly-headed input file (nothing is written).
        ConfigError: ``preprocess.row_group_rows`` too large for the training world size.
    """
    lap = Laps()
    timings = lap.laps

    files = list_input_files(spark, cfg.input_uri)
    for uri in files:
        check_input_file(spark, uri, cfg.preprocess.encoding)
    log.info("preprocess: %d input file(s) under %s", len(files), cfg.input_uri)
    lap("check")
    _quiet_expected_warnings(spark)

    root = cfg.path()
    staged: dict[str, str] = {}
    cached: list[DataFrame] = []
    with session_conf(spark, CSV_PRUNING_CONF, "false"):
        try:
            n_files = cfg.preprocess.features_files
            kept = parse_dedupe_and_cache(spark, files, cfg, n_files, cached)
            totals = kept.agg(
                F.sum(F.when(F.col("_clean"), F.col("_copies")).otherwise(1)).alias("read"),
                F.count_if(F.col("_clean")).alias("clean"),
                F.count_if(~F.col("_clean")).alias("rejected"),
            ).first()
            read, n_clean, rejected = (int(totals[c] or 0) for c in ("read", "clean", "rejected"))
            counts = {"read": read, "clean": n_clean, "duplicates": read - rejected - n_clean, "rejected": rejected}
            lap("read_parse_dedupe")

            staged["rejects"] = io.staging_uri(root, "rejects")
            rejects = kept.where(~F.col("_clean")).select(*[f.name for f in schema.REJECTS.fields])
            _write(rejects.repartition(1).sortWithinPartitions("source_file", "raw"), staged["rejects"])
            lap("rejects")
            # A filter keeps the hash partitioning by song_id: both table writes need no shuffle.
            songs = kept.where(F.col("_clean"))
            if n_clean == 0:
                raise InputError(f"input {cfg.input_uri}: no usable rows ({rejected} of {read} rejected; see rejects)")
            if math.ceil(n_clean / cfg.preprocess.row_group_rows) + n_files < _need_row_groups(cfg):
                raise _row_group_error(math.ceil(n_clean / cfg.preprocess.row_group_rows) + n_files, n_clean, cfg)

            vocab = features.vocabularies(songs, cfg)
            stats = features.numeric_stats(songs)
            stats["lyrics_idf"] = features.lyrics_idf(songs, "lyrics")
            lap("vocab_stats")

            staged["songs"] = io.staging_uri(root, "songs")
            _write(_songs_table(songs).sortWithinPartitions("song_id"), staged["songs"])
            lap("songs")

            staged["features"] = io.staging_uri(root, "features")
            feats = features.feature_frame(spark, songs, vocab, stats, cfg).sortWithinPartitions("song_id")
            rg = cfg.preprocess.row_group_rows
            # parquet-mr 1.15 cuts row groups by bytes only: with a 1-byte target every size check cuts one,
            # and checking exactly every `rg` rows makes each row group `rg` rows (the last of a file fewer).
            _write(feats, staged["features"], **{
                "parquet.block.size": 1, "parquet.page.size.row.check.min": rg, "parquet.page.size.row.check.max": rg,
            })  # fmt: skip
            row_groups, n_parts = _row_groups(spark, staged["features"])
            if row_groups < _need_row_groups(cfg):
                raise _row_group_error(row_groups, n_clean, cfg)
            splits = {
                r["split"]: int(r["count"])
                for r in spark.read.parquet(staged["features"]).groupBy("split").count().collect()
            }
            lap("features")

            staged["meta"] = io.staging_uri(root, "meta")
            meta = {
                "counts.json": counts,
                "vocab.json": vocab,
                "stats.json": stats,
                "features.json": {
                    "schema_version": schema.SCHEMA_VERSION,
                    "numeric": list(schema.NUMERIC_FEATURES),
                    "genre_dim": len(vocab["genre"]),
                    "lyrics_dim": cfg.preprocess.lyrics_dim,
                    "vocab_sizes": {k: len(v) for k, v in vocab.items()},
                    "rows": {"train": splits.get("train", 0), "val": splits.get("val", 0)},
                    "row_groups": row_groups,
                    "files": n_parts,
                },
            }
            for name, obj in meta.items():
                io.write_json(f"{staged['meta']}/{name}", obj, spark)

            for name in ("rejects", "songs", "features", "meta"):
                io.commit(staged.pop(name), cfg.path(name), spark)
            lap("write_meta_commit")
        finally:
            for df in cached:
                df.unpersist()
            for uri in staged.values():
                io.discard(uri, spark)

    timings["total"] = lap.total()
    log.info(
        "preprocess counts: read=%d clean=%d duplicates=%d rejected=%d (%.1f s, %.0f rows/s)",
        counts["read"], counts["clean"], counts["duplicates"], counts["rejected"],
        timings["total"], counts["read"] / max(timings["total"], 1e-9),
    )  # fmt: skip
    return {**counts, "row_groups": row_groups, "files": len(files), "timings": timings}


def parse_dedupe_and_cache(
    spark: SparkSession, files: list[str], cfg: Config, partitions: int, cached: list[DataFrame]
) -> DataFrame:
    """Every row read, parsed once, deduplicated by song_id, and cached: one pass over the input.

    The parsed rows (lyrics as a vector, the text dropped) go straight into one hash partitioning by
    ``song_id`` (``partitions`` parts), which serves the dedupe window and both table writes. Of the
    clean rows sharing a song_id, the most complete is kept (then the smallest ``_row_hash``, then the
    source file), with ``_copies``, the number of rows it stands for; rejected rows (``_clean`` false)
    are all kept, in groups of their own. Caching only this, and not also every parsed row before the
    shuffle, made the full-size stage about 4% shorter (docs/design.md).
    """
    parsed = parse.parse_rows(read_raw(spark, files, cfg))
    parsed = features.lyrics_vector(parsed, "text", cfg.preprocess.lyrics_dim, "lyrics").drop("text")
    rows = parsed.withColumn("_clean", F.col("reason").isNull()).repartition(partitions, "song_id")
    group = Window.partitionBy("song_id", "_clean")
    best = group.orderBy(F.desc("_filled"), "_row_hash", "source_file")
    rows = rows.withColumn("_pick", F.row_number().over(best)).withColumn("_copies", F.count("*").over(group))
    kept = rows.where(~F.col("_clean") | (F.col("_pick") == 1)).persist(StorageLevel.MEMORY_AND_DISK)
    cached.append(kept)
    return kept
