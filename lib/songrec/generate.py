"""The stand-in for spotify_dataset.csv: a faithful, dirty, deterministic CSV with hidden styles.

The published file cannot be downloaded here, so :func:`generate` writes one with the same 39
columns and raw formats (DESIGN.md, "Facts about the raw dataset"), realistic dirt at the rates of
``generate.dirt``, and hidden structure that makes relevance measurable: every song belongs to a
latent style (audio profile, genre and emotion mix, artists, lyric vocabulary) and to a small
cluster of close songs inside it; "Similar Song n" names real songs of the same cluster. The truth
file (:func:`truth_uri`) records ``artist, title, style`` for every song; only evaluation reads it.

Spark generates fixed blocks of rows in parallel (each block from ``(seed, block number)``, see
:mod:`songrec.generate_rows`); the tasks write plain text, and the driver joins the blocks in order
into one CSV (``generate.parts = 0``) or a folder of ``parts`` CSVs, each with the header. The same
seed and row count give byte-identical output whatever ``generate.partitions`` is.

The output must be on a local (or shared, mounted) filesystem: a ``file://`` URI or a path. Tasks
write their blocks next to the output, so on a cluster every executor must see that directory.
"""

import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from songrec import io
from songrec.config import Config, local_path
from songrec.errors import InputError
from songrec.generate_block import make_block
from songrec.generate_plan import BLOCK_ROWS, Plan, build_plan
from songrec.generate_rows import DIRT_KINDS, csv_line
from songrec.schema import RAW_COLUMNS

log = logging.getLogger(__name__)

TRUTH_COLUMNS = ["artist", "title", "style"]
_COPY_CHUNK = 8 << 20


def truth_uri(cfg: Config) -> str:
    """Where the truth file of ``cfg.input`` lives.

    For an input file ``dir/name.csv`` it is ``dir/_name.truth.csv``; for an input folder it is
    ``folder/_truth.csv`` (the underscore keeps Spark's file listing from reading it as data). An
    input that does not exist yet is a folder when ``generate.parts > 0``.
    """
    uri = cfg.input_uri.rstrip("/")
    if io.is_local(uri) and local_path(uri).exists():
        is_folder = local_path(uri).is_dir()
    else:  # not written yet, or remote: the shape the generator would write
        is_folder = cfg.generate.parts > 0
    if is_folder:
        return f"{uri}/_truth.csv"
    head, _, name = uri.rpartition("/")
    stem = name[: -len(".csv")] if name.lower().endswith(".csv") else name
    return f"{head}/_{stem}.truth.csv"


def generate(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write the stand-in dataset to ``cfg.input`` and its truth file; return a summary.

    Args:
        spark: the session whose executors generate the blocks.
        cfg: ``generate.*`` sets size, seed, structure, dirt rates and the output shape.

    Returns:
        ``rows``, ``bytes``, ``path``, ``truth``, ``truth_rows``, ``seconds``, ``rows_per_s``,
        ``dirt`` (rows planted per kind), ``rereleases``, ``styles``, ``artists``, ``clusters``.

    Raises:
        InputError: the output location is unusable (remote, or a folder where a file should go).
    """
    gen = cfg.generate
    out = local_path(cfg.input_uri)
    if gen.parts == 0 and out.is_dir():
        raise InputError(f"{out} is a folder; remove it or set generate.parts > 0 to write a folder of parts")
    started = time.perf_counter()
    rates = {**asdict(gen.dirt), "rerelease": gen.rerelease}
    plan = build_plan(gen.seed, gen.rows, gen.styles, gen.artists_per_style, rates)
    n_blocks = math.ceil(gen.rows / BLOCK_ROWS)
    n_groups = min(gen.partitions, n_blocks)
    groups = [(g, g * n_blocks // n_groups, (g + 1) * n_blocks // n_groups) for g in range(n_groups)]
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.work-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    sc = spark.sparkContext
    plan_bc = sc.broadcast(plan)
    try:
        work_dir = str(work)
        results = (
            sc.parallelize(groups, n_groups)
            .map(lambda group: _run_group(plan_bc.value, group, work_dir))
            .collect()
        )  # fmt: skip
        results.sort(key=lambda r: r["group"])
        blocks = [(work / f"data-{r['group']:05d}.csv", size) for r in results for size in r["sizes"]]
        truth_rows = _write_output(cfg, out, work, blocks, [work / f"truth-{r['group']:05d}.csv" for r in results])
    finally:
        plan_bc.destroy()
        shutil.rmtree(work, ignore_errors=True)
    counts = {kind: sum(r["counts"][kind] for r in results) for kind in [*DIRT_KINDS, "rerelease"]}
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*.csv") if not p.name.startswith("_")) if out.is_dir() else (
        out.stat().st_size
    )  # fmt: skip
    summary = {
        "rows": gen.rows,
        "bytes": size,
        "path": cfg.input_uri,
        "truth": truth_uri(cfg),
        "truth_rows": truth_rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(gen.rows / seconds, 1),
        "dirt": {k: counts[k] for k in DIRT_KINDS},
        "rereleases": counts["rerelease"],
        "styles": plan.styles,
        "artists": plan.n_artists,
        "clusters": len(plan.cluster_end),
    }
    log.info(
        "generated %d rows (%.1f MB, %.0f bytes/row) in %.1f s (%.0f rows/s) -> %s; dirt %s",
        gen.rows, size / 1e6, size / gen.rows, seconds, gen.rows / seconds, cfg.input_uri, summary["dirt"],
    )  # fmt: skip
    return summary


def _run_group(plan: Plan, group: tuple[int, int, int], work: str) -> dict[str, Any]:
    """Task body: generate blocks ``[b0, b1)`` into ``work/data-G.csv`` and ``work/truth-G.csv``."""
    g, b0, b1 = group
    sizes: list[int] = []
    counts = dict.fromkeys([*DIRT_KINDS, "rerelease"], 0)
    data_path, truth_path = Path(work) / f"data-{g:05d}.csv", Path(work) / f"truth-{g:05d}.csv"
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"  # a retried task writes its own temp files, then replaces
    with open(f"{data_path}{suffix}", "wb") as data, open(f"{truth_path}{suffix}", "wb") as truth:
        for b in range(b0, b1):
            block = make_block(plan, b * BLOCK_ROWS, min(plan.rows, (b + 1) * BLOCK_ROWS))
            raw = block.data.encode("utf-8")
            data.write(raw)
            truth.write(block.truth.encode("utf-8"))
            sizes.append(len(raw))
            for kind, n in block.counts.items():
                counts[kind] += n
    os.replace(f"{data_path}{suffix}", data_path)
    os.replace(f"{truth_path}{suffix}", truth_path)
    return {"group": g, "sizes": sizes, "counts": counts}


def _write_output(cfg: Config, out: Path, work: Path, blocks: list[tuple[Path, int]], truths: list[Path]) -> int:
    """Join the blocks into ``out`` (one file or a folder of parts) and write the truth file atomically."""
    header = (csv_line(RAW_COLUMNS) + "\n").encode("utf-8")
    parts = cfg.generate.parts
    spans = _block_spans(blocks)
    if parts == 0:
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        truth_final = local_path(truth_uri(cfg))
        truth_tmp = truth_final.parent / f".{truth_final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            truth_rows = _write_truth(truths, truth_tmp)
            _write_part(tmp, header, spans)
            os.replace(truth_tmp, truth_final)
            os.replace(tmp, out)
        finally:
            for leftover in (tmp, truth_tmp):
                leftover.unlink(missing_ok=True)
        return truth_rows
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for j in range(parts):
            lo, hi = j * len(spans) // parts, (j + 1) * len(spans) // parts
            _write_part(staging / f"part-{j:05d}.csv", header, spans[lo:hi])
        truth_rows = _write_truth(truths, staging / "_truth.csv")
        io.commit(str(staging), str(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return truth_rows


def _block_spans(blocks: list[tuple[Path, int]]) -> list[tuple[Path, int, int]]:
    """(file, offset, length) of every block, in block order."""
    spans, offset, current = [], 0, None
    for path, size in blocks:
        if path != current:
            current, offset = path, 0
        spans.append((path, offset, size))
        offset += size
    return spans


def _write_part(path: Path, header: bytes, spans: list[tuple[Path, int, int]]) -> None:
    """Header, then the given block byte ranges, streamed."""
    with open(path, "wb") as dst:
        dst.write(header)
        for src_path, offset, length in spans:
            with open(src_path, "rb") as src:
                src.seek(offset)
                while length > 0:
                    chunk = src.read(min(_COPY_CHUNK, length))
                    if not chunk:
                        raise OSError(f"{src_path} is shorter than its task reported")
                    dst.write(chunk)
                    length -= len(chunk)


def _write_truth(truths: list[Path], path: Path) -> int:
    """Concatenate the tasks' truth lines, keeping the first of any repeated (artist, title)."""
    seen: set[int] = set()
    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as dst:
        dst.write(csv_line(TRUTH_COLUMNS) + "\n")
        for src_path in truths:
            with open(src_path, encoding="utf-8", newline="") as src:
                for line in src:
                    key = hash(line.rsplit(",", 1)[0])
                    if key not in seen:
                        seen.add(key)
                        dst.write(line)
                        rows += 1
    return rows
