"""One schema normalisation at the reader: every MEDS shard is read as the same Arrow types.

Real extracts drift between shards (an incremental refresh written by another tool): times in
``s``/``ms``/``us``/``ns``, with or without a time zone; codes as ``string``, ``large_string``
or dictionary-encoded; ``int32`` or ``int64`` subject ids. Every reader of the event columns
(the validator, the Ray Data map tasks, the single-process path, ``predict``) goes through
:func:`normalise_events`, so a cohort that validates is read with one schema everywhere (Ray
Data refuses to concatenate blocks whose schemas differ):

========== ================================================ ===================================
column     accepted                                         read as
========== ================================================ ===================================
subject_id any integer type (dictionary-encoded too)        int64
time       timestamp[s|ms|us|ns], any time zone or none     timestamp[us], UTC, no time zone
code       string, large_string, dictionary of either       string (``dictionary<int32, string>``
                                                            where the reader asks for codes
                                                            dictionary-encoded)
========== ================================================ ===================================

A time with a time zone is an instant: it is converted to UTC and the zone dropped (visits are
then cut on the UTC day). Nanosecond times with a sub-microsecond part are **floored to the
microsecond** (not refused) and counted; :func:`schema_changes` lists what a file's schema needs,
and the validator reports both per file. Codes (and ``text_value`` in the validator) must be
valid UTF-8: :class:`EncodingError` names the file, the column and the first subjects.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import CohortError

TIME_TYPE = pa.timestamp("us")
CODE_DICT_TYPE = pa.dictionary(pa.int32(), pa.string())
MAX_NAMED = 5  # subjects an error names
UTC_NAMES = frozenset({"UTC", "utc", "Etc/UTC", "+00:00", "Z", "GMT"})


class EncodingError(CohortError):
    """A string column holds bytes that are not UTF-8 (names file, column and subjects)."""

    def __init__(self, path: str, column: str, rows: int, subjects: list[int]) -> None:
        self.path, self.column, self.rows, self.subjects = path, column, rows, subjects
        ids = ", ".join(map(str, subjects[:MAX_NAMED]))
        super().__init__(
            f"{path}: column '{column}': {rows} row(s) are not valid UTF-8 "
            f"(subject_id {ids}); re-encode the file as UTF-8 in the ETL"
        )

    def message(self) -> str:
        """The cause without the file and subjects (the validator names them itself)."""
        return f"{self.rows} row(s) are not valid UTF-8; re-encode the file as UTF-8 in the ETL"


def _is_str(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def schema_changes(sch: pa.Schema) -> list[str]:
    """What :func:`normalise_events` changes in a shard of this schema, one phrase per column
    ([] for the MEDS types). Assumes the types are usable (``validate_files.check_schema``)."""
    out: list[str] = []
    if S.SUBJECT_ID in sch.names:
        t = sch.field(S.SUBJECT_ID).type
        if t != pa.int64():
            out.append(f"'{S.SUBJECT_ID}' {t} → int64")
    if S.TIME in sch.names:
        t = sch.field(S.TIME).type
        vt = _value_type(t)
        if t != TIME_TYPE and pa.types.is_timestamp(vt):
            zone = ""
            if vt.tz in UTC_NAMES:
                zone = " (UTC, zone dropped)"
            elif vt.tz:
                zone = f" (converted from {vt.tz} to UTC, zone dropped)"
            out.append(f"'{S.TIME}' {t} → timestamp[us]{zone}")
    if S.CODE in sch.names:
        t = sch.field(S.CODE).type
        if _is_str(_value_type(t)) and _value_type(t) != pa.string():
            out.append(f"'{S.CODE}' {t} → string")
    return out


def normalise_time(col: pa.ChunkedArray, column: str = S.TIME) -> tuple[pa.ChunkedArray, int]:
    """(timestamp[us] UTC without zone, number of values floored to the microsecond).

    Raises:
        CohortError: not a timestamp, or a value outside timestamp[us]'s range.
    """
    typ = col.type
    if pa.types.is_dictionary(typ):
        col = col.cast(typ.value_type)
        typ = typ.value_type
    if not pa.types.is_timestamp(typ):
        raise CohortError(f"column '{column}' has type {typ}, expected timestamp[us]")
    if typ == TIME_TYPE:
        return col, 0
    if typ.tz is not None:
        col = col.cast(pa.timestamp(typ.unit))  # the UTC instant, zone dropped
    floored = 0
    if typ.unit == "ns":
        fl = pc.floor_temporal(col, unit="microsecond")
        floored = int(pc.sum(pc.not_equal(fl, col)).as_py() or 0)
        col = fl
    try:
        return col.cast(TIME_TYPE), floored
    except pa.ArrowInvalid as e:
        raise CohortError(
            f"column '{column}': a time is out of range of timestamp[us]: {e}"
        ) from None


def _as_chunked(col: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])


def check_utf8(
    col: pa.Array | pa.ChunkedArray, subject_id: pa.ChunkedArray, path: str, column: str
) -> None:
    """Raise :class:`EncodingError` if a string (or dictionary-of-string) column holds bytes
    that are not UTF-8. Full validation is one linear pass; the rows are found only then."""
    col = _as_chunked(col)
    bad_rows: list[np.ndarray] = []
    start = 0
    for chunk in col.chunks:
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            bad_rows.append(start + _bad_utf8_rows(chunk))
        start += len(chunk)
    if not bad_rows:
        return
    rows = np.concatenate(bad_rows)
    sid = _as_chunked(subject_id).take(pa.array(rows)).drop_null().to_numpy()
    raise EncodingError(path, column, len(rows), [int(s) for s in np.unique(sid)])


def _bad_utf8_rows(chunk: pa.Array) -> np.ndarray:
    """Rows of one chunk whose value is not UTF-8 (checked per distinct value, in Python)."""
    if not pa.types.is_dictionary(chunk.type):
        chunk = pc.dictionary_encode(chunk.cast(pa.large_binary()))
    else:
        chunk = pa.DictionaryArray.from_arrays(
            chunk.indices, chunk.dictionary.cast(pa.large_binary())
        )
    bad = np.zeros(len(chunk.dictionary), dtype=bool)
    for i, v in enumerate(chunk.dictionary.to_pylist()):
        try:
            v.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            bad[i] = v is not None
    idx = np.asarray(pc.fill_null(chunk.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    return np.flatnonzero((idx >= 0) & bad[np.maximum(idx, 0)])


def normalise_events(
    table: pa.Table, path: str, dictionary_codes: bool = False
) -> tuple[pa.Table, int]:
    """``subject_id``, ``time``, ``code`` of a shard (columns it lacks are left out) in the
    reader's types, and the number of times floored to the microsecond; other columns pass
    through unchanged. A table already in those types is returned as it is (no copy).

    Args:
        table: columns as read from the file.
        path: the file (named by errors).
        dictionary_codes: codes as ``dictionary<int32, string>`` (the ingest reader) rather
            than ``string`` (the validator).

    Raises:
        CohortError: a column of an unusable type, a time out of range; :class:`EncodingError`
            for codes that are not UTF-8.
    """
    floored = 0
    names = table.column_names
    if S.SUBJECT_ID in names:
        col = table[S.SUBJECT_ID]
        if col.type != pa.int64():
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            if not pa.types.is_integer(col.type):
                raise CohortError(f"{path}: column '{S.SUBJECT_ID}' has type {col.type}")
            try:
                col = col.cast(pa.int64())
            except pa.ArrowInvalid as e:
                raise CohortError(f"{path}: column '{S.SUBJECT_ID}': {e}") from None
            table = table.set_column(names.index(S.SUBJECT_ID), S.SUBJECT_ID, col)
    if S.TIME in names:
        col = table[S.TIME]
        if col.type != TIME_TYPE:
            try:
                col, floored = normalise_time(col)
            except CohortError as e:
                raise CohortError(f"{path}: {e}") from None
            table = table.set_column(names.index(S.TIME), S.TIME, col)
    if S.CODE in names:
        col = table[S.CODE]
        want = CODE_DICT_TYPE if dictionary_codes else pa.string()
        if S.SUBJECT_ID in names:
            check_utf8(col, table[S.SUBJECT_ID], path, S.CODE)
        if col.type != want:
            if not _is_str(_value_type(col.type)):
                raise CohortError(f"{path}: column '{S.CODE}' has type {col.type}")
            table = table.set_column(names.index(S.CODE), S.CODE, col.cast(want))
    return table, floored
