"""Distributed training on the driver side: checks, Spark's TorchDistributor, atomic commit of ``model/``.

:func:`run_training` validates the inputs (``features/`` exists and has enough row groups for the
ranks, ``meta/`` is there, GPUs exist if asked for), then starts
``pyspark.ml.torch.distributor.TorchDistributor(num_processes, local_mode, use_gpu)`` on
:func:`songrec.train_worker.train_rank`; each rank reads its Petastorm shard and trains a DDP
replica (see :mod:`songrec.train_loop`). Rank 0 writes the artefacts into a staging folder, which
is committed as ``model/`` in one step (:func:`songrec.io.commit`). A rank that raises records the
exception under the checkpoint folder (:func:`songrec.train_worker.record_failure`), and
:func:`rank_failure` turns those records into the error the driver raises. A rank killed by a fatal
signal (a crash in native code) gets ``train.retries`` more runs, each resuming from the newest checkpoint;
the crashed attempt's records stay in ``failures-attemptN`` beside ``failures``.

The train function is shipped by cloudpickle *by reference* (``songrec.train_worker.train_rank``),
so the package must be importable where the ranks run: on the driver in local mode (it is
installed in the venv), on executors through ``--py-files build/songrec.zip`` (spark-submit.sh).

The same ranks run without Spark under ``torchrun`` (see :mod:`songrec.train_worker`).
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from songrec import io
from songrec.config import Config, local_path
from songrec.errors import InputError, SongrecError, first_line
from songrec.feed import check_shardable
from songrec.train_worker import FATAL_SUFFIX, checkpoint_folder, failures_dir, make_spec, train_rank

log = logging.getLogger(__name__)


def gpus_available(spark: Any, local_mode: bool) -> bool:
    """Whether TorchDistributor can give each rank a GPU with this session's resources."""
    conf = spark.sparkContext.getConf()
    if local_mode:
        import torch

        has_resource = "gpu" in spark.sparkContext.resources and int(conf.get("spark.driver.resource.gpu.amount", "0"))
        return bool(has_resource) and torch.cuda.is_available()
    return float(conf.get("spark.task.resource.gpu.amount", "0")) >= 1


def resolve_use_gpu(spark: Any, cfg: Config) -> bool:
    """Turn ``train.use_gpu`` (auto | true | false) into a decision, failing early when true is impossible."""
    setting = cfg.train.use_gpu
    if setting == "false":
        return False
    available = gpus_available(spark, cfg.train.local_mode)
    if setting == "true" and not available:
        where = (
            "the driver (local mode needs spark.driver.resource.gpu.amount and a discovery script, and torch must "
            "see CUDA)"
            if cfg.train.local_mode
            else "the executors (set spark.task.resource.gpu.amount=1 and the executor GPU resources)"
        )
        raise SongrecError(f"train.use_gpu is true but no GPU is available to {where}; set train.use_gpu=auto or false")
    log.info("training on %s (train.use_gpu=%s)", "GPU" if available else "CPU", setting)
    return available


def _read_meta(spark: Any, cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    found = []
    for name in ("features.json", "stats.json"):
        uri = cfg.path("meta", name)
        if not io.exists(uri, spark):
            raise InputError(f"{uri} does not exist (run the preprocess job first)")
        found.append(io.read_json(uri, spark))
    return found[0], found[1]


ATTEMPT_SUFFIX = "-attempt"  # failures-attemptN: the records of attempt N, kept when it crashed and was retried


def checkpoint_dir(cfg: Config) -> Path:
    """Where rank 0 writes per-epoch checkpoints: ``train.checkpoint_dir`` or ``root/_checkpoints/train``."""
    return checkpoint_folder(cfg.train.checkpoint_dir or cfg.path("_checkpoints", "train"))


def run_training(spark: Any, cfg: Config, resume: bool = False, *, trace_dir: str | None = None) -> dict[str, Any]:
    """Train the autoencoder on ``features/`` with TorchDistributor and commit ``model/``.

    Args:
        spark: the active session (TorchDistributor finds it too).
        cfg: the run's config (``train`` section).
        resume: continue from the newest checkpoint (``train.checkpoint_dir``, default ``root/_checkpoints/train``).
        trace_dir: tests only: every rank writes the song_ids it trained on, per epoch, to this folder.

    Returns:
        The history summary: epochs, best epoch and validation loss, final train loss, whether it
        stopped early, world size, device, ``model_id`` and the per-epoch history.

    Raises:
        InputError: ``features/`` or ``meta/`` missing, too few row groups for the ranks.
        SongrecError: ``train.use_gpu`` is true and there is no GPU.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    features_uri = cfg.path("features")
    if not io.exists(features_uri, spark):
        raise InputError(f"features table {features_uri} does not exist (run the preprocess job first)")
    features_meta, stats = _read_meta(spark, cfg)
    groups = check_shardable(features_uri, cfg.train.num_processes)
    use_gpu = resolve_use_gpu(spark, cfg)
    checkpoints = checkpoint_dir(cfg)
    staging = io.staging_uri(cfg.path(), "model")
    local_out = io.is_local(staging) and cfg.train.local_mode
    out_dir = str(local_path(staging)) if local_out else tempfile.mkdtemp(prefix="songrec-model-")
    spec = make_spec(
        cfg.to_dict()["train"], features_uri, features_meta, stats, out_dir, str(checkpoints),
        resume=resume, use_gpu=use_gpu, threads=max(1, (os.cpu_count() or 1) // cfg.train.num_processes),
        return_files=not cfg.train.local_mode, trace_dir=trace_dir,
    )  # fmt: skip
    log.info(
        "training %s rows (%s val) from %s: %d row groups over %d ranks, local_mode=%s",
        features_meta.get("rows", {}).get("train"), features_meta.get("rows", {}).get("val"), features_uri,
        groups, cfg.train.num_processes, cfg.train.local_mode,
    )  # fmt: skip
    distributor = TorchDistributor(
        num_processes=cfg.train.num_processes, local_mode=cfg.train.local_mode, use_gpu=use_gpu
    )
    failures = failures_dir(str(checkpoints))
    if not resume:
        from songrec.train_loop import drop_stale_checkpoints

        drop_stale_checkpoints(checkpoints)
    try:
        summary = _run_with_retries(distributor, spec, failures, cfg.train.retries)
        files = summary.pop("files", None)
        if files is not None:  # artefacts came back as bytes from an executor's rank 0
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (Path(out_dir) / name).write_bytes(data)
        if not local_out:
            io.upload(out_dir, staging, spark)
        io.commit(staging, cfg.path("model"), spark)
    except BaseException:
        io.discard(staging, spark)
        raise
    finally:
        if not local_out:
            shutil.rmtree(out_dir, ignore_errors=True)
    log.info(
        "model %s: %d epochs, best val loss %.4f at epoch %d%s",
        summary["model_id"], summary["epochs"], summary["best_val_loss"], summary["best_epoch"],
        " (stopped early)" if summary["stopped_early"] else "",
    )  # fmt: skip
    return summary


def _run_with_retries(distributor: Any, spec: dict[str, Any], failures: Path, retries: int) -> dict[str, Any]:
    """``distributor.run`` the ranks; after a rank killed by a fatal signal (the root cause :func:`rank_failure`
    puts first: a crash in native code, not a fault of the input or the config, which would repeat), up to
    ``retries`` more times, each resuming from the newest checkpoint (a resumed run repeats the uninterrupted
    one's data order and random streams, so the model is the one an unbroken run gives). Any other failure is
    raised at once."""
    for old in failures.parent.glob(f"{failures.name}{ATTEMPT_SUFFIX}*"):  # an earlier run's crashes
        shutil.rmtree(old, ignore_errors=True)
    attempt = 0
    while True:
        shutil.rmtree(failures, ignore_errors=True)
        cause: BaseException | None = None
        try:
            summary = distributor.run(train_rank, spec)
        except Exception as exc:  # noqa: BLE001 - local mode: RuntimeError; on executors: Py4J/PythonException
            summary, cause = None, exc
        if summary is not None:
            return summary
        records = _failure_records(failures)
        if attempt == retries or not (records and records[0]["fatal"]):
            raise _failure_error(records, failures, cause) from cause
        attempt += 1
        kept = _keep_attempt(failures, attempt)
        records = [{**r, "path": kept / r["path"].name} for r in records]  # the files the warning names, moved
        error = _failure_error(records, kept, cause)
        log.warning("%s; retrying from the newest checkpoint (train.retries=%d, retry %d)", error, retries, attempt)
        spec = dict(spec, resume=True)


def _keep_attempt(failures: Path, attempt: int) -> Path:
    """Move a crashed attempt's records to ``failures-attemptN`` beside ``failures`` (the next attempt starts
    with an empty ``failures``), so the stack dump the retry warning names is still there after the retry."""
    kept = failures.with_name(f"{failures.name}{ATTEMPT_SUFFIX}{attempt}")
    shutil.rmtree(kept, ignore_errors=True)
    failures.rename(kept)
    return kept


def rank_failure(folder: Path, cause: BaseException | None = None) -> SongrecError:
    """The error to raise when TorchDistributor reports a failed run: what the ranks recorded, root cause first.

    A rank's own clear error (an :class:`InputError` such as a checkpoint made with another config) is
    raised as it is. Next comes a rank killed by a fatal signal (its ``rank{N}.fatal`` stack dump, see
    :func:`songrec.train_worker.watch_fatal_signals`): the other ranks' errors are then only its echo
    ("Connection closed by peer"). Any other exception becomes a :class:`SongrecError` naming the rank,
    the exception and the file with its traceback. A rank that died without a word (SIGKILL, out of
    memory) leaves no record; the message says so, with the first line of ``cause`` (what
    TorchDistributor raised) when given.
    """
    return _failure_error(_failure_records(folder), folder, cause)


def _failure_records(folder: Path) -> list[dict[str, Any]]:
    """What the ranks recorded under ``folder``, root cause first: songrec errors, then fatal signals, then
    other exceptions, each group oldest first."""
    records = []
    for path in sorted(folder.glob("rank*.json")):
        try:
            records.append({**json.loads(path.read_text()), "path": path, "fatal": False})
        except (OSError, ValueError):
            continue
    for path in sorted(folder.glob(f"rank*{FATAL_SUFFIX}")):
        try:
            dump = path.read_text(errors="replace")
            when = path.stat().st_mtime
        except OSError:
            continue
        if dump.strip():
            rank = path.name[len("rank") : -len(FATAL_SUFFIX)]
            records.append({"rank": rank, "type": "fatal signal", "message": first_line(dump.strip()),
                            "songrec": False, "time": when, "path": path, "fatal": True,
                            "frame": _innermost_frame(dump)})  # fmt: skip
    records.sort(key=lambda r: (not r["songrec"], not r["fatal"], r["time"]))
    return records


def _failure_error(records: list[dict[str, Any]], folder: Path, cause: BaseException | None) -> SongrecError:
    """:func:`rank_failure`'s error from :func:`_failure_records`' list."""
    if not records:
        said = f" (TorchDistributor: {type(cause).__name__}: {first_line(str(cause))})" if cause is not None else ""
        return SongrecError(
            f"training failed and no rank recorded an exception in {folder}: a rank was probably killed (out of "
            f"memory, or a signal), or that folder is not one the driver sees; see the torchrun output above{said}"
        )
    first = records[0]
    if first["songrec"]:
        kind = InputError if first["input"] else SongrecError
        return kind(first["message"])
    others = "; ".join(f"rank {r['rank']}: {r['type']}: {first_line(r['message'])}" for r in records[1:])
    then = f"; then {others}" if others else ""
    if first["fatal"]:
        at = f", in {first['frame']}" if first["frame"] else ""
        return SongrecError(
            f"training failed: rank {first['rank']} died of a fatal signal ({first['message']}{at}; the stack "
            f"of every thread is in {first['path']}){then}"
        )
    return SongrecError(
        f"training failed on rank {first['rank']}: {first['type']}: {first_line(first['message'])} "
        f"(traceback in {first['path']}){then}"
    )


def _innermost_frame(dump: str) -> str | None:
    """``File "x.py", line N in f``: the first frame of the crashing thread in a faulthandler dump."""
    lines = dump.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Current thread"):
            return next((x.strip() for x in lines[i + 1 :] if x.strip().startswith("File ")), None)
    return None
