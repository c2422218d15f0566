"""Reading a MEDS cohort's files: its data shards, their event columns and the outcome table.

A cohort directory holds ``data/**/*.parquet`` (one row per measurement), optionally
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet``, and ``outcomes.parquet``
(docs/design.md §1). These readers cast to the MEDS types and name the file and column of anything
they cannot use; :mod:`ehrsurv_dist.data.validate` checks the contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.data.normalize import normalise_events, normalise_time
from ehrsurv_dist.errors import CohortError

MAX_NAMED = 5  # subjects an error message names


@dataclass(frozen=True)
class DataFiles:
    """The files under ``COHORT/data``: what the reader takes and what it ignores.

    Attributes:
        fs: the filesystem.
        parquet: the shards (``*.parquet``, not hidden), sorted.
        other: files that are not ``*.parquet`` (ignored).
        hidden: files whose name, or a folder's name below ``data/``, starts with ``.`` or
            ``_`` (temporary copies, ``_SUCCESS``, ``_metadata``, ...): ignored, as Spark,
            Hive and pyarrow datasets do.
    """

    fs: Any
    parquet: list[str]
    other: list[str]
    hidden: list[str]


def is_hidden(path: str, root: str) -> bool:
    """A path below ``root`` with a part that starts with ``.`` or ``_``."""
    rel = path[len(root.rstrip("/")) :].strip("/")
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def list_data_files(cohort: str) -> DataFiles:
    """The shards under ``COHORT/data`` and the files ignored (see :class:`DataFiles`)."""
    fs, root = io.resolve(cohort)
    data = io.join(root, S.DATA_SUBDIR)
    files = io.list_files(fs, data)
    hidden = [f for f in files if is_hidden(f, data)]
    shown = [f for f in files if not is_hidden(f, data)]
    parquet = [f for f in shown if f.endswith(".parquet")]
    other = [f for f in shown if not f.endswith(".parquet")]
    return DataFiles(fs, parquet, other, hidden)


def data_files(cohort: str) -> tuple[Any, list[str], list[str]]:
    """(filesystem, Parquet shard paths, ignored files) under ``COHORT/data``: hidden files
    and files that are not ``*.parquet`` are never read (:func:`list_data_files`)."""
    d = list_data_files(cohort)
    return d.fs, d.parquet, sorted(d.other + d.hidden)


def default_outcomes_path(cohort: str) -> str:
    """``COHORT/outcomes.parquet`` (a URI keeps its scheme)."""
    fs, root = io.resolve(cohort)
    return (
        io.join(root, S.OUTCOMES_FILE)
        if "://" not in cohort
        else cohort.rstrip("/") + "/" + S.OUTCOMES_FILE
    )


def short_error(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for a one-line report."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


def read_events(path: str, fs: Any, numeric: bool = False) -> tuple[pa.Table, int]:
    """subject_id, time, code of one shard in the reader's types (:mod:`normalize`), and the
    number of times floored to the microsecond; with ``numeric`` also ``numeric_value``
    (:func:`numeric_values`).

    Raises:
        CohortError: an unusable type, a time out of range, codes that are not UTF-8.
    """
    if not numeric:  # the validator's and load_cohort's read, as it always was
        with fs.open_input_file(path) as f:
            t = pq.read_table(f, columns=[S.SUBJECT_ID, S.TIME, S.CODE])
        return normalise_events(t, path)
    with fs.open_input_file(path) as f:
        present = S.NUMERIC_VALUE in pq.read_schema(f).names
    cols = [S.SUBJECT_ID, S.TIME, S.CODE] + ([S.NUMERIC_VALUE] if present else [])
    with fs.open_input_file(path) as f:
        t = pq.read_table(f, columns=cols)
    t, floored = normalise_events(t, path)
    return numeric_values(t, path, present), floored


def read_events_table(path: str, fs: Any, numeric: bool = False) -> pa.Table:
    """subject_id int64, time timestamp[us], code string (and with ``numeric``,
    numeric_value float32) of one shard (:func:`read_events`)."""
    return read_events(path, fs, numeric)[0]


def numeric_values(t: pa.Table, path: str, present: bool) -> pa.Table:
    """``t`` with ``numeric_value`` as float32 (MEDS), or an all-null one appended where the
    file has none (``present`` False).

    Raises:
        CohortError: the column is not numeric (naming the file and column).
    """
    if not present:
        return t.append_column(S.NUMERIC_VALUE, pa.nulls(t.num_rows, pa.float32()))
    col = t[S.NUMERIC_VALUE]
    if col.type == pa.float32():
        return t
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        raise CohortError(
            f"{path}: column '{S.NUMERIC_VALUE}' has type {col.type}, expected float32"
        )
    i = t.schema.get_field_index(S.NUMERIC_VALUE)
    return t.set_column(i, S.NUMERIC_VALUE, col.cast(pa.float32(), safe=False))


def read_outcomes(path: str) -> pa.Table:
    """Read the outcome table (subject_id int64, event bool, time timestamp[us]).

    Raises:
        CohortError: unreadable file, missing columns or wrong types (naming file and column).
    """
    fs, p = io.resolve(path)
    if not io.exists(fs, p):
        raise CohortError(f"outcome table not found: {path}")
    try:
        with fs.open_input_file(p) as f:
            t = pq.read_table(f)
    except Exception as e:
        raise CohortError(f"cannot read outcome table {path}: {short_error(e)}") from None
    _check_outcome_columns(t.schema, path)
    sid = t[S.SUBJECT_ID].cast(pa.int64())
    try:
        otime, _ = normalise_time(t[S.OUTCOME_TIME], S.OUTCOME_TIME)
    except CohortError as e:
        raise CohortError(f"outcome table {path}: {e}") from None
    return pa.table(
        {
            S.SUBJECT_ID: sid,
            S.OUTCOME_EVENT: _event_column(t[S.OUTCOME_EVENT], sid, path),
            S.OUTCOME_TIME: otime,
        }
    )


def _event_column(ev: pa.ChunkedArray, sid: pa.ChunkedArray, path: str) -> pa.ChunkedArray:
    """``event`` as bool: an integer column may hold 0 and 1 only (another value, e.g. 2 for a
    competing risk, is refused naming its subjects: competing risks are not modelled)."""
    if pa.types.is_boolean(ev.type):
        return ev
    bad = pc.fill_null(pc.invert(pc.is_in(ev, pa.array([0, 1], ev.type))), False)
    n = int(pc.sum(bad).as_py() or 0)
    if n:
        vals = sorted(set(ev.filter(bad).to_pylist()))[:MAX_NAMED]
        ids = np.unique(sid.filter(bad).drop_null().to_numpy())[:MAX_NAMED]
        raise CohortError(
            f"outcome table {path}: column '{S.OUTCOME_EVENT}': {n} row(s) have values other "
            f"than 0/1/true/false ({', '.join(map(str, vals))}; subject_id "
            f"{', '.join(map(str, ids.tolist()))}): competing risks are not supported; "
            "write event=1 for the event of interest and 0 (censored) otherwise"
        )
    return ev.cast(pa.bool_())


def _check_outcome_columns(sch: pa.Schema, path: str) -> None:
    """Raise :class:`CohortError` naming the first missing or mistyped outcome column."""
    for col in (S.SUBJECT_ID, S.OUTCOME_EVENT, S.OUTCOME_TIME):
        if col not in sch.names:
            raise CohortError(
                f"outcome table {path}: required column '{col}' is missing "
                f"(columns present: {', '.join(sch.names)})"
            )
    typ = sch.field(S.OUTCOME_TIME).type
    if not pa.types.is_timestamp(typ):
        raise CohortError(
            f"outcome table {path}: column '{S.OUTCOME_TIME}' has type {typ}, "
            "expected timestamp[us]"
        )
    etyp = sch.field(S.OUTCOME_EVENT).type
    if not (pa.types.is_boolean(etyp) or pa.types.is_integer(etyp)):
        raise CohortError(
            f"outcome table {path}: column '{S.OUTCOME_EVENT}' has type {etyp}, expected bool"
        )
    if not pa.types.is_integer(sch.field(S.SUBJECT_ID).type):
        raise CohortError(
            f"outcome table {path}: column '{S.SUBJECT_ID}' has type "
            f"{sch.field(S.SUBJECT_ID).type}, expected int64"
        )
