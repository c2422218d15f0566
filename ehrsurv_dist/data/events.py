"""MEDS columns as numpy arrays: codes dictionary-encoded, times in µs, outcomes sorted.

The first step of every unit of work (pure numpy/pyarrow): :func:`event_arrays` turns the three
MEDS columns of a table into :class:`EventArrays`, :meth:`OutcomeArrays.from_table` sorts the
outcome table for look-ups, and :func:`lookup` is the one sorted-key look-up they share.

Shape vocabulary: ``R`` event rows, ``K`` distinct codes, ``M`` outcome rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S


def time_us(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 µs with nulls as 0, bool null mask), straight from the Arrow buffers."""
    arr = col.cast(pa.timestamp("us")).cast(pa.int64())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    if arr.null_count == 0:
        return np.asarray(arr.to_numpy(), dtype=np.int64), np.zeros(n, dtype=bool)
    validity, data = arr.buffers()[0], arr.buffers()[1]
    off = arr.offset
    vals = np.frombuffer(data, dtype=np.int64, count=off + n)[off:]
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
    valid = bits[off : off + n].view(bool)
    return np.where(valid, vals, 0), ~valid


def lookup(keys: np.ndarray, table_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in sorted ``table_keys`` (leftmost) and whether each was found.

    Args:
        keys: int64 [n].
        table_keys: int64 [m], ascending.

    Returns:
        ``(pos, found)``: int64 [n] (clipped to ``m - 1``; 0 when ``m == 0``), bool [n].
    """
    if len(table_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    if len(keys) == len(table_keys) and np.array_equal(keys, table_keys):  # the common case
        return np.arange(len(keys), dtype=np.int64), np.ones(len(keys), dtype=bool)
    pos = np.searchsorted(table_keys, keys)
    pos_c = np.minimum(pos, len(table_keys) - 1)
    return pos_c, table_keys[pos_c] == keys


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; numpy's hash-based unique is slow on int64)."""
    if len(a) < 2:
        return a.copy()
    d = a[1:] != a[:-1]
    if not bool(np.all(a[1:] >= a[:-1])):
        a = np.sort(a)
        d = a[1:] != a[:-1]
    return a[np.concatenate([[True], d])]


@dataclass
class EventArrays:
    """The three MEDS columns of a unit as numpy arrays (codes dictionary-encoded).

    Attributes:
        subject_id: int64 [R].
        time_us: int64 [R]; microseconds since the epoch, 0 where ``time_null``.
        time_null: bool [R]; static rows.
        code_index: int32 [R]; index into ``dictionary``; ``len(dictionary)`` for a null code.
        dictionary: string array [K] of the distinct codes.
    """

    subject_id: np.ndarray
    time_us: np.ndarray
    time_null: np.ndarray
    code_index: np.ndarray
    dictionary: pa.Array

    def take(self, rows: np.ndarray) -> EventArrays:
        """Rows ``rows`` (int [n]), in that order, over the same dictionary."""
        return EventArrays(
            self.subject_id[rows],
            self.time_us[rows],
            self.time_null[rows],
            self.code_index[rows],
            self.dictionary,
        )

    def codes(self) -> pa.DictionaryArray:
        """Codes as a dictionary array (nulls for null codes)."""
        return dictionary_codes(self.code_index, self.dictionary)


def dictionary_codes(index: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """A dictionary array from int indices (``len(dictionary)`` = null) and a dictionary."""
    if len(index) == 0 or int(index.max()) < len(dictionary):  # no null code: zero-copy
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), dictionary)
    mask = index >= len(dictionary)
    indices = pa.array(
        np.where(mask, 0, index).astype(np.int32), mask=mask if bool(mask.any()) else None
    )
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def _as_dictionary(col: pa.ChunkedArray) -> pa.Array:
    """One dictionary array over every chunk (chunks' dictionaries unified first)."""
    col = col.unify_dictionaries()
    idx = [c.indices.cast(pa.int32()) for c in col.chunks]
    return pa.DictionaryArray.from_arrays(pa.concat_arrays(idx), col.chunks[0].dictionary)


def encode_codes(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(int32 index per row [R], string dictionary [K]) of a string or dictionary code column.

    Null codes get index ``len(dictionary)``.
    """
    arr: pa.Array
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return np.zeros(0, np.int32), pa.array([], pa.string())
        arr = _as_dictionary(col) if pa.types.is_dictionary(col.type) else col.combine_chunks()
    else:
        arr = col
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr.cast(pa.string()))
    dictionary = arr.dictionary.cast(pa.string())
    indices = arr.indices.cast(pa.int32())
    if indices.null_count:
        indices = pc.fill_null(indices, len(dictionary))
    return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int32), dictionary


def event_arrays(events: pa.Table) -> EventArrays:
    """Columns ``subject_id``, ``time``, ``code`` of a MEDS table as :class:`EventArrays`.

    Raises:
        ValueError: ``subject_id`` has nulls.
    """
    sid = events[S.SUBJECT_ID]
    if sid.null_count:
        raise ValueError("subject_id has nulls (validate the cohort first)")
    sid_np = np.asarray(sid.cast(pa.int64()).to_numpy(), dtype=np.int64)
    tu, tnull = time_us(events[S.TIME])
    cidx, dictionary = encode_codes(events[S.CODE])
    return EventArrays(sid_np, tu, tnull, cidx, dictionary)


@dataclass
class OutcomeArrays:
    """The outcome table sorted by subject (stable), for look-ups.

    Attributes:
        subject_id: int64 [M], ascending (duplicates keep file order; the first wins).
        event: bool [M].
        time_us: int64 [M] (0 where null).
        ok: bool [M]; False where the outcome time is null.
    """

    subject_id: np.ndarray
    event: np.ndarray
    time_us: np.ndarray
    ok: np.ndarray

    @classmethod
    def from_table(cls, outcomes: pa.Table) -> OutcomeArrays:
        """Columns ``subject_id``, ``event``, ``time`` of an outcome table, sorted by subject."""
        sid = np.asarray(outcomes[S.SUBJECT_ID].cast(pa.int64()).to_numpy(), dtype=np.int64)
        ev = np.asarray(
            pc.fill_null(outcomes[S.OUTCOME_EVENT].cast(pa.bool_()), False).to_numpy(
                zero_copy_only=False
            ),
            dtype=bool,
        )
        tu, tnull = time_us(outcomes[S.OUTCOME_TIME])
        order = np.argsort(sid, kind="stable")
        return cls(sid[order], ev[order], tu[order], ~tnull[order])

    def between(self, lo: int, hi: int) -> OutcomeArrays:
        """Rows with ``lo <= subject_id <= hi``."""
        a, b = np.searchsorted(self.subject_id, [lo, hi + 1] if hi >= lo else [0, 0])
        return OutcomeArrays(self.subject_id[a:b], self.event[a:b], self.time_us[a:b], self.ok[a:b])
