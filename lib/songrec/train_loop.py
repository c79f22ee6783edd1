"""The epoch loop of one DDP rank: data, model, optimiser, schedule, early stopping, checkpoints, artefacts.

Called by :func:`songrec.train_worker.train_rank` after the process group is up. Every decision
that must agree across ranks (losses, early stopping) is taken on all-reduced values, so all ranks
take it identically.

Uneven shards: ranks hold different numbers of row groups, hence of batches. Before each training
step the ranks all-reduce how many of them still have a batch; a rank that has run out takes an
*idle step* (a one-row zero batch whose loss is multiplied by 0) and the others scale their loss by
``world / active``, so the all-reduced gradient is the mean over the ranks that had data, and every
rank applies the same update (parameters and optimiser states stay identical without a final copy).
The pass ends when no rank has a batch. DDP's own ``join()`` is not used: a joined rank shadows the
gradient all-reduce with *dense* zero buckets, while the active ranks all-reduce the sparse artist
gradient, a mismatch gloo does not survive (a rank died with SIGSEGV in CI, 2026-12-02); an idle
step runs the genuine collectives, sparse ones included.

Reproducibility: every epoch reseeds python, numpy and torch from ``(seed, epoch, rank)`` and
orders row groups with ``seed + epoch``, so restoring the epoch counter from a checkpoint restores
the random streams too; with ``train.reader_workers: 1`` on CPU a resumed run repeats the
uninterrupted one exactly.
"""

import contextlib
import copy
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from songrec.errors import InputError, first_line
from songrec.feed import open_loader, to_device
from songrec.model import INPUT_COLUMNS, Autoencoder, LossWeights, ModelSpec, autoencoder_loss, spec_dict

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "epoch-"
CHECKPOINT_FORMAT = 2  # 2: one "optimizer" entry holding every optimiser and schedule (Optimizers.state_dict)
KEEP_CHECKPOINTS = 2
# Keys of the train section that change the model or the data it sees: a checkpoint made with
# other values cannot be resumed.
RESUME_KEYS = ("hidden", "latent_dim", "artist_dim", "genre_dim", "emotion_dim", "seed")


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    value = (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _lr_lambda(warmup_steps: int, total_steps: int, floor: float = 0.05):
    """Linear warm-up then cosine decay to ``floor`` x lr (flat at the floor after ``total_steps``)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float, params: list[Any]) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on biases, and not on embedding rows a batch never touched."""
    decay, no_decay = [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for param in params:
        (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Optimizers:
    """The optimisers of one model and their learning-rate schedules, stepped, saved and loaded as one.

    AdamW (decoupled weight decay on weight matrices) for the dense parameters; with a sparse artist
    table (CPU, see :mod:`songrec.model`) ``SparseAdam`` for that table, which AdamW cannot step. Both
    follow the same schedule (``lr_lambda``).
    """

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, lr_lambda: Any):
        sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.AdamW(_param_groups(model, weight_decay, dense), lr=lr)
        ]
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda) for o in self.optimizers]

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One optimiser step of every parameter, then one schedule step."""
        for optimizer in self.optimizers:
            optimizer.step()
        for scheduler in self.schedulers:
            scheduler.step()

    @property
    def lr(self) -> float:
        return self.schedulers[0].get_last_lr()[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise InputError(
                f"the checkpoint holds {len(state['optimizers'])} optimiser(s), this run has {len(self.optimizers)}: "
                "a run with a sparse artist table (CPU) cannot resume one made with a dense one (GPU, or "
                "train.sparse_artist=false), or the other way round"
            )
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)


def clip_gradients(parameters: Any, max_norm: float) -> float:
    """``clip_grad_norm_`` (2-norm over all gradients) that also takes sparse gradients.

    ``torch.nn.utils.clip_grad_norm_`` cannot take a norm of a sparse tensor; a sparse gradient is
    coalesced here (duplicate rows summed), so its norm is the norm of the dense gradient it stands for.

    Returns:
        The total norm before clipping.
    """
    grads = []
    for param in parameters:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            param.grad = param.grad.coalesce()
            grads.append(param.grad.values())
        else:
            grads.append(param.grad)
    if not grads:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return float(total)


def train_step(ctx: dict[str, Any], batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """Forward, backward (of ``loss * scale``), clip and optimiser step on one batch; returns the (detached,
    unscaled) loss. ``scale`` weights this rank's gradient in DDP's mean (0 for an idle step)."""
    with torch.autocast(ctx["device"].type, dtype=torch.bfloat16, enabled=ctx["amp"]):
        loss, _ = autoencoder_loss(ctx["model"], batch, ctx["weights"])
    ctx["optimizers"].zero_grad()
    (loss * scale if scale != 1.0 else loss).backward()
    if ctx["train"]["grad_clip"] > 0:
        clip_gradients(ctx["model"].parameters(), ctx["train"]["grad_clip"])
    ctx["optimizers"].step()
    return loss.detach()


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{CHECKPOINT_PREFIX}*.pt"))


def drop_stale_checkpoints(folder: Path) -> None:
    """A fresh (not ``--resume``) run starts from no checkpoint: those of an earlier run in the same folder
    would be what a later ``--resume`` or retry loads (and, named after later epochs, they would outlive this
    run's own, which are pruned by name)."""
    stale = _checkpoints(folder) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("fresh training run: removed %d checkpoint(s) of an earlier run from %s", len(stale), folder)


def _save_checkpoint(folder: Path, epoch: int, state: dict[str, Any]) -> Path:
    """Write ``epoch-NNNN.pt`` atomically (temp file + ``os.replace``) and keep the newest few."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CHECKPOINT_PREFIX}{epoch:04d}.pt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in _checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return final


def _load_checkpoint(folder: Path, train: dict[str, Any]) -> dict[str, Any] | None:
    found = _checkpoints(folder)
    if not found:
        log.warning("--resume: no checkpoint in %s, starting from scratch", folder)
        return None
    try:
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise InputError(
            f"checkpoint {found[-1]} cannot be read ({type(exc).__name__}: {first_line(str(exc))}): delete it to "
            f"resume from the one before, or train without --resume"
        ) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"checkpoint {found[-1]} was written by an older songrec (format {state.get('format', 1)}, this one "
            f"reads {CHECKPOINT_FORMAT}): delete {folder} and train without --resume"
        )
    for key in RESUME_KEYS:
        if state["train"].get(key) != train.get(key):
            raise InputError(
                f"checkpoint {found[-1]} was made with train.{key}={state['train'].get(key)!r}, this run has "
                f"{train.get(key)!r}: use the same value, or delete {folder} and train without --resume"
            )
    return state


def idle_batch(spec: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """A one-row batch of zeros (unknown artist, genre and emotion) for a rank's idle steps."""
    zeros = {"numeric": spec.numeric_dim, "genres": spec.genre_dim, "lyrics": spec.lyrics_dim}
    batch = {name: torch.zeros(1, width, device=device) for name, width in zeros.items()}
    ids = [name for name in INPUT_COLUMNS if name not in zeros]  # the vocabulary ids (0 = unknown)
    batch.update({name: torch.zeros(1, dtype=torch.long, device=device) for name in ids})
    return batch


def _active_ranks(has_batch: bool, device: torch.device) -> int:
    """How many ranks still have a training batch (one small all-reduce)."""
    flag = torch.tensor([1 if has_batch else 0], dtype=torch.long, device=device)
    dist.all_reduce(flag)
    return int(flag.item())


def in_lockstep(ctx: dict[str, Any], batches: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """This rank's training batches, each with its loss scale, in step with the other ranks.

    Before each step the ranks count who still has a batch. While this rank has none and others do, it
    takes idle steps itself (a zero batch, loss times 0); each real batch comes with ``world / active``,
    the scale that makes the all-reduced gradient the mean over the ranks that had data (module
    docstring). Ends when no rank has a batch. The caller runs ``train_step(ctx, batch, scale=scale)``.
    """
    source = iter(batches)
    while True:
        batch = next(source, None)
        active = _active_ranks(batch is not None, ctx["device"])
        if active == 0:
            return
        if batch is None:  # this rank's shard is done, others' are not
            train_step(ctx, idle_batch(ctx["core"].spec, ctx["device"]), scale=0.0)
            continue
        yield batch, ctx["world"] / active


def _kept_batches(rows: dict[str, np.ndarray], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """The kept validation rows (:func:`_feed`) in batches of ``batch_size``, as the loader gives them."""
    count = len(next(iter(rows.values()))) if rows else 0
    for lo in range(0, count, batch_size):
        yield {name: torch.from_numpy(values[lo : lo + batch_size]) for name, values in rows.items()}


@contextlib.contextmanager
def _feed(ctx: dict[str, Any], epoch: int, train: bool) -> Iterator[Iterable[dict[str, torch.Tensor]]]:
    """This rank's batches for one pass: Petastorm, and for validation the rows the first training pass kept.

    ``features/`` row groups hold both splits, so a validation pass through Petastorm decodes the whole
    shard again to use a tenth of it. The first training pass (of this process) keeps the validation
    rows its reader decodes anyway (``open_loader(aside=...)``; the same row groups, as the shard is the
    same) and every validation pass reads them from memory: ``val_fraction`` of the shard, ~42 MB a
    rank at full size with two ranks. They are kept in song_id order, whatever order the training
    pass read its row groups in, so a resumed run validates on the same batches as an uninterrupted one.
    """
    cfg = ctx["train"]
    if not train and "val_rows" in ctx:
        yield _kept_batches(ctx["val_rows"], cfg["batch_size"])
        return
    aside: dict[str, list[dict[str, np.ndarray]]] | None = {"val": []} if train and "val_rows" not in ctx else None
    with open_loader(
        ctx["features_uri"], "train" if train else "val", ctx["rank"], ctx["world"], cfg["batch_size"],
        shuffle_buffer=cfg["shuffle_buffer"] if train else 0, seed=cfg["seed"] + epoch,
        workers=cfg["reader_workers"], with_ids=train and ctx["trace_dir"] is not None, aside=aside,
    ) as loader:  # fmt: skip
        yield loader
    if aside is not None:  # a whole pass: every validation row of the shard is here
        parts = aside["val"]
        order = np.argsort(np.concatenate([part["song_id"] for part in parts]), kind="stable") if parts else None
        columns = [name for name in (parts[0] if parts else {}) if name != "song_id"]
        ctx["val_rows"] = {name: np.concatenate([part[name] for part in parts])[order] for name in columns}


def _run_epoch(ctx: dict[str, Any], epoch: int, train: bool) -> dict[str, float]:
    """One pass over this rank's shard of one split; returns all-reduced sums as means."""
    model, device = ctx["model"], ctx["device"]
    trace = ctx["trace_dir"] if train else None
    seen: list[np.ndarray] = []
    sums = torch.zeros(3, dtype=torch.float64)  # weighted loss, rows, batches
    model.train(train)
    with _feed(ctx, epoch, train) as loader, contextlib.nullcontext() if train else torch.no_grad():
        for raw, scale in in_lockstep(ctx, loader) if train else ((raw, 1.0) for raw in loader):
            if trace is not None:
                seen.append(raw.pop("song_id").numpy())
            batch = to_device(raw, device)
            rows = len(batch["numeric"])
            if train:
                loss = train_step(ctx, batch, scale=scale)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx["amp"]):
                    loss, _ = autoencoder_loss(model.module, batch, ctx["weights"])
            sums += torch.tensor([float(loss.detach()) * rows, rows, 1], dtype=torch.float64)
    if trace is not None:
        Path(trace).mkdir(parents=True, exist_ok=True)
        ids = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
        np.save(Path(trace) / f"rank{ctx['rank']}-epoch{epoch}.npy", ids)
    dist.all_reduce(sums)
    return {"loss": float(sums[0] / max(sums[1], 1)), "rows": int(sums[1]), "batches": int(sums[2])}


def sparse_artist(setting: str, device: torch.device) -> bool:
    """``train.sparse_artist`` (auto | true | false) as a decision: auto = sparse on CPU, dense on GPU."""
    return device.type == "cpu" if setting == "auto" else setting == "true"


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 dot-product instructions (``avx512_bf16`` or ``amx_bf16`` in ``cpuinfo``).

    Without them oneDNN emulates bf16 and a bf16 product is no faster than fp32; an unreadable file
    (not Linux) counts as no.
    """
    try:
        flags = Path(cpuinfo).read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_autocast(setting: str, device: torch.device) -> bool:
    """``train.precision`` (auto | bf16 | fp32) as a decision for this machine.

    auto = bf16 autocast on GPU, and on a CPU with bf16 instructions: there the full-size train stage
    took 0.86x the fp32 stage's time (one thread alone, 0.64-0.80x a step; docs/design.md). Weights,
    optimiser state and the loss terms stay fp32. Ranks agree with :func:`agree_on_bf16`.
    """
    if setting == "auto":
        return device.type == "cuda" or cpu_has_bf16()
    return setting == "bf16"


def agree_on_bf16(mine: bool, device: torch.device) -> bool:
    """bf16 only if every rank chose it (one all-reduce): ranks on machines of different CPUs train alike."""
    flag = torch.tensor([1 if mine else 0], dtype=torch.long, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def use_bf16(train: dict[str, Any], device: torch.device) -> bool:
    """This run's ``train.precision``, decided on each rank's machine and agreed by all ranks (collective)."""
    return agree_on_bf16(bf16_autocast(train.get("precision", "auto"), device), device)


def _build(spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Model (artist table sparse as ``train.sparse_artist`` decides), DDP wrapper and optimisers."""
    train = spec["train"]
    model_spec = ModelSpec.from_meta(spec["features_meta"], train)
    sparse = sparse_artist(train.get("sparse_artist", "auto"), device)
    model = Autoencoder(model_spec, sparse_artist=sparse).to(device)
    world = dist.get_world_size()
    rows = int(spec["features_meta"].get("rows", {}).get("train", 0)) or train["batch_size"]
    steps_per_epoch = max(1, math.ceil(rows / world / train["batch_size"]))
    horizon = train.get("schedule_epochs") or train["max_epochs"]
    schedule = _lr_lambda(max(1, int(train["warmup_epochs"] * steps_per_epoch)), horizon * steps_per_epoch)
    optimizers = Optimizers(model, train["lr"], train["weight_decay"], schedule)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return {"spec": model_spec, "core": model, "model": ddp, "optimizers": optimizers}


def run_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Train with this rank's shard and return the run summary (the same dict on every rank)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    train = spec["train"]
    use_gpu = bool(spec["use_gpu"])
    if use_gpu:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(spec["threads"])))
        torch.use_deterministic_algorithms(True)
    _seed_epoch(train["seed"], -1, 0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    ctx = _build(spec, device)
    amp = use_bf16(train, device)
    if rank == 0:
        log.info("training on %s in %s (train.precision=%s)", device.type, "bf16 autocast" if amp else "fp32",
                 train.get("precision", "auto"))  # fmt: skip
    ctx.update(
        train=train, device=device, amp=amp, rank=rank, world=world, features_uri=spec["features_uri"],
        weights=LossWeights.from_train(train), trace_dir=spec.get("trace_dir"),
    )  # fmt: skip
    folder = Path(spec["checkpoint_dir"])
    history: list[dict[str, Any]] = []
    early = {"best_val": math.inf, "best_epoch": -1, "bad_epochs": 0, "stopped": False}
    best_state = copy.deepcopy(ctx["core"].state_dict())
    start = 0
    state = _load_checkpoint(folder, train) if spec["resume"] else None
    if state is not None:
        ctx["core"].load_state_dict(state["model"])
        ctx["optimizers"].load_state_dict(state["optimizer"])
        best_state, history, early, start = (
            state["best_model"],
            list(state["history"]),
            dict(state["early"]),
            state["epoch"],
        )
        if rank == 0:
            log.info("resumed from %s after epoch %d", folder, start)
    began = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    for epoch in range(start, train["max_epochs"]):
        if early["stopped"]:
            break
        _seed_epoch(train["seed"], epoch, rank)
        t0 = time.perf_counter()
        fit = _run_epoch(ctx, epoch, train=True)
        seconds = time.perf_counter() - t0
        val = _run_epoch(ctx, epoch, train=False)
        record = {
            "epoch": epoch + 1, "train_loss": fit["loss"], "val_loss": val["loss"], "train_rows": fit["rows"],
            "val_rows": val["rows"], "rows_per_s": fit["rows"] / max(seconds, 1e-9), "epoch_s": seconds,
            "elapsed_s": time.perf_counter() - began, "lr": ctx["optimizers"].lr,
        }  # fmt: skip
        history.append(record)
        if val["loss"] < early["best_val"] - train["min_delta"]:
            early.update(best_val=val["loss"], best_epoch=epoch + 1, bad_epochs=0)
            best_state = copy.deepcopy(ctx["core"].state_dict())
        else:
            early["bad_epochs"] += 1
            early["stopped"] = early["bad_epochs"] >= train["patience"]
        if rank == 0:
            log.info(
                "epoch %d/%d train %.4f val %.4f  %.0f rows/s  %.1f s  elapsed %.1f s%s",
                epoch + 1, train["max_epochs"], fit["loss"], val["loss"], record["rows_per_s"], seconds,
                record["elapsed_s"], "  (early stop)" if early["stopped"] else "",
            )  # fmt: skip
            _save_checkpoint(folder, epoch + 1, {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model": ctx["core"].state_dict(),
                "optimizer": ctx["optimizers"].state_dict(), "best_model": best_state, "early": early,
                "history": history, "train": train,
            })  # fmt: skip
        dist.barrier()
    summary = {
        "epochs": len(history), "best_epoch": early["best_epoch"], "best_val_loss": early["best_val"],
        "final_train_loss": history[-1]["train_loss"] if history else None, "stopped_early": early["stopped"],
        "world_size": world, "device": "cuda" if use_gpu else "cpu", "precision": "bf16" if amp else "fp32",
        "history": history,
    }  # fmt: skip
    files = None
    if rank == 0:
        files = write_artefacts(spec, ctx["spec"], best_state, summary)
        summary["model_id"] = files.pop("__model_id__")
        if not spec.get("return_files"):
            files = None
    payload = [summary]
    dist.broadcast_object_list(payload, src=0)
    result = dict(payload[0])
    if files is not None:
        result["files"] = files
    return result


def write_artefacts(
    spec: dict[str, Any], model_spec: ModelSpec, state: dict[str, torch.Tensor], summary: dict[str, Any]
) -> dict[str, Any]:
    """Write model.pt, encoder.pt, model.json, history.json and loss.png into ``spec["out_dir"]``.

    Returns:
        ``{file name: bytes}`` of what was written, plus ``"__model_id__"``.
    """
    import hashlib

    out = Path(spec["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in state.items()}
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    blobs: dict[str, Any] = {}
    for name, obj in (("model.pt", state), ("encoder.pt", encoder_state)):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        blobs[name] = buffer.getvalue()
    model_id = hashlib.sha256(blobs["encoder.pt"]).hexdigest()[:16]
    meta = spec["features_meta"]
    info = {
        "model_id": model_id,
        "model": spec_dict(model_spec),
        "numeric": meta["numeric"],
        "genre_dim": meta["genre_dim"],
        "lyrics_dim": meta["lyrics_dim"],
        "vocab_sizes": meta["vocab_sizes"],
        "schema_version": meta.get("schema_version"),
        "input_columns": ["numeric", "genres", "lyrics", "artist_idx", "genre_idx", "emotion_idx"],
        "stats": spec["stats"],
        "features_uri": spec["features_uri"],
        "train": spec["train"],
        "summary": {k: v for k, v in summary.items() if k != "history"},
    }
    blobs["model.json"] = json.dumps(info, indent=2).encode()
    blobs["history.json"] = json.dumps(summary["history"], indent=2).encode()
    blobs["loss.png"] = _loss_png(summary["history"])
    for name, data in blobs.items():
        (out / name).write_bytes(data)
    blobs["__model_id__"] = model_id
    return blobs


def _loss_png(history: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("songrec autoencoder")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
