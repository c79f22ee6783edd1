"""The autoencoder, its loss and the encoder artefacts; the Petastorm feed's shapes and shards."""

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg
from train_data import make_features

from songrec.config import ConfigError
from songrec.errors import InputError
from songrec.feed import TRAIN_COLUMNS, count_row_groups, read_split
from songrec.model import (
    Autoencoder,
    LossWeights,
    ModelSpec,
    artist_softmax_loss,
    autoencoder_loss,
    contrastive_loss,
    encode_batch,
    load_encoder,
    spec_dict,
)
from songrec.train_loop import _feed

SPEC = ModelSpec(
    numeric_dim=5, genre_dim=6, lyrics_dim=4, artist_vocab=50, genre_vocab=6, emotion_vocab=4,
    artist_emb=8, genre_emb=4, emotion_emb=2, hidden=[16, 8], latent_dim=4, dropout=0.0, artist_dropout=0.25,
)  # fmt: skip


def _batch(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lyrics = rng.random((n, 4)).astype(np.float32)
    return {
        "numeric": rng.normal(size=(n, 5)).astype(np.float32),
        "genres": (rng.random((n, 6)) < 0.3).astype(np.float32),
        "lyrics": lyrics / np.linalg.norm(lyrics, axis=1, keepdims=True),
        "artist_idx": rng.integers(0, 50, n).astype(np.int32),
        "genre_idx": rng.integers(0, 6, n).astype(np.int32),
        "emotion_idx": rng.integers(0, 4, n).astype(np.int32),
    }


def _fit(model, batch, weights, steps):
    """Train ``model`` on one fixed batch; the ``(loss, parts)`` of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    history = []
    for _ in range(steps):
        loss, parts = autoencoder_loss(model, batch, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((float(loss.detach()), parts))
    return history


def test_loss_is_finite_and_trains():
    torch.manual_seed(0)
    model = Autoencoder(SPEC)
    batch = {k: torch.from_numpy(v) for k, v in _batch(256).items()}
    weights = LossWeights(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16)
    history = _fit(model, batch, weights, steps=60)
    losses = [loss for loss, _ in history]
    assert set(history[-1][1]) == {"numeric", "genre", "emotion", "lyrics", "artist"}
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0]
    assert model.encoder.artist.weight.grad.abs().sum() > 0  # the artist table is trained by the loss


def test_contrast_zero_is_the_reconstruction_loss_and_contrast_trains():
    batch = {k: torch.from_numpy(v) for k, v in _batch(256).items()}
    plain = LossWeights(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16)
    results = []
    for weights in (plain, dataclasses.replace(plain, contrast=0.0)):
        torch.manual_seed(0)
        model = Autoencoder(SPEC)
        loss, parts = autoencoder_loss(model, batch, weights)
        results.append((float(loss.detach()), parts))
    assert results[0] == results[1] and "contrast" not in results[0][1]  # 0 disables the term exactly
    total, parts = results[0]
    reconstruction = parts["numeric"] + parts["genre"] + parts["emotion"] + parts["lyrics"] + 0.5 * parts["artist"]
    assert math.isclose(total, reconstruction, rel_tol=1e-5)  # nothing but the reconstruction terms
    torch.manual_seed(0)
    model = Autoencoder(dataclasses.replace(SPEC, dropout=0.1))
    history = _fit(model, batch, dataclasses.replace(plain, contrast=1.0), steps=60)
    assert all(math.isfinite(loss) for loss, _ in history)
    contrast = [parts["contrast"] for _, parts in history]
    assert contrast[-1] < 0.7 * contrast[0]
    assert 0.0 < contrast[-1] < contrast[0] <= 2 * math.log(256)


def test_contrastive_loss_blocks_and_extremes():
    torch.manual_seed(0)
    z = torch.randn(300, 8)
    apart = contrastive_loss(z * 100, z * 100)  # each row's other view is itself: far the best logit
    assert 0.0 <= float(apart) < float(contrastive_loss(z, torch.randn(300, 8)))
    same = torch.ones(300, 8)  # collapsed: every candidate equal, the loss is log(block size) per row
    expected = (256 * math.log(256) + 44 * math.log(44)) / 300
    assert math.isclose(float(contrastive_loss(same, same, block=256)), expected, rel_tol=1e-5)
    assert math.isclose(float(contrastive_loss(same, same, block=1024)), math.log(300), rel_tol=1e-5)
    assert float(contrastive_loss(z[:1], z[:1])) == 0.0


def test_collapsed_artist_table_gets_the_worst_artist_loss():
    torch.manual_seed(0)
    artists = torch.randint(1, 50, (64,))
    query = torch.randn(64, 8)
    collapsed = torch.ones(50, 8)
    loss = artist_softmax_loss(query, collapsed, artists, negatives=16)
    # Every logit equal: log(1 + unmasked negatives) per row, at most log(17).
    assert 0.9 * math.log(17) < float(loss) <= math.log(17) + 1e-5
    table = torch.randn(50, 8)
    assert float(artist_softmax_loss(table[artists] * 5, table, artists, negatives=16)) < 0.5 * float(loss)
    assert float(artist_softmax_loss(query, table, torch.zeros(64, dtype=torch.long), negatives=16)) == 0.0


def test_encode_batch_unit_vectors_lists_and_unknown_ids():
    model = Autoencoder(SPEC).eval()
    batch = _batch(10)
    vectors = encode_batch(model.encoder, batch)
    assert vectors.dtype == np.float32 and vectors.shape == (10, 4)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    as_lists = dict(batch, numeric=np.array([list(r) for r in batch["numeric"]] + [None], dtype=object)[:-1])
    np.testing.assert_allclose(encode_batch(model.encoder, as_lists), vectors, atol=1e-6)
    unseen = dict(batch, artist_idx=np.full(10, 10_000))  # artists after training: unknown = 0
    np.testing.assert_allclose(
        encode_batch(model.encoder, unseen),
        encode_batch(model.encoder, dict(batch, artist_idx=np.zeros(10))),
        atol=1e-6,
    )
    with pytest.raises(InputError, match="lyrics"):
        encode_batch(model.encoder, {k: v for k, v in batch.items() if k != "lyrics"})
    with pytest.raises(InputError, match="'numeric' has width 3"):
        encode_batch(model.encoder, dict(batch, numeric=batch["numeric"][:, :3]))


def test_load_encoder_roundtrip_weights_only(tmp_path):
    model = Autoencoder(SPEC).eval()
    state = {k[len("encoder.") :]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp_path / "encoder.pt").write_bytes(buffer.getvalue())
    (tmp_path / "model.json").write_text(json.dumps({"model_id": "x", "model": spec_dict(SPEC)}))
    encoder = load_encoder(tmp_path.as_uri())
    batch = _batch(8)
    np.testing.assert_array_equal(encode_batch(encoder, batch), encode_batch(model.encoder, batch))
    assert encoder.info["model_id"] == "x" and not encoder.training
    with pytest.raises(InputError, match="does not exist"):
        load_encoder(str(tmp_path / "nowhere"))


def test_feed_gives_2d_arrays_and_disjoint_shards(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    meta = make_features(spark, cfg, rows=600, files=2)
    uri = cfg.path("features")
    assert count_row_groups(uri) == meta["row_groups"] >= 4
    shards = [read_split(uri, "train", rank, 2) for rank in (0, 1)]
    for shard in shards:
        assert shard["numeric"].ndim == 2 and shard["numeric"].shape[1] == len(meta["numeric"])
        assert shard["genres"].shape[1] == meta["genre_dim"] and shard["lyrics"].shape[1] == meta["lyrics_dim"]
        assert "split" not in shard
    ids = [set(s["song_id"].tolist()) for s in shards]
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == meta["rows"]["train"]
    assert len(read_split(uri, "val")["song_id"]) == meta["rows"]["val"]


def test_training_pass_keeps_its_shards_validation_rows_for_the_validation_passes(spark, tmp_path):
    """``_feed``: the first training pass keeps the val rows its reader decodes; validation passes then
    give exactly the rows (values and dtypes) a Petastorm validation pass of the same shard gives."""
    cfg = make_cfg(tmp_path)
    meta = make_features(spark, cfg, rows=600, files=2)
    uri = cfg.path("features")
    train = {"batch_size": 16, "shuffle_buffer": 100, "seed": 3, "reader_workers": 1}
    for rank in (0, 1):
        ctx = {"train": train, "features_uri": uri, "rank": rank, "world": 2, "trace_dir": None}
        with _feed(ctx, 0, train=True) as loader:
            batches = list(loader)
        assert all(sorted(b) == sorted(TRAIN_COLUMNS) for b in batches)  # song_id was read for the kept rows only
        trained_rows = sum(len(b["numeric"]) for b in batches)
        kept = ctx["val_rows"]
        other = {"train": train, "features_uri": uri, "rank": rank, "world": 2, "trace_dir": None}
        with _feed(other, 5, train=True) as loader:  # another epoch: row groups in another order
            assert sum(len(b["numeric"]) for b in loader) == trained_rows
        for name in TRAIN_COLUMNS:  # kept in song_id order: a resumed run validates on the same batches
            np.testing.assert_array_equal(other["val_rows"][name], kept[name], err_msg=name)
        with _feed(ctx, 1, train=False) as loader:
            batches = list(loader)
        assert len(batches) > 1 and max(len(b["numeric"]) for b in batches) == 16
        assert {k: v.dtype for k, v in batches[0].items()} == {
            k: torch.as_tensor(v).dtype for k, v in read_split(uri, "val", rank, 2).items() if k != "song_id"
        }
        del ctx["val_rows"]
        with _feed(ctx, 1, train=False) as loader:
            read = list(loader)
        assert "val_rows" not in ctx  # only a training pass keeps rows
        assert sorted(kept) == sorted(read[0]) == sorted(TRAIN_COLUMNS)
        for name in TRAIN_COLUMNS:
            got = torch.cat([b[name] for b in batches]).numpy()
            want = torch.cat([b[name] for b in read]).numpy()
            np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(want, axis=0), err_msg=name)
        shard = read_split(uri, "train", rank, 2)["song_id"]
        assert trained_rows == len(shard) and len(kept["numeric"]) == len(read_split(uri, "val", rank, 2)["song_id"])
    assert meta["rows"]["val"] > 0


def test_sparse_artist_table_gives_the_dense_loss_and_gradients():
    batch = {k: torch.from_numpy(v) for k, v in _batch(64).items()}
    weights = LossWeights(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16, contrast=1.0)
    grads = []
    for sparse in (False, True):
        torch.manual_seed(0)  # same weights, same dropout and negative draws
        model = Autoencoder(dataclasses.replace(SPEC, dropout=0.1), sparse_artist=sparse)
        loss, _ = autoencoder_loss(model, batch, weights)
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    dense, sparse = grads
    assert sparse["encoder.artist.weight"].is_sparse and not dense["encoder.artist.weight"].is_sparse
    assert not sparse["encoder.genre.weight"].is_sparse  # only the artist table goes sparse
    for name, grad in dense.items():
        other = sparse[name].to_dense() if sparse[name].is_sparse else sparse[name]
        torch.testing.assert_close(other, grad, rtol=1e-5, atol=1e-6, msg=name)


def test_decode_views_one_reconstructs_each_song_once():
    batch = {k: torch.from_numpy(v) for k, v in _batch(48, seed=4).items()}
    base = dict(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16)
    torch.manual_seed(0)
    model = Autoencoder(SPEC).eval()  # no dropout: both views equal the batch, so the terms can be compared
    decoded_rows = []
    model.decoder.register_forward_hook(lambda mod, args, out: decoded_rows.append(len(args[0])))
    results = {}
    for name, weights in {
        "plain": LossWeights(**base),
        "both": LossWeights(**base, contrast=1.0, decode_views=2),
        "one": LossWeights(**base, contrast=1.0, decode_views=1),
    }.items():
        torch.manual_seed(1)  # the same sampled artist negatives
        results[name] = autoencoder_loss(model, batch, weights)
    assert decoded_rows == [48, 96, 48]
    (_, plain), (both_total, both), (one_total, one) = results["plain"], results["both"], results["one"]
    for term in ("numeric", "genre", "emotion", "lyrics", "artist"):
        assert one[term] == pytest.approx(plain[term], rel=1e-5), term
        assert both[term] == pytest.approx(plain[term], rel=1e-5), term
    assert one["contrast"] == pytest.approx(both["contrast"], rel=1e-5) and one["contrast"] > 0
    assert float(one_total.detach()) == pytest.approx(float(both_total.detach()), rel=1e-5)


def test_decode_views_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.decode_views: must be 1 or 2"):
        make_cfg(tmp_path, "train.decode_views=3")


@pytest.mark.parametrize("hidden", [[16, 8], []])
def test_encoder_views_equal_encoding_the_batch_repeated(hidden):
    """``views=2`` (dense inputs through the first layer once) = encoding the batch concatenated twice,
    dropout and artist-dropout draws included, in values and in every gradient."""
    spec = dataclasses.replace(SPEC, hidden=hidden, dropout=0.1)
    batch = {k: torch.from_numpy(v) for k, v in _batch(24, seed=5).items()}
    repeated = {k: torch.cat([v, v]) for k, v in batch.items()}
    torch.manual_seed(0)
    encoder = Autoencoder(spec, sparse_artist=False).encoder.train()
    results = []
    for inputs, views in ((batch, 2), (repeated, 1)):
        encoder.zero_grad()
        torch.manual_seed(3)  # the same dropout and artist-dropout draws
        z = encoder(inputs, views=views)
        (z * torch.linspace(-1, 1, z.numel()).reshape(z.shape)).sum().backward()
        results.append((z.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}))
    (z_views, g_views), (z_rep, g_rep) = results
    assert z_views.shape == (48, spec.latent_dim)
    torch.testing.assert_close(z_views, z_rep, rtol=1e-5, atol=1e-6)
    assert not torch.equal(z_views[:24], z_views[24:])  # the two copies got their own draws
    assert g_views.keys() == g_rep.keys() and "artist.weight" in g_views
    for name, grad in g_views.items():
        torch.testing.assert_close(grad, g_rep[name], rtol=1e-5, atol=1e-6, msg=name)
