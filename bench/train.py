"""Training throughput: one epoch fed by Petastorm vs the same epoch from tensors already in memory.

    .venv/bin/python bench/train.py [--root data/bench/run] [--ranks 1,2] [--dense-steps 100] [--set key=value ...]

Reads ``ROOT/features`` and ``ROOT/meta`` (default: the full-size run under data/bench/run). For
each rank count, DDP ranks (gloo on CPU, NCCL on GPU) train the same model as ``songrec.train``
with the same batch size and cores: first an untimed in-memory warm-up (30 steps), then one epoch fed by
Petastorm (make_batch_reader + BatchedDataLoader with the shuffling buffer) and one epoch over the
same shard held as tensors (the data-loading ceiling), interleaved ``--repeats`` times, best kept.
The ratio Petastorm / in-memory is the figure of merit (target >= 0.8). On CPU it then times
``--dense-steps`` in-memory steps with the artist table's gradient sparse (the default on CPU) and
dense (``train.sparse_artist=false``, the earlier design), so the gain of sparse gradients is a
ratio from one run. No Spark is needed: it runs on a GPU box with torch only.
"""

import argparse
import json
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from songrec.config import DEFAULT_CONF, load_config, to_uri
from songrec.feed import to_device
from songrec.train_loop import bf16_autocast, in_lockstep, sparse_artist, train_step, use_bf16

ROOT = Path(__file__).resolve().parents[1]


WARMUP_STEPS = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PeakRss:
    """Polls the resident memory of this process tree (ranks included); keeps the peak of the sum."""

    def __init__(self, interval: float = 0.2):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)

    def _poll(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _timed(run: Any) -> dict[str, float]:
    """Run ``run() -> (rows, seconds)`` on every rank after a barrier: all ranks' rows, the slowest rank's seconds."""
    dist.barrier()
    rows, seconds = run()
    total_rows = torch.tensor([rows], dtype=torch.float64)
    dist.all_reduce(total_rows)
    slowest = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return {"rows": int(total_rows[0]), "seconds": float(slowest[0])}


def _memory_epoch(ctx: dict, data: dict, max_rows: int | None = None) -> tuple[int, float]:
    rows = min(len(data["numeric"]), max_rows or len(data["numeric"]))
    batch_size = ctx["train"]["batch_size"]
    t0 = time.perf_counter()
    order = torch.randperm(len(data["numeric"]))
    batches = ({k: v[order[lo : lo + batch_size]] for k, v in data.items()} for lo in range(0, rows, batch_size))
    # Ranks hold different row counts: uneven batch counts run in lock step as in training (idle steps;
    # DDP's join() with the sparse artist gradient over gloo corrupts memory, docs/design.md).
    for batch, scale in in_lockstep(ctx, batches):
        train_step(ctx, to_device(batch, ctx["device"]), scale=scale)
    if ctx["device"].type == "cuda":
        torch.cuda.synchronize()
    return rows, time.perf_counter() - t0


def _petastorm_epoch(ctx: dict, epoch: int) -> tuple[int, float]:
    from songrec.feed import open_loader

    train, rows = ctx["train"], 0
    t0 = time.perf_counter()
    with open_loader(
        ctx["features_uri"], "train", ctx["rank"], ctx["world"], train["batch_size"],
        shuffle_buffer=train["shuffle_buffer"], seed=epoch, workers=train["reader_workers"],
    ) as loader:  # fmt: skip
        for batch, scale in in_lockstep(ctx, loader):
            rows += len(batch["numeric"])
            train_step(ctx, to_device(batch, ctx["device"]), scale=scale)
    if ctx["device"].type == "cuda":
        torch.cuda.synchronize()
    return rows, time.perf_counter() - t0


def _rank(rank: int, world: int, port: int, spec: dict, results: dict) -> None:
    import faulthandler

    from songrec.feed import read_split
    from songrec.model import LossWeights
    from songrec.train_loop import _build
    from songrec.train_worker import _setup_rank_logging, exit_now

    _setup_rank_logging(rank)
    faulthandler.enable(all_threads=True)  # a rank killed by a fatal signal prints its Python stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    gpu = spec["use_gpu"]
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, spec["cores"] // world))
    torch.manual_seed(0)
    ctx = _build(spec, device)
    amp = use_bf16(spec["train"], device)
    ctx.update(train=spec["train"], device=device, amp=amp, rank=rank, world=world,
               features_uri=spec["features_uri"], weights=LossWeights.from_train(spec["train"]))  # fmt: skip
    t0 = time.perf_counter()
    data = {k: torch.from_numpy(v) for k, v in read_split(spec["features_uri"], "train", rank, world).items()}
    data.pop("song_id")
    load_s = time.perf_counter() - t0
    # Warm-up (allocator, thread pools, first touch of the weights): WARMUP_STEPS steps, not a whole epoch.
    _memory_epoch(ctx, data, max_rows=WARMUP_STEPS * spec["train"]["batch_size"])
    figures: dict = {}
    # Interleaved repeats, best of each: on a shared machine a burst of load hits one epoch, not one feed.
    for repeat in range(spec["repeats"]):
        for name, run in (
            ("petastorm", lambda r=repeat: _petastorm_epoch(ctx, r)),
            ("in-memory", lambda: _memory_epoch(ctx, data)),
        ):
            timed = _timed(run)
            if timed["seconds"] < figures.get(name, {"seconds": float("inf")})["seconds"]:
                figures[name] = timed
    if spec["dense_steps"] and sparse_artist(spec["train"]["sparse_artist"], device):
        # The same steps with the artist table's gradient dense (train.sparse_artist=false, the earlier design).
        rows_cap = spec["dense_steps"] * spec["train"]["batch_size"]
        dense = dict(ctx, **_build(dict(spec, train=dict(spec["train"], sparse_artist="false")), device))
        _memory_epoch(dense, data, max_rows=WARMUP_STEPS * spec["train"]["batch_size"])
        for name, run_ctx in (("sparse", ctx), ("dense", dense)):
            figures[f"artist-{name}"] = _timed(lambda c=run_ctx: _memory_epoch(c, data, max_rows=rows_cap))
    if rank == 0:
        figures["load_s"] = load_s
        results[world] = figures  # a Manager proxy: stored in the parent when this call returns
    dist.destroy_process_group()
    # Leave without the interpreter's teardown, in which a gloo worker thread still releasing the last
    # collective's tensors can abort the rank (SIGABRT, "terminate called without an active exception"),
    # and mp.spawn would then fail the whole bench: see songrec.train_worker.exit_now.
    exit_now(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = ROOT / "data" / "bench" / "run"
    parser.add_argument("--root", default=str(default_root) if default_root.exists() else None,
                        help="run root holding features/ and meta/ (default: data/bench/run)")  # fmt: skip
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts to compare")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed epochs per feed (best is kept)")
    parser.add_argument("--dense-steps", type=int, default=100,
                        help="also time this many in-memory steps with a sparse and with a dense artist-table "
                             "gradient (CPU only; 0 = skip)")  # fmt: skip
    parser.add_argument("--conf-file", default=str(DEFAULT_CONF))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not args.root:
        parser.error(f"{default_root} does not exist: pass --root RUN_ROOT (a run with features/ and meta/)")
    cfg = load_config(args.conf_file, [f"root={args.root}", *args.overrides])
    meta = json.loads((Path(args.root) / "meta" / "features.json").read_text())
    use_gpu = torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0))
    spec = {"train": cfg.to_dict()["train"], "features_meta": meta, "features_uri": to_uri(cfg.path("features")),
            "use_gpu": use_gpu, "cores": cores, "repeats": args.repeats,
            "dense_steps": args.dense_steps}  # fmt: skip
    ranks = [int(r) for r in args.ranks.split(",")]
    if use_gpu:
        ranks = [r for r in ranks if r <= torch.cuda.device_count()]
    bf16 = bf16_autocast(cfg.train.precision, torch.device("cuda" if use_gpu else "cpu"))
    print(f"features: {cfg.path('features')}  rows: {meta['rows']}  row groups: {meta.get('row_groups')}")
    print(f"device: {torch.cuda.get_device_name(0) if use_gpu else f'CPU, {cores} cores'}; "
          f"batch {cfg.train.batch_size}, shuffle buffer {cfg.train.shuffle_buffer}, "
          f"reader threads/rank {cfg.train.reader_workers}, "
          f"{'bf16 autocast' if bf16 else 'fp32'} "
          f"(train.precision={cfg.train.precision})")  # fmt: skip
    if not use_gpu:
        print("CUDA is not available on this machine: GPU throughput was NOT measured.")
    results = mp.Manager().dict()
    with PeakRss() as rss:
        for world in ranks:
            mp.spawn(_rank, args=(world, _free_port(), spec, results), nprocs=world, join=True)
    print()
    print(
        f"{'ranks':>5} {'feed':<10} {'rows':>9} {'epoch s':>8} {'rows/s':>10} {'vs in-memory':>13} {'shard load s':>12}"
    )
    base = {}
    for world in ranks:
        fig = results[world]
        ceiling = fig["in-memory"]["rows"] / fig["in-memory"]["seconds"]
        base.setdefault("one", ceiling)
        for name in ("petastorm", "in-memory"):
            rate = fig[name]["rows"] / fig[name]["seconds"]
            print(f"{world:>5} {name:<10} {fig[name]['rows']:>9} {fig[name]['seconds']:>8.2f} {rate:>10.0f} "
                  f"{rate / ceiling:>13.2f} {fig['load_s'] if name == 'in-memory' else 0:>12.2f}")  # fmt: skip
    if len(ranks) > 1:
        first, last = results[ranks[0]], results[ranks[-1]]
        for name in ("petastorm", "in-memory"):
            speed = (last[name]["rows"] / last[name]["seconds"]) / (first[name]["rows"] / first[name]["seconds"])
            print(f"{name}: {ranks[-1]} ranks vs {ranks[0]}: x{speed:.2f} rows/s")
    for world in ranks:
        fig = results[world]
        if "artist-dense" in fig:
            sparse, dense = (fig[f"artist-{n}"]["rows"] / fig[f"artist-{n}"]["seconds"] for n in ("sparse", "dense"))
            print(f"{world} rank(s), in memory, {args.dense_steps} steps: artist-table gradient sparse {sparse:.0f} "
                  f"rows/s, dense {dense:.0f} rows/s: sparse/dense x{sparse / dense:.2f}")  # fmt: skip
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"peak RSS: process tree {rss.peak / 2**20:.0f} MiB (sum of bench + ranks, polled); "
        f"largest rank {child_kb / 1024:.0f} MiB; bench process {self_kb / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
