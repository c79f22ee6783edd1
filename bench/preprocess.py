"""Spark preprocess against the seed projects' way (pandas read_csv + pandas string ops), same file, same run.

    python bench/preprocess.py [--rows 551443] [--scales 1,2,4] [--skip-pandas] [--workdir data/bench]

Generates the stand-in CSV under --workdir (default data/bench/) once (reused when present with the same
rows and seed), times ``songrec.preprocess.preprocess`` in-process on ``local[*]``, then the
single-process pandas baseline (parse the same columns, drop duplicates), then that same work done by
Spark in a fresh JVM (cold, like the job's; no validation, lyrics or tables: the like-for-like row), and
prints rows/s, each run's time over pandas', and peak resident memory (this process + children, which
includes the Spark JVMs). ``--scales`` repeats the Spark timing at other sizes to show how time grows
with size: a multiple (2, 4 ...) is a file of that many times the rows generated the same way (distinct
songs, so every step of the job grows, as with a larger catalogue), also kept under --workdir; a
fraction (0.25) is the first lines of the file.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from songrec.config import load_config  # noqa: E402
from songrec.generate_text import PITCHES  # noqa: E402

PITCH_CLASS = {p: i for i, p in enumerate(PITCHES)}  # "C#" -> 1, as the seed way maps a key's pitch

# The numeric columns the seed way parses with pd.to_numeric (the "Good for" flags besides).
SEED_NUMERIC = ("Tempo", "Popularity", "Energy", "Danceability", "Positiveness", "Speechiness", "Liveness",
                "Acousticness", "Instrumentalness")  # fmt: skip


def peak_rss_mb() -> float:
    """Peak resident set of this process plus its finished-or-waited children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024


def jvm_rss_mb(spark) -> float:
    """Current resident set of the Spark driver JVM (local mode: the whole cluster)."""
    pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set of the JVM
            return int(line.split()[1]) / 1024
    return float("nan")


def ensure_file(spark, workdir: Path, rows: int, seed: int) -> Path:
    """WORKDIR/rows-N-seed-S/spotify_dataset.csv, generated once."""
    from songrec.generate import generate

    base = workdir / f"rows-{rows}-seed-{seed}"
    cfg = load_config(None, [f"input={base / 'spotify_dataset.csv'}", f"root={base / 'gen'}",
                             f"generate.rows={rows}", f"generate.seed={seed}"])  # fmt: skip
    path = Path(cfg.input)
    if not path.exists():
        generate(spark, cfg)
    return path


def pandas_baseline(path: Path) -> tuple[float, int, int]:
    """The seed way: pandas read_csv, then per-column pandas string parsing and drop_duplicates."""
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], on_bad_lines="skip", engine="c")
    read = len(df)
    out = pd.DataFrame()
    minutes = df["Length"].str.extract(r"^(\d+):(\d\d)$").astype(float)
    out["length_s"] = minutes[0] * 60 + minutes[1]
    date = df["Release Date"].str.replace(r"(\d)(st|nd|rd|th)\b", r"\1", regex=True)
    out["release_date"] = pd.to_datetime(date, format="%d %B %Y", errors="coerce")
    out["release_year"] = out["release_date"].dt.year
    key = df["Key"].str.extract(r"^([A-G]#?)\s*(Maj|min)$")
    out["key_pitch"] = key[0].map(PITCH_CLASS)
    out["key_mode"] = key[1].str.lower()
    out["loudness_db"] = pd.to_numeric(df["Loudness (db)"].str.replace("db", "", regex=False), errors="coerce")
    out["time_signature"] = pd.to_numeric(df["Time signature"].str.split("/").str[0], errors="coerce")
    out["explicit"] = df["Explicit"].str.lower().eq("yes")
    for col in SEED_NUMERIC:
        out[col.lower()] = pd.to_numeric(df[col], errors="coerce")
    for col in [c for c in df.columns if c.startswith("Good for")]:
        out[col] = pd.to_numeric(df[col], errors="coerce")
    out["artists"] = df["Artist(s)"].str.split(",")
    out["artist"] = out["artists"].str[0].str.strip().str.lower()
    out["title"] = df["song"].str.strip().str.lower()
    out["genres"] = df["Genre"].str.split(",")
    out["emotion"] = df["emotion"].str.lower().replace({"angry": "anger"})
    clean = out.drop_duplicates(subset=["artist", "title"])
    return time.perf_counter() - start, read, len(clean)


def spark_seed_parse(spark, path: Path) -> tuple[float, int, int]:
    """The pandas baseline's work done by Spark: the same columns parsed by the same rules, duplicates
    dropped by (artist, title), every column evaluated (a ``noop`` sink, as pandas holds its result in
    memory). No validation, rejects, lyrics, vocabularies or tables: the like-for-like row of the bench."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    start = time.perf_counter()
    df = spark.read.csv(str(path), header=True, quote='"', escape='"')
    num = lambda c: c.try_cast("double")  # noqa: E731 (pd.to_numeric(errors="coerce"))
    length = r"^(\d+):(\d\d)$"
    date = F.regexp_replace(F.col("`Release Date`"), r"(\d)(st|nd|rd|th)\b", "$1")
    key = r"^([A-G]#?)\s*(Maj|min)$"
    pitch = F.create_map(*[F.lit(x) for item in PITCH_CLASS.items() for x in item])
    artists = F.split(F.col("`Artist(s)`"), ",")
    emotion = F.lower("emotion")
    released = F.try_to_timestamp(date, F.lit("d MMMM yyyy"))
    out = df.select(
        (num(F.regexp_extract("Length", length, 1)) * 60 + num(F.regexp_extract("Length", length, 2))).alias(
            "length_s"
        ),
        released.alias("release_date"),
        F.year(released).alias("release_year"),
        F.try_element_at(pitch, F.regexp_extract("Key", key, 1)).alias("key_pitch"),
        F.lower(F.regexp_extract("Key", key, 2)).alias("key_mode"),
        num(F.replace(F.col("`Loudness (db)`"), F.lit("db"), F.lit(""))).alias("loudness_db"),
        num(F.split(F.col("`Time signature`"), "/")[0]).alias("time_signature"),
        (F.lower("Explicit") == "yes").alias("explicit"),
        *[num(F.col(f"`{c}`")).alias(c.lower()) for c in SEED_NUMERIC],
        *[num(F.col(f"`{c}`")).alias(c) for c in df.columns if c.startswith("Good for")],
        artists.alias("artists"),
        F.lower(F.trim(artists[0])).alias("artist"),
        F.lower(F.trim("song")).alias("title"),
        F.split("Genre", ",").alias("genres"),
        F.when(emotion == "angry", "anger").otherwise(emotion).alias("emotion"),
    )
    read, clean = Observation("read"), Observation("clean")
    out = out.observe(read, F.count(F.lit(1)).alias("n")).dropDuplicates(["artist", "title"])
    out.observe(clean, F.count(F.lit(1)).alias("n")).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start, read.get["n"], clean.get["n"]


def seed_parse_in_fresh_jvm(path: Path) -> tuple[float, int, int]:
    """:func:`spark_seed_parse` in a child process with its own Spark JVM, cold like the job's."""
    proc = subprocess.run([sys.executable, __file__, "--seed-parse-only", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the Spark seed-way parse of {path} failed:\n{proc.stderr[-3000:]}")
    seconds, read, clean = json.loads(proc.stdout.strip().splitlines()[-1])
    return seconds, read, clean


def session(app: str):
    """The bench's local-mode Spark session (the job's ANSI mode, 16 shuffle partitions, no UI)."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[*]").appName(app)
        .config("spark.driver.memory", "6g").config("spark.ui.enabled", "false")
        .config("spark.sql.ansi.enabled", "true").config("spark.sql.shuffle.partitions", "16")
        .getOrCreate()
    )  # fmt: skip
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_run(spark, path: Path, work: Path) -> tuple[float, dict]:
    from songrec.preprocess import preprocess

    cfg = load_config(None, [f"input={path}", f"root={work}"])
    start = time.perf_counter()
    result = preprocess(spark, cfg)
    return time.perf_counter() - start, result


def scaled_file(spark, workdir: Path, path: Path, rows: int, seed: int, factor: float) -> Path:
    """The input at ``factor`` x ``rows``: a whole multiple is generated (:func:`ensure_file`, distinct
    songs); a fraction keeps the first lines of ``path`` (one header)."""
    if factor == 1:
        return path
    if factor > 1:
        if factor != int(factor):
            raise SystemExit(f"--scales: {factor:g}: a multiple above 1 must be a whole number")
        return ensure_file(spark, workdir, int(rows * factor), seed)
    out = path.with_name(f"x{factor:g}.csv")
    if out.exists():
        return out
    with path.open("rb") as src, out.open("wb") as dst:
        dst.write(src.readline())
        lines = sum(1 for _ in src)
        src.seek(0)
        src.readline()
        for i, line in enumerate(src):
            if i >= int(lines * factor):
                break
            dst.write(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=551443)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--scales", default="1", help="comma-separated multiples of --rows for the Spark timing (0.25 = first quarter)"
    )
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--seed-parse-only", type=Path, help=argparse.SUPPRESS)  # the child of seed_parse_in_fresh_jvm
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "data" / "bench",
        help="where the generated inputs and the job's outputs are kept (default: data/bench)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--scales {args.scales!r}: expected comma-separated numbers such as 0.25,1,2")
    if not scales or min(scales) <= 0:
        parser.error(f"--scales {args.scales!r}: expected one or more positive factors")

    if args.seed_parse_only:
        spark = session("bench-preprocess-seed-way")
        print(json.dumps(spark_seed_parse(spark, args.seed_parse_only)))
        spark.stop()
        return 0

    spark = session("bench-preprocess")
    path = ensure_file(spark, args.workdir.resolve(), args.rows, args.seed)
    size_mb = path.stat().st_size / 1e6
    print(f"input: {path} ({size_mb:.0f} MB, {args.rows} rows), {os.cpu_count()} cores, Spark {spark.version}")

    results = []
    for factor in scales:
        scaled = scaled_file(spark, args.workdir.resolve(), path, args.rows, args.seed, factor)
        seconds, result = spark_run(spark, scaled, path.parent / f"run-x{factor}")
        results.append((factor, seconds, result))
        print(f"spark x{factor:g}: {seconds:.1f} s, {result['read'] / seconds:,.0f} rows/s, steps {result['timings']}")
    jvm_mb = jvm_rss_mb(spark)
    spark.stop()

    base_seconds = None
    if not args.skip_pandas:
        base_seconds, read, clean = pandas_baseline(path)
        same_seconds, same_read, same_clean = seed_parse_in_fresh_jvm(path)

    spark_1x = next((s for f, s, _ in results if f == 1), None)  # the ratio the target is about
    print()
    print(f"{'run':<28}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'vs pandas':>11}")
    if base_seconds is not None:
        label = "pandas (seed way, 1 proc)"
        print(f"{label:<28}{read:>12,}{base_seconds:>10.1f}{read / base_seconds:>12,.0f}{1.0:>11.2f}")
        label = "spark, the same work"
        print(f"{label:<28}{same_read:>12,}{same_seconds:>10.1f}{same_read / same_seconds:>12,.0f}"
              f"{same_seconds / base_seconds:>11.2f}")  # fmt: skip
    for factor, seconds, result in results:
        ratio = f"{seconds / base_seconds / factor:>11.2f}" if base_seconds else f"{'-':>11}"
        print(f"{'spark preprocess x' + format(factor, 'g'):<28}{result['read']:>12,}{seconds:>10.1f}"
              f"{result['read'] / seconds:>12,.0f}{ratio}")  # fmt: skip
    if len(results) > 1:
        first_f, first_s = results[0][0], results[0][1]
        growth = ", ".join(f"x{f / first_f:g} rows: {s / first_s:.2f}" for f, s, _ in results)
        print(f"time relative to the smallest run (linear = the row factor): {growth}")
    if base_seconds is not None:
        print(f"after drop_duplicates: pandas {clean:,} of {read:,} rows, Spark the same work {same_clean:,} of "
              f"{same_read:,} (pandas skips rows with extra fields; Spark keeps them)")  # fmt: skip
    if spark_1x is not None:
        print("spark x1 / pandas time: " + (f"{spark_1x / base_seconds:.2f}" if base_seconds else "n/a")
              + f" for {args.rows:,} rows")  # fmt: skip
    print(f"peak RSS: python {peak_rss_mb():,.0f} MB (self + children), Spark JVM {jvm_mb:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
