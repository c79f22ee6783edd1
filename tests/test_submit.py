"""spark-submit.sh: usage, argument checking, quoting, and a real submit from another directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from songrec.config import load_config
from songrec.submit import submit_options

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "spark-submit.sh"


def _run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_jobs():
    out = _run("-h")
    assert out.returncode == 0
    assert "usage:" in out.stdout
    for job in ["generate", "preprocess"]:
        assert f"  {job}\n" in out.stdout


@pytest.mark.parametrize("job", ["nosuchjob", "../setup", "_private"])
def test_unknown_job_prints_usage(job):
    out = _run(job)
    assert out.returncode == 2
    assert f"unknown job '{job}'" in out.stderr and "Jobs:" in out.stderr


def test_bad_config_key_is_named_before_spark_starts():
    out = _run("--set", "knn.kk=1", "generate")
    assert out.returncode != 0
    assert "knn.kk" in out.stderr


def test_submit_options_from_config():
    cfg = load_config(ROOT / "conf" / "cluster.yaml")
    opts = submit_options(cfg, master="spark://127.0.0.1:7077")
    assert opts[:2] == ["--master", "spark://127.0.0.1:7077"]
    assert "--executor-memory" in opts and "spark.dynamicAllocation.enabled=false" in opts
    local = submit_options(load_config(ROOT / "conf" / "local.yaml"))
    assert local[:2] == ["--master", "local[*]"] and "--executor-memory" not in local


def test_real_submit_from_another_directory_with_awkward_paths(tmp_path):
    # A path with a space and a ';' must reach the job as one argument, never a shell.
    base = tmp_path / "my run; rm -rf x"
    base.mkdir()
    out = _run(
        "--conf-file", str(ROOT / "conf" / "test.yaml"),
        "--set", f"input={base}/raw/songs.csv", "--set", "generate.rows=300", "--set", "spark.driver_memory=1g",
        "generate",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    csv = base / "raw" / "songs.csv"
    assert csv.is_file()
    assert sum(1 for _ in csv.open(encoding="utf-8")) >= 300
