"""The training step's pieces: sparse-aware gradient clipping, the optimiser pair, checkpoint format."""

import pytest
import torch
from test_model import SPEC, _batch

from songrec import train_loop
from songrec.errors import InputError
from songrec.model import INPUT_COLUMNS, Autoencoder, LossWeights, autoencoder_loss
from songrec.train_loop import (
    CHECKPOINT_FORMAT,
    Optimizers,
    _load_checkpoint,
    _save_checkpoint,
    agree_on_bf16,
    bf16_autocast,
    clip_gradients,
    cpu_has_bf16,
    idle_batch,
    sparse_artist,
    train_step,
)

WEIGHTS = LossWeights(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16)


def _backward(sparse: bool, scale: float = 1.0, model: Autoencoder | None = None, seed: int = 0) -> Autoencoder:
    """Gradients of one batch (``seed``) on ``model``, or on a fresh seeded model."""
    torch.manual_seed(seed)
    model = model or Autoencoder(SPEC, sparse_artist=sparse)
    model.zero_grad(set_to_none=True)
    loss, _ = autoencoder_loss(model, {k: torch.from_numpy(v) for k, v in _batch(64, seed).items()}, WEIGHTS)
    (loss * scale).backward()
    return model


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_gradients_with_a_sparse_table_matches_torch_on_the_dense_model(max_norm):
    dense, sparse = _backward(False, scale=10.0), _backward(True, scale=10.0)
    expected = torch.nn.utils.clip_grad_norm_(dense.parameters(), max_norm)
    total = clip_gradients(sparse.parameters(), max_norm)
    assert total == pytest.approx(float(expected), rel=1e-5)
    for (name, d), s in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        got = s.grad.to_dense() if s.grad.is_sparse else s.grad
        torch.testing.assert_close(got, d.grad, rtol=1e-5, atol=1e-7, msg=name)


def _rows_moved_by_second_step(sparse: bool) -> tuple[set[int], set[int]]:
    """Step on batch 0, then on batch 1: the artist rows batch 1 read, and the rows its step moved."""
    model = _backward(sparse)
    optimizers = Optimizers(model, lr=0.01, weight_decay=0.1, lr_lambda=lambda step: 0.5)
    optimizers.step()
    _backward(sparse, model=model, seed=1)
    grad = model.encoder.artist.weight.grad
    touched = set(torch.nonzero((grad.to_dense() if grad.is_sparse else grad).abs().sum(dim=1)).flatten().tolist())
    before = model.encoder.artist.weight.detach().clone()
    optimizers.step()
    moved = set(torch.nonzero((model.encoder.artist.weight.detach() != before).any(dim=1)).flatten().tolist())
    return touched, moved


def test_sparse_table_is_stepped_by_sparse_adam_touching_only_its_batch_rows():
    model = _backward(True)
    optimizers = Optimizers(model, lr=0.01, weight_decay=0.1, lr_lambda=lambda step: 0.5)
    assert [type(o).__name__ for o in optimizers.optimizers] == ["AdamW", "SparseAdam"]
    assert optimizers.lr == pytest.approx(0.005)
    assert [type(o).__name__ for o in Optimizers(_backward(False), 0.01, 0.1, lambda s: 1.0).optimizers] == ["AdamW"]
    touched, moved = _rows_moved_by_second_step(sparse=True)
    assert moved and moved <= touched  # lazy: rows only the first batch read stay where they are
    touched, moved = _rows_moved_by_second_step(sparse=False)
    assert moved - touched  # dense Adam moves the first batch's rows again, on their momentum


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", True), ("auto", "cuda", False), ("true", "cuda", True), ("false", "cpu", False)],
)
def test_sparse_artist_setting(setting, device, expected):
    assert sparse_artist(setting, torch.device(device)) is expected


def test_optimizers_state_round_trips_and_refuses_the_other_device_kind():
    model = _backward(True)
    optimizers = Optimizers(model, 0.01, 0.1, lambda step: 1.0 / (step + 1))
    optimizers.step()
    optimizers.step()
    state = optimizers.state_dict()
    again = Optimizers(_backward(True), 0.01, 0.1, lambda step: 1.0 / (step + 1))
    again.load_state_dict(state)
    assert again.lr == pytest.approx(optimizers.lr) and again.schedulers[1].last_epoch == 2
    exp_avg = optimizers.optimizers[1].state_dict()["state"][0]["exp_avg"]
    torch.testing.assert_close(again.optimizers[1].state_dict()["state"][0]["exp_avg"], exp_avg)
    dense = Optimizers(_backward(False), 0.01, 0.1, lambda step: 1.0)
    with pytest.raises(InputError, match="sparse artist table .*cannot resume one made with a dense one"):
        dense.load_state_dict(state)


def test_checkpoint_of_an_older_format_is_a_clear_error(tmp_path):
    train = {"hidden": [16, 8], "latent_dim": 4, "artist_dim": 8, "genre_dim": 4, "emotion_dim": 2, "seed": 1}
    _save_checkpoint(tmp_path, 1, {"epoch": 1, "optimizer": {}, "scheduler": {}, "train": train})
    with pytest.raises(InputError, match="older songrec .*delete"):
        _load_checkpoint(tmp_path, train)
    _save_checkpoint(tmp_path, 2, {"format": CHECKPOINT_FORMAT, "epoch": 2, "train": train})
    assert _load_checkpoint(tmp_path, train)["epoch"] == 2
    with pytest.raises(InputError, match="train.seed=1"):
        _load_checkpoint(tmp_path, dict(train, seed=2))


def test_idle_batch_feeds_the_model_and_contributes_zero_gradient():
    batch = idle_batch(SPEC, torch.device("cpu"))
    assert set(batch) == set(INPUT_COLUMNS) and all(len(v) == 1 for v in batch.values())
    model = Autoencoder(SPEC, sparse_artist=True)
    weights = LossWeights(numeric=1, genre=1, emotion=1, artist=0.5, lyrics=1, artist_negatives=16, contrast=1.0)
    loss, _ = autoencoder_loss(model, batch, weights)
    (loss * 0.0).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["encoder.artist.weight"].is_sparse  # the sparse collective still runs on an idle step
    for name, grad in grads.items():
        dense = grad.to_dense() if grad.is_sparse else grad
        assert torch.count_nonzero(dense) == 0, name


def test_cpu_has_bf16_reads_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n")
    assert not cpu_has_bf16(str(info))  # AVX-512 alone only emulates bf16
    for flag in ("avx512_bf16", "amx_bf16"):
        info.write_text(f"processor\t: 0\nflags\t\t: fpu avx2 avx512f {flag} avx512vl\n")
        assert cpu_has_bf16(str(info))
    assert not cpu_has_bf16(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("setting", "device", "native", "expected"),
    [
        ("auto", "cuda", False, True), ("auto", "cpu", True, True), ("auto", "cpu", False, False),
        ("bf16", "cpu", False, True), ("fp32", "cpu", True, False), ("fp32", "cuda", True, False),
    ],
)  # fmt: skip
def test_bf16_autocast_setting(monkeypatch, setting, device, native, expected):
    monkeypatch.setattr(train_loop, "cpu_has_bf16", lambda: native)
    assert bf16_autocast(setting, torch.device(device)) is expected


@pytest.mark.parametrize("amp", [False, True])
def test_train_step_autocasts_products_on_cpu_and_keeps_weights_fp32(amp):
    """With ``amp`` the layers' products run in bf16 on CPU; weights, gradients and the loss stay fp32."""
    torch.manual_seed(0)
    model = Autoencoder(SPEC, sparse_artist=True)
    ctx = {
        "model": model, "weights": WEIGHTS, "device": torch.device("cpu"), "amp": amp, "train": {"grad_clip": 1.0},
        "optimizers": Optimizers(model, 0.01, 0.0, lambda step: 1.0),
    }  # fmt: skip
    seen = []
    for layer in (model.encoder.out, model.decoder.lyrics):
        layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = train_step(ctx, {k: torch.from_numpy(v) for k, v in _batch(64, 0).items()})
    assert seen and set(seen) == {torch.bfloat16 if amp else torch.float32}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def _agree(rank: int, port: int, choices: list[bool], out: dict) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(choices))
    out[rank] = agree_on_bf16(choices[rank], torch.device("cpu"))
    dist.destroy_process_group()


@pytest.mark.parametrize("choices", [[True, False], [False, True], [True, True], [False, False]])
def test_ranks_agree_on_bf16_only_if_every_rank_chose_it(choices):
    """Two real gloo ranks, as on two machines where one CPU has bf16 instructions and the other has not."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_agree, args=(port, choices, out), nprocs=len(choices), join=True)
    assert dict(out) == dict.fromkeys(range(len(choices)), all(choices))
