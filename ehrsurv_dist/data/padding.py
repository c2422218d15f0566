"""Padding of a block's batches into fixed-shape numpy buffers (docs/data.md).

Each batch is padded to its own longest sequence rounded up to a multiple of ``pad_multiple``
(never past the configured maximum). All batches of a block are written into *one* buffer per
field with a single scatter; a batch is then a reshaped view of a contiguous slice (no per-batch
copy, no ragged object array anywhere): :class:`PaddedBlock` holds those buffers as
:class:`~ehrsurv_dist.ragged.Ragged` rows, one per batch. MLM masking, when asked for, runs over
the whole block at once (:mod:`masking`).

The batches follow ``schema.FLAT_FIELDS`` / ``schema.HIERARCHICAL_FIELDS`` (plus ``mlm_labels``
with MLM).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ehrsurv_dist import schema as S
from ehrsurv_dist.bins import bin_index
from ehrsurv_dist.data import masking
from ehrsurv_dist.data.blocks import Layout
from ehrsurv_dist.data.layouts import FlatTokens, VisitTokens
from ehrsurv_dist.data.views import RaggedField
from ehrsurv_dist.ragged import Ragged, offsets_of

# (vocab_size, seed, epoch, prob): the MLM parameters of one block.
Mlm = tuple[int, int, int, float]


@dataclass(frozen=True)
class BatchSpec:
    """How blocks become batches; picklable, so it travels to Ray Train workers.

    Attributes:
        layout: ``flat`` or ``hierarchical``.
        batch_size: subjects per batch.
        window_batches: batches per length-sorting window.
        pad_multiple: round each batch's padded length up to this.
        max_seq_len: cap on L (flat).
        max_visits, max_codes_per_visit: caps on V and C (hierarchical).
        seed: seed of the shuffles and of MLM.
        mlm_vocab_size: vocabulary size to enable MLM, or None.
        mlm_prob: MLM selection probability.
        check_batches: run the contract checks on this many first batches of an iteration
            (-1 = every batch).
        drop_last: drop each block's last batch when it is smaller than ``batch_size``.
        bin_edges: the calendar axis's day-bin edges (``e_0 = 0 … e_K = horizon``): batches
            then carry ``bin``, the 0-based bin of ``time_days``; None on the visit axis.
    """

    layout: Layout = "flat"
    batch_size: int = 32
    window_batches: int = 64
    pad_multiple: int = 8
    max_seq_len: int = 512
    max_visits: int = 256
    max_codes_per_visit: int = 32
    seed: int = 0
    mlm_vocab_size: int | None = None
    mlm_prob: float = masking.MLM_PROB
    check_batches: int = 8
    drop_last: bool = False
    bin_edges: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("flat", "hierarchical"):
            raise ValueError(f"layout must be flat or hierarchical, got {self.layout!r}")
        for name in ("batch_size", "window_batches", "pad_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def mlm(self, epoch: int) -> Mlm | None:
        """The MLM parameters of ``epoch``, or None without MLM."""
        if self.mlm_vocab_size is None:
            return None
        return (self.mlm_vocab_size, self.seed, epoch, self.mlm_prob)


def round_up(n: np.ndarray, multiple: int) -> np.ndarray:
    """Smallest multiple of ``multiple`` that is >= n (elementwise; n=0 stays 0)."""
    n = np.asarray(n, dtype=np.int64)
    return -(-n // multiple) * multiple


@dataclass
class PaddedBlock:
    """Padded batches of one block: K batches, each one row of three :class:`Ragged`.

    Batch k holds rows ``k`` of ``per_row`` (labels, in batch order), of ``per_token`` (1-D
    token buffers, reshaped to ``(B, *shapes[k])``) and, hierarchical, of ``per_visit`` (1-D
    visit buffers, reshaped to ``(B, V)``).

    Attributes:
        layout: ``flat`` or ``hierarchical``.
        per_row: batches → subjects; values: label fields [n].
        per_token: batches → token slots; values: ``codes``, masks, ``mlm_labels``, ... .
        shapes: int64 [K, 1] (L) or [K, 2] (V, C).
        expected: [n] counts per subject for the checks (aligned with ``per_row``).
        per_visit: hierarchical: batches → visit slots; values ``ages``, ``time_deltas``,
            ``visit_mask``.
    """

    layout: Layout
    per_row: Ragged
    per_token: Ragged
    shapes: np.ndarray
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    per_visit: Ragged | None = None
    _index: tuple[Any, ...] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.per_row)

    row_bounds = RaggedField("per_row", part="offsets")  # int64 [K + 1]: subjects per batch

    @property
    def real_tokens(self) -> int:
        key = S.ATTENTION_MASK if self.layout == "flat" else S.CODE_MASK
        return int(np.count_nonzero(self.per_token.values[key]))  # type: ignore[index]

    @property
    def token_slots(self) -> int:
        return self.per_token.num_elements

    def _lists(self) -> tuple[Any, ...]:
        """Offsets as Python lists and the buffers as item lists: ``batch`` is called once per
        training step, and plain-int slicing is much cheaper than numpy-scalar indexing."""
        if self._index is None:
            visit = self.per_visit
            self._index = (
                self.per_row.offsets.tolist(),
                self.per_token.offsets.tolist(),
                [tuple(s) for s in self.shapes.tolist()],
                visit.offsets.tolist() if visit is not None else None,
                list(self.per_token.values.items()),  # type: ignore[union-attr]
                list(visit.values.items()) if visit is not None else [],  # type: ignore[union-attr]
                list(self.per_row.values.items()),  # type: ignore[union-attr]
            )
        return self._index

    def batch(self, k: int) -> dict[str, np.ndarray]:
        """Batch k: views into the block's buffers (copy it to keep it past the block)."""
        rows, offs, shapes, voffs, tok, vis, per_row = self._lists()
        r0, r1 = rows[k], rows[k + 1]
        o0, o1 = offs[k], offs[k + 1]
        shape = (r1 - r0, *shapes[k])
        out = {name: buf[o0:o1].reshape(shape) for name, buf in tok}
        if voffs is not None:
            v0, v1 = voffs[k], voffs[k + 1]
            for name, buf in vis:
                out[name] = buf[v0:v1].reshape(shape[:2])
        for name, arr in per_row:
            out[name] = arr[r0:r1]
        return out

    def expected_for(self, k: int) -> dict[str, np.ndarray]:
        """The expected counts of batch k's subjects (for the checks)."""
        r0, r1 = int(self.row_bounds[k]), int(self.row_bounds[k + 1])
        return {name: arr[r0:r1] for name, arr in self.expected.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for k in range(len(self)):
            yield self.batch(k)


def _labels(
    rows: FlatTokens | VisitTokens, order: np.ndarray, spec: BatchSpec
) -> dict[str, np.ndarray]:
    """The label fields of rows ``order``: ``schema.LABEL_FIELDS``, and on the calendar axis
    ``schema.CALENDAR_FIELDS`` (``bin`` from ``time_days`` and the spec's bin edges)."""
    last_visit = rows.last_visit[order]
    out = {
        S.SUBJECT: np.ascontiguousarray(rows.subject_id[order], dtype=np.int64),
        S.LAST_VISIT: np.ascontiguousarray(last_visit, dtype=np.int64),
        S.EVENT: np.ascontiguousarray(rows.event[order], dtype=np.bool_),
        S.NUM_VISITS: np.ascontiguousarray(last_visit + 1, dtype=np.int64),
    }
    for name, values in rows.extra.items():
        out[name] = np.ascontiguousarray(values[order])
    if spec.bin_edges is not None:
        if S.TIME_DAYS not in out:
            raise ValueError("bin_edges are set (calendar axis) but the block has no time_days")
        out[S.BIN] = bin_index(out[S.TIME_DAYS], out[S.EVENT], np.asarray(spec.bin_edges))
    return out


def _batch_max(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """int64 [K]: the largest of ``values`` [n] within each batch (0 for no batch rows)."""
    n_b = len(bounds) - 1
    if n_b and len(values):
        return np.maximum.reduceat(values, bounds[:-1])  # type: ignore[no-any-return]
    return np.zeros(n_b, np.int64)


def _padded_size(longest: np.ndarray, multiple: int, cap: int | None) -> np.ndarray:
    """Each batch's padded size: ``longest`` rounded up, capped, never below ``longest``."""
    size = round_up(longest, multiple)
    if cap is not None:
        size = np.maximum(np.minimum(size, cap), longest)
    return size


def _masked(
    mlm: Mlm | None,
    tok_codes: np.ndarray,
    tok_sid: np.ndarray,
    pos: np.ndarray,
    total: int,
    dest: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes to write, ``mlm_labels`` buffer [total] or None): MLM over the block's tokens,
    whose slots in the padded buffer are ``dest`` (a bool mask or int indices)."""
    if mlm is None:
        return tok_codes, None
    vocab_size, seed, epoch, prob = mlm
    codes, labels = masking.mlm_mask(tok_codes, tok_sid, pos, vocab_size, seed, epoch, prob)
    lab = np.full(total, S.IGNORE_INDEX, np.int64)
    lab[dest] = labels
    return codes, lab


def pad_flat(ft: FlatTokens, batches: Ragged, spec: BatchSpec, epoch: int = 0) -> PaddedBlock:
    """Pad flat sequences batch by batch (docs/data.md), one masked assignment per field.

    Args:
        ft: the block's sequences.
        batches: batches → rows of ``ft`` (``Ragged(*collate.bucket_order(...))``).
        spec: ``pad_multiple`` (each batch's L is its longest sequence rounded up to this),
            ``max_seq_len`` (cap on L; L never drops below the longest) and the MLM settings.
        epoch: the MLM draws' epoch.

    Returns:
        A :class:`PaddedBlock`; batch k has ``codes`` int64 [B, L] (PAD_ID on padding), ``ages``
        float32 (0), ``visit_ids`` int64 (0), ``attention_mask`` bool, the labels, and with MLM
        ``mlm_labels`` int64 (``IGNORE_INDEX`` off the masked positions).
    """
    order, bounds = np.asarray(batches.values, dtype=np.int64), batches.offsets
    lengths = ft.lengths[order]
    mlm = spec.mlm(epoch)
    longest = _batch_max(lengths, bounds)
    L = _padded_size(longest, spec.pad_multiple, spec.max_seq_len)
    rows_per = np.diff(bounds)
    offsets = offsets_of(rows_per * L)
    total = int(offsets[-1])
    # The mask buffer row by row: n real slots then L - n pads; a boolean assignment then
    # fills the real slots in buffer order, which is the order of the gathered tokens.
    row_L = np.repeat(L, rows_per)
    runs = np.empty(2 * len(order), dtype=np.int64)
    runs[0::2] = lengths
    runs[1::2] = row_L - lengths
    mask = np.repeat(np.tile(np.array([True, False]), len(order)), runs)
    src = ft.tokens.element_index(order)
    codes = np.zeros(total, np.int64)
    ages = np.zeros(total, np.float32)
    vids = np.zeros(total, np.int64)
    ages[mask] = ft.ages[src]
    vids[mask] = ft.visit_ids[src]
    tok_sid = pos = lengths  # only MLM draws need the tokens' subjects and positions
    if mlm is not None:
        tok_sid = np.repeat(ft.subject_id[order], lengths)
        pos = np.arange(len(src)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    tok_codes, lab = _masked(mlm, ft.codes[src], tok_sid, pos, total, mask)
    codes[mask] = tok_codes
    fields = {S.CODES: codes, S.AGES: ages, S.VISIT_IDS: vids, S.ATTENTION_MASK: mask}
    if lab is not None:
        fields[S.MLM_LABELS] = lab
    return PaddedBlock(
        layout="flat",
        per_row=Ragged(_labels(ft, order, spec), bounds),
        per_token=Ragged(fields, offsets),
        shapes=L[:, None],
        expected={"tokens": lengths},
    )


def pad_hierarchical(
    vt: VisitTokens, batches: Ragged, spec: BatchSpec, epoch: int = 0
) -> PaddedBlock:
    """Pad visits × codes batch by batch (docs/data.md).

    Each batch is ``[B, V, C]`` with V its most visits and C its largest visit, each rounded
    up to ``spec.pad_multiple`` and capped at ``spec.max_visits`` /
    ``spec.max_codes_per_visit`` (never below the batch's longest).

    Args:
        vt: the block's visits.
        batches: batches → rows of ``vt`` (``Ragged(*collate.bucket_order(...))``).
        spec: padding and MLM settings.
        epoch: the MLM draws' epoch.

    Returns:
        A :class:`PaddedBlock`; batch k has ``codes`` int64 [B, V, C], ``code_mask`` bool
        [B, V, C], ``ages``, ``time_deltas`` float32 [B, V], ``visit_mask`` bool [B, V] and the
        labels (and ``mlm_labels`` [B, V, C] with MLM; its positions are ``visit * C_max + k``
        with ``C_max = spec.max_codes_per_visit``).
    """
    order, bounds = np.asarray(batches.values, dtype=np.int64), batches.offsets
    n = len(order)
    nv = vt.num_visits[order]
    vis = vt.visits.element_index(order)  # ordered visits
    vsz = vt.visit_sizes[vis]
    # per-subject largest visit, then per batch
    vstart = offsets_of(nv)[:-1]
    if len(vis):
        big = np.maximum.reduceat(vsz, np.minimum(vstart, len(vis) - 1))
        big = np.where(nv > 0, big, 0)
    else:
        big = np.zeros(n, np.int64)
    v_long, c_long = _batch_max(nv, bounds), _batch_max(big, bounds)
    V = _padded_size(v_long, spec.pad_multiple, spec.max_visits)
    C = _padded_size(c_long, spec.pad_multiple, spec.max_codes_per_visit)
    rows_per = np.diff(bounds)
    voff = offsets_of(rows_per * V)
    coff = offsets_of(rows_per * V * C)
    b_of_row = np.repeat(np.arange(len(bounds) - 1), rows_per)
    r_in_b = np.arange(n) - bounds[b_of_row]
    # visit slots
    slot = np.arange(len(vis)) - np.repeat(vstart, nv)  # visit index within subject
    vb = np.repeat(b_of_row, nv)
    vrow = np.repeat(r_in_b, nv)
    vdest = voff[vb] + vrow * V[vb] + slot
    ages = np.zeros(int(voff[-1]), np.float32)
    deltas = np.zeros(int(voff[-1]), np.float32)
    vmask = np.zeros(int(voff[-1]), np.bool_)
    ages[vdest] = vt.visit_ages[vis]
    deltas[vdest] = vt.time_deltas[vis]
    vmask[vdest] = True
    # code slots
    csrc = vt.visit_codes.element_index(vis)
    k_in_v = np.arange(len(csrc)) - np.repeat(np.cumsum(vsz) - vsz, vsz)
    cb = np.repeat(vb, vsz)
    cdest = coff[cb] + np.repeat(vrow, vsz) * V[cb] * C[cb] + np.repeat(slot, vsz) * C[cb] + k_in_v
    total = int(coff[-1])
    codes = np.zeros(total, np.int64)
    cmask = np.zeros(total, np.bool_)
    cmask[cdest] = True
    mlm = spec.mlm(epoch)
    tok_sid = pos = vsz  # only MLM draws need the tokens' subjects and positions
    if mlm is not None:
        cap = spec.max_codes_per_visit
        tok_sid = np.repeat(np.repeat(vt.subject_id[order], nv), vsz)
        pos = np.repeat(slot, vsz) * cap + k_in_v
    tok_codes, lab = _masked(mlm, vt.codes[csrc].astype(np.int64), tok_sid, pos, total, cdest)
    codes[cdest] = tok_codes
    fields = {S.CODES: codes, S.CODE_MASK: cmask}
    if lab is not None:
        fields[S.MLM_LABELS] = lab
    ncodes = np.add.reduceat(vsz, np.minimum(vstart, max(len(vsz) - 1, 0))) if len(vsz) else 0
    ncodes = np.where(nv > 0, ncodes, 0)
    labels = _labels(vt, order, spec)
    return PaddedBlock(
        layout="hierarchical",
        per_row=Ragged(labels, bounds),
        per_token=Ragged(fields, coff),
        shapes=np.stack([V, C], axis=1) if len(bounds) > 1 else np.zeros((0, 2), np.int64),
        expected={"visits": nv, "codes": np.asarray(ncodes, dtype=np.int64)},
        per_visit=Ragged({S.AGES: ages, S.TIME_DELTAS: deltas, S.VISIT_MASK: vmask}, voff),
    )
