"""Measure neighbors/: recall against exact search, and relevance against raw-feature baselines.

A seeded sample of ``evaluate.sample`` songs is searched exactly (numpy, blocked) against all N
embeddings; recall@10 and recall@K compare the table's lists with those exact lists (tie-aware).

Relevance is computed for the same sample, the same way, for:

- ``embedding``: the neighbour table itself (the product);
- ``embedding_exact``: exact kNN on the embeddings (what the table approximates);
- ``audio12_l2``: exact Euclidean kNN on the twelve standardised Spotify-style audio features from
  songs/ (danceability, energy, key, loudness, mode, speechiness, acousticness, instrumentalness,
  liveness, valence = positiveness, tempo, duration), as the KNN seed project did;
- ``audio12_tags_cos``: exact cosine kNN on those features plus genre multi-hot and emotion
  one-hot, as the PyNNDescent seed project did.

Metrics: planted-style precision@10 (generator truth file, joined on song_id computed from artist
and title; skipped with a note when the file is absent), similar-song hit rate@K, genre agreement@10
(a neighbour shares a genre token), emotion agreement@10, coverage and max in-degree of the sample's
lists; and for the whole table, coverage and max in-degree. Writes ``report/metrics.json`` and the
recall into ``neighbors/_manifest.json``.
"""

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pacsv
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from songrec import io, metrics
from songrec.config import Config
from songrec.errors import InputError, first_line
from songrec.timing import Laps

log = logging.getLogger(__name__)

AT = 10  # the "@10" of precision / agreement / recall@10
LOAD_STEPS = ("embeddings_s", "songs_s", "features_s", "truth_s")  # load_s = their sum: reading the inputs
# songs/ columns standing in for Spotify's twelve audio features (valence = positiveness).
AUDIO12 = [
    "danceability", "energy", "key_pitch", "loudness_db", "key_major", "speechiness", "acousticness",
    "instrumentalness", "liveness", "positiveness", "tempo", "length_s",
]  # fmt: skip


def _require(spark: SparkSession, cfg: Config, name: str) -> str:
    uri = cfg.path(name)
    if not io.exists(uri, spark):
        raise InputError(f"{uri} does not exist: run the stage that writes {name}/ first")
    return uri


def _embeddings(spark: SparkSession, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """All embeddings sorted by song_id: ``(ids int64 [N], vectors float32 [N, d])``."""
    tbl = spark.read.parquet(_require(spark, cfg, "embeddings")).select("song_id", "vector").toArrow()
    if tbl.num_rows == 0:
        raise InputError(f"{cfg.path('embeddings')} is empty")
    ids = tbl.column("song_id").to_numpy()
    vec = tbl.column("vector").combine_chunks()
    vectors = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), -1)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


def _songs(spark: SparkSession, cfg: Config, ids: np.ndarray) -> pd.DataFrame:
    """songs/ attributes aligned to ``ids`` (rows of songs missing from songs/ are empty)."""
    df = spark.read.parquet(_require(spark, cfg, "songs"))
    cols = [c for c in AUDIO12 if c != "key_major"]
    df = df.select(
        "song_id", "genres", "emotion", "similar_song_ids", *cols,  # artist and title: not needed here
        (F.col("key_mode") == "major").cast("double").alias("key_major"),
    )  # fmt: skip
    pdf = df.toArrow().to_pandas().drop_duplicates("song_id").set_index("song_id")
    return pdf.reindex(pd.Index(ids, name="song_id"))


def _truth_styles(spark: SparkSession, cfg: Config, ids: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """Planted style code per catalogue row (-1 unknown), or None when there is no truth file."""
    uri = cfg.evaluate.truth
    if not uri:
        try:
            from songrec.generate import truth_uri
        except ImportError:
            notes.append("planted precision skipped: songrec.generate is not available to locate the truth file")
            return None
        uri = truth_uri(cfg)
    if not io.exists(uri, spark):
        notes.append(f"planted precision skipped: no generator truth file at {uri} (real data has none)")
        return None
    from songrec.parse import song_id_col

    # Not spark.read: the truth file's leading underscore hides it from Spark's file listing (on purpose).
    # Read as Arrow and handed to Spark as Arrow: a pandas frame would cross to the JVM row by row
    # (spark.sql.execution.arrow.pyspark.enabled is off by default), 37 s of 111 at full size.
    wanted = ["artist", "title", "style"]
    as_text = pacsv.ConvertOptions(column_types=dict.fromkeys(wanted, pa.string()))
    with tempfile.TemporaryDirectory(prefix="songrec-truth-") as tmp:
        if io.is_local(uri):
            path = io.local_path(uri)
        else:  # HDFS, S3, ...: fetched through Hadoop's FileSystem API (pyarrow knows few of those schemes)
            path = Path(tmp) / "truth.csv"
            io.download(uri, path, spark)
        try:
            raw = pacsv.read_csv(
                path, parse_options=pacsv.ParseOptions(newlines_in_values=True), convert_options=as_text
            )
        except pa.ArrowInvalid as exc:
            raise InputError(f"truth file {uri} is not a readable CSV: {first_line(str(exc))}") from exc
    if not set(wanted) <= set(raw.column_names):
        raise InputError(f"truth file {uri} needs columns artist, title, style; has {raw.column_names}")
    truth = spark.createDataFrame(raw.select(wanted))
    styles = (
        truth.select(song_id_col("artist", "title").alias("song_id"), "style")
        .groupBy("song_id")
        .agg(F.min("style").alias("style"))
        .toArrow()
        .to_pandas()
    )
    codes = pd.Series(pd.factorize(styles["style"])[0], index=styles["song_id"])
    return codes.reindex(ids).fillna(-1).to_numpy(np.int64)


def _standardise(x: np.ndarray) -> np.ndarray:
    mean, std = np.nanmean(x, 0), np.nanstd(x, 0)
    z = (x - mean) / np.where(std > 0, std, 1)
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _baselines(songs: pd.DataFrame) -> tuple[dict[str, tuple[np.ndarray, str]], np.ndarray, np.ndarray]:
    """Baseline vectors by name (with metric), the genre multi-hot and the emotion codes."""
    audio = _standardise(songs[AUDIO12].astype("float64").to_numpy())
    tokens = songs["genres"].reset_index(drop=True).explode().dropna()  # index = row; empty or NULL lists drop out
    codes, vocab = pd.factorize(tokens, sort=True)
    genres = np.zeros((len(songs), max(len(vocab), 1)), bool)
    genres[tokens.index.to_numpy(), codes] = True
    emotion = songs["emotion"].where(songs["emotion"].notna() & (songs["emotion"] != "unknown"))
    emotion_codes, _ = pd.factorize(emotion)  # NaN -> -1
    one_hot = np.zeros((len(songs), emotion_codes.max() + 2), np.float32)
    one_hot[np.arange(len(songs)), emotion_codes + 1] = emotion_codes >= 0
    tags = np.hstack([audio, genres.astype(np.float32), one_hot[:, 1:]])
    tags /= np.maximum(np.linalg.norm(tags, axis=1, keepdims=True), 1e-12)
    return {"audio12_l2": (audio, "l2"), "audio12_tags_cos": (tags, "ip")}, genres, emotion_codes.astype(np.int64)


def _relevance(nbrs: np.ndarray, sample: np.ndarray, ctx: dict[str, Any], k: int, n: int) -> dict[str, Any]:
    coverage, hub = metrics.coverage_and_hubness(nbrs, n)
    styles = ctx["styles"]
    out = {
        "planted_precision_at_10": None if styles is None else metrics.share_same(styles, sample, nbrs, AT),
        "similar_hit_rate_at_k": metrics.hit_rate(ctx["similar"], nbrs[:, :k]),
        "genre_agreement_at_10": metrics.share_overlap(ctx["genres"], sample, nbrs, AT),
        "emotion_agreement_at_10": metrics.share_same(ctx["emotions"], sample, nbrs, AT),
        "sample_coverage": coverage,
        "sample_max_in_degree": hub,
    }  # fmt: skip
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in out.items()}


def _table_lists(table: DataFrame, sample_ids: np.ndarray, pos: pd.Series, k: int) -> np.ndarray:
    """The table's neighbour positions for the sample, ``[S, k]`` (-1 where a list is short)."""
    rows = (
        table.where(F.col("song_id").isin([int(s) for s in sample_ids]) & (F.col("rank") <= k))
        .select("song_id", "rank", "neighbor_id")
        .toPandas()
    )
    out = np.full((len(sample_ids), k), metrics.MISSING, np.int64)
    where = pd.Series(np.arange(len(sample_ids)), index=sample_ids)
    out[where[rows["song_id"]].to_numpy(), rows["rank"].to_numpy() - 1] = (
        pos.reindex(rows["neighbor_id"]).fillna(metrics.MISSING).to_numpy(np.int64)
    )
    return out


def _table_scans(table: DataFrame, sample_ids: np.ndarray, pos: pd.Series, k: int) -> dict[str, Any]:
    """Both Spark jobs over neighbors/: the sample's lists (:func:`_table_lists`) and the whole table's
    coverage and largest in-degree, each with its seconds."""
    lap = Laps()
    found = _table_lists(table, sample_ids, pos, k)
    lap("table_lists_s")
    in_degree = table.groupBy("neighbor_id").count()
    whole = in_degree.agg(F.count("*").alias("covered"), F.max("count").alias("max_in")).first()
    lap("in_degree_s")
    return {"found": found, "covered": int(whole["covered"] or 0), "max_in": int(whole["max_in"] or 0), **lap.laps}


def evaluate(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write ``report/metrics.json`` and the recall into ``neighbors/_manifest.json``.

    The two Spark scans of neighbors/ (:func:`_table_scans`) run in a thread while the driver reads the
    other inputs and searches exactly (numpy): their jobs' task-free moments (planning, listing the
    bucket folders, collecting) would otherwise leave the cores idle. ``timings`` holds the driver's
    steps in order (``table_wait_s``: waiting for the scans once the driver's own work is done) and the
    scans' own seconds (``table_lists_s``, ``in_degree_s``), which overlap the driver's steps.

    Args:
        spark: the session.
        cfg: the run's config (``evaluate`` section; ``knn.k`` via the table's manifest).

    Returns:
        The metrics dict written to report/metrics.json.

    Raises:
        InputError: an upstream table is missing or empty.
    """
    lap = Laps()
    notes: list[str] = []
    ids, vectors = _embeddings(spark, cfg)
    lap("embeddings_s")
    n = len(ids)
    manifest_uri = cfg.path("neighbors", "_manifest.json")
    manifest = io.read_json(manifest_uri, spark) if io.exists(manifest_uri, spark) else {}
    k = int(manifest.get("k_effective") or min(cfg.knn.k, n - 1))
    pos = pd.Series(np.arange(n), index=ids)
    rng = np.random.default_rng(cfg.evaluate.seed)
    sample = np.sort(rng.choice(n, size=min(cfg.evaluate.sample, n), replace=False))
    table_df = spark.read.parquet(_require(spark, cfg, "neighbors"))  # listed once for both jobs
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate-table") as pool:
        scans = pool.submit(_table_scans, table_df, ids[sample], pos, k)
        songs = _songs(spark, cfg, ids)
        lap("songs_s")
        baselines, genres, emotions = _baselines(songs)
        similar = []  # each sample song's resolved similar songs, as catalogue positions (self excluded)
        for p, sim in zip(sample, songs["similar_song_ids"].to_numpy()[sample], strict=True):
            found = pos.reindex(sim).dropna().to_numpy(np.int64) if isinstance(sim, list | np.ndarray) else np.zeros(0)
            similar.append(found[found != p].astype(np.int64))
        lap("features_s")
        styles = _truth_styles(spark, cfg, ids, notes)
        ctx = {"styles": styles, "genres": genres, "emotions": emotions, "similar": similar}
        lap("truth_s")

        block = cfg.evaluate.block_rows
        exact, exact_scores = metrics.exact_topk(vectors[sample], sample, vectors, k, block)
        lap("exact_s")
        baseline_lists = {
            name: metrics.exact_topk(base[sample], sample, base, k, block, metric=metric)[0]
            for name, (base, metric) in baselines.items()
        }
        lap("baselines_s")
        table = scans.result()
        lap("table_wait_s")
    found = table["found"]
    found_scores = np.where(
        found == metrics.MISSING, -np.inf, np.einsum("sd,skd->sk", vectors[sample], vectors[np.maximum(found, 0)])
    )
    recall = {
        "at_10": round(metrics.recall_at(found, exact, exact_scores, found_scores, min(AT, k)), 4),
        "at_k": round(metrics.recall_at(found, exact, exact_scores, found_scores, k), 4),
        "k": k,
        "sample": len(sample),
    }
    relevance = {
        "embedding": _relevance(found, sample, ctx, k, n),
        "embedding_exact": _relevance(exact, sample, ctx, k, n),
        **{name: _relevance(nbrs, sample, ctx, k, n) for name, nbrs in baseline_lists.items()},
    }
    lap("relevance_s")
    if k < AT:
        notes.append(f"K = {k} < {AT}: the @10 figures (recall, precision, agreement) are over the {k} neighbours")
    result = {
        "n": n, "k": k, "sample": len(sample), "seed": cfg.evaluate.seed,
        "recall": recall,
        "relevance": relevance,
        "table": {"coverage": round(table["covered"] / n, 4), "max_in_degree": table["max_in"]},
        "model_id": manifest.get("model_id"),
        "notes": notes,
        "timings": {
            **lap.laps, "table_lists_s": table["table_lists_s"], "in_degree_s": table["in_degree_s"],
            "load_s": round(sum(lap.laps[s] for s in LOAD_STEPS), 3), "total_s": lap.total(),
        },
    }  # fmt: skip
    io.write_json(cfg.path("report", "metrics.json"), result, spark)
    if manifest:
        manifest["recall"] = {**recall, "seed": cfg.evaluate.seed, "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        io.write_json(manifest_uri, manifest, spark)
    _log_table(result)
    return result


def _log_table(result: dict[str, Any]) -> None:
    rel = result["relevance"]
    names = list(next(iter(rel.values())))
    lines = [f"{'method':<18}" + "".join(f"{m[:24]:>26}" for m in names)]
    for method, vals in rel.items():
        lines.append(f"{method:<18}" + "".join(f"{'-' if vals[m] is None else vals[m]:>26}" for m in names))
    log.info(
        "recall@10 %.4f, recall@%d %.4f on %d songs; table coverage %.3f, max in-degree %d\n%s",
        result["recall"]["at_10"], result["k"], result["recall"]["at_k"], result["sample"],
        result["table"]["coverage"], result["table"]["max_in_degree"], "\n".join(lines),
    )  # fmt: skip
    for note in result["notes"]:
        log.info("note: %s", note)
