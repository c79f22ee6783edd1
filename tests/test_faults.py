"""Surviving faults: a lost worker, a killed training job, killed writes, readers during a rewrite.

Every fault is real: the jobs run as ``./spark-submit.sh`` processes and are SIGKILLed (the whole
process tree, as a lost machine would take it), a worker of a real standalone cluster is killed
with its executor, and consumers read the committed tables with pyarrow and DuckDB while a job
rewrites them. Kill points are found by polling what the job does (the staging folders of
``songrec.io.staging_uri``, the checkpoint files, the Spark UI's REST API), never by sleeping.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from cluster import free_port, standalone_cluster
from conftest import ROOT, copy_run

from songrec import io
from songrec.config import Config, local_path
from songrec.train import run_training

SUBMIT = ROOT / "spark-submit.sh"
TEST_CONF = ROOT / "conf" / "test.yaml"
PREPROCESS_TABLES = ("rejects", "songs", "features", "meta")


# ---------------------------------------------------------------- helpers: jobs, kills, polling


def submit(cfg: Config, job: str, *sets: str, log: Path, master: str | None = None, args: tuple[str, ...] = (),
           spark_opts: tuple[str, ...] = ()) -> subprocess.Popen:  # fmt: skip
    """Start ``./spark-submit.sh JOB`` on ``cfg``'s root in its own session (so it can be killed as a group)."""
    cmd = [str(SUBMIT), *(["--master", master] if master else []), "--conf-file", str(TEST_CONF),
           "--set", f"root={cfg.root}", "--set", f"input={cfg.input}", *[a for s in sets for a in ("--set", s)],
           job, *args, *(["--", *spark_opts] if spark_opts else [])]  # fmt: skip
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process started (transitively) by ``pid``, also those in sessions of their own."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a job as a lost machine would: its process group and every descendant (torch ranks start
    sessions of their own, so the group alone would leave them running)."""
    pids = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, "killed processes did not go away"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def wait_until(condition: Callable[[], object], proc: subprocess.Popen, log: Path, what: str, timeout: float = 300):
    """Poll ``condition`` until it is truthy; fail if the job exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"job exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail(f"no {what} within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    assert rc == 0, log.read_text()[-4000:]


def staging(cfg: Config, name: str) -> list[Path]:
    """Staging folders of table ``name`` (``io.staging_uri`` names them ``_staging/<name>-<hex>``)."""
    return sorted((local_path(cfg.path()) / "_staging").glob(f"{name}-*"))


def digests(table: Path) -> dict[str, str]:
    """sha256 of every file of a committed table (through its link), by relative path."""
    return {
        str(p.relative_to(table)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(table.rglob("*"))
        if p.is_file()
    }


def rows(table: Path | str) -> list[tuple]:
    """All rows of a Parquet table, sorted (hive partition columns included)."""
    data = ds.dataset(table, format="parquet", partitioning="hive").to_table()
    return sorted(zip(*(data.column(c).to_pylist() for c in sorted(data.column_names)), strict=True))


def version(table: Path) -> str:
    return os.readlink(table)


def fresh_copy(finished: Config, dest: Path, *overrides: str) -> Config:
    cfg = copy_run(finished, dest, *overrides)
    shutil.rmtree(local_path(cfg.path("_staging")), ignore_errors=True)
    return cfg


# ---------------------------------------------------------------- 1. a worker lost in the middle of knn


def _active_stages(ui: str) -> list[dict]:
    try:
        with urllib.request.urlopen(f"{ui}/api/v1/applications", timeout=2) as resp:  # noqa: S310 - loopback
            apps = json.load(resp)
        if not apps:
            return []
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{apps[0]['id']}/stages?status=active", timeout=2) as r:  # noqa: S310
            return json.load(r)
    except OSError:
        return []


def _executor_logs(base: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(base.glob("worker*/app-*/*/stderr")))


@pytest.mark.cluster
def test_knn_survives_a_lost_worker(finished, tmp_path):
    """Standalone cluster of 3 one-core workers, the app capped at 2 cores (one worker is the spare). Once the
    shard indexes are built and a stage of the query + write pass has finished some tasks, one executor JVM and its
    worker daemon are SIGKILLed (a worker lost with its shuffle files). The job must finish on the spare
    worker and write exactly the fault-free table (the local-mode table of ``finished``)."""
    cfg = fresh_copy(finished, tmp_path)
    expected = rows(local_path(finished.path("neighbors")))
    log = tmp_path / "knn.log"
    ui = free_port()
    with standalone_cluster(tmp_path / "cluster", workers=3, cores=1, memory="2g") as cluster:
        proc = submit(
            cfg, "knn", "knn.query_partitions=32", "spark.executor_memory=1g", "spark.executor_cores=1",
            log=log, master=cluster.master_url,
            spark_opts=("--conf", "spark.cores.max=2", "--conf", f"spark.ui.port={ui}"),
        )  # fmt: skip

        def mid_query() -> list[dict]:
            # Gate on the job's own log line, not the staging folder: under AQE the query pass (the shuffle map
            # stage feeding the write) can run before the writer creates its staging folder.
            if "shard indexes in" not in log.read_text(errors="replace"):
                return []  # the build pass: the query + write pass has not started
            stages = _active_stages(f"http://127.0.0.1:{ui}")
            # Both executors busy (one core each), so whichever is killed loses a running task.
            return [s for s in stages if s["numCompleteTasks"] >= 1 and s["numActiveTasks"] >= 2]

        stage = wait_until(mid_query, proc, log, "query stage with finished and running tasks")[0]
        executors = cluster.executor_pids()
        assert len(executors) == 2, executors
        victim = executors[0]
        worker = Path(os.readlink(f"/proc/{victim}/cwd")).parents[1].name  # <base>/workerN/app-*/id
        worker_pid = int(next((cluster.base / "pids").glob(f"spark-{worker}-*Worker*.pid")).read_text())
        spare = [w for w in cluster.worker_dirs if not list(w.glob("app-*"))]
        assert len(spare) == 1, spare
        os.kill(victim, signal.SIGKILL)
        os.kill(worker_pid, signal.SIGKILL)
        finish(proc, log)
        assert list(spare[0].glob("app-*/*")), "no executor replaced the lost one on the spare worker"
        # Executors log every task attempt: attempt N.1 and later are tasks run again after the loss.
        retried = re.findall(r"Running task (\d+\.[1-9]) in stage (\d+)", _executor_logs(cluster.base))
        assert retried, "no task was run again: the kill hit no running work"
    text = log.read_text()
    assert "Lost executor" in text or "ExecutorLostFailure" in text, text[-3000:]
    table = local_path(cfg.path("neighbors"))
    got, n = rows(table), json.loads((table / "_manifest.json").read_text())["n"]
    assert len(got) == len(expected) == finished.knn.k * n
    assert got == expected, f"killed {worker} (executor {victim}) during stage {stage['stageId']}"
    print(  # noqa: T201 - numbers for the report (pytest -s)
        f"\nkilled {worker} + executor {victim} in stage {stage['stageId']} "
        f"({stage['numCompleteTasks']}/{stage['numTasks']} tasks done); re-run attempts {retried}; "
        f"{len(got)} rows equal"
    )


# ---------------------------------------------------------------- 2. training killed mid-epoch, then --resume

TRAIN = ("train.max_epochs=6", "train.patience=6", "train.batch_size=32", "train.shuffle_buffer=200")
VAL_LOSS_RTOL = 1e-3


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_to_the_same_model(spark, finished, tmp_path):
    """``./spark-submit.sh train`` is SIGKILLed (process group and every torch rank) while an epoch after the
    first checkpoint runs; ``./spark-submit.sh train --resume`` continues from the newest checkpoint.

    Tolerance: every epoch's validation loss, and the best one, within ``VAL_LOSS_RTOL`` = 0.1 % (relative)
    of an uninterrupted run with the same config; on CPU with ``reader_workers: 1`` they agree to float
    rounding. The history is continuous: epochs 1..6 once each, the checkpointed epochs unchanged.
    """
    ref = fresh_copy(finished, tmp_path / "ref", *TRAIN)
    shutil.rmtree(local_path(ref.path("_checkpoints")))
    full = run_training(spark, ref)

    cfg = fresh_copy(finished, tmp_path / "killed")
    shutil.rmtree(local_path(cfg.path("_checkpoints")))
    checkpoints = local_path(cfg.path("_checkpoints", "train"))
    model = local_path(cfg.path("model"))
    before = version(model)
    log = tmp_path / "train.log"
    proc = submit(cfg, "train", *TRAIN, log=log)
    wait_until(lambda: (checkpoints / "epoch-0001.pt").exists(), proc, log, "first checkpoint")
    kill_tree(proc)
    saved = sorted(p.name for p in checkpoints.glob("epoch-*.pt"))
    assert saved and saved[-1] < "epoch-0006.pt", saved  # killed before the last epoch ended
    assert version(model) == before  # nothing committed
    state = torch.load(checkpoints / saved[-1], map_location="cpu", weights_only=True)

    proc = submit(cfg, "train", *TRAIN, log=log, args=("--resume",))
    finish(proc, log)
    assert f"resumed from {checkpoints} after epoch {state['epoch']}" in log.read_text()
    history = json.loads((model / "history.json").read_text())
    assert version(model) != before
    assert [h["epoch"] for h in history] == list(range(1, 7)) == [h["epoch"] for h in full["history"]]
    assert history[: state["epoch"]] == state["history"]  # continuous: the checkpointed epochs as they were
    for got, want in zip(history, full["history"], strict=True):
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=VAL_LOSS_RTOL)
    info = json.loads((model / "model.json").read_text())
    assert info["summary"]["best_val_loss"] == pytest.approx(full["best_val_loss"], rel=VAL_LOSS_RTOL)
    print(  # noqa: T201 - numbers for the report (pytest -s)
        f"\nkilled after {saved}, resumed from epoch {state['epoch']}; best val loss resumed "
        f"{info['summary']['best_val_loss']:.6f} vs uninterrupted {full['best_val_loss']:.6f}; final val "
        f"{history[-1]['val_loss']:.6f} vs {full['history'][-1]['val_loss']:.6f}"
    )


# ---------------------------------------------------------------- 3. stages killed mid-write


@pytest.mark.slow
def test_preprocess_killed_mid_write_keeps_previous_tables(finished, tmp_path):
    """SIGKILL preprocess once ``features/`` is being staged (``rejects`` and ``songs`` already staged): the four
    committed tables keep every byte; a rerun, with the stale staging folders still there, replaces them."""
    cfg = fresh_copy(finished, tmp_path)
    root = local_path(cfg.path())
    tables = {name: root / name for name in PREPROCESS_TABLES}
    before = {name: digests(path) for name, path in tables.items()}
    versions = {name: version(path) for name, path in tables.items()}
    songs = rows(tables["songs"])
    log = tmp_path / "preprocess.log"
    proc = submit(cfg, "preprocess", log=log)
    wait_until(lambda: staging(cfg, "features"), proc, log, "features/ staging folder")
    kill_tree(proc)
    stale = [p for p in (root / "_staging").iterdir()]
    assert {p.name.rsplit("-", 1)[0] for p in stale} >= {"rejects", "songs", "features"}
    for name, path in tables.items():
        assert version(path) == versions[name] and digests(path) == before[name], name
    assert rows(tables["songs"]) == songs  # still readable, the same rows

    proc = submit(cfg, "preprocess", log=log)
    finish(proc, log)
    for name, path in tables.items():
        assert version(path) != versions[name], f"{name} was not replaced"
    assert rows(tables["songs"]) == songs  # same input, same songs
    assert json.loads((tables["meta"] / "counts.json").read_text()) == json.loads(
        (local_path(finished.path("meta")) / "counts.json").read_text()
    )
    assert all(p.exists() for p in stale)  # the rerun did not need them gone (left for an operator)


@pytest.mark.slow
def test_knn_killed_mid_write_keeps_previous_table(finished, tmp_path):
    """SIGKILL knn (``knn.k=5``) once its staging folder exists: the committed K=10 table keeps every byte and
    row; the rerun with the stale staging folder present commits the K=5 table."""
    cfg = fresh_copy(finished, tmp_path)
    table = local_path(cfg.path("neighbors"))
    before, old_rows, old_version = digests(table), rows(table), version(table)
    n = json.loads((table / "_manifest.json").read_text())["n"]
    log = tmp_path / "knn.log"
    proc = submit(cfg, "knn", "knn.k=5", log=log)
    wait_until(lambda: staging(cfg, "neighbors"), proc, log, "neighbors/ staging folder")
    kill_tree(proc)
    stale = staging(cfg, "neighbors")
    assert stale
    assert version(table) == old_version and digests(table) == before
    assert rows(table) == old_rows and len(old_rows) == 10 * n

    proc = submit(cfg, "knn", "knn.k=5", log=log)
    finish(proc, log)
    assert version(table) != old_version
    new_rows = rows(table)
    assert len(new_rows) == 5 * n and json.loads((table / "_manifest.json").read_text())["k"] == 5
    assert all(p.exists() for p in stale)


# ---------------------------------------------------------------- 4. readers while knn rewrites neighbors/


def _digest(table_rows: list[tuple]) -> str:
    return hashlib.sha256(repr(table_rows).encode()).hexdigest()


def _read_arrow(path: str) -> list[tuple]:
    return rows(path)


def _read_duckdb(path: str) -> list[tuple]:
    with duckdb.connect() as con:
        got = con.execute(
            f"SELECT bucket, neighbor_id, rank, score, song_id FROM read_parquet('{path}/*/*.parquet', "
            "hive_partitioning=true)"
        ).fetchall()
    return sorted(tuple(r) for r in got)


@pytest.mark.slow
def test_readers_see_old_or_new_table_while_knn_rewrites(finished, tmp_path):
    """Consumers read ``neighbors/`` in a loop (pyarrow.dataset and DuckDB, each both through the table path and
    pinned to the version the link names when the read starts) while ``./spark-submit.sh knn --set knn.k=5``
    replaces the K=10 table. Every successful read is the whole old table or the whole new one. A read through
    the path can lose the race (its file list came from the old version, the link moved before it opened them):
    that is an error (FileNotFoundError), never a mixture; a pinned read always succeeds."""
    cfg = fresh_copy(finished, tmp_path)
    table = local_path(cfg.path("neighbors"))
    old = rows(table)
    seen: dict[str, list[int]] = {}
    errors: list[str] = []
    lost_races = 0
    log = tmp_path / "knn.log"
    proc = submit(cfg, "knn", "knn.k=5", log=log)
    readers = {"arrow": _read_arrow, "duckdb": _read_duckdb}
    reads = 0
    while proc.poll() is None or reads < 8:
        for name, read in readers.items():
            for pinned in (False, True):
                path = os.path.realpath(table) if pinned else str(table)
                try:
                    got = read(path)
                except (FileNotFoundError, OSError, duckdb.IOException) as exc:
                    if pinned:
                        errors.append(f"{name} pinned: {exc}")
                    else:
                        lost_races += 1
                    continue
                seen.setdefault(_digest(got), []).append(len(got))
                reads += 1
    finish(proc, log)
    new = rows(table)
    assert len(new) == len(old) // 2
    names = {_digest(old): "old", _digest(new): "new"}
    assert not errors, errors[:5]
    assert set(seen) <= set(names), {k: v[:3] for k, v in seen.items() if k not in names}  # row counts of mixtures
    counts = {names[k]: len(v) for k, v in seen.items()}
    assert counts.get("old") and counts.get("new"), counts  # the loop really straddled the commit
    print(f"\nreads: {counts}, path reads that lost the race: {lost_races}")  # noqa: T201


def test_pinned_reader_survives_two_commits(tmp_path):
    """A reader resolves ``neighbors/`` to its version and lists the files; two commits follow before it opens
    them. The version it holds must still be there (io.commit keeps superseded versions for a grace period)."""
    final = tmp_path / "run" / "neighbors"
    staged = []
    for k in (10, 5, 3):
        stage = tmp_path / "run" / "_staging" / f"neighbors-k{k}" / "bucket=0"
        stage.mkdir(parents=True)
        pq.write_table(pa.table({"song_id": [1, 2], "neighbor_id": [2, k]}), stage / f"part-{k}.parquet")
        staged.append(str(stage.parent))
    io.commit(staged[0], str(final))
    held = ds.dataset(os.path.realpath(final), format="parquet", partitioning="hive")  # files listed, none opened
    io.commit(staged[1], str(final))
    io.commit(staged[2], str(final))
    assert held.to_table().column("neighbor_id").to_pylist() == [2, 10]
    assert rows(final) == [(0, 2, 1), (0, 3, 2)]  # (bucket, neighbor_id, song_id) of the newest
