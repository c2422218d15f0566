"""Reading a MEDS cohort's files: its data shards, their event columns and the outcome table.

A cohort directory holds ``data/**/*.parquet`` (one row per measurement), optionally
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet``, and ``outcomes.parquet``
(DESIGN.md §1). These readers cast to the MEDS types and name the file and column of anything
they cannot use; :mod:`ehrsurv_dist.data.validate` checks the contents.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.errors import CohortError


def data_files(cohort: str) -> tuple[Any, list[str], list[str]]:
    """(filesystem, Parquet shard paths, other files) under ``COHORT/data``."""
    fs, root = io.resolve(cohort)
    files = io.list_files(fs, io.join(root, S.DATA_SUBDIR))
    parquet = [f for f in files if f.endswith(".parquet")]
    other = [f for f in files if not f.endswith(".parquet")]
    return fs, parquet, other


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


def read_events_table(path: str, fs: Any) -> pa.Table:
    """Read subject_id, time, code of one shard, cast to the MEDS types (time → timestamp[us])."""
    with fs.open_input_file(path) as f:
        t = pq.read_table(f, columns=[S.SUBJECT_ID, S.TIME, S.CODE])
    return pa.table(
        {
            S.SUBJECT_ID: t[S.SUBJECT_ID].cast(pa.int64()),
            S.TIME: t[S.TIME].cast(pa.timestamp("us")),
            S.CODE: t[S.CODE].cast(pa.string()),
        }
    )


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
    return pa.table(
        {
            S.SUBJECT_ID: t[S.SUBJECT_ID].cast(pa.int64()),
            S.OUTCOME_EVENT: t[S.OUTCOME_EVENT].cast(pa.bool_()),
            S.OUTCOME_TIME: t[S.OUTCOME_TIME].cast(pa.timestamp("us")),
        }
    )


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
