"""The song autoencoder: encoder to a latent "style" vector, decoder back to the inputs, and its loss.

Inputs (the ``features/`` columns): ``numeric`` (standardised audio features and flags), ``genres``
(multi-hot over the genre vocabulary), ``lyrics`` (hashed bag of words, L2-normalised), and three
ids embedded by learned tables, index 0 = unknown: primary artist (``artist_dim``), primary genre
(``genre_dim``) and emotion (``emotion_dim``). The encoder is an MLP (ReLU, dropout) to
``latent_dim``; songs are compared by the cosine of their latent vectors (``encode_batch``
L2-normalises), so the decoder sees only the latent's direction (``normalize(z) * sqrt(d)``): what
the decoder can use is exactly what the nearest-neighbour search compares.

Loss (weights ``train.loss_*``). Every reconstruction target is a fixed piece of data, never the
output of a learned layer, so no term can be met by collapsing an embedding table:

- numeric: MSE on the standardised values;
- genre: binary cross-entropy with logits over the multi-hot, summed over tokens;
- emotion: cross-entropy over the emotion vocabulary (unknown = 0 ignored);
- lyrics: ``1 - cosine`` to the hashed lyrics vector, on songs that have lyrics;
- artist: a sampled softmax that predicts the song's artist id from the latent, scored against the
  *same* artist table the encoder reads (tied weights): the true artist's row is the positive, and
  ``artist_negatives`` uniformly sampled artist rows (shared by the batch, accidental hits masked)
  are the negatives. If the table collapsed, every logit would be equal and the term would sit at
  ``log(1 + negatives)``, its maximum, so the artist rows are pushed apart and toward the content
  of their songs. Uniform sampling needs no log-Q correction (the proposal is constant), and the
  cost is ``batch x negatives x artist_dim`` instead of a full softmax over ~127k artists.

And one term whose target is learned:

- contrast (``train.loss_contrast``, 0 = off): the batch goes through the model twice in one forward
  pass, each copy with its own dropout and artist-dropout draws, and a symmetric InfoNCE (cosine /
  ``CONTRAST_TEMPERATURE``) asks each song's two latents to pick each other out of the rank's batch
  (in blocks of at most ``CONTRAST_BLOCK`` songs). Reconstruction alone keeps what is cheap to
  decode (style, genre, emotion) and lets the rest of a song blur; telling every song from hundreds
  of others keeps the finer evidence (a cluster's lyric topic words, its audio offset, its artists)
  that puts songs of the same small cluster next to each other (50k generated songs, batch 512, 12
  epochs: similar-song hit rate@20 0.043 -> 0.051, planted-style precision@10 0.76 -> 0.74). Both
  views go through the encoder; with ``train.decode_views: 1`` (the default) only the first goes
  through the decoder, so the reconstruction terms see each song once and a step costs ~0.7x what
  decoding both views does (``docs/design.md``). A collapsed encoder gets this term's maximum,
  ``log(block)``, so it pushes songs apart, never together.

Sparse artist gradients (the CPU path): a step touches at most ~2,000 of the ~125k artist rows (its
songs' artists and the sampled negatives), yet a dense gradient of the table (12.5M floats at full
size) is zeroed, all-reduced between ranks, clipped and fed to AdamW on every step
(``bench/train.py`` on the full-size features, batch 512, in memory: 2,258 rows/s dense vs 10,376
sparse with one rank, 2,213 vs 10,413 with two; 2026-12-02). With ``sparse_artist`` the table's gradient is a
sparse tensor (every read of it, the encoder's lookup and the artist term's positives and negatives,
goes through ``F.embedding(sparse=True)``), DDP all-reduces it sparse (gloo), and
:class:`songrec.train_loop.Optimizers` steps it with ``SparseAdam`` (lazy Adam: only rows in the
batch move). ``train.sparse_artist: auto`` keeps the table dense on GPU: a dense step is cheap
there, and the sparse path is tested only with gloo.

Artist input dropout (``train.artist_dropout``): during training the encoder sees artist 0
(unknown) for that fraction of songs while the artist term still asks for the true artist, so the
content features alone must place a song near its artist's other songs. This is how songs of
unknown or rare artists (id 0 at inference) still embed next to their style.

Saved artefacts are tensors only (``torch.load(weights_only=True)``); ``model.json`` beside them
holds everything needed to rebuild and feed the encoder (see :func:`load_encoder`).
"""

import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from songrec.errors import InputError

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("numeric", "genres", "lyrics", "artist_idx", "genre_idx", "emotion_idx")


@dataclass
class ModelSpec:
    """Shapes of the model: the data's dimensions (from ``meta/features.json``) and the train config."""

    numeric_dim: int
    genre_dim: int  # multi-hot length = genre vocabulary size
    lyrics_dim: int
    artist_vocab: int
    genre_vocab: int
    emotion_vocab: int
    artist_emb: int = 100
    genre_emb: int = 50
    emotion_emb: int = 25
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    latent_dim: int = 32
    dropout: float = 0.15
    artist_dropout: float = 0.25

    @classmethod
    def from_meta(cls, features_meta: dict[str, Any], train: dict[str, Any]) -> "ModelSpec":
        """Build from ``meta/features.json`` content and the ``train`` config section (as a dict)."""
        vocab = features_meta["vocab_sizes"]
        return cls(
            numeric_dim=len(features_meta["numeric"]),
            genre_dim=int(features_meta["genre_dim"]),
            lyrics_dim=int(features_meta["lyrics_dim"]),
            artist_vocab=int(vocab["artist"]),
            genre_vocab=int(vocab["genre"]),
            emotion_vocab=int(vocab["emotion"]),
            artist_emb=int(train["artist_dim"]),
            genre_emb=int(train["genre_dim"]),
            emotion_emb=int(train["emotion_dim"]),
            hidden=[int(h) for h in train["hidden"]],
            latent_dim=int(train["latent_dim"]),
            dropout=float(train["dropout"]),
            artist_dropout=float(train.get("artist_dropout", 0.0)),
        )


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Features -> latent vector (not normalised; :func:`encode_batch` normalises)."""

    def __init__(self, spec: ModelSpec, sparse_artist: bool = False):
        super().__init__()
        self.spec = spec
        self.info: dict[str, Any] = {}  # model.json content when loaded by load_encoder
        self.artist = nn.Embedding(spec.artist_vocab, spec.artist_emb, sparse=sparse_artist)
        self.genre = nn.Embedding(spec.genre_vocab, spec.genre_emb)
        self.emotion = nn.Embedding(spec.emotion_vocab, spec.emotion_emb)
        for table in (self.artist, self.genre, self.emotion):
            nn.init.normal_(table.weight, std=0.1)
        width = (
            spec.numeric_dim + spec.genre_dim + spec.lyrics_dim + spec.artist_emb + spec.genre_emb + spec.emotion_emb
        )
        self.mlp = _mlp([width, *spec.hidden], spec.dropout)
        self.out = nn.Linear(spec.hidden[-1] if spec.hidden else width, spec.latent_dim)

    @staticmethod
    def _ids(idx: torch.Tensor, vocab: int) -> torch.Tensor:
        """Ids as int64, with anything outside the vocabulary mapped to 0 = unknown."""
        idx = idx.long()
        return torch.where((idx >= 0) & (idx < vocab), idx, torch.zeros_like(idx))

    def forward(self, batch: dict[str, torch.Tensor], views: int = 1) -> torch.Tensor:
        """Map a batch (tensors keyed by ``features/`` column names) to latent vectors ``[views * B, latent_dim]``.

        ``views`` > 1 encodes the batch that many times, each copy with its own artist-dropout and
        dropout draws (the contrastive views), rows ``[v * B, (v + 1) * B)`` being copy ``v``: what
        encoding the batch concatenated ``views`` times gives, for less work. The first layer is
        split in two products: the dense inputs (numeric, genres, lyrics) times their weight columns,
        computed once for all copies and without an input gradient (the inputs are data), plus the
        embedded ids times theirs (a scratch timing of a training step on the full-size shapes, one
        thread, four interleaved runs: 52–66 ms against 64–77 ms with one product over the
        concatenated copies; docs/design.md).
        """
        artist = self._ids(batch["artist_idx"], self.spec.artist_vocab).repeat(views)
        if self.training and self.spec.artist_dropout > 0:
            drop = torch.rand(artist.shape, device=artist.device) < self.spec.artist_dropout
            artist = artist.masked_fill(drop, 0)
        dense = torch.cat([batch["numeric"].float(), batch["genres"].float(), batch["lyrics"].float()], dim=1)
        embedded = torch.cat(
            [
                self.artist(artist),
                self.genre(self._ids(batch["genre_idx"], self.spec.genre_vocab).repeat(views)),
                self.emotion(self._ids(batch["emotion_idx"], self.spec.emotion_vocab).repeat(views)),
            ],
            dim=1,
        )
        first, *rest = [*self.mlp, self.out]
        width = dense.shape[1]
        h = F.linear(embedded, first.weight[:, width:], first.bias) + F.linear(dense, first.weight[:, :width]).repeat(
            views, 1
        )
        for layer in rest:
            h = layer(h)
        return h


class Decoder(nn.Module):
    """Latent direction -> reconstructions of every input (and an artist query vector)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        sizes = [spec.latent_dim, *reversed(spec.hidden)]
        self.mlp = _mlp(sizes, spec.dropout)
        width = sizes[-1]
        self.numeric = nn.Linear(width, spec.numeric_dim)
        self.genres = nn.Linear(width, spec.genre_dim)
        self.emotion = nn.Linear(width, spec.emotion_vocab)
        self.lyrics = nn.Linear(width, spec.lyrics_dim)
        self.artist_query = nn.Linear(width, spec.artist_emb)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction heads from latent ``z`` (only its direction is used)."""
        h = self.mlp(F.normalize(z, dim=1) * math.sqrt(self.spec.latent_dim))
        return {
            "numeric": self.numeric(h),
            "genres": self.genres(h),
            "emotion": self.emotion(h),
            "lyrics": self.lyrics(h),
            "artist_query": self.artist_query(h),
        }


class Autoencoder(nn.Module):
    """Encoder + decoder; ``forward`` returns the latent and the decoder heads.

    ``sparse_artist``: the artist table's gradient is a sparse tensor (training on CPU; see the module
    docstring). It changes no weight and nothing saved.
    """

    def __init__(self, spec: ModelSpec, sparse_artist: bool = False):
        super().__init__()
        self.spec = spec
        self.encoder = Encoder(spec, sparse_artist)
        self.decoder = Decoder(spec)

    def forward(
        self, batch: dict[str, torch.Tensor], decode_rows: int | None = None, views: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encode ``views`` copies of a batch (see :meth:`Encoder.forward`), then decode all of the
        latents, or only the first ``decode_rows``."""
        z = self.encoder(batch, views=views)
        return z, self.decoder(z if decode_rows is None else z[:decode_rows])


@dataclass
class LossWeights:
    """Weight of each loss term (``train.loss_*``) and the number of sampled artist negatives."""

    numeric: float
    genre: float
    emotion: float
    artist: float
    lyrics: float
    artist_negatives: int
    contrast: float = 0.0
    decode_views: int = 2  # with contrast: both views (2) or the first only (1); train.decode_views defaults to 1

    @classmethod
    def from_train(cls, train: dict[str, Any]) -> "LossWeights":
        """From the ``train`` config section as a dict."""
        return cls(
            numeric=float(train["loss_numeric"]),
            genre=float(train["loss_genre"]),
            emotion=float(train["loss_emotion"]),
            artist=float(train["loss_artist"]),
            lyrics=float(train["loss_lyrics"]),
            artist_negatives=int(train["artist_negatives"]),
            contrast=float(train.get("loss_contrast", 0.0)),
            decode_views=int(train.get("decode_views", 2)),
        )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def artist_softmax_loss(
    query: torch.Tensor, table: torch.Tensor, artist: torch.Tensor, negatives: int, sparse: bool = False
) -> torch.Tensor:
    """Sampled-softmax cross-entropy of the true artist against uniformly drawn negatives.

    Args:
        query: ``[B, D]`` decoder artist queries.
        table: ``[V, D]`` the encoder's artist embedding table (tied).
        artist: ``[B]`` true artist ids; 0 (unknown) rows are left out.
        negatives: number of negative artists shared by the batch (drawn from ``1..V-1``).
        sparse: read the table's rows with a sparse gradient (the table is an ``Embedding(sparse=True)``).

    Returns:
        The mean loss over rows with a known artist (0 when there are none).
    """
    vocab = table.shape[0]
    known = (artist > 0).float()
    if vocab <= 2 or negatives <= 0:
        return query.sum() * 0.0
    neg = torch.randint(1, vocab, (negatives,), device=query.device)
    pos_logit = (query * F.embedding(artist, table, sparse=sparse)).sum(dim=1, keepdim=True)
    neg_logit = query @ F.embedding(neg, table, sparse=sparse).T
    neg_logit = neg_logit.masked_fill(neg[None, :] == artist[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos_logit, neg_logit], dim=1).float()
    per_row = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return _masked_mean(per_row, known)


CONTRAST_TEMPERATURE = 0.1
# Negatives per row of the contrastive term: rows are compared within blocks of this many, so the cost
# is B x 1024 logits, not B x B (a 4096-row batch's full matrix cost as much as the rest of the model).
CONTRAST_BLOCK = 1024


def contrastive_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = CONTRAST_TEMPERATURE, block: int = CONTRAST_BLOCK
) -> torch.Tensor:
    """Symmetric InfoNCE between two views of the same songs, other songs of the batch as negatives.

    Args:
        z1: ``[B, D]`` latents of the first view (not normalised; compared by cosine, as the kNN does).
        z2: ``[B, D]`` latents of the second view of the same rows.
        temperature: softmax temperature of the cosine logits.
        block: rows are compared within consecutive blocks of this many (the batch is already shuffled).

    Returns:
        The mean cross-entropy of picking each row's other view among its block (0 for ``B < 2``).
    """
    if len(z1) < 2:
        return z1.sum() * 0.0
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    total = a.new_zeros(())
    for lo in range(0, len(a), block):
        hi = min(lo + block, len(a))
        if hi - lo < 2:
            continue  # a lone row has no negative: nothing to learn
        logits = a[lo:hi] @ b[lo:hi].T / temperature
        labels = torch.arange(hi - lo, device=a.device)
        pair = F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(logits.T, labels, reduction="sum")
        total = total + 0.5 * pair
    return total / len(a)


def autoencoder_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], weights: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the reconstruction terms for one batch (module docstring explains each).

    Args:
        model: an :class:`Autoencoder`, possibly wrapped in ``DistributedDataParallel``.
        batch: tensors keyed by ``features/`` column names.
        weights: the term weights.

    Returns:
        ``(total, parts)``: the scalar loss to back-propagate and each unweighted term as a float.
    """
    if weights.contrast > 0:
        # Two views in one forward pass (one DDP forward per backward): the batch encoded twice, each copy
        # with its own dropout and artist-dropout draws. With decode_views=1 only the first copy is decoded
        # (the reconstruction terms see each song once), which saves the decoder's half of the step.
        rows = len(next(iter(batch.values())))
        decode_rows = rows if weights.decode_views == 1 else None
        z, out = model(batch, decode_rows=decode_rows, views=2)
        if decode_rows is None:
            batch = {k: torch.cat([v, v]) for k, v in batch.items()}  # targets of both decoded copies
    else:
        z, out = model(batch)
    core = model.module if hasattr(model, "module") else model
    numeric = F.mse_loss(out["numeric"].float(), batch["numeric"].float())
    genres = F.binary_cross_entropy_with_logits(out["genres"].float(), batch["genres"].float(), reduction="sum") / max(
        len(batch["genres"]), 1
    )
    emotion_target = Encoder._ids(batch["emotion_idx"], core.spec.emotion_vocab)
    emotion = _masked_mean(
        F.cross_entropy(out["emotion"].float(), emotion_target, reduction="none"), (emotion_target > 0).float()
    )
    lyrics_target = batch["lyrics"].float()
    has_lyrics = (lyrics_target.abs().sum(dim=1) > 0).float()
    lyrics = _masked_mean(1.0 - F.cosine_similarity(out["lyrics"].float(), lyrics_target, dim=1), has_lyrics)
    artist = artist_softmax_loss(
        out["artist_query"],
        core.encoder.artist.weight,
        Encoder._ids(batch["artist_idx"], core.spec.artist_vocab),
        weights.artist_negatives,
        sparse=core.encoder.artist.sparse,
    )
    total = (
        weights.numeric * numeric
        + weights.genre * genres
        + weights.emotion * emotion
        + weights.lyrics * lyrics
        + weights.artist * artist
    )
    contrast = None
    if weights.contrast > 0:
        z1, z2 = z.chunk(2)
        contrast = contrastive_loss(z1, z2)
        total = total + weights.contrast * contrast
    parts = {
        "numeric": float(numeric.detach()),
        "genre": float(genres.detach()),
        "emotion": float(emotion.detach()),
        "lyrics": float(lyrics.detach()),
        "artist": float(artist.detach()),
    }
    if contrast is not None:
        parts["contrast"] = float(contrast.detach())
    return total, parts


def _read_bytes(uri: str) -> bytes:
    """Bytes of a local path / ``file://`` URI, or of any URI pyarrow's filesystems open (hdfs, s3)."""
    if uri.startswith("file://") or "://" not in uri:
        from songrec.config import local_path

        path = local_path(uri)
        if not path.is_file():
            raise InputError(f"model file {uri} does not exist (run the train job first)")
        return path.read_bytes()
    from pyarrow import fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise InputError(f"model file {uri} does not exist (run the train job first)") from None


def load_encoder(model_uri: str) -> Encoder:
    """Rebuild the encoder from ``model_uri/model.json`` + ``model_uri/encoder.pt`` (tensors only).

    Args:
        model_uri: the ``model/`` directory (path or URI).

    Returns:
        The encoder in eval mode on CPU; ``encoder.info`` holds the model.json content (model_id,
        feature order, vocabulary sizes, normalisation statistics).
    """
    base = model_uri.rstrip("/")
    info = json.loads(_read_bytes(f"{base}/model.json"))
    spec = ModelSpec(**info["model"])
    encoder = Encoder(spec)
    state = torch.load(io.BytesIO(_read_bytes(f"{base}/encoder.pt")), map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    encoder.info = info
    encoder.eval()
    return encoder


def _as_matrix(values: Any, width: int, name: str) -> np.ndarray:
    """A 2-D float32 array from a 2-D array or a column of equal-length lists (pandas / Arrow)."""
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, dtype=np.float32) for v in arr]) if len(arr) else np.zeros((0, width))
    arr = np.asarray(arr, dtype=np.float32).reshape(len(arr), -1)
    if arr.shape[1] != width:
        raise InputError(f"column {name!r} has width {arr.shape[1]}, the model expects {width} (see model.json)")
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


def encode_batch(encoder: Encoder, batch: dict[str, Any]) -> np.ndarray:
    """Map a batch of songs to L2-normalised float32 vectors.

    Args:
        encoder: from :func:`load_encoder` (or a trained ``Autoencoder.encoder``).
        batch: numpy arrays keyed by ``features/`` column names (``numeric``, ``genres``, ``lyrics``
            as 2-D arrays or columns of lists; ``artist_idx``, ``genre_idx``, ``emotion_idx``).
            Ids outside the model's vocabulary count as 0 = unknown.

    Returns:
        ``[B, latent_dim]`` float32, each row of unit length.
    """
    missing = [c for c in INPUT_COLUMNS if c not in batch]
    if missing:
        raise InputError(f"encode_batch: batch lacks column(s) {missing}")
    spec = encoder.spec
    tensors = {
        "numeric": torch.from_numpy(_as_matrix(batch["numeric"], spec.numeric_dim, "numeric")),
        "genres": torch.from_numpy(_as_matrix(batch["genres"], spec.genre_dim, "genres")),
        "lyrics": torch.from_numpy(_as_matrix(batch["lyrics"], spec.lyrics_dim, "lyrics")),
    }
    for name in ("artist_idx", "genre_idx", "emotion_idx"):
        tensors[name] = torch.from_numpy(np.asarray(batch[name], dtype=np.int64).reshape(-1))
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            z = encoder({k: v.to(device) for k, v in tensors.items()})
    finally:
        encoder.train(was_training)
    return F.normalize(z.float(), dim=1).cpu().numpy().astype(np.float32, copy=False)


def spec_dict(spec: ModelSpec) -> dict[str, Any]:
    """The spec as a JSON-able dict (``model.json["model"]``)."""
    return asdict(spec)
