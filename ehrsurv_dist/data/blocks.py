"""The Arrow block format of the token layouts: what Ray Data carries to the consumers.

One Arrow row per subject: labels plus list columns (never ragged numpy), so Ray may cut a block
between any two subjects; ``unit``/``unit_size`` let the consumer reassemble a unit that Ray
split (``collate.batches_from_blocks``). Pure pyarrow/numpy.

Flat block: ``codes`` list<int32>, ``ages`` list<float32>, ``visit_ids`` list<int32> per subject.
Hierarchical block: ``ages``, ``time_deltas`` list<float32> and ``visit_sizes`` list<int32> per
visit, and the subject's codes (every visit's, back to back) in ``codes`` list<int32>.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.layouts import FlatTokens, VisitTokens
from ehrsurv_dist.ragged import Ragged

Layout = Literal["flat", "hierarchical"]
UNIT = "unit"
UNIT_SIZE = "unit_size"  # subjects of the unit: lets a consumer reassemble a unit Ray split
TRUNCATED = "truncated"
VISIT_SIZES = "visit_sizes"


def _list(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def _unlist(col: pa.ChunkedArray | pa.Array, dtype: type) -> Ragged:
    """A list column as a :class:`Ragged` of ``dtype`` values, zero-copy where possible."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    off = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    vals = arr.values.to_numpy(zero_copy_only=False)
    if len(off) and (off[0] != 0 or off[-1] != len(vals)):
        vals = vals[off[0] : off[-1]]
        off = off - off[0]
    return Ragged(np.asarray(vals, dtype=dtype), off)


def _np(col: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False) if len(col) else [], dtype=dtype)


# Calendar-axis label columns a block may carry (``SubjectLabels.extra``), with their dtypes.
EXTRA_COLUMNS: dict[str, type] = {
    S.PREDICTION_TIME: np.int64,
    S.TIME_DAYS: np.float64,
    S.PREDICTION_AGE: np.float32,
}


def _labels_to_arrow(unit: int, labels: FlatTokens | VisitTokens) -> dict[str, pa.Array]:
    n = len(labels.subject_id)
    cols = {
        UNIT: pa.array(np.full(n, unit, dtype=np.int64)),
        UNIT_SIZE: pa.array(np.full(n, n, dtype=np.int64)),
        S.SUBJECT_ID: pa.array(labels.subject_id, pa.int64()),
        S.EVENT: pa.array(labels.event, pa.bool_()),
        S.LAST_VISIT: pa.array(labels.last_visit, pa.int64()),
        TRUNCATED: pa.array(labels.truncated, pa.bool_()),
    }
    for name, dtype in EXTRA_COLUMNS.items():
        if name in labels.extra:
            cols[name] = pa.array(np.asarray(labels.extra[name], dtype=dtype))
    return cols


def _labels_from_arrow(t: pa.Table) -> dict[str, Any]:
    extra = {
        name: _np(t[name], dtype) for name, dtype in EXTRA_COLUMNS.items() if name in t.column_names
    }
    return {
        "subject_id": _np(t[S.SUBJECT_ID], np.int64),
        "event": _np(t[S.EVENT], np.bool_),
        "last_visit": _np(t[S.LAST_VISIT], np.int64),
        "truncated": _np(t[TRUNCATED], np.bool_),
        "extra": extra,
    }


def flat_to_arrow(ft: FlatTokens, unit: int) -> pa.Table:
    """One row per subject: labels plus ``codes``/``ages``/``visit_ids`` lists."""
    cols = _labels_to_arrow(unit, ft)
    cols[S.CODES] = _list(ft.codes.astype(np.int32), ft.offsets)
    cols[S.AGES] = _list(ft.ages.astype(np.float32), ft.offsets)
    cols[S.VISIT_IDS] = _list(ft.visit_ids.astype(np.int32), ft.offsets)
    return pa.table(cols)


def flat_from_arrow(t: pa.Table) -> FlatTokens:
    """Decode :func:`flat_to_arrow` (any slice of it)."""
    codes = _unlist(t[S.CODES], np.int32)
    values = {
        S.CODES: codes.values,
        S.AGES: _unlist(t[S.AGES], np.float32).values,
        S.VISIT_IDS: _unlist(t[S.VISIT_IDS], np.int32).values,
    }
    return FlatTokens(**_labels_from_arrow(t), tokens=codes.with_values(values))


def hier_to_arrow(vt: VisitTokens, unit: int) -> pa.Table:
    """One row per subject: labels plus per-visit lists and the codes list."""
    cols = _labels_to_arrow(unit, vt)
    cols[S.AGES] = _list(vt.visit_ages.astype(np.float32), vt.visit_offsets)
    cols[S.TIME_DELTAS] = _list(vt.time_deltas.astype(np.float32), vt.visit_offsets)
    cols[VISIT_SIZES] = _list(vt.visit_sizes.astype(np.int32), vt.visit_offsets)
    cols[S.CODES] = _list(vt.codes.astype(np.int32), vt.code_offsets[vt.visit_offsets])
    return pa.table(cols)


def hier_from_arrow(t: pa.Table) -> VisitTokens:
    """Decode :func:`hier_to_arrow` (any slice of it)."""
    ages = _unlist(t[S.AGES], np.float32)
    sizes = _unlist(t[VISIT_SIZES], np.int64).values
    codes = Ragged.from_lengths(_unlist(t[S.CODES], np.int32).values, sizes)  # type: ignore[arg-type]
    values = {
        S.AGES: ages.values,
        S.TIME_DELTAS: _unlist(t[S.TIME_DELTAS], np.float32).values,
        S.CODES: codes,
    }
    return VisitTokens(**_labels_from_arrow(t), visits=ages.with_values(values))


def block_from_arrow(table: pa.Table, layout: Layout) -> FlatTokens | VisitTokens:
    """Decode a block of either layout."""
    return flat_from_arrow(table) if layout == "flat" else hier_from_arrow(table)
