"""The benchmarks under bench/ run end to end at a small size and print the tables the README quotes.

Each bench runs as a user runs it (``python bench/X.py``, its own Spark JVM or DDP ranks), on small
inputs, so that a change in lib/ that breaks a bench fails here instead of on the next full-size run.
The timings are not asserted (noisy machines); the shape of the output and the recall figures are.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from songrec.config import Config, local_path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> str:
    """stdout of ``python bench/<script> args``; fails with the output's tail when it exits non-zero."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}:\n{tail}"
    return proc.stdout


def table_rows(out: str, prefix: str) -> list[list[str]]:
    """The whitespace-split fields of the output lines that start with ``prefix``."""
    return [line[len(prefix) :].split() for line in out.splitlines() if line.startswith(prefix)]


def printed_ratio(ratio: float, num: float, den: float, half: float) -> bool:
    """Could ``ratio`` (printed to 2 decimals) be ``num / den``, both printed to within ``half``?

    Checks that a ratio column is computed against the baseline row the table names (the baseline row's
    own 1.00 says nothing: it is itself over itself).
    """
    lo = (num - half) / (den + half)
    hi = (num + half) / (den - half) if den > half else float("inf")
    return lo - 0.005 <= ratio <= hi + 0.005


def test_knn_bench_times_every_method_on_real_embeddings(finished: Config):
    embeddings = local_path(finished.path("embeddings"))
    out = run_bench(
        "knn.py", "--embeddings", str(embeddings), "--sample", "300", "--scales", "1,2", "--scale-base", "1500"
    )
    methods = {m: table_rows(out, m) for m in ("1. songrec job", "2. hnswlib single", "3. PyNNDescent",
                                               "4. Spark BRP-LSH", "5. exact numpy")}  # fmt: skip
    assert all(len(rows) == 1 for rows in methods.values()), out
    # fields after the label: ..., wall s, x hnswlib, recall@10, peak RSS GB (the last four)
    wall, _, recall, peak = (float(x) for x in methods["2. hnswlib single"][0][-4:])
    assert wall > 0 and 0.99 <= recall <= 1.0 and peak > 0
    job_wall, job_ratio, job_recall = (float(x) for x in methods["1. songrec job"][0][-4:-1])
    assert printed_ratio(job_ratio, job_wall, wall, 0.05), out  # "x hnswlib" is over the single index's time
    assert job_recall >= 0.99, out  # the job's recall@10 at default parameters
    assert float(methods["5. exact numpy"][0][-2]) == 1.0, out
    assert 0.0 < float(methods["4. Spark BRP-LSH"][0][-2]) <= 1.0, out
    growth = re.findall(r"^\s+(\d)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+$", out, re.M)
    assert [(s, n) for s, n, _, _ in growth] == [("1", "1500"), ("2", "3000")], out
    (_, _, wall1, _), (_, _, wall2, ratio2) = growth
    assert printed_ratio(float(ratio2), float(wall2), float(wall1), 0.05), out  # "x scale 1" is over scale 1's time
    assert "peak RSS" in out.splitlines()[-1]


def test_knn_sweep_compares_settings_with_the_config_default(finished: Config):
    embeddings = local_path(finished.path("embeddings"))
    out = run_bench(
        "knn_sweep.py", "--embeddings", str(embeddings), "--sample", "300", "--query-sample", "500",
        "--grid", "16,100:64,128;8,48:128",
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s+[\d.]+\s+\d+\s+[\d.]+", line)]
    settings = [(r[0], r[1], r[3]) for r in rows]
    assert settings == [("16", "100", "64"), ("16", "100", "128"), ("8", "48", "128")], out
    default = rows[1]
    assert float(default[4]) >= 0.99, out  # recall@10 at the config's defaults
    for r in (rows[0], rows[2]):  # "x default" is each setting's total s over the default's
        assert printed_ratio(float(r[7]), float(r[6]), float(default[6]), 0.05), out
    assert "peak RSS" in out


def test_train_bench_compares_petastorm_with_in_memory(preprocessed: Config):
    root = str(local_path(preprocessed.path()))
    out = run_bench("train.py", "--root", root, "--ranks", "2", "--repeats", "1", "--dense-steps", "3")
    rows = [line.split() for line in out.splitlines()]
    feeds = {r[1]: r for r in rows if len(r) == 7 and r[0] == "2" and r[1] in ("petastorm", "in-memory")}
    assert set(feeds) == {"petastorm", "in-memory"}, out
    rate = {name: float(row[4]) for name, row in feeds.items()}  # rows/s, printed as whole numbers
    assert printed_ratio(float(feeds["petastorm"][5]), rate["petastorm"], rate["in-memory"], 0.5), out
    assert rate["petastorm"] > 0 and int(feeds["petastorm"][2]) == int(feeds["in-memory"][2]) > 0
    assert re.search(r"2 rank\(s\), in memory, 3 steps: artist-table gradient sparse \d+ rows/s, dense \d+", out), out
    assert re.search(r"peak RSS: process tree \d+ MiB", out), out


def test_preprocess_bench_reconciles_and_prints_ratios(tmp_path: Path):
    out = run_bench("preprocess.py", "--rows", "1200", "--scales", "0.5,1,2", "--workdir", str(tmp_path))
    pandas = table_rows(out, "pandas (seed way, 1 proc)")
    spark = {f: table_rows(out, f"spark preprocess x{f}") for f in ("0.5", "1", "2")}
    assert len(pandas) == 1 and all(len(r) == 1 for r in spark.values()), out
    read = {f: int(r[0][0].replace(",", "")) for f, r in spark.items()}
    # "vs pandas" is seconds / pandas seconds / factor, i.e. pandas' rows/s over the Spark run's, times
    # read / (factor x pandas' parsed rows): checked against the printed rows/s of both.
    pandas_read, pandas_rate = (float(pandas[0][i].replace(",", "")) for i in (0, 2))
    for f, rows in spark.items():
        ratio, spark_rate = float(rows[0][3]), float(rows[0][2].replace(",", ""))
        scaled = ratio * float(f) * pandas_read / read[f]
        assert printed_ratio(scaled, pandas_rate, spark_rate, 0.5), out
    assert read["1"] == 1200 and read["2"] == 2400 and 0 < read["0.5"] < 1200, out  # every row of the input read
    # The like-for-like row: the seed way's parse done by Spark; its ratio is over pandas' seconds.
    (same,) = table_rows(out, "spark, the same work")
    assert int(same[0].replace(",", "")) == 1200, out
    assert printed_ratio(float(same[3]), float(same[1]), float(pandas[0][1]), 0.05), out
    dedup = re.search(
        r"^after drop_duplicates: pandas [\d,]+ of [\d,]+ rows, Spark the same work ([\d,]+) of", out, re.M
    )
    assert dedup and 1000 < int(dedup[1].replace(",", "")) < 1200, out  # duplicates dropped, not every row
    assert re.search(r"^spark x1 / pandas time: [\d.]+ for 1,200 rows$", out, re.M), out
    assert re.search(r"time relative to the smallest run .*x2 rows: [\d.]+, x4 rows: [\d.]+", out), out
    assert (tmp_path / "rows-1200-seed-42" / "spotify_dataset.csv").exists()
    assert (tmp_path / "rows-2400-seed-42" / "spotify_dataset.csv").exists()
    assert not (ROOT / "data" / "bench" / "rows-1200-seed-42").exists()  # --workdir is honoured
