"""The run report: ``report/index.html``, self-contained (images inlined), readable offline.

Sections: run summary (sizes, per-stage timings, parameters), training and validation loss, recall
against exact search, relevance against the raw-feature baselines, a 2-D PCA map of a seeded sample
of embeddings coloured by genre, and example songs with their neighbours. Every headline number is
rendered from ``report/metrics.json`` inside an element carrying ``data-metric="dotted.key"``, so a test
can check the page against the file.
"""

import base64
import html
import io as stdio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from songrec import io
from songrec.config import Config, local_path

log = logging.getLogger(__name__)

MAP_SAMPLE = 20000
EXAMPLES = 5
MAP_GENRES = 10  # colour the most frequent genres, the rest grey


def _png(fig: Any) -> str:
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def fmt(value: Any) -> str:
    """How a number appears on the page (tests compare with this)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _metric(metrics: dict, key: str) -> str:
    flat = _flatten(metrics)
    if key not in flat:
        return '<span class="missing">n/a</span>'
    return f'<span class="metric" data-metric="{html.escape(key)}">{html.escape(fmt(flat[key]))}</span>'


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def loss_plot(history: list[dict]) -> str | None:
    """Train and validation loss per epoch."""
    if not history:
        return None
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        if key in history[0]:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Autoencoder loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def relevance_plot(relevance: dict[str, dict[str, float]]) -> str | None:
    """Grouped bars: each relevance metric for the learned embedding and the baselines."""
    if not relevance:
        return None
    import matplotlib.pyplot as plt

    methods = list(relevance)
    # Shares only (0..1); in-degree is a count and is shown in the table above the chart.
    metrics = [m for m in relevance[methods[0]] if isinstance(relevance[methods[0]][m], float) and "degree" not in m]
    x = np.arange(len(metrics))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics)), 3.8))
    for i, method in enumerate(methods):
        ax.bar(x + i * width, [relevance[method].get(m, 0) or 0 for m in metrics], width, label=method)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, metrics, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Relevance: learned embedding vs raw-feature baselines")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def embedding_map(vectors: np.ndarray, genres: list[str]) -> str | None:
    """PCA to 2-D of a sample of unit vectors, coloured by primary genre."""
    if len(vectors) < 3:
        return None
    import matplotlib.pyplot as plt

    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    labels = np.array([g or "unknown" for g in genres])
    values, counts = np.unique(labels, return_counts=True)
    top = [v for _, v in sorted(zip(-counts, values, strict=True))][:MAP_GENRES]
    fig, ax = plt.subplots(figsize=(7, 6))
    rest = ~np.isin(labels, top)
    ax.scatter(xy[rest, 0], xy[rest, 1], s=2, c="#cccccc", label="other", alpha=0.5)
    for genre in top:
        sel = labels == genre
        ax.scatter(xy[sel, 0], xy[sel, 1], s=2, label=genre, alpha=0.6)
    ax.set_title(f"Embeddings, PCA of a seeded sample of {len(vectors):,} songs")
    ax.legend(markerscale=5, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def _sample_embeddings(spark: Any, cfg: Config) -> tuple[np.ndarray, list[str]]:
    from pyspark.sql import functions as F

    emb = spark.read.parquet(cfg.path("embeddings"))
    songs = spark.read.parquet(cfg.path("songs")).select("song_id", "genre")
    n = emb.count()
    fraction = min(1.0, MAP_SAMPLE / max(n, 1) * 1.1)
    rows = (
        emb.sample(fraction=fraction, seed=cfg.evaluate.seed)
        .join(songs, "song_id")
        .orderBy(F.xxhash64("song_id"))
        .limit(MAP_SAMPLE)
        .toPandas()
    )
    if rows.empty:
        return np.zeros((0, 2), dtype=np.float32), []
    return np.stack(rows["vector"].to_numpy()).astype(np.float32), rows["genre"].tolist()


def _examples(spark: Any, cfg: Config) -> list[tuple[dict, list[dict]]]:
    from pyspark.sql import functions as F

    songs = spark.read.parquet(cfg.path("songs")).select("song_id", "artist", "title", "genre", "emotion")
    nb = spark.read.parquet(cfg.path("neighbors"))
    picks = [
        r.song_id for r in songs.orderBy(F.xxhash64("song_id", F.lit(cfg.evaluate.seed))).limit(EXAMPLES).collect()
    ]
    rows = (
        nb.where(F.col("song_id").isin(picks) & (F.col("rank") <= 5))
        .join(songs.withColumnRenamed("song_id", "neighbor_id"), "neighbor_id")
        .orderBy("song_id", "rank")
        .collect()
    )
    info = {r.song_id: r.asDict() for r in songs.where(F.col("song_id").isin(picks)).collect()}
    out = []
    for sid in picks:
        out.append((info[sid], [r.asDict() for r in rows if r.song_id == sid]))
    return out


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}table{border-collapse:collapse;margin:0.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:0.9em;text-align:left}th{background:#f4f4f4}
.metric{font-weight:600}.missing{color:#999}img{max-width:100%;border:1px solid #eee}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:0.6em 1em}
.card .metric{font-size:1.6em;display:block}
"""


def render(cfg: Config, metrics: dict, context: dict) -> str:
    """The HTML page (pure: all inputs given)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>songrec run report</title><style>{CSS}</style>"]
    parts.append("</head><body><h1>songrec run report</h1>")
    parts.append(f"<p>Run root <code>{html.escape(cfg.root)}</code>, input <code>{html.escape(cfg.input)}</code>,")
    parts.append(f" generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}.</p>")
    cards = "".join(
        f"<div class='card'>{html.escape(label)}{_metric(metrics, key)}</div>" for label, key in context["headlines"]
    )
    parts.append(f"<div class='cards'>{cards}</div>")
    parts.append("<h2>Run summary</h2>")
    if context["counts"]:
        parts.append(_table([[k, fmt(v)] for k, v in context["counts"].items()], ["rows", "count"]))
    if context["stages"]:
        rows = [[s, v.get("status", ""), fmt(v.get("seconds", ""))] for s, v in context["stages"].items()]
        parts.append(_table(rows, ["stage", "status", "seconds"]))
    if context["params"]:
        parts.append(_table([[k, html.escape(str(v))] for k, v in context["params"].items()], ["parameter", "value"]))
    parts.append("<h2>Training</h2>")
    parts.append(
        context["loss_png"]
        and f"<img alt='loss curves' src='data:image/png;base64,{context['loss_png']}'>"
        or "<p>no training history</p>"
    )
    parts.append("<h2>Recall against exact search</h2>")
    recall_rows = [[k, _metric(metrics, k)] for k in sorted(_flatten(metrics)) if k.startswith("recall")]
    parts.append(_table(recall_rows, ["metric", "value"]))
    parts.append("<h2>Relevance against baselines</h2>")
    relevance = context["relevance"]
    if relevance:
        names = [m for m in next(iter(relevance.values()))]
        rows = [
            [html.escape(method)] + [_metric(metrics, f"{context['relevance_key']}.{method}.{m}") for m in names]
            for method in relevance
        ]
        parts.append(_table(rows, ["method", *names]))
    if context["relevance_png"]:
        parts.append(f"<img alt='relevance' src='data:image/png;base64,{context['relevance_png']}'>")
    parts.append("<h2>Embedding map</h2>")
    if context["map_png"]:
        parts.append(f"<img alt='embedding map' src='data:image/png;base64,{context['map_png']}'>")
    parts.append("<h2>Example songs and their neighbours</h2>")
    for song, nbs in context["examples"]:
        parts.append(
            f"<h3>{html.escape(song['title'])} — {html.escape(song['artist'])} "
            f"<small>({html.escape(str(song['genre']))}, {html.escape(song['emotion'])})</small></h3>"
        )
        parts.append(
            _table(
                [
                    [
                        n["rank"],
                        html.escape(n["artist"]),
                        html.escape(n["title"]),
                        html.escape(str(n["genre"])),
                        html.escape(n["emotion"]),
                        f"{n['score']:.4f}",
                    ]
                    for n in nbs
                ],
                ["rank", "artist", "title", "genre", "emotion", "score"],
            )
        )
    parts.append("</body></html>")
    return "".join(parts)


HEADLINES = [
    ("songs", "n"),
    ("K", "k"),
    ("recall@10 vs exact", "recall.at_10"),
    ("recall@K vs exact", "recall.at_k"),
    ("planted-style precision@10", "relevance.embedding.planted_precision_at_10"),
    ("similar-song hit rate@K", "relevance.embedding.similar_hit_rate_at_k"),
    ("catalogue coverage", "table.coverage"),
]


def _optional_json(uri: str, spark: Any) -> Any:
    return io.read_json(uri, spark) if io.exists(uri, spark) else None


def build_report(spark: Any, cfg: Config) -> dict:
    """Render ``report/index.html`` (and the PNGs beside it) from the run's outputs; commit ``report/``.

    ``report/metrics.json`` (from evaluate) gains the per-stage timings and row counts of the run.

    Returns:
        ``{"path": <index.html URI>, "bytes": <size>}``.
    """
    from songrec.errors import InputError

    metrics_uri = cfg.path("report", "metrics.json")
    if not io.exists(metrics_uri, spark):
        raise InputError(f"{metrics_uri} does not exist: run the evaluate stage first")
    metrics = io.read_json(metrics_uri, spark)
    pipeline_state = _optional_json(cfg.path("_state", "pipeline.json"), spark) or {}
    stages = {
        k: {kk: vv for kk, vv in v.items() if kk != "summary"} for k, v in pipeline_state.get("stages", {}).items()
    }
    counts = _optional_json(cfg.path("meta", "counts.json"), spark) or {}
    metrics["stages"] = stages
    metrics["counts"] = counts
    history = _optional_json(cfg.path("model", "history.json"), spark) or []
    model = _optional_json(cfg.path("model", "model.json"), spark) or {}
    manifest = _optional_json(cfg.path("neighbors", "_manifest.json"), spark) or {}
    params = {
        f"knn.{k}": v for k, v in manifest.items() if k in ("k", "shards", "M", "ef_construction", "ef", "buckets")
    }
    shapes, trained = model.get("model", {}), model.get("summary", {})
    params.update({f"model.{k}": shapes[k] for k in ("latent_dim", "hidden") if k in shapes})
    params.update({"model.model_id": model["model_id"]} if "model_id" in model else {})
    params.update({f"train.{k}": trained[k] for k in ("world_size", "device", "precision", "epochs") if k in trained})
    vectors, genres = _sample_embeddings(spark, cfg)
    context = {
        "headlines": HEADLINES,
        "counts": counts,
        "stages": stages,
        "params": params,
        "loss_png": loss_plot(history),
        "relevance": metrics.get("relevance", {}),
        "relevance_key": "relevance",
        "relevance_png": relevance_plot(metrics.get("relevance", {})),
        "map_png": embedding_map(vectors, genres),
        "examples": _examples(spark, cfg),
    }
    page = render(cfg, metrics, context).encode("utf-8")
    staging = io.staging_uri(cfg.path(), "report")
    # Written on the driver's disk: in the staging folder itself under a local root, else in a temporary
    # folder that is then copied to the remote staging location (HDFS, S3) and committed from there.
    with tempfile.TemporaryDirectory(prefix="songrec-report-") as tmp:
        out = local_path(staging) if io.is_local(staging) else Path(tmp) / "report"
        try:
            out.mkdir(parents=True)
            (out / "index.html").write_bytes(page)
            for name, png in (("loss.png", context["loss_png"]), ("relevance.png", context["relevance_png"]),
                              ("embedding_map.png", context["map_png"])):  # fmt: skip
                if png:
                    (out / name).write_bytes(base64.b64decode(png))
            io.write_json(str(out / "metrics.json"), metrics)
            if not io.is_local(staging):
                io.upload(out, staging, spark)
            io.commit(staging, cfg.path("report"), spark)
        except BaseException:
            io.discard(staging, spark)
            raise
    log.info("report: %s (%d KB)", cfg.path("report", "index.html"), len(page) // 1024)
    return {"path": cfg.path("report", "index.html"), "bytes": len(page)}
