"""Feeding ``features/`` to a training rank: Petastorm batch reader -> split filter -> shuffled torch batches.

Each rank opens ``petastorm.make_batch_reader(cur_shard=rank, shard_count=world_size)``, so ranks
read disjoint sets of whole row groups (petastorm assigns row group ``i`` to shard ``i % world``).
Array columns of equal-length lists arrive as 2-D numpy arrays (petastorm ``np.vstack``s them).
The ``split`` string column cannot enter a torch tensor, so :class:`SplitFilter` keeps the rows of
one split with a numpy mask on each row-group batch and drops the column before
``petastorm.pytorch.BatchedDataLoader`` (its shuffling buffer mixes rows across row groups).
Filtering after the read is cheaper here than a Petastorm predicate, which goes through pandas.

No pyspark import anywhere in this module: it runs under plain ``torchrun`` on GPU boxes too.
"""

import logging
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from songrec.errors import InputError

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["numeric", "genres", "lyrics", "artist_idx", "genre_idx", "emotion_idx"]


def _filesystem(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    if "://" not in uri:
        from songrec.config import to_uri

        uri = to_uri(uri)
    return pafs.FileSystem.from_uri(uri)


def parquet_files(features_uri: str) -> list[str]:
    """The data files of the table at ``features_uri`` (hidden and ``_`` files skipped), sorted.

    Raises:
        InputError: the table does not exist or holds no Parquet file.
    """
    from pyarrow import fs as pafs

    filesystem, root = _filesystem(features_uri)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"features table {features_uri} does not exist (run the preprocess job first)")
    selector = pafs.FileSelector(root, recursive=True)
    files = sorted(
        f.path
        for f in filesystem.get_file_info(selector)
        if f.type == pafs.FileType.File
        and not any(part.startswith(("_", ".")) for part in f.path[len(root) :].split("/") if part)
    )
    if not files:
        raise InputError(f"features table {features_uri} holds no Parquet files (run the preprocess job first)")
    return files


def count_row_groups(features_uri: str) -> int:
    """Total row groups over the table's files, read from the Parquet footers."""
    import pyarrow.parquet as pq

    filesystem, _ = _filesystem(features_uri)
    total = 0
    for path in parquet_files(features_uri):
        with filesystem.open_input_file(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_row_groups
    return total


def check_shardable(features_uri: str, world_size: int) -> int:
    """Raise unless every one of ``world_size`` ranks gets at least one row group; return the count."""
    groups = count_row_groups(features_uri)
    if groups < world_size:
        raise InputError(
            f"features table {features_uri} has {groups} row group(s) but training uses {world_size} ranks, "
            f"which need at least {world_size} (4 x {world_size} = {4 * world_size} or more balances them): "
            f"re-run preprocess with a smaller preprocess.row_group_rows or a larger preprocess.features_files, "
            f"or lower train.num_processes"
        )
    return groups


class SplitFilter:
    """A batched Petastorm reader seen through a filter: rows of one ``split`` only, ``split`` dropped.

    Quacks like the reader for ``BatchedDataLoader`` (iteration, ``batched_output``, ``stop``/``join``).
    ``aside`` maps another split's name to a list that receives that split's rows of each batch (a dict
    of numpy arrays): the training pass keeps the validation rows it reads anyway (:func:`open_loader`).
    """

    def __init__(
        self,
        reader: Any,
        split: str,
        aside: dict[str, list[dict[str, np.ndarray]]] | None = None,
        drop: tuple[str, ...] = (),
    ):
        self.reader = reader
        self.split = split
        self.aside = aside or {}
        self.drop = drop  # columns read for ``aside`` only, left out of the batches
        self.batched_output = True
        self._tuple: Any = None

    def __iter__(self) -> Iterator[Any]:
        for batch in self.reader:
            columns = batch._asdict()
            split = columns.pop("split")
            for name, rows in self.aside.items():
                other = split == name
                if other.any():
                    rows.append({k: v[other] for k, v in columns.items()})
            for name in self.drop:
                del columns[name]
            keep = split == self.split
            if not keep.any():
                continue
            if self._tuple is None:
                self._tuple = namedtuple("FeatureBatch", list(columns))
            if keep.all():
                yield self._tuple(**columns)
            else:
                yield self._tuple(**{k: v[keep] for k, v in columns.items()})

    def stop(self) -> None:
        """Stop the underlying reader's workers."""
        self.reader.stop()

    def join(self) -> None:
        """Wait for the underlying reader's workers."""
        self.reader.join()


@contextmanager
def open_loader(
    features_uri: str,
    split: str,
    rank: int,
    world_size: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int = 0,
    workers: int = 1,
    with_ids: bool = False,
    aside: dict[str, list[dict[str, np.ndarray]]] | None = None,
) -> Iterator[Any]:
    """A ``BatchedDataLoader`` over this rank's shard of one split, for one pass (one epoch).

    Args:
        features_uri: the ``features/`` table.
        split: ``"train"`` or ``"val"``.
        rank: this rank's shard index.
        world_size: number of shards.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle_buffer: rows held by the shuffling buffer; 0 = read order (row groups still shuffled by ``seed``).
        seed: row-group order of this pass (use a different one per epoch).
        workers: reader threads; 1 keeps the row-group order, hence the run, deterministic.
        with_ids: also yield ``song_id`` (tests and tracing).
        aside: ``{other split: list}``: each list receives that split's rows as the pass reads them
            (dicts of numpy arrays: the batches' columns and ``song_id``), e.g. ``{"val": []}`` on a
            training pass: the row groups hold both splits, so a separate validation pass would decode
            the whole shard again to use a tenth of it.

    Yields:
        The loader; iterating it gives dicts of torch tensors keyed by column name.
    """
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    fields = [*TRAIN_COLUMNS, "split", *(["song_id"] if with_ids or aside else [])]
    reader = make_batch_reader(
        features_uri,
        schema_fields=fields,
        reader_pool_type="thread",
        workers_count=workers,
        num_epochs=1,
        cur_shard=rank,
        shard_count=world_size,
        shuffle_row_groups=shuffle_buffer > 0,
        seed=seed,
    )
    loader = BatchedDataLoader(
        SplitFilter(reader, split, aside, drop=() if with_ids or not aside else ("song_id",)),
        batch_size=batch_size,
        shuffling_queue_capacity=shuffle_buffer,
    )
    with loader:
        yield loader


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """Move a loader batch to ``device`` (non-blocking on CUDA)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def read_split(features_uri: str, split: str, rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray]:
    """All rows of one split in this shard as numpy arrays (in-memory baselines and tests)."""
    parts: dict[str, list[np.ndarray]] = {}
    with open_loader(features_uri, split, rank, world_size, 65536, with_ids=True) as loader:
        for batch in loader:
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
