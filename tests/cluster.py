"""A real Spark standalone cluster on 127.0.0.1: one master and N workers, started and stopped by pid.

pip's pyspark ships ``sbin/spark-daemon.sh`` but not ``start-master.sh``, so the daemons are started
the way those scripts would: ``spark-daemon.sh start org.apache.spark.deploy.master.Master 1 ...``.
Each daemon gets its own pid, log and work directory under the given base; :func:`standalone_cluster`
kills every daemon it started, also when the test fails.

Run by hand:  python tests/cluster.py /tmp/cluster   (starts, prints the master URL, waits for Enter)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
DAEMON = SPARK_HOME / "sbin" / "spark-daemon.sh"


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running standalone cluster."""

    master_url: str
    ui_url: str
    base: Path
    pid_files: list[Path] = field(default_factory=list)
    worker_dirs: list[Path] = field(default_factory=list)

    def state(self) -> dict:
        """The master's JSON status (workers, applications)."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as resp:  # noqa: S310 - loopback only
            return json.load(resp)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def worker_pids(self) -> list[int]:
        """pids of the worker daemons (not the master)."""
        return [int(p.read_text()) for p in self.pid_files if "Worker" in p.name and p.exists()]

    def executor_pids(self) -> list[int]:
        """pids of executor JVMs running under the workers right now."""
        out = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True)
        pids = []
        for pid in out.stdout.split():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")  # executors run in <worker work dir>/app-*/N
            except OSError:
                continue
            if cwd.startswith(str(self.base)):
                pids.append(int(pid))
        return pids


def _daemon_env(base: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_PID_DIR=str(base / "pids"),
        SPARK_LOG_DIR=str(base / "logs" / name),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_IDENT_STRING=name,
        PYSPARK_PYTHON=env.get("PYSPARK_PYTHON", sys.executable),
    )
    return env


@contextmanager
def standalone_cluster(base: Path, workers: int = 2, cores: int = 1, memory: str = "2g") -> Iterator[Cluster]:
    """Start a master and ``workers`` workers; yield the :class:`Cluster`; stop all daemons by pid."""
    base = Path(base)
    (base / "pids").mkdir(parents=True, exist_ok=True)
    port, ui = free_port(), free_port()
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", base)
    try:
        subprocess.run(
            [str(DAEMON), "start", "org.apache.spark.deploy.master.Master", "1",
             "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
            env=_daemon_env(base, "master"), check=True, capture_output=True,
        )  # fmt: skip
        cluster.pid_files += sorted((base / "pids").glob("*Master*.pid"))
        for i in range(1, workers + 1):
            work = base / f"worker{i}"
            work.mkdir(exist_ok=True)
            cluster.worker_dirs.append(work)
            subprocess.run(
                [str(DAEMON), "start", "org.apache.spark.deploy.worker.Worker", str(i),
                 "--host", "127.0.0.1", "--webui-port", str(free_port()), "--cores", str(cores),
                 "--memory", memory, "--work-dir", str(work), cluster.master_url],
                env=_daemon_env(base, f"worker{i}"), check=True, capture_output=True,
            )  # fmt: skip
        cluster.pid_files = sorted((base / "pids").glob("*.pid"))
        deadline = time.monotonic() + 90
        while True:
            try:
                if len(cluster.alive_workers()) >= workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in (base / "logs").rglob("*.out"))
                raise RuntimeError(f"standalone cluster did not come up within 90 s; logs:\n{logs}")
            time.sleep(1)
        yield cluster
    finally:
        _stop(cluster)


def _stop(cluster: Cluster) -> None:
    """Kill every daemon we started (workers first), by the pids spark-daemon.sh recorded."""
    pid_files = sorted(cluster.base.glob("pids/*.pid"), key=lambda p: "Master" in p.name)
    pids = []
    for pid_file in pid_files:
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid_file in pid_files:
        pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    with standalone_cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/songrec-cluster")) as c:
        sys.stdout.write(f"{c.master_url}  (UI {c.ui_url}); press Enter to stop\n")
        sys.stdin.readline()
