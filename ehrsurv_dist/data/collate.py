"""From blocks to fixed-shape numpy batches: length bucketing, padding, checks. Pure numpy.

A *block* is the compact output of one unit of work (:class:`layouts.FlatTokens` or
:class:`layouts.VisitTokens`, a few thousand subjects), on the wire as the Arrow format of
:mod:`blocks`. :func:`collate_block` turns it into batches in three vectorised steps, whatever
the block size:

1. **Bucketing** (:func:`bucket_order`): shuffle the subjects (by a hash of seed, epoch and
   subject_id), cut them into windows of ``window_batches × batch_size``, sort each window by
   length, cut it into batches, then shuffle the batch order (by a hash of seed, epoch, unit and
   batch index). Deterministic given (seed, epoch, unit contents); fresh every epoch.
2. **Padding** (:mod:`padding`): each batch padded to its own longest sequence.
3. **Targets** (optional): MLM masking of the whole block at once (:mod:`masking`).

:func:`batches_from_blocks` is the consumer side of every path (the single-process reference,
Ray Data, a Ray Train worker's shard): it reassembles units Ray split, collates them and runs
the always-on checks on the first batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ehrsurv_dist import rng
from ehrsurv_dist.data import checks
from ehrsurv_dist.data.blocks import UNIT, UNIT_SIZE, Layout, block_from_arrow
from ehrsurv_dist.data.layouts import FlatTokens, VisitTokens
from ehrsurv_dist.data.padding import BatchSpec, PaddedBlock, pad_flat, pad_hierarchical, round_up
from ehrsurv_dist.ragged import Ragged, concat_ranges, offsets_of

__all__ = [
    "BatchSpec",
    "BatchStats",
    "Layout",
    "PaddedBlock",
    "batches_from_blocks",
    "bucket_order",
    "collate_block",
    "emit_batches",
    "pad_flat",
    "pad_hierarchical",
    "round_up",
]


def bucket_order(
    lengths: np.ndarray,
    subject_id: np.ndarray,
    batch_size: int,
    window_batches: int = 64,
    seed: int = 0,
    epoch: int = 0,
    unit: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Length-bucketed batches of one block.

    Args:
        lengths: int [n]; sort key (tokens, or visits for the hierarchical layout).
        subject_id: int64 [n].
        batch_size: rows per batch; only the block's last batch may be smaller.
        window_batches: batches per sorting window (1 = no bucketing).
        seed, epoch, unit: the shuffles' key.

    Returns:
        ``(order, bounds)``: row order int64 [n] (the rows of batch k are
        ``order[bounds[k]:bounds[k + 1]]``) and int64 [n_batches + 1].
    """
    n = len(lengths)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    sk = rng.stream_key(seed, epoch, rng.STREAM_SUBJECTS)
    perm = np.argsort(rng.hash64(sk, subject_id), kind="stable")
    window = np.arange(n, dtype=np.int64) // (max(1, window_batches) * batch_size)
    ln = np.asarray(lengths, dtype=np.int64)[perm]
    order = perm[np.argsort(window * (int(ln.max()) + 1) + ln, kind="stable")]
    n_batches = -(-n // batch_size)
    # Every window but the last holds whole batches, so the only partial batch is the last one.
    bk = rng.stream_key(seed, epoch, rng.STREAM_BATCHES)
    border = np.argsort(rng.hash64(bk, np.full(n_batches, unit), np.arange(n_batches)))
    starts = border * batch_size
    sizes = np.minimum(starts + batch_size, n) - starts
    return order[concat_ranges(starts, sizes)], offsets_of(sizes)


def collate_block(
    block: FlatTokens | VisitTokens, spec: BatchSpec, epoch: int, unit: int
) -> PaddedBlock:
    """Bucket, pad and (optionally) mask one block."""
    lengths = block.lengths if isinstance(block, FlatTokens) else block.num_visits
    batches = Ragged(
        *bucket_order(
            lengths, block.subject_id, spec.batch_size, spec.window_batches, spec.seed, epoch, unit
        )
    )
    if isinstance(block, FlatTokens):
        return pad_flat(block, batches, spec, epoch)
    return pad_hierarchical(block, batches, spec, epoch)


@dataclass
class BatchStats:
    """What an iteration produced (filled while iterating)."""

    batches: int = 0
    subjects: int = 0
    real_tokens: int = 0
    token_slots: int = 0
    blocks: int = 0
    checked_batches: int = 0

    @property
    def real_token_fraction(self) -> float:
        return self.real_tokens / self.token_slots if self.token_slots else 0.0


def _unit_runs(table: pa.Table) -> Iterator[tuple[int, int, pa.Table]]:
    """(unit, its subjects in all, its rows of ``table``) for each run of one unit."""
    units = np.asarray(table[UNIT].to_numpy(), dtype=np.int64)
    sizes = np.asarray(table[UNIT_SIZE].to_numpy(), dtype=np.int64)
    cut = np.flatnonzero(units[1:] != units[:-1]) + 1
    se = np.concatenate([[0], cut, [len(units)]])
    for a, b in zip(se[:-1], se[1:], strict=True):
        yield int(units[a]), int(sizes[a]), table.slice(int(a), int(b - a))


def batches_from_blocks(
    blocks: Iterable[pa.Table],
    spec: BatchSpec,
    epoch: int,
    stats: BatchStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches from Arrow blocks (:mod:`blocks`); the consumer side of every path.

    Blocks (one row per subject) are bucketed and padded here, one unit at a time: a block may
    hold several units, and a unit Ray split over several blocks is reassembled first (its
    ``unit_size`` says when it is whole), so the batches do not depend on Ray's block
    boundaries. Pieces of a unit that never completes (e.g. a unit split between Ray Train
    workers) are collated at the end.

    Args:
        blocks: Arrow tables in the block format.
        spec: batching parameters.
        epoch: selects fresh shuffles and MLM masks.
        stats: filled in while iterating, if given.

    Yields:
        One dict of numpy arrays per batch (views into the block's buffers: copy a batch if
        you keep it past the next block).

    Raises:
        checks.BatchCheckError: a checked batch violates the tensor contract.
    """
    st = stats if stats is not None else BatchStats()
    pending: dict[int, list[pa.Table]] = {}

    def collated(unit: int, parts: list[pa.Table]) -> Iterator[dict[str, np.ndarray]]:
        whole = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        pb = collate_block(block_from_arrow(whole, spec.layout), spec, epoch, unit)
        return emit_batches(pb, spec, st)

    for table in blocks:
        if table.num_rows == 0:
            continue
        for unit, size, piece in _unit_runs(table):
            parts = pending.pop(unit, [])
            parts.append(piece)
            if sum(p.num_rows for p in parts) < size:
                pending[unit] = parts
                continue
            yield from collated(unit, parts)
    for unit in sorted(pending):  # units that never completed on this consumer
        yield from collated(unit, pending[unit])


def emit_batches(
    pb: PaddedBlock, spec: BatchSpec, st: BatchStats | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of one padded block, with the always-on checks and the counters."""
    st = st if st is not None else BatchStats()
    st.blocks += 1
    n = len(pb)
    rows = pb.per_row.lengths.tolist()
    slots = pb.per_token.lengths.tolist()
    # real tokens per batch, from the expected counts (the checks verify them)
    exp = pb.expected.get("tokens", pb.expected.get("codes"))
    real = (
        np.add.reduceat(exp, pb.row_bounds[:-1]).tolist()
        if exp is not None and n and len(exp)
        else [0] * n
    )
    for k in range(n):
        if spec.drop_last and rows[k] < spec.batch_size:
            continue
        batch = pb.batch(k)
        if spec.check_batches < 0 or st.checked_batches < spec.check_batches:
            e = pb.expected_for(k)
            if pb.layout == "flat":
                checks.check_flat_batch(batch, e["tokens"])
            else:
                checks.check_hierarchical_batch(batch, e["visits"], e["codes"])
            st.checked_batches += 1
        st.batches += 1
        st.subjects += rows[k]
        st.token_slots += slots[k]
        st.real_tokens += real[k]
        yield batch
