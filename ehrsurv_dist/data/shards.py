"""Worker-side readers of a Ray Data dataset shard: blocks in, batches out.

A Ray Train worker (``train/worker.py``) gets its split's shard with
``ray.train.get_dataset_shard`` and reads it here: :func:`shard_blocks` hands over the blocks
whole (one Ray Data execution), :func:`iter_shard_batches` and :class:`KeptShard` collate them in
the consumer (``collate.batches_from_blocks``). The shard's own methods drive Ray Data; this
module imports no Ray itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist.data.collate import BatchSpec, batches_from_blocks


def shard_blocks(shard: Any, prefetch_blocks: int = 2) -> Iterator[pa.Table]:
    """The blocks of a dataset or shard, whole, as Arrow tables (one Ray Data execution)."""
    return shard.iter_batches(  # type: ignore[no-any-return]
        batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_blocks
    )


def iter_shard_batches(
    shard: Any, spec: BatchSpec, epoch: int, prefetch_blocks: int = 2
) -> Iterable[dict[str, np.ndarray]]:
    """Batches from a Ray Train dataset shard (``ray.train.get_dataset_shard``)."""
    return batches_from_blocks(shard_blocks(shard, prefetch_blocks), spec, epoch)


class KeptShard:
    """A dataset shard whose blocks are the same at every read: read through Ray Data once,
    then kept in this process (within a byte budget) and read from there.

    Every ``iter_batches`` over a shard starts a Ray Data execution in the calling process (an
    executor thread, iterator and prefetcher threads, calls to Ray Data's stats actor), even
    when the dataset is materialised and the execution only hands over the same blocks again.
    In a training worker those threads take the GIL from the training thread (measured in
    docs/benchmarks.md). For a shard that is the same every epoch (a materialised split that is
    not split between workers: the train split of a 1-worker run, every worker's validation
    split), the blocks of the first complete read are kept: Arrow tables that reference the
    object store's copies, so keeping them costs no copy, but pins them (they cannot be spilled
    while kept). A shard whose blocks add up to more than ``max_bytes`` is not kept and is read
    through Ray Data every time; so is one whose read stopped early.

    Args:
        shard: a Ray Data ``DataIterator`` (or dataset) of compact, epoch-independent blocks.
        max_bytes: keep the blocks only if they add up to at most this (0 = never keep).
        prefetch_blocks: blocks Ray prefetches ahead while reading through Ray Data.
    """

    def __init__(self, shard: Any, max_bytes: int, prefetch_blocks: int = 2) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._shard = shard
        self._max_bytes = max_bytes
        self._prefetch_blocks = prefetch_blocks
        self._kept: list[pa.Table] | None = None
        self.reads = 0  # reads that went through Ray Data

    @property
    def kept(self) -> bool:
        """Whether the blocks are kept (later reads do not go through Ray Data)."""
        return self._kept is not None

    def blocks(self) -> Iterator[pa.Table]:
        """The shard's blocks, from memory once kept."""
        if self._kept is not None:
            yield from self._kept
            return
        self.reads += 1
        keep: list[pa.Table] | None = [] if self._max_bytes > 0 else None
        size = 0
        for table in shard_blocks(self._shard, self._prefetch_blocks):
            if keep is not None:
                size += table.nbytes
                if size <= self._max_bytes:
                    keep.append(table)
                else:
                    keep = None  # too large: read through Ray Data every time
            yield table
        if keep is not None:  # reached only when the read was complete
            self._kept = keep

    def batches(self, spec: BatchSpec, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``epoch``, as :func:`iter_shard_batches` makes them."""
        return batches_from_blocks(self.blocks(), spec, epoch)
