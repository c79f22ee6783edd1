"""Small synthetic features/ + meta/ tables for training tests, written by Spark with many row groups."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from songrec.config import Config, local_path
from songrec.schema import FEATURES, NUMERIC_FEATURES, SCHEMA_VERSION

GENRES, EMOTIONS, LYRICS, ARTISTS, STYLES = 12, 7, 16, 60, 4


def make_features(
    spark, cfg: Config, rows: int = 1200, files: int = 3, seed: int = 0, uneven: bool = False, block: int = 16 * 1024
) -> dict:
    """Write ``features/`` (schema.FEATURES) and ``meta/`` under ``cfg.root``; return features.json content.

    Songs belong to one of a few styles that set their numeric means, genres, emotion, lyrics and
    artist pool, so the autoencoder has structure to learn. Files are written with a Parquet block
    size of ``block`` bytes so that each holds several row groups; the counts are read back from the
    footers. ``uneven``: three quarters of the rows go into one single-row-group file, so that one
    rank's shard is several times the other's.
    """
    rng = np.random.default_rng(seed)
    style = rng.integers(0, STYLES, rows)
    centres = rng.normal(0, 1.5, (STYLES, len(NUMERIC_FEATURES)))
    records = []
    for i in range(rows):
        s = int(style[i])
        numeric = (centres[s] + rng.normal(0, 0.5, len(NUMERIC_FEATURES))).astype(np.float32)
        genres = np.zeros(GENRES, np.float32)
        primary = 1 + (s * 2 + int(rng.integers(0, 2))) % (GENRES - 1)
        genres[primary] = 1.0
        lyrics = np.zeros(LYRICS, np.float32)
        if rng.random() < 0.8:
            lyrics[rng.choice(np.arange(s * 4, s * 4 + 4), 2)] = 1.0
            lyrics /= np.linalg.norm(lyrics)
        artist = 1 + s * (ARTISTS // STYLES - 1) + int(rng.integers(0, ARTISTS // STYLES - 1))
        song_id = int(rng.integers(-(2**62), 2**62))
        records.append((
            song_id, "val" if i % 10 == 0 else "train", numeric.tolist(), genres.tolist(), lyrics.tolist(),
            artist if rng.random() > 0.05 else 0, primary, 1 + s % (EMOTIONS - 1),
        ))  # fmt: skip
    features = cfg.path("features")
    if uneven:
        big = rows * 3 // 4
        spark.createDataFrame(records[:big], FEATURES).coalesce(1).write.option(
            "parquet.block.size", 256 * 1024 * 1024
        ).mode("overwrite").parquet(features)
        records = records[big:]
    df = spark.createDataFrame(records, FEATURES).repartition(files)
    df.write.option("parquet.block.size", block).mode("append" if uneven else "overwrite").parquet(features)
    groups = sum(pq.ParquetFile(p).metadata.num_row_groups for p in local_path(features).glob("*.parquet"))
    meta = {
        "schema_version": SCHEMA_VERSION, "numeric": NUMERIC_FEATURES, "genre_dim": GENRES, "lyrics_dim": LYRICS,
        "vocab_sizes": {"artist": ARTISTS, "genre": GENRES, "emotion": EMOTIONS},
        "rows": {"train": rows - len(range(0, rows, 10)), "val": len(range(0, rows, 10))},
        "row_groups": groups, "files": files,
    }  # fmt: skip
    meta_dir = local_path(cfg.path("meta"))
    meta_dir.mkdir(parents=True, exist_ok=True)
    (meta_dir / "features.json").write_text(json.dumps(meta))
    stats = {"numeric": {n: {"mean": 0.0, "std": 1.0, "min": -5.0, "max": 5.0, "nulls": 0} for n in NUMERIC_FEATURES}}
    (meta_dir / "stats.json").write_text(json.dumps(stats))
    return meta


def row_groups(path: Path) -> int:
    """Row groups over the Parquet files in ``path`` (footers)."""
    return sum(pq.ParquetFile(p).metadata.num_row_groups for p in Path(path).glob("*.parquet"))
