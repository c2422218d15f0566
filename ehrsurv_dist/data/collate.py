"""Length bucketing and padding into fixed-shape numpy batches, pure numpy.

A *block* is the compact output of one unit of work (:class:`flatten.FlatTokens` or
:class:`flatten.VisitTokens`, a few thousand subjects). :func:`collate_block` turns it into
batches in three vectorised steps, whatever the block size:

1. **Bucketing** (:func:`bucket_order`): shuffle the subjects (by a hash of seed, epoch and
   subject_id), cut them into windows of ``window_batches × batch_size``, sort each window by
   length, cut it into batches, then shuffle the batch order (by a hash of seed, epoch, unit and
   batch index). Deterministic given (seed, epoch, unit contents); fresh every epoch.
2. **Padding**: each batch is padded to its own longest sequence rounded up to a multiple of
   ``pad_multiple`` (never past the configured maximum). All batches of a block are written
   into *one* buffer per field with a single scatter; a batch is then a reshaped view of a
   contiguous slice (no per-batch copy, no ragged object array anywhere).
3. **Targets** (optional): MLM masking of the whole block at once (:mod:`masking`).

The returned arrays follow ``schema.FLAT_FIELDS`` / ``schema.HIERARCHICAL_FIELDS`` (plus
``mlm_labels`` with MLM and ``nvp_targets`` with patient-level NVP).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import checks, masking
from ehrsurv_dist.data.flatten import (
    UNIT,
    UNIT_SIZE,
    FlatTokens,
    VisitTokens,
    flat_from_arrow,
    hier_from_arrow,
)
from ehrsurv_dist.data.visits import concat_ranges

Layout = Literal["flat", "hierarchical"]
NVP_TARGETS = "nvp_targets"


def round_up(n: np.ndarray, multiple: int) -> np.ndarray:
    """Smallest multiple of ``multiple`` that is >= n (elementwise; n=0 stays 0)."""
    n = np.asarray(n, dtype=np.int64)
    return -(-n // multiple) * multiple


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
    sk = masking.stream_key(seed, epoch, masking.STREAM_SUBJECTS)
    perm = np.argsort(masking.hash64(sk, subject_id), kind="stable")
    window = np.arange(n, dtype=np.int64) // (max(1, window_batches) * batch_size)
    ln = np.asarray(lengths, dtype=np.int64)[perm]
    order = perm[np.argsort(window * (int(ln.max()) + 1) + ln, kind="stable")]
    n_batches = -(-n // batch_size)
    # Every window but the last holds whole batches, so the only partial batch is the last one.
    bk = masking.stream_key(seed, epoch, masking.STREAM_BATCHES)
    border = np.argsort(masking.hash64(bk, np.full(n_batches, unit), np.arange(n_batches)))
    starts = border * batch_size
    sizes = np.minimum(starts + batch_size, n) - starts
    rows = concat_ranges(starts, sizes)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return order[rows], bounds


@dataclass
class PaddedBlock:
    """Padded batches of one block, stored as one flat buffer per field.

    Batch k holds rows ``rows[k]:rows[k + 1]`` of the ordered per-subject arrays and elements
    ``offsets[k]:offsets[k + 1]`` of every per-token buffer, reshaped to ``(rows, *shapes[k])``.
    """

    layout: Layout
    rows: np.ndarray  # int64 [K + 1]
    offsets: np.ndarray  # int64 [K + 1] into token buffers
    shapes: np.ndarray  # int64 [K, 1] (L) or [K, 2] (V, C)
    token_fields: dict[str, np.ndarray]  # 1-D buffers
    row_fields: dict[str, np.ndarray]  # [n] in batch order
    expected: dict[str, np.ndarray] = field(default_factory=dict)  # [n] counts for checks
    visit_offsets: np.ndarray | None = None  # hierarchical: int64 [K + 1] into visit buffers
    visit_fields: dict[str, np.ndarray] = field(default_factory=dict)
    nvp: tuple[np.ndarray, np.ndarray, int] | None = None  # (codes, offsets [n+1], vocab_size)
    _index: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows) - 1

    @property
    def real_tokens(self) -> int:
        key = S.ATTENTION_MASK if self.layout == "flat" else S.CODE_MASK
        return int(np.count_nonzero(self.token_fields[key]))

    @property
    def token_slots(self) -> int:
        return int(self.offsets[-1])

    def batch(self, k: int) -> dict[str, np.ndarray]:
        """Batch k: views into the block's buffers (copy it to keep it past the block)."""
        if self._index is None:
            self._index = (
                self.rows.tolist(),
                self.offsets.tolist(),
                [tuple(s) for s in self.shapes.tolist()],
                self.visit_offsets.tolist() if self.visit_offsets is not None else None,
                list(self.token_fields.items()),
                list(self.visit_fields.items()),
                list(self.row_fields.items()),
            )
        rows, offs, shapes, voffs, tok, vis, per_row = self._index
        r0, r1 = rows[k], rows[k + 1]
        o0, o1 = offs[k], offs[k + 1]
        shape = (r1 - r0, *shapes[k])
        out = {name: buf[o0:o1].reshape(shape) for name, buf in tok}
        if voffs is not None:
            v0, v1 = voffs[k], voffs[k + 1]
            vshape = shape[:2]
            for name, buf in vis:
                out[name] = buf[v0:v1].reshape(vshape)
        for name, arr in per_row:
            out[name] = arr[r0:r1]
        if self.nvp is not None:
            codes, off, vsize = self.nvp
            a, b = int(off[r0]), int(off[r1])
            out[NVP_TARGETS] = masking.nvp_targets(codes[a:b], off[r0 : r1 + 1] - a, vsize)
        return out

    def expected_for(self, k: int) -> dict[str, np.ndarray]:
        r0, r1 = int(self.rows[k]), int(self.rows[k + 1])
        return {name: arr[r0:r1] for name, arr in self.expected.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for k in range(len(self)):
            yield self.batch(k)


def _batch_of_rows(bounds: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))


def _labels(subject_id: np.ndarray, event: np.ndarray, last_visit: np.ndarray) -> dict:
    return {
        S.SUBJECT: np.ascontiguousarray(subject_id, dtype=np.int64),
        S.LAST_VISIT: np.ascontiguousarray(last_visit, dtype=np.int64),
        S.EVENT: np.ascontiguousarray(event, dtype=np.bool_),
        S.NUM_VISITS: np.ascontiguousarray(last_visit + 1, dtype=np.int64),
    }


def pad_flat(
    ft: FlatTokens,
    order: np.ndarray,
    bounds: np.ndarray,
    pad_multiple: int = 8,
    max_len: int | None = None,
    mlm: tuple[int, int, int, float] | None = None,
    nvp_vocab_size: int | None = None,
) -> PaddedBlock:
    """Pad flat sequences batch by batch (seed-spec §1.4), one masked assignment per field.

    Args:
        ft: the block's sequences.
        order, bounds: from :func:`bucket_order`.
        pad_multiple: each batch's L is its longest sequence rounded up to this.
        max_len: cap on L (the configured ``max_seq_len``); L never drops below the longest.
        mlm: ``(vocab_size, seed, epoch, prob)`` to add MLM masking, or None.
        nvp_vocab_size: with ``ft.nvp_codes``, add ``nvp_targets`` float32 [B, |V|].

    Returns:
        A :class:`PaddedBlock`; batch k has ``codes`` int64 [B, L] (PAD_ID on padding), ``ages``
        float32 (0), ``visit_ids`` int64 (0), ``attention_mask`` bool, the labels, and with MLM
        ``mlm_labels`` int64 (``IGNORE_INDEX`` off the masked positions).
    """
    lengths = ft.lengths[order]
    n_b = len(bounds) - 1
    if n_b and len(order):
        longest = np.maximum.reduceat(lengths, bounds[:-1])
    else:
        longest = np.zeros(n_b, np.int64)
    L = round_up(longest, pad_multiple)
    if max_len is not None:
        L = np.maximum(np.minimum(L, max_len), longest)
    rows_per = np.diff(bounds)
    offsets = np.concatenate([[0], np.cumsum(rows_per * L)]).astype(np.int64)
    total = int(offsets[-1])
    # The mask buffer row by row: n real slots then L - n pads; a boolean assignment then
    # fills the real slots in buffer order, which is the order of the gathered tokens.
    row_L = np.repeat(L, rows_per)
    runs = np.empty(2 * len(order), dtype=np.int64)
    runs[0::2] = lengths
    runs[1::2] = row_L - lengths
    mask = np.repeat(np.tile(np.array([True, False]), len(order)), runs)
    src = concat_ranges(ft.offsets[order], lengths)
    codes = np.zeros(total, np.int64)
    ages = np.zeros(total, np.float32)
    vids = np.zeros(total, np.int64)
    tok_codes = ft.codes[src]
    ages[mask] = ft.ages[src]
    vids[mask] = ft.visit_ids[src]
    token_fields: dict[str, np.ndarray] = {
        S.CODES: codes,
        S.AGES: ages,
        S.VISIT_IDS: vids,
        S.ATTENTION_MASK: mask,
    }
    if mlm is not None:
        vocab_size, seed, epoch, prob = mlm
        tok_sid = np.repeat(ft.subject_id[order], lengths)
        pos = np.arange(len(src)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        tok_codes, labels = masking.mlm_mask(tok_codes, tok_sid, pos, vocab_size, seed, epoch, prob)
        lab = np.full(total, S.IGNORE_INDEX, np.int64)
        lab[mask] = labels
        token_fields[S.MLM_LABELS] = lab
    codes[mask] = tok_codes
    nvp = None
    if nvp_vocab_size is not None and ft.nvp_codes is not None and ft.nvp_offsets is not None:
        tn = np.diff(ft.nvp_offsets)[order]
        tcodes = ft.nvp_codes[concat_ranges(ft.nvp_offsets[order], tn)]
        nvp = (tcodes, np.concatenate([[0], np.cumsum(tn)]).astype(np.int64), nvp_vocab_size)
    return PaddedBlock(
        layout="flat",
        rows=bounds,
        offsets=offsets,
        shapes=L[:, None],
        token_fields=token_fields,
        row_fields=_labels(ft.subject_id[order], ft.event[order], ft.last_visit[order]),
        expected={"tokens": lengths},
        nvp=nvp,
    )


def pad_hierarchical(
    vt: VisitTokens,
    order: np.ndarray,
    bounds: np.ndarray,
    pad_multiple: int = 8,
    max_visits: int | None = None,
    max_codes: int | None = None,
    mlm: tuple[int, int, int, float] | None = None,
) -> PaddedBlock:
    """Pad visits × codes batch by batch (seed-spec §1.5).

    Each batch is ``[B, V, C]`` with V its most visits and C its largest visit, each rounded
    up to ``pad_multiple`` and capped at ``max_visits`` / ``max_codes``.

    Returns:
        A :class:`PaddedBlock`; batch k has ``codes`` int64 [B, V, C], ``code_mask`` bool
        [B, V, C], ``ages``, ``time_deltas`` float32 [B, V], ``visit_mask`` bool [B, V] and the
        labels (and ``mlm_labels`` [B, V, C] with MLM; its positions are ``visit * C_max + k``
        with ``C_max = max_codes``).
    """
    n = len(order)
    nv = vt.num_visits[order]
    sizes = vt.visit_sizes
    n_b = len(bounds) - 1
    vis = concat_ranges(vt.visit_offsets[order], nv)  # ordered visits
    vsz = sizes[vis]
    # per-subject largest visit, then per batch
    vstart = np.concatenate([[0], np.cumsum(nv)])[:-1]
    if len(vis):
        big = np.maximum.reduceat(vsz, np.minimum(vstart, len(vis) - 1))
        big = np.where(nv > 0, big, 0)
    else:
        big = np.zeros(n, np.int64)
    if n_b and n:
        v_long = np.maximum.reduceat(nv, bounds[:-1])
        c_long = np.maximum.reduceat(big, bounds[:-1])
    else:
        v_long = c_long = np.zeros(n_b, np.int64)
    V = round_up(v_long, pad_multiple)
    C = round_up(c_long, pad_multiple)
    if max_visits is not None:
        V = np.maximum(np.minimum(V, max_visits), v_long)
    if max_codes is not None:
        C = np.maximum(np.minimum(C, max_codes), c_long)
    rows_per = np.diff(bounds)
    voff = np.concatenate([[0], np.cumsum(rows_per * V)]).astype(np.int64)
    coff = np.concatenate([[0], np.cumsum(rows_per * V * C)]).astype(np.int64)
    b_of_row = _batch_of_rows(bounds)
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
    csrc = concat_ranges(vt.code_offsets[vis], vsz)
    k_in_v = np.arange(len(csrc)) - np.repeat(np.cumsum(vsz) - vsz, vsz)
    cb = np.repeat(vb, vsz)
    cdest = coff[cb] + np.repeat(vrow, vsz) * V[cb] * C[cb] + np.repeat(slot, vsz) * C[cb] + k_in_v
    total = int(coff[-1])
    codes = np.zeros(total, np.int64)
    cmask = np.zeros(total, np.bool_)
    tok_codes = vt.codes[csrc].astype(np.int64)
    cmask[cdest] = True
    token_fields: dict[str, np.ndarray] = {S.CODES: codes, S.CODE_MASK: cmask}
    if mlm is not None:
        vocab_size, seed, epoch, prob = mlm
        cap = int(max_codes) if max_codes is not None else int(max(1, sizes.max(initial=1)))
        tok_sid = np.repeat(np.repeat(vt.subject_id[order], nv), vsz)
        pos = np.repeat(slot, vsz) * cap + k_in_v
        tok_codes, labels = masking.mlm_mask(tok_codes, tok_sid, pos, vocab_size, seed, epoch, prob)
        lab = np.full(total, S.IGNORE_INDEX, np.int64)
        lab[cdest] = labels
        token_fields[S.MLM_LABELS] = lab
    codes[cdest] = tok_codes
    ncodes = np.add.reduceat(vsz, np.minimum(vstart, max(len(vsz) - 1, 0))) if len(vsz) else 0
    ncodes = np.where(nv > 0, ncodes, 0)
    return PaddedBlock(
        layout="hierarchical",
        rows=bounds,
        offsets=coff,
        shapes=np.stack([V, C], axis=1) if n_b else np.zeros((0, 2), np.int64),
        token_fields=token_fields,
        row_fields=_labels(vt.subject_id[order], vt.event[order], vt.last_visit[order]),
        expected={"visits": nv, "codes": np.asarray(ncodes, dtype=np.int64)},
        visit_offsets=voff,
        visit_fields={S.AGES: ages, S.TIME_DELTAS: deltas, S.VISIT_MASK: vmask},
    )


# --------------------------------------------------------------------------------------------
# From blocks to batches (the consumer side of both paths)


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
        nvp_vocab_size: set by the pipeline when patient-level NVP targets are on.
        check_batches: run the contract checks on this many first batches of an iteration
            (-1 = every batch).
        drop_last: drop each block's last batch when it is smaller than ``batch_size``.
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
    nvp_vocab_size: int | None = None
    check_batches: int = 8
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.layout not in ("flat", "hierarchical"):
            raise ValueError(f"layout must be flat or hierarchical, got {self.layout!r}")
        for name in ("batch_size", "window_batches", "pad_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def collate_block(
    block: FlatTokens | VisitTokens, spec: BatchSpec, epoch: int, unit: int
) -> PaddedBlock:
    """Bucket, pad and (optionally) mask one block."""
    mlm = None
    if spec.mlm_vocab_size is not None:
        mlm = (spec.mlm_vocab_size, spec.seed, epoch, spec.mlm_prob)
    if isinstance(block, FlatTokens):
        order, bounds = bucket_order(
            block.lengths, block.subject_id, spec.batch_size, spec.window_batches,
            spec.seed, epoch, unit,
        )  # fmt: skip
        return pad_flat(
            block, order, bounds, spec.pad_multiple, spec.max_seq_len, mlm, spec.nvp_vocab_size
        )
    order, bounds = bucket_order(
        block.num_visits, block.subject_id, spec.batch_size, spec.window_batches,
        spec.seed, epoch, unit,
    )  # fmt: skip
    return pad_hierarchical(
        block, order, bounds, spec.pad_multiple, spec.max_visits, spec.max_codes_per_visit, mlm
    )


def block_from_arrow(table: pa.Table, layout: Layout) -> FlatTokens | VisitTokens:
    """Decode a wire-format block (see :func:`flatten.flat_to_arrow`)."""
    return flat_from_arrow(table) if layout == "flat" else hier_from_arrow(table)


# --------------------------------------------------------------------------------------------
# Padded blocks on the wire: one Arrow row per unit, each numpy buffer one binary value
# (8-byte aligned), so a worker can ship finished batches and the consumer only slices views.

PADDED = "__padded"
_GROUPS = ("token", "row", "expected", "visit")


def _arrays_of(pb: PaddedBlock) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {
        "meta/rows": pb.rows,
        "meta/offsets": pb.offsets,
        "meta/shapes": pb.shapes,
    }
    if pb.visit_offsets is not None:
        out["meta/visit_offsets"] = pb.visit_offsets
    for group, fields in zip(
        _GROUPS, (pb.token_fields, pb.row_fields, pb.expected, pb.visit_fields), strict=True
    ):
        for name, arr in fields.items():
            out[f"{group}/{name}"] = arr
    if pb.nvp is not None:
        out["nvp/codes"] = pb.nvp[0]
        out["nvp/offsets"] = pb.nvp[1]
        out["nvp/vocab_size"] = np.array([pb.nvp[2]], dtype=np.int64)
    return out


def _binary_value(arr: np.ndarray) -> pa.LargeBinaryArray:
    """A one-value binary array over ``arr``'s bytes, zero-copy when the size is a multiple of
    8 (every value stays 8-byte aligned, so the consumer's views are aligned)."""
    arr = np.ascontiguousarray(arr)
    nbytes = arr.nbytes
    if nbytes % 8:
        padded = np.zeros(nbytes + (-nbytes % 8), dtype=np.uint8)
        padded[:nbytes] = arr.reshape(-1).view(np.uint8)
        data = pa.py_buffer(padded)
    else:
        data = pa.py_buffer(arr.reshape(-1).view(np.uint8))
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def padded_to_arrow(blocks: list[tuple[int, PaddedBlock]]) -> pa.Table:
    """Padded blocks, one Arrow row each (``unit``, ``layout`` and one binary column per
    buffer, its dtype in the field metadata), without copying the buffers;
    :func:`padded_from_arrow` inverts it."""
    tables = []
    for unit, pb in blocks:
        arrays = _arrays_of(pb)
        names = sorted(arrays)
        fields = [
            pa.field(PADDED, pa.bool_()),
            pa.field("unit", pa.int64()),
            pa.field("layout", pa.string()),
            *(
                pa.field(n, pa.large_binary(), metadata={"dtype": arrays[n].dtype.str})
                for n in names
            ),
        ]
        cols = [
            pa.array([True]),
            pa.array([unit], pa.int64()),
            pa.array([pb.layout], pa.string()),
            *(_binary_value(arrays[n]) for n in names),
        ]
        tables.append(pa.Table.from_arrays(cols, schema=pa.schema(fields)))
    return pa.concat_tables(tables, promote_options="permissive")


def padded_from_arrow(table: pa.Table) -> list[tuple[int, PaddedBlock]]:
    """Decode :func:`padded_to_arrow`; arrays are zero-copy views of the Arrow buffers."""
    names = [n for n in table.column_names if "/" in n]
    dtypes = {n: np.dtype((table.schema.field(n).metadata or {})[b"dtype"].decode()) for n in names}
    out = []
    for rb in table.to_batches():
        units = rb.column("unit").to_pylist()
        layouts = rb.column("layout").to_pylist()
        for i in range(rb.num_rows):
            raw: dict[str, np.ndarray] = {}
            for n in names:
                v = rb.column(n)[i]
                if v.is_valid:
                    buf = v.as_buffer()
                    dt = dtypes[n]
                    raw[n] = np.frombuffer(buf, dtype=dt, count=len(buf) // dt.itemsize)
            out.append((int(units[i]), _padded_block(layouts[i], raw)))
    return out


def _padded_block(layout: Layout, raw: dict[str, np.ndarray]) -> PaddedBlock:
    rows, offsets = raw["meta/rows"], raw["meta/offsets"]
    k = len(rows) - 1
    n_rows, n_tok = int(rows[-1]), int(offsets[-1])
    vo = raw.get("meta/visit_offsets")
    n_vis = int(vo[-1]) if vo is not None else 0

    def group(g: str, n: int) -> dict[str, np.ndarray]:  # drop the alignment padding
        p = g + "/"
        return {key[len(p) :]: a[:n] for key, a in raw.items() if key.startswith(p)}

    nvp = None
    if "nvp/codes" in raw:
        noff = raw["nvp/offsets"][: n_rows + 1]
        nvp = (raw["nvp/codes"][: int(noff[-1])], noff, int(raw["nvp/vocab_size"][0]))
    return PaddedBlock(
        layout=layout,
        rows=rows,
        offsets=offsets,
        shapes=raw["meta/shapes"].reshape(k, 1 if layout == "flat" else 2),
        token_fields=group("token", n_tok),
        row_fields=group("row", n_rows),
        expected=group("expected", n_rows),
        visit_offsets=vo,
        visit_fields=group("visit", n_vis),
        nvp=nvp,
    )


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


def batches_from_blocks(
    blocks: Iterable[pa.Table],
    spec: BatchSpec,
    epoch: int,
    stats: BatchStats | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches from wire-format blocks; the consumer side of both paths.

    Padded blocks (batches finished on a worker) are only sliced. Compact blocks (one row per
    subject) are bucketed and padded here, one unit at a time: a block may hold several units,
    and a unit Ray split over several blocks is reassembled first (its ``unit_size`` says when
    it is whole), so the batches do not depend on Ray's block boundaries. Pieces of a unit that
    never completes (e.g. a unit split between Ray Train workers) are collated at the end.

    Args:
        blocks: Arrow tables in either wire format.
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
    for table in blocks:
        if table.num_rows == 0:
            continue
        if PADDED in table.column_names:  # batches finished on a worker
            for _, pb in padded_from_arrow(table):
                yield from emit_batches(pb, spec, st)
            continue
        units = np.asarray(table[UNIT].to_numpy(), dtype=np.int64)
        sizes = np.asarray(table[UNIT_SIZE].to_numpy(), dtype=np.int64)
        cut = np.flatnonzero(units[1:] != units[:-1]) + 1
        se = np.concatenate([[0], cut, [len(units)]])
        for a, b in zip(se[:-1], se[1:], strict=True):
            unit, piece = int(units[a]), table.slice(int(a), int(b - a))
            parts = pending.pop(unit, [])
            parts.append(piece)
            if sum(p.num_rows for p in parts) < int(sizes[a]):
                pending[unit] = parts
                continue
            whole = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            pb = collate_block(block_from_arrow(whole, spec.layout), spec, epoch, unit)
            yield from emit_batches(pb, spec, st)
    for unit in sorted(pending):  # units that never completed on this consumer
        whole = pa.concat_tables(pending[unit])
        pb = collate_block(block_from_arrow(whole, spec.layout), spec, epoch, unit)
        yield from emit_batches(pb, spec, st)


def emit_batches(
    pb: PaddedBlock, spec: BatchSpec, st: BatchStats | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of one padded block, with the always-on checks and the counters."""
    st = st if st is not None else BatchStats()
    st.blocks += 1
    n = len(pb)
    rows = np.diff(pb.rows).tolist()
    slots = np.diff(pb.offsets).tolist()
    # real tokens per batch, from the expected counts (the checks verify them)
    exp = pb.expected.get("tokens", pb.expected.get("codes"))
    real = (
        np.add.reduceat(exp, pb.rows[:-1]).tolist()
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
