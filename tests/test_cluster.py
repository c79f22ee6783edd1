"""The whole pipeline on a real Spark standalone cluster (master + 2 workers on 127.0.0.1), against local mode.

``make test-cluster`` (``pytest -m cluster``); ``make test`` leaves these out. Every job is a real
``./spark-submit.sh`` process. The cluster jobs are submitted with ``--pack``: the executors run the
venv-pack archive's Python, which has torch, pyarrow and hnswlib but not songrec (the editable
install is left out of the archive), so our code reaches them only through ``--py-files
build/songrec.zip`` (on this machine the venv's own Python would find songrec through the editable
install and hide a shipping bug). Training runs as TorchDistributor barrier tasks on the executors
(``train.local_mode=false``), and ``root`` is a ``file://`` URI that every executor sees (one
machine). The daemons are started and stopped by pid by :func:`cluster.standalone_cluster`, also
when a test fails.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cluster import Cluster, standalone_cluster
from conftest import ROOT

pytestmark = pytest.mark.cluster

SUBMIT = ROOT / "spark-submit.sh"
TEST_CONF = ROOT / "conf" / "test.yaml"
# Two workers of one core each: the two training ranks are two barrier tasks, one per executor.
# Executors are small (the data is 3000 rows); the Python workers and torch ranks are outside the JVM.
EXECUTOR = ("--set", "spark.executor_memory=1g", "--set", "spark.executor_cores=1")


def submit(log: Path, *args: str, timeout: int = 900) -> str:
    """Run ``./spark-submit.sh ARGS`` at low priority; return its output (stdout + stderr), fail with its tail."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run(
            ["nice", "-n", "15", str(SUBMIT), *args], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout
        )
    text = log.read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, f"spark-submit.sh {' '.join(args)} failed ({proc.returncode}):\n{text[-6000:]}"
    sys.stderr.write(f"{log.name}: {time.monotonic() - started:.0f} s\n")
    return text


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """Master + 2 workers (1 core, 2 GB each); the workers' folders (unpacked archives) removed afterwards."""
    base = tmp_path_factory.mktemp("standalone")
    try:
        with standalone_cluster(base, workers=2, cores=1, memory="2g") as running:
            yield running
    finally:
        for work in base.glob("worker*"):
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A generated CSV of conf/test.yaml's size (3000 rows) with its truth file."""
    csv = tmp_path_factory.mktemp("raw") / "spotify_dataset.csv"
    submit(csv.parent / "generate.log", "--master", "local[2]", "--conf-file", str(TEST_CONF),
           "--set", f"input={csv}", "generate")  # fmt: skip
    return csv


def pipeline(log: Path, master: str, csv: Path, root: Path, *extra: str) -> str:
    return submit(log, "--master", master, "--conf-file", str(TEST_CONF), "--set", f"input={csv}",
                  "--set", f"root={root.as_uri()}", *extra, "pipeline")  # fmt: skip


def flat(tree: dict, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (pytest.approx compares flat mappings only)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def neighbors(root: Path) -> list[tuple]:
    table = pq.read_table(root / "neighbors", columns=["song_id", "rank", "neighbor_id", "score"])
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def test_pipeline_on_cluster_matches_local_mode(cluster: Cluster, dataset: Path, tmp_path: Path):
    """The full pipeline submitted to the standalone cluster gives what local mode gives on the same input and seeds.

    Same input, same conf/test.yaml (seeds included), two runs: ``local[2]`` with local-mode training,
    and the cluster (2 executors of 1 core, ``--pack``) with ``train.local_mode=false``. Training is deterministic
    across the two (same 2 ranks, same row-group shards, seeds, one intra-op thread per rank, gloo), so
    the model is the same to the bit (``model_id`` is a hash of the weights) and the neighbour table is
    equal row for row; the metrics in ``report/metrics.json`` are then equal too (tolerance 0; the
    comparison below allows 1e-9 for JSON rounding only).
    """
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    pipeline(tmp_path / "local.log", "local[2]", dataset, local_root, "--set", "train.local_mode=true")
    out = pipeline(tmp_path / "cluster.log", cluster.master_url, dataset, cluster_root,
                   "--set", "train.local_mode=false", *EXECUTOR, "--pack")  # fmt: skip
    assert f"master {cluster.master_url}" in out

    # Training really ran as barrier tasks on the executors (an executor's rank 0 sent the files back).
    logs = [p.read_text(errors="replace") for w in cluster.worker_dirs for p in w.glob("app-*/*/stderr")]
    assert any("barrier" in text.lower() for text in logs), "no barrier task in the executor logs"
    assert all("Unpacking an archive" in text and "#environment" in text for text in logs), "archive not unpacked"

    local_model = json.loads((local_root / "model" / "model.json").read_text())
    cluster_model = json.loads((cluster_root / "model" / "model.json").read_text())
    assert cluster_model["model_id"] == local_model["model_id"]

    assert neighbors(cluster_root) == neighbors(local_root)

    local_metrics = json.loads((local_root / "report" / "metrics.json").read_text())
    cluster_metrics = json.loads((cluster_root / "report" / "metrics.json").read_text())
    for section in ("recall", "relevance"):
        assert flat(cluster_metrics[section]) == pytest.approx(flat(local_metrics[section]), abs=1e-9), section


def test_pack_ships_the_environment_to_executors(cluster: Cluster, tmp_path: Path):
    """``--pack``: every executor runs ``./environment/bin/python`` from the unpacked archive and imports
    torch, pyarrow and hnswlib from it, while songrec still comes from ``--py-files songrec.zip``."""
    out = submit(tmp_path / "doctor.log", "--master", cluster.master_url, "--conf-file", str(TEST_CONF),
                 *EXECUTOR, "--pack", "doctor", "--tasks", "4")  # fmt: skip
    reports = [json.loads(line.split("executor environment: ", 1)[1]) for line in out.splitlines()
               if "executor environment: " in line]  # fmt: skip
    assert len(reports) == 4
    for report in reports:
        assert "/environment/bin/python" in report["executable"], report["executable"]
        assert str(cluster.base) in report["cwd"]  # an executor's working directory under a worker
        for name in ("torch", "pyarrow", "hnswlib", "numpy"):
            assert "/environment/lib/python3.11/site-packages/" in report["modules"][name], report["modules"][name]
        assert "songrec.zip" in report["modules"]["songrec"]
    assert {Path(r["cwd"]).parts[-3] for r in reports} <= {w.name for w in cluster.worker_dirs}
