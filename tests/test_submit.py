"""spark-submit.sh: usage, argument checking, quoting, and a real submit from another directory."""

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from songrec.config import ConfigError, load_config
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
    jobs = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))
    assert len(jobs) >= 8
    for job in jobs:
        assert f"  {job}\n" in out.stdout, job


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


def test_pack_options_ship_the_archive_as_environment():
    cfg = load_config(ROOT / "conf" / "test.yaml")
    opts = submit_options(
        cfg, "spark://127.0.0.1:7077", archive="/x/build/env.tar.gz", driver_python="/x/.venv/bin/python"
    )
    pairs = dict(zip(opts[::2], opts[1::2], strict=True))
    assert pairs["--archives"] == "/x/build/env.tar.gz#environment"
    confs = [v for k, v in zip(opts[::2], opts[1::2], strict=True) if k == "--conf"]
    assert "spark.pyspark.python=./environment/bin/python" in confs
    assert "spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python" in confs
    assert "spark.pyspark.driver.python=/x/.venv/bin/python" in confs  # client mode: the driver runs here
    cluster_mode = submit_options(cfg, "yarn", archive="/x/build/env.tar.gz")
    assert not any(o.startswith("spark.pyspark.driver.python") for o in cluster_mode)
    assert "--archives" not in submit_options(cfg, "spark://127.0.0.1:7077")


def test_pack_with_a_local_master_is_refused_before_spark_starts():
    with pytest.raises(ConfigError, match="--pack"):
        submit_options(load_config(ROOT / "conf" / "test.yaml"), "local[2]", archive="env.tar.gz")
    # Through the script: refused with exit status 2 before any archive is built or Spark started.
    out = _run("--master", "local[2]", "--conf-file", str(ROOT / "conf" / "test.yaml"), "--pack", "generate")
    assert out.returncode == 2 and "--pack" in out.stderr and "packing" not in out.stderr, out.stderr[-2000:]


def test_pack_excludes_only_our_own_editable_install(tmp_path):
    from songrec.pack import editable_locations

    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "__editable__.songrec-0.1.0.pth").write_text(f"{ROOT / 'lib'}\n")
    (site / "distutils-precedence.pth").write_text("import os; os.environ.get('X')\n")
    (site / "inside.pth").write_text("vendored\n")
    assert editable_locations(tmp_path / "venv") == [str(ROOT / "lib")]


# AVX-512 in a disassembly: its 512-bit registers, opmask registers, or EVEX-only instructions.
AVX512 = re.compile(r"%zmm\d|\{%k[1-7]\}|\bvpternlog[dq]\b|\bvmovdqu(?:8|16|32|64)\b")


def avx512_instructions(library: Path) -> list[str]:
    """The lines of ``objdump -d library`` that use AVX-512."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return [line.strip() for line in out.stdout.splitlines() if AVX512.search(line)]


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None, reason="x86-64 with objdump")
def test_hnswlib_is_built_for_a_portable_cpu_target():
    """The venv (and the --pack archive made from it) must run on any AVX2 CPU, not only the build host's.

    hnswlib compiles with -march=native unless told otherwise; the Makefile builds it for x86-64-v3.
    """
    import hnswlib

    found = avx512_instructions(Path(hnswlib.__file__))
    assert not found, (
        f"{hnswlib.__file__} uses AVX-512 ({len(found)} instructions, e.g. {found[:2]}): it was built with "
        "-march=native (pip's wheel cache, or HNSWLIB_MARCH=native) and dies of SIGILL on CPUs without AVX-512; "
        "rebuild it with `rm .venv/.installed && make install`"
    )
