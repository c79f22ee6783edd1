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


def test_knn_bench_times_every_method_on_real_embeddings(finished: Config):
    embeddings = local_path(finished.path("embeddings"))
    out = run_bench(
        "knn.py", "--embeddings", str(embeddings), "--sample", "300", "--scales", "1,2", "--scale-base", "1500"
    )
    methods = {m: table_rows(out, m) for m in ("1. songrec job", "2. hnswlib single", "3. PyNNDescent",
                                               "4. Spark BRP-LSH", "5. exact numpy")}  # fmt: skip
    assert all(len(rows) == 1 for rows in methods.values()), out
    # fields after the label: ..., wall s, x hnswlib, recall@10, peak RSS GB (the last four)
    wall, ratio, recall, peak = (float(x) for x in methods["2. hnswlib single"][0][-4:])
    assert ratio == 1.0 and wall > 0 and 0.99 <= recall <= 1.0 and peak > 0
    assert float(methods["1. songrec job"][0][-2]) >= 0.99, out  # the job's recall@10 at default parameters
    assert float(methods["5. exact numpy"][0][-2]) == 1.0, out
    assert 0.0 < float(methods["4. Spark BRP-LSH"][0][-2]) <= 1.0, out
    growth = re.findall(r"^\s+(\d)\s+(\d+)\s+[\d.]+\s+([\d.]+)\s+[\d.]+$", out, re.M)
    assert [(s, n) for s, n, _ in growth] == [("1", "1500"), ("2", "3000")], out
    assert float(growth[0][2]) == 1.0
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
    assert float(default[-1]) == 1.0 and float(default[4]) >= 0.99, out
    assert "peak RSS" in out


def test_train_bench_compares_petastorm_with_in_memory(preprocessed: Config):
    root = str(local_path(preprocessed.path()))
    out = run_bench("train.py", "--root", root, "--ranks", "2", "--repeats", "1", "--dense-steps", "3")
    rows = [line.split() for line in out.splitlines()]
    feeds = {r[1]: r for r in rows if len(r) == 7 and r[0] == "2" and r[1] in ("petastorm", "in-memory")}
    assert set(feeds) == {"petastorm", "in-memory"}, out
    assert float(feeds["in-memory"][5]) == 1.0
    assert float(feeds["petastorm"][5]) > 0 and int(feeds["petastorm"][2]) == int(feeds["in-memory"][2]) > 0
    assert re.search(r"2 rank\(s\), in memory, 3 steps: artist-table gradient sparse \d+ rows/s, dense \d+", out), out
    assert re.search(r"peak RSS: process tree \d+ MiB", out), out


def test_preprocess_bench_reconciles_and_prints_ratios(tmp_path: Path):
    out = run_bench("preprocess.py", "--rows", "1200", "--scales", "0.5,1,2", "--workdir", str(tmp_path))
    pandas = table_rows(out, "pandas (seed way, 1 proc)")
    spark = {f: table_rows(out, f"spark preprocess x{f}") for f in ("0.5", "1", "2")}
    assert len(pandas) == 1 and all(len(r) == 1 for r in spark.values()), out
    assert float(pandas[0][-1]) == 1.0
    read = {f: int(r[0][0].replace(",", "")) for f, r in spark.items()}
    assert read["1"] == 1200 and read["2"] == 2400 and 0 < read["0.5"] < 1200, out  # every row of the input read
    assert re.search(r"^spark x1 / pandas time: [\d.]+ for 1,200 rows$", out, re.M), out
    assert re.search(r"time relative to the smallest run .*x2 rows: [\d.]+, x4 rows: [\d.]+", out), out
    assert (tmp_path / "rows-1200-seed-42" / "spotify_dataset.csv").exists()
    assert (tmp_path / "rows-2400-seed-42" / "spotify_dataset.csv").exists()
    assert not (ROOT / "data" / "bench" / "rows-1200-seed-42").exists()  # --workdir is honoured
