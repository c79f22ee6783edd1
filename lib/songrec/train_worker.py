"""The per-rank training function, shared by Spark's TorchDistributor and plain ``torchrun``.

Without Spark (e.g. a GPU box that has torch but no pyspark), from the repository root::

    torchrun --standalone --nproc_per_node=2 -m songrec.train_worker \\
        --features data/run/features --meta data/run/meta --out data/run/model [--resume] \\
        [--conf-file conf/local.yaml] [--set train.batch_size=8192 ...]

Nothing here imports pyspark. :func:`train_rank` takes one plain dict (the *spec*, built by
:func:`make_spec`), so that cloudpickle ships it by reference to this importable module.
The epoch loop lives in :mod:`songrec.train_loop`.
"""

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def make_spec(
    train: dict[str, Any],
    features_uri: str,
    features_meta: dict[str, Any],
    stats: dict[str, Any],
    out_dir: str,
    checkpoint_dir: str,
    *,
    resume: bool = False,
    use_gpu: bool = False,
    threads: int = 1,
    return_files: bool = False,
    trace_dir: str | None = None,
) -> dict[str, Any]:
    """Everything a rank needs, as plain data.

    Args:
        train: the ``train`` config section as a dict.
        features_uri: the ``features/`` table.
        features_meta: ``meta/features.json`` content.
        stats: ``meta/stats.json`` content (copied into model.json).
        out_dir: local directory where rank 0 writes the model artefacts.
        checkpoint_dir: POSIX directory for per-epoch checkpoints (rank 0 writes, every rank reads).
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        use_gpu: one CUDA device per rank (``LOCAL_RANK``), NCCL, bf16 autocast.
        threads: torch intra-op threads per rank.
        return_files: rank 0 also returns the artefacts' bytes (TorchDistributor with ``local_mode=False``,
            where rank 0's disk is not the driver's).
        trace_dir: tests only: each rank writes the song_ids it trained on per epoch there.
    """
    return {
        "train": dict(train),
        "features_uri": features_uri,
        "features_meta": features_meta,
        "stats": stats,
        "out_dir": out_dir,
        "checkpoint_dir": checkpoint_dir,
        "resume": resume,
        "use_gpu": use_gpu,
        "threads": threads,
        "return_files": return_files,
        "trace_dir": trace_dir,
    }


def train_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Train on this rank's shard; every rank returns the same summary (rank 0 writes the artefacts).

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (set by torchrun, which
    TorchDistributor runs); without them it trains alone as rank 0 of 1.
    """
    import torch.distributed as dist

    from songrec.train_loop import run_rank

    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank = int(os.environ["RANK"])
    _setup_rank_logging(rank)
    watch = watch_fatal_signals(spec["checkpoint_dir"], rank)
    backend = "nccl" if spec["use_gpu"] else "gloo"
    dist.init_process_group(backend=backend)
    try:
        return run_rank(spec)
    except BaseException as exc:
        record_failure(spec["checkpoint_dir"], rank, exc)
        raise
    finally:
        try:
            dist.destroy_process_group()
        finally:
            stop_watching(watch)


FAILURES = "failures"  # under the checkpoint folder: one JSON file per rank that raised
FATAL_SUFFIX = ".fatal"  # beside them: the stack dump of a rank killed by a fatal signal


def checkpoint_folder(uri: str) -> Path:
    """The local folder of a checkpoint location (``train.checkpoint_dir``, a path or ``file://`` URI).

    Raises:
        InputError: ``uri`` is remote (HDFS, S3): rank 0 writes checkpoints with ``torch.save`` to a POSIX folder.
    """
    from songrec.config import local_path
    from songrec.errors import InputError, SongrecError

    try:
        return local_path(uri)
    except SongrecError:
        raise InputError(
            f"checkpoints need a POSIX folder every rank can reach, {uri} is not one: set train.checkpoint_dir"
        ) from None


def failures_dir(checkpoint_dir: str) -> Path:
    """Where ranks record the exception that ended them (a folder every rank and the driver can reach)."""
    return Path(checkpoint_dir) / FAILURES


def record_failure(checkpoint_dir: str, rank: int, exc: BaseException) -> None:
    """Write ``rank{N}.json`` (type, message, whether it is a user-fixable songrec error, traceback, time).

    TorchDistributor reports any rank's death only as "TorchDistributor failed during training" (its
    torchrun wrapper exits 0 either way), so the driver reads these files to say what went wrong.
    Best effort: a failure to write is logged, never raised over the original exception.
    """
    import json
    import time
    import traceback

    from songrec.errors import InputError, SongrecError

    record = {
        "rank": rank,
        "type": type(exc).__name__,
        "message": str(exc),
        "songrec": isinstance(exc, SongrecError),
        "input": isinstance(exc, InputError),
        "time": time.time(),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    folder = failures_dir(checkpoint_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".rank{rank}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, folder / f"rank{rank}.json")
    except OSError as err:
        log.error("could not record rank %d's failure in %s: %s", rank, folder, err)
    log.error("rank %d failed: %s: %s", rank, record["type"], record["message"])


def watch_fatal_signals(checkpoint_dir: str, rank: int) -> tuple[Any, bool] | None:
    """Make a fatal signal in this rank (a segfault in native code) leave ``rank{N}.fatal`` in the failures folder.

    ``faulthandler`` writes the Python stack of every thread there when the process dies of SIGSEGV,
    SIGFPE, SIGABRT, SIGBUS or SIGILL; Python's own exception handling never runs then, so without
    this the driver could only say that a rank died. Returns what :func:`stop_watching` needs (the open
    file, whether faulthandler was on before), or ``None`` when the folder cannot be written (logged;
    training goes on unwatched).
    """
    import faulthandler

    path = failures_dir(checkpoint_dir) / f"rank{rank}{FATAL_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w")  # noqa: SIM115 - must stay open for as long as the rank runs
    except OSError as err:
        log.warning("rank %d: cannot write %s, a fatal signal will leave no stack: %s", rank, path, err)
        return None
    was_on = faulthandler.is_enabled()  # e.g. PYTHONFAULTHANDLER=1 (to stderr): stop_watching puts it back
    faulthandler.enable(file=fh, all_threads=True)
    return fh, was_on


def stop_watching(watch: tuple[Any, bool] | None) -> None:
    """The rank ended without a fatal signal: stop :func:`watch_fatal_signals`, remove its empty file (and folder)."""
    import faulthandler

    if watch is None:
        return
    fh, was_on = watch
    if was_on:
        faulthandler.enable(file=sys.stderr, all_threads=True)
    else:
        faulthandler.disable()
    fh.close()
    path = Path(fh.name)
    try:
        if path.stat().st_size == 0:
            path.unlink()
            path.parent.rmdir()  # the failures folder too, unless another rank recorded something there
    except OSError:
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _setup_rank_logging(rank: int) -> None:
    """Rank 0 logs at INFO, the others only warnings (one progress line per epoch, not one per rank)."""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("petastorm", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_library_warnings()


def quiet_library_warnings() -> None:
    """Silence the deprecation and unclosed-file warnings petastorm 0.12 (on pyarrow 14) and matplotlib (on new
    pyparsing) repeat for every row group and epoch: a few hundred lines per run that bury real errors.

    torchrun children do not inherit the driver's warning filters.
    """
    for module in ("petastorm", "pyarrow", "matplotlib"):
        warnings.filterwarnings("ignore", module=module)
    warnings.filterwarnings("ignore", category=ResourceWarning)


def main(argv: list[str] | None = None) -> int:
    """Command line for ``torchrun ... -m songrec.train_worker`` (see the module docstring)."""
    from songrec import io
    from songrec.config import DEFAULT_CONF, config_from_args, local_path, to_uri
    from songrec.errors import SongrecError
    from songrec.feed import check_shardable

    parser = argparse.ArgumentParser(prog="torchrun ... -m songrec.train_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--features", required=True, help="features/ table (path or URI)")
    parser.add_argument("--meta", required=True, help="meta/ folder with features.json and stats.json")
    parser.add_argument("--out", required=True, help="model/ directory to write (local path), committed atomically")
    parser.add_argument(
        "--checkpoints", default="",
        help="checkpoint folder (default: train.checkpoint_dir, else OUT/../_checkpoints/train)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--conf-file", default=str(DEFAULT_CONF), help="YAML config whose train: section is used")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    _setup_rank_logging(rank)
    try:
        cfg = config_from_args(args)
        features_uri, meta_uri = to_uri(args.features), to_uri(args.meta).rstrip("/")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        check_shardable(features_uri, world)
        try:
            features_meta = io.read_json(f"{meta_uri}/features.json")
            stats = io.read_json(f"{meta_uri}/stats.json")
        except FileNotFoundError as exc:
            raise SongrecError(f"meta file missing: {exc.filename} (run the preprocess job first)") from None
        configured = str(checkpoint_folder(cfg.train.checkpoint_dir)) if cfg.train.checkpoint_dir else ""
    except SongrecError as exc:
        log.error("train failed: %s", exc)
        return 1
    final = local_path(to_uri(args.out))
    checkpoints = args.checkpoints or configured or str(final.parent / "_checkpoints" / "train")
    # Every rank must agree on the staging folder: derive it from torchrun's run id, not a random name.
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "solo")
    staging = final.parent / "_staging" / f"{final.name}-{run_id}"
    use_gpu = cfg.train.use_gpu == "true" or (cfg.train.use_gpu == "auto" and _cuda_available())
    threads = max(1, (os.cpu_count() or 1) // world)
    spec = make_spec(
        cfg.to_dict()["train"], features_uri, features_meta, stats, str(staging), checkpoints,
        resume=args.resume, use_gpu=use_gpu, threads=threads,
    )  # fmt: skip
    if rank == 0 and not args.resume:
        from songrec.train_loop import drop_stale_checkpoints

        drop_stale_checkpoints(Path(checkpoints))
    summary = train_rank(spec)
    if rank == 0:
        io.commit(str(staging), str(final))
        log.info("model %s written to %s", summary["model_id"], final)
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def exit_now(code: int) -> None:
    """End this rank process with ``code`` without the interpreter's teardown.

    The work is done and committed by then. In that teardown a native thread sometimes outlives its
    owner: the rank prints ``terminate called without an active exception`` and dies of SIGABRT,
    and torchrun reports a finished, committed training as failed (seen once in the test suite,
    2026-12-02; see docs/design.md). Flushing the logs and streams and leaving with ``os._exit``
    skips that teardown; nothing of ours needs it.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
