"""Numeric lab values as model inputs: per-code quantile bins and value-bin tokens (no Ray).

``data.numeric: quantile_bins`` turns each row that has a ``numeric_value`` into a token that
names its code *and* its value bin: ``LOINC/2160-0`` with a value in the 7th of 10 quantile
bins of that code becomes the token ``LOINC/2160-0|Q7``. Rows without a value, and codes
without fitted bins, keep their plain code token; the model, the layouts, padding and the batch
contract are unchanged (docs/models.md gives the reasons for this choice over a separate value
column).

The bins are fitted on the train split in the scan that fits the vocabulary:
:func:`value_facts` summarises one unit's train values per code (at most :data:`SKETCH_POINTS`
weighted points per code: the medians of contiguous runs of the sorted values, weighted by the
run length), :func:`merge_sketch` sums them in the driver (bounded by codes × points), and
:func:`fit_edges` reads each code's quantile edges off the merged points. The edges are stored
in the vocabulary's ``meta`` (``vocab.json`` of the run, so evaluate and predict bin values the
same way) and the bin tokens are appended to the vocabulary after the plain codes.

Bin index of a value ``v`` with edges ``e`` (ascending, distinct): ``1 + #{e_j <= v}``, so
1..len(e)+1; 0 means "no value" and is never written as a token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.vocab import VALUE_BINS_META, Vocabulary

NUMERIC_MODES = ("none", "quantile_bins")
BIN_SEP = "|Q"  # token of code C in bin k: f"{C}{BIN_SEP}{k}"
META_KEY = VALUE_BINS_META  # Vocabulary.meta[META_KEY] = {"bins": B, "edges": {code: [..]}}
SKETCH_POINTS = 128
VALUE_FACT = "value"  # facts kind: key "<weight>:<code>", value = float64 bits as int64
MIN_VALUES = 20  # a code needs this many train values to get bins


def bin_token(code: str, k: int) -> str:
    return f"{code}{BIN_SEP}{k}"


def value_column(table: pa.Table) -> np.ndarray:
    """float64 [R] ``numeric_value`` of a table, NaN where null or absent."""
    if S.NUMERIC_VALUE not in table.column_names:
        return np.full(table.num_rows, np.nan)
    col = table[S.NUMERIC_VALUE].cast(pa.float64())
    return np.asarray(pc.fill_null(col, np.nan).to_numpy(), dtype=np.float64)


def _sketch(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points, int64 weights) of at most :data:`SKETCH_POINTS` for sorted ``values``."""
    n = len(values)
    if n <= SKETCH_POINTS:
        return values, np.ones(n, np.int64)
    bounds = np.linspace(0, n, SKETCH_POINTS + 1).astype(np.int64)
    mid = (bounds[:-1] + bounds[1:] - 1) // 2
    return values[mid], np.diff(bounds)


def value_facts(
    subject_id: np.ndarray, code: pa.Array, values: np.ndarray, train: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """One unit's per-code value sketches of the train rows with a finite value.

    Args:
        subject_id: int64 [R] (unused but for alignment checks).
        code: string or dictionary array [R].
        values: float64 [R], NaN = none.
        train: bool [R] row belongs to a train subject.

    Returns:
        (keys ``"<weight>:<code>"`` [P], int64 [P] the float64 bits of each point).
    """
    if len(subject_id) != len(values):
        raise ValueError("value_facts: columns of different lengths")
    use = train & np.isfinite(values)
    if not bool(use.any()):
        return [], np.zeros(0, np.int64)
    arr = code.cast(pa.string()) if not pa.types.is_dictionary(code.type) else code
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    names = enc.dictionary.cast(pa.string()).to_pylist()
    idx, v = idx[use], values[use]
    keep = idx >= 0
    idx, v = idx[keep], v[keep]
    order = np.lexsort((v, idx))
    idx, v = idx[order], v[order]
    starts = np.flatnonzero(np.concatenate([[True], idx[1:] != idx[:-1]]))
    ends = np.append(starts[1:], len(idx))
    keys: list[str] = []
    bits: list[np.ndarray] = []
    for a, b in zip(starts, ends, strict=True):
        pts, w = _sketch(v[a:b])
        name = names[int(idx[a])]
        keys.extend(f"{int(x)}:{name}" for x in w)
        bits.append(pts.astype(np.float64).view(np.int64))
    return keys, np.concatenate(bits)


MERGE_LIMIT = 32 * SKETCH_POINTS  # points per code kept before compressing


class ValueSketch:
    """Per-code weighted points, merged across units (the reduce side). Up to
    :data:`MERGE_LIMIT` points per code (32 units' worth) are kept as they are, so the edges do
    not depend on the order the units' facts arrive in (Ray or one process); past it a code's
    points are compressed to :data:`SKETCH_POINTS` weighted run medians, an approximation whose
    last digits can depend on that order."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, keys: list[str], bits: np.ndarray) -> None:
        if not keys:
            return
        vals = np.asarray(bits, np.int64).view(np.float64)
        wc = [k.split(":", 1) for k in keys]
        w = np.array([int(a) for a, _ in wc], np.int64)
        codes = np.array([c for _, c in wc], dtype=object)
        order = np.argsort(codes, kind="stable")
        codes, w, vals = codes[order], w[order], vals[order]
        starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
        for a, b in zip(starts, np.append(starts[1:], len(codes)), strict=True):
            lst = self.points.setdefault(str(codes[a]), [])
            lst.append((vals[a:b], w[a:b]))
            if sum(len(p) for p, _ in lst) > MERGE_LIMIT:
                self.points[str(codes[a])] = [_compress(lst)]

    def merged(self, code: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted points, weights) of one code."""
        p = np.concatenate([x for x, _ in self.points[code]])
        w = np.concatenate([y for _, y in self.points[code]])
        o = np.lexsort((w, p))
        return p[o], w[o]


def _compress(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """:data:`SKETCH_POINTS` weighted points of merged weighted points (weighted run medians)."""
    p = np.concatenate([x for x, _ in parts])
    w = np.concatenate([y for _, y in parts])
    o = np.lexsort((w, p))
    p, w = p[o], w[o]
    cw = np.cumsum(w)
    total = int(cw[-1])
    bounds = np.linspace(0, total, SKETCH_POINTS + 1)
    mids = (bounds[:-1] + bounds[1:]) / 2
    pts = p[np.minimum(np.searchsorted(cw, mids, side="left"), len(p) - 1)]
    ws = np.diff(np.rint(bounds).astype(np.int64))
    keep = ws > 0
    return pts[keep], ws[keep]


def fit_edges(
    sketch: ValueSketch, bins: int, min_values: int = MIN_VALUES
) -> dict[str, list[float]]:
    """Per code, the distinct quantile edges at ``k / bins`` (k = 1..bins-1) of its train
    values; codes with fewer than ``min_values`` values or a single distinct value get none."""
    out: dict[str, list[float]] = {}
    for code in sorted(sketch.points):
        p, w = sketch.merged(code)
        total = int(w.sum())
        if total < min_values:
            continue
        cw = np.cumsum(w)
        q = np.arange(1, bins) / bins * total
        # the edge of bin k is the first value past a k / bins share of the weight
        e = np.unique(p[np.minimum(np.searchsorted(cw, q, side="right"), len(p) - 1)])
        e = e[e > p[0]]  # an edge at the minimum would leave bin 1 empty
        if len(e):
            out[code] = [float(x) for x in e]
    return out


def with_value_bins(vocab: Vocabulary, edges: dict[str, list[float]], bins: int) -> Vocabulary:
    """``vocab`` plus a token per (code, bin) for every vocabulary code with edges, appended in
    vocabulary order, and the edges in ``meta`` (plain codes keep their ids)."""
    kept = {c: edges[c] for c in vocab.codes if c in edges}
    extra = [bin_token(c, k) for c, e in kept.items() for k in range(1, len(e) + 2)]
    counts = list(vocab.counts) + [0] * len(extra) if vocab.counts is not None else None
    meta = {**vocab.meta, META_KEY: {"bins": bins, "edges": kept}}
    return Vocabulary([*vocab.codes, *extra], counts, meta)


def vocab_edges(vocab: Vocabulary) -> dict[str, list[float]]:
    """The value-bin edges a vocabulary carries ({} when none)."""
    vb = vocab.meta.get(META_KEY)
    return dict(vb.get("edges", {})) if isinstance(vb, dict) else {}


def apply_value_bins(
    table: pa.Table, edges: dict[str, list[float]], exclude: np.ndarray | None = None
) -> pa.Table:
    """``table`` with the code of every row that has a value and a binned code replaced by its
    bin token (:func:`bin_token`); the code column stays dictionary-encoded.

    Args:
        table: rows with ``code`` (string or dictionary) and ``numeric_value``.
        edges: per code, ascending distinct edges.
        exclude: bool [K] over the table's code dictionary: codes never binned (the task's
            event codes); None = none.
    """
    if not edges or S.NUMERIC_VALUE not in table.column_names or table.num_rows == 0:
        return table
    values = value_column(table)
    col = table[S.CODE]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    names = enc.dictionary.cast(pa.string()).to_pylist()
    idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    new_idx = idx.copy()
    new_names = list(names)
    binned = np.array(
        [n in edges and not (exclude is not None and bool(exclude[d])) for d, n in enumerate(names)]
        + [False],
        dtype=bool,
    )  # last slot: null code
    cand = np.flatnonzero(np.isfinite(values) & binned[idx])
    if not len(cand):
        return table
    cand = cand[np.argsort(idx[cand], kind="stable")]
    starts = np.flatnonzero(np.concatenate([[True], idx[cand][1:] != idx[cand][:-1]]))
    for a, b in zip(starts, np.append(starts[1:], len(cand)), strict=True):
        rows = cand[a:b]
        name = names[int(idx[rows[0]])]
        e = edges[name]
        k = 1 + np.searchsorted(np.asarray(e, np.float64), values[rows], side="right")
        base = len(new_names)
        new_names.extend(bin_token(name, j) for j in range(1, len(e) + 2))
        new_idx[rows] = base + k - 1
    if len(new_names) == len(names):
        return table
    out = pa.DictionaryArray.from_arrays(
        pa.array(new_idx.astype(np.int32), mask=idx < 0), pa.array(new_names, pa.string())
    )
    i = table.schema.get_field_index(S.CODE)
    if not pa.types.is_dictionary(table.schema.field(S.CODE).type):
        return table.set_column(i, S.CODE, out.cast(pa.string()))
    return table.set_column(i, S.CODE, out)


def summary(vocab: Vocabulary) -> dict[str, Any]:
    """Codes with bins and bin tokens of a vocabulary (for logs and reports)."""
    e = vocab_edges(vocab)
    return {"binned_codes": len(e), "bin_tokens": sum(len(x) + 1 for x in e.values())}
