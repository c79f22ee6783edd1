"""Spark batched inference equals the encoder run in a plain Python process."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_cfg

from songrec import io
from songrec.embed import ARROW_BATCH_CONF, embed
from songrec.errors import InputError
from songrec.model import Encoder, ModelSpec, encode_batch, load_encoder, spec_dict
from songrec.spark import session_conf

SPEC = ModelSpec(
    numeric_dim=7, genre_dim=5, lyrics_dim=6, artist_vocab=40, genre_vocab=5, emotion_vocab=7,
    artist_emb=4, genre_emb=3, emotion_emb=2, hidden=[16], latent_dim=8,
)  # fmt: skip


def write_model(cfg, seed: int = 0) -> str:
    """model/ as the train job writes it (model.json + encoder.pt), with seeded random weights."""
    torch.manual_seed(seed)
    encoder = Encoder(SPEC)
    out = io.local_path(cfg.path("model"))
    out.mkdir(parents=True)
    torch.save(encoder.state_dict(), out / "encoder.pt")
    model_id = f"test-{seed}"
    (out / "model.json").write_text(json.dumps({"model": spec_dict(SPEC), "model_id": model_id}))
    return model_id


def write_features(cfg, n: int, seed: int = 0) -> pd.DataFrame:
    """features/ (schema.FEATURES columns) in three files; artist ids include out-of-vocabulary ones."""
    rng = np.random.default_rng(seed)

    def lists(width: int) -> list[np.ndarray]:
        return list(rng.standard_normal((n, width)).astype(np.float32))

    pdf = pd.DataFrame({
        "song_id": rng.integers(-(2**62), 2**62, n), "split": np.where(rng.random(n) < 0.1, "val", "train"),
        "numeric": lists(SPEC.numeric_dim), "genres": list((rng.random((n, SPEC.genre_dim)) < 0.3).astype(np.float32)),
        "lyrics": lists(SPEC.lyrics_dim), "artist_idx": rng.integers(0, 50, n).astype(np.int32),
        "genre_idx": rng.integers(0, 5, n).astype(np.int32), "emotion_idx": rng.integers(0, 7, n).astype(np.int32),
    })  # fmt: skip
    out = io.local_path(cfg.path("features"))
    out.mkdir(parents=True)
    for part, rows in enumerate(np.array_split(np.arange(n), 3)):
        table = pa.Table.from_pandas(pdf.iloc[rows], preserve_index=False)
        pq.write_table(table, out / f"part-{part}.parquet", row_group_size=64)
    return pdf


def plain_python_vectors(cfg, features: pd.DataFrame) -> np.ndarray:
    encoder = load_encoder(cfg.path("model"))
    batch = {c: features[c].to_numpy() for c in ("numeric", "genres", "lyrics")}
    batch.update({c: features[c].to_numpy() for c in ("artist_idx", "genre_idx", "emotion_idx")})
    return encode_batch(encoder, batch)


def test_spark_vectors_equal_plain_python(spark, tmp_path):
    cfg = make_cfg(tmp_path, "embed.batch_size=100")  # several batches per task
    model_id = write_model(cfg)
    features = write_features(cfg, 700)
    summary = embed(spark, cfg)

    table = spark.read.parquet(cfg.path("embeddings"))
    assert table.schema["vector"].dataType.elementType.typeName() == "float"
    got = table.toPandas().set_index("song_id").loc[features["song_id"]]
    vectors = np.stack(got["vector"].to_numpy())
    assert vectors.shape == (700, SPEC.latent_dim)
    np.testing.assert_allclose(vectors, plain_python_vectors(cfg, features), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert summary["rows"] == 700 and summary["model_id"] == model_id and summary["dim"] == SPEC.latent_dim
    assert io.read_json(cfg.path("embeddings", "_manifest.json"))["model_id"] == model_id


def test_repartitioned_and_rerun_gives_same_vectors(spark, tmp_path):
    cfg = make_cfg(tmp_path, "embed.partitions=5")
    write_model(cfg)
    write_features(cfg, 300)
    embed(spark, cfg)
    first = spark.read.parquet(cfg.path("embeddings")).toPandas().sort_values("song_id")
    embed(spark, cfg)  # commits a new version over the old one
    second = spark.read.parquet(cfg.path("embeddings")).toPandas().sort_values("song_id")
    assert first["song_id"].tolist() == second["song_id"].tolist()
    np.testing.assert_array_equal(np.stack(first["vector"]), np.stack(second["vector"]))


def test_batch_size_is_the_arrow_batch_and_the_session_is_left_as_it_was(spark, tmp_path, monkeypatch):
    """mapInPandas cuts partitions into Arrow batches of spark.sql.execution.arrow.maxRecordsPerBatch rows
    (10,000 unless set), so embed sets it to embed.batch_size for its stage and restores it afterwards."""
    df = spark.range(0, 2_500, numPartitions=1)

    def lengths(batches):
        for pdf in batches:
            yield pd.DataFrame({"n": [len(pdf)]})

    with session_conf(spark, ARROW_BATCH_CONF, "1000"):
        seen = sorted(r["n"] for r in df.mapInPandas(lengths, "n long").collect())
    assert seen == [500, 1000, 1000]
    assert spark.conf.get(ARROW_BATCH_CONF, None) in (None, "10000")  # back to the session's own value

    import contextlib

    import songrec.embed

    seen_in_stage = []

    @contextlib.contextmanager
    def recording(session, key, value):
        with session_conf(session, key, value):
            seen_in_stage.append((key, session.conf.get(key)))
            yield

    monkeypatch.setattr(songrec.embed, "session_conf", recording)
    cfg = make_cfg(tmp_path, "embed.batch_size=64")
    write_model(cfg)
    write_features(cfg, 200)
    spark.conf.set(ARROW_BATCH_CONF, "777")
    try:
        embed(spark, cfg)
        assert spark.conf.get(ARROW_BATCH_CONF) == "777"
    finally:
        spark.conf.unset(ARROW_BATCH_CONF)
    assert seen_in_stage == [(ARROW_BATCH_CONF, "64")]  # embed.batch_size, while the stage ran
    assert spark.read.parquet(cfg.path("embeddings")).count() == 200


def test_missing_inputs_are_clear_errors(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(InputError, match="features"):
        embed(spark, cfg)
    write_features(cfg, 10)
    with pytest.raises(InputError, match="model.json"):
        embed(spark, cfg)


@pytest.mark.skipif(
    importlib.util.find_spec("songrec.generate") is None or importlib.util.find_spec("songrec.train") is None,
    reason="pending: songrec.generate / songrec.train (colleagues' modules) not in the tree yet",
)
def test_trained_model_on_preprocessed_features(spark, trained, tmp_path):
    """The conftest run (generated -> preprocessed -> 2-rank trained): Spark vectors = plain Python ones."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(io.local_path(trained.path()), run, symlinks=True)
    cfg = make_cfg(tmp_path, f"root={run}")
    embed(spark, cfg)
    got = spark.read.parquet(cfg.path("embeddings")).toPandas().set_index("song_id")
    features = spark.read.parquet(cfg.path("features")).toPandas()
    assert len(got) == len(features)
    vectors = np.stack(got.loc[features["song_id"], "vector"].to_numpy())
    np.testing.assert_allclose(vectors, plain_python_vectors(cfg, features), atol=1e-5)
