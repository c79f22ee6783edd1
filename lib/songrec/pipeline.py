"""Run the stages in order in one Spark application, skipping those whose inputs have not changed.

A stage's fingerprint is a hash of (its config sections, the versions of the tables it reads). Table
versions come for free from the atomic commit: a committed local table is a link to
``.name.v<ns>``, so a new commit is a new version. The raw input's version is its files' sizes and
modification times. After a stage succeeds its fingerprint is saved in ``root/_state/<stage>.json``;
the next run skips the stage when the fingerprint is the same and its outputs still exist.
"""

import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from songrec import io
from songrec.config import Config, ConfigError, local_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what it reads, what it writes, which config sections steer it."""

    name: str
    reads: tuple[str, ...]  # table names under root, or "input" for the raw CSV
    writes: tuple[str, ...]
    sections: tuple[str, ...]
    rewrites: tuple[str, ...] = ()  # tables it reads and then updates itself (their version after it is its own)


STAGES: list[Stage] = [
    Stage("preprocess", ("input",), ("songs", "features", "rejects", "meta"), ("preprocess",)),
    Stage("train", ("features", "meta"), ("model",), ("train",)),
    Stage("embed", ("features", "model"), ("embeddings",), ("embed",)),
    Stage("knn", ("embeddings",), ("neighbors",), ("knn",)),
    Stage(
        "evaluate",
        ("neighbors", "embeddings", "songs", "features", "input"),
        ("report",),
        ("evaluate",),
        rewrites=("neighbors",),
    ),  # its recall goes into neighbors/_manifest.json
    Stage("report", ("report", "model", "neighbors", "songs", "embeddings"), (), (), rewrites=("report",)),
]
STAGE_NAMES = [s.name for s in STAGES]


# Each stage's library function as "module:function", imported only when the stage runs (heavy imports).
RUNNERS = {
    "preprocess": "songrec.preprocess:preprocess",
    "train": "songrec.train:run_training",
    "embed": "songrec.embed:embed",
    "knn": "songrec.knn:build_neighbors",
    "evaluate": "songrec.evaluate:evaluate",
    "report": "songrec.report:build_report",
}


def _runner(name: str) -> Callable[[Any, Config], dict]:
    """The library function of a stage."""
    module, function = RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), function)


def table_version(cfg: Config, name: str, spark: Any = None) -> str:
    """A string that changes whenever the table (or raw input) is rewritten."""
    uri = cfg.input_uri if name == "input" else cfg.path(name)
    if io.is_local(uri):
        path = local_path(uri)
        if not path.exists():
            return "absent"
        if name != "input" and path.is_symlink():
            # A committed table: the version it links to, plus the newest top-level file (small files such as
            # neighbors/_manifest.json and report/metrics.json are updated in place by later stages). The raw
            # input may be a link too (to a file or a folder): its files are stated below, through the link.
            newest = max((p.stat().st_mtime_ns for p in path.iterdir()), default=0)
            return f"{os.readlink(path)}@{newest}"
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    fs, hpath = io.hadoop_fs(spark, uri)
    if not fs.exists(hpath):
        return "absent"
    summary = fs.getContentSummary(hpath)
    return f"{summary.getLength()}:{summary.getFileCount()}:{fs.getFileStatus(hpath).getModificationTime()}"


def read_versions(cfg: Config, names: tuple[str, ...], spark: Any = None) -> dict[str, str]:
    """:func:`table_version` of each named table (or ``input``)."""
    return {name: table_version(cfg, name, spark) for name in names}


def fingerprint(cfg: Config, stage: Stage, versions: dict[str, str]) -> str:
    """Hash of the stage's config sections and ``versions``, those of what it reads (:func:`read_versions`)."""
    parts = {
        "config": {s: asdict(getattr(cfg, s)) for s in stage.sections},
        "reads": versions,
        "train_world": cfg.train.num_processes if stage.name == "preprocess" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def select(start: str | None, stop: str | None) -> list[Stage]:
    """Stages from ``start`` to ``stop`` inclusive."""
    for name in (start, stop):
        if name is not None and name not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    lo = STAGE_NAMES.index(start) if start else 0
    hi = STAGE_NAMES.index(stop) if stop else len(STAGES) - 1
    if lo > hi:
        raise ConfigError(f"--from {start} comes after --to {stop} (stages run in the order {', '.join(STAGE_NAMES)})")
    return STAGES[lo : hi + 1]


def _read_state(uri: str, spark: Any) -> dict:
    """A state file, or {} when it is absent or unreadable (e.g. cut short by a kill): the stage then runs."""
    if not io.exists(uri, spark):
        return {}
    try:
        state = io.read_json(uri, spark)
    except ValueError:
        log.warning("%s is unreadable; treating the stage as not run", uri)
        return {}
    return state if isinstance(state, dict) else {}


def run_pipeline(
    spark: Any, cfg: Config, start: str | None = None, stop: str | None = None, force: bool = False
) -> dict:
    """Run the selected stages; returns per-stage status, seconds and summaries."""
    state_dir = cfg.path("_state")
    previous = cfg.path("_state", "pipeline.json")
    timings: dict[str, dict] = _read_state(previous, spark).get("stages", {})
    for stage in select(start, stop):
        versions = read_versions(cfg, stage.reads, spark)
        fp = fingerprint(cfg, stage, versions)
        state_uri = f"{state_dir}/{stage.name}.json"
        outputs_present = all(io.exists(cfg.path(w), spark) for w in stage.writes)
        if not force and outputs_present:
            if _read_state(state_uri, spark).get("fingerprint") == fp:
                log.info("stage %s: inputs and config unchanged since its last successful run, skipped", stage.name)
                timings.setdefault(stage.name, {})["status"] = "skipped (unchanged)"
                continue
        log.info("stage %s: running", stage.name)
        started = time.perf_counter()
        summary = _runner(stage.name)(spark, cfg) or {}
        seconds = round(time.perf_counter() - started, 2)
        log.info("stage %s: done in %.1f s", stage.name, seconds)
        timings[stage.name] = {"status": "ran", "seconds": seconds, "summary": summary}
        # What the stage read is recorded as it was before the run (an input replaced meanwhile must make the next
        # run repeat the stage), except the tables the stage updates itself, taken as it left them.
        versions.update(read_versions(cfg, stage.rewrites, spark))
        io.write_json(state_uri, {"fingerprint": fingerprint(cfg, stage, versions), "seconds": seconds}, spark)
        io.write_json(previous, {"stages": timings}, spark)
    return timings
