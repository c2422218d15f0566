"""The per-shard checks of the MEDS validator: schema, rows, order, and per-subject aggregates.

Each shard is read once (bounded memory) by :func:`check_file`, which depends on nothing but
the shard: shards can be checked in any order, in parallel, in other processes. Its result, a
:class:`FileCheck` (picklable), holds the shard's problems and what the cross-shard checks of
:mod:`ehrsurv_dist.data.validate` need (a :class:`FileSummary`, the distinct codes); merged in
file order (:meth:`FileCheck.merge_into`) the results give the report a serial scan gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.meds_read import read_events, short_error
from ehrsurv_dist.data.normalize import EncodingError, check_utf8, schema_changes
from ehrsurv_dist.data.validation_report import MAX_EXAMPLES, CohortReport, Problem

NO_TIME_MAX = np.iinfo(np.int64).max  # "no time yet" of a running minimum
NO_TIME_MIN = np.iinfo(np.int64).min  # "no time yet" of a running maximum


@dataclass
class FileSummary:
    """Per-subject aggregates of one shard, kept for the cross-file checks."""

    subjects: np.ndarray  # unique subject ids in the file
    birth: np.ndarray  # earliest MEDS_BIRTH, int64 us, or INT64_MIN sentinel where none
    birth_last: np.ndarray  # latest MEDS_BIRTH (differs from birth: conflicting births)
    first: np.ndarray  # first non-static, non-birth/death event time (us); INT64_MAX if none
    last: np.ndarray  # last such time; INT64_MIN if none


@dataclass
class FileCheck:
    """What checking one shard found (:func:`check_file`).

    Attributes:
        path: the shard.
        problems: its problems, in the order the checks found them.
        bad_subjects: subject id -> reason, for its subject-level errors (in that order).
        n_rows: rows read (0 when unreadable).
        n_static_rows: rows with a null time.
        summary: per-subject aggregates; None when the file cannot be used.
        codes: its distinct codes.
    """

    path: str
    problems: list[Problem]
    bad_subjects: dict[int, str]
    n_rows: int
    n_static_rows: int
    summary: FileSummary | None
    codes: set[str]

    def merge_into(self, rep: CohortReport) -> None:
        """Add this shard's problems and counts to ``rep`` (merging the shards in file order
        gives the report of a serial scan)."""
        rep.problems.extend(self.problems)
        for s, reason in self.bad_subjects.items():
            rep.bad_subjects.setdefault(s, reason)
        rep.n_rows += self.n_rows
        rep.n_static_rows += self.n_static_rows


def check_file(path: str, fs: Any) -> FileCheck:
    """Check one shard and summarise it (reads only this shard; never raises for bad data)."""
    rep = CohortReport(cohort="", outcomes=None)
    summ, codes = _check_file(rep, path, fs)
    # The shard's Arrow buffers are freed now, but Arrow's allocator keeps their pages for
    # reuse: checked one after another (the serial scan), a cohort of 20 shards peaked ~60 MB
    # higher than with the pages handed back after each (bench scale, docs/benchmarks.md).
    pa.default_memory_pool().release_unused()
    return FileCheck(
        path, rep.problems, rep.bad_subjects, rep.n_rows, rep.n_static_rows, summ, codes
    )


def _check_file(rep: CohortReport, path: str, fs: Any) -> tuple[FileSummary | None, set[str]]:
    """Check one shard into ``rep``: its summary (None when the file cannot be used) and its
    distinct codes."""
    t = _read_checked(rep, path, fs)
    if t is None:
        return None, set()
    rep.n_rows += t.num_rows
    t = _drop_null_subjects(rep, path, t)
    sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    _check_null_codes(rep, path, t, sid)
    _check_empty_codes(rep, path, t, sid)
    tu, tnull = time_us(t[S.TIME])
    rep.n_static_rows += int(tnull.sum())
    codes = t[S.CODE]
    distinct = set(pc.unique(codes.drop_null()).to_pylist()) if t.num_rows else set()
    if len(sid) > 1:
        _check_order(rep, path, sid, tu, tnull)
    return _summarise(
        sid, tu, tnull, _is_code(codes, S.BIRTH_CODE), _is_code(codes, S.DEATH_CODE)
    ), distinct


def _read_checked(rep: CohortReport, path: str, fs: Any) -> pa.Table | None:
    """The shard's event columns in the reader's types (:mod:`normalize`), or None (reported)
    when its schema or data are unusable; what was normalised is reported for the file."""
    try:
        with fs.open_input_file(path) as f:
            sch = pq.read_schema(f)
    except Exception as e:  # truncated / not Parquet / permission: name the file, no traceback
        rep.add_fatal("unreadable_file", f"cannot read Parquet file: {short_error(e)}", path)
        return None
    if not check_schema(rep, path, sch):
        return None
    try:
        t, floored = read_events(path, fs)
        if S.TEXT_VALUE in sch.names and _is_text(sch.field(S.TEXT_VALUE).type):
            _check_text_utf8(path, fs, t)
    except EncodingError as e:
        rep.add(
            Problem(
                "error",
                "invalid_utf8",
                e.message(),
                path,
                e.column,
                count=e.rows,
                subjects=e.subjects[:MAX_EXAMPLES],
                fatal=True,
            )
        )
        return None
    except Exception as e:
        rep.add_fatal("unreadable_file", f"cannot read data: {short_error(e)}", path)
        return None
    changes = schema_changes(sch)
    if floored:
        changes.append(
            f"{floored:,} time(s) with a sub-microsecond part floored to the microsecond"
        )
    if changes:
        rep.add(
            Problem(
                "warning",
                "normalised",
                "read as the MEDS types: " + "; ".join(changes),
                path,
                count=floored,
            )
        )
    return t


def _is_text(t: pa.DataType) -> bool:
    vt = t.value_type if pa.types.is_dictionary(t) else t
    return bool(pa.types.is_string(vt) or pa.types.is_large_string(vt))


def _check_text_utf8(path: str, fs: Any, events: pa.Table) -> None:
    """``text_value`` is never a model input, but bytes that are not UTF-8 are an encoding
    bug of the ETL: :class:`EncodingError` like a code's (rows align with ``events``)."""
    with fs.open_input_file(path) as f:
        text = pq.read_table(f, columns=[S.TEXT_VALUE])[S.TEXT_VALUE]
    check_utf8(text, events[S.SUBJECT_ID], path, S.TEXT_VALUE)


def check_schema(rep: CohortReport, path: str, sch: pa.Schema) -> bool:
    """Column presence and types. Returns False if the file cannot be read further."""
    missing = [col for col in (S.SUBJECT_ID, S.TIME, S.CODE) if col not in sch.names]
    for col in missing:
        rep.add_fatal(
            "missing_column",
            f"required MEDS column '{col}' is missing "
            f"(columns present: {', '.join(sch.names) or 'none'})",
            path,
            col,
        )
    if missing:
        return False
    ok = _check_subject_type(rep, path, sch)
    ok = _check_time_type(rep, path, sch) and ok
    ok = _check_code_type(rep, path, sch) and ok
    if S.NUMERIC_VALUE in sch.names and not pa.types.is_floating(sch.field(S.NUMERIC_VALUE).type):
        rep.add(
            Problem(
                "warning",
                "wrong_dtype",
                f"'{S.NUMERIC_VALUE}' has type {sch.field(S.NUMERIC_VALUE).type}, expected float32;"
                " it is not used as a model input",
                path,
                S.NUMERIC_VALUE,
            )
        )
    return ok


def _check_subject_type(rep: CohortReport, path: str, sch: pa.Schema) -> bool:
    sid_t = sch.field(S.SUBJECT_ID).type
    if pa.types.is_dictionary(sid_t):
        sid_t = sid_t.value_type
    if pa.types.is_integer(sid_t):
        return True
    want = meds.DataSchema.schema().field(S.SUBJECT_ID).type
    rep.add_fatal(
        "wrong_dtype", f"'{S.SUBJECT_ID}' has type {sid_t}, expected {want}", path, S.SUBJECT_ID
    )
    return False


def _check_time_type(rep: CohortReport, path: str, sch: pa.Schema) -> bool:
    """A timestamp of any unit and zone (normalised: :mod:`normalize`); anything else is
    fatal."""
    time_t = sch.field(S.TIME).type
    if pa.types.is_dictionary(time_t):
        time_t = time_t.value_type
    if not pa.types.is_timestamp(time_t):
        hint = (
            " (string times: parse them into timestamps in your ETL)"
            if pa.types.is_string(time_t) or pa.types.is_large_string(time_t)
            else ""
        )
        want = meds.DataSchema.schema().field(S.TIME).type
        rep.add_fatal(
            "wrong_dtype", f"'{S.TIME}' has type {time_t}, expected {want}{hint}", path, S.TIME
        )
        return False
    return True


def _check_code_type(rep: CohortReport, path: str, sch: pa.Schema) -> bool:
    code_t = sch.field(S.CODE).type
    is_str = _is_text(code_t)
    if not is_str:
        rep.add_fatal("wrong_dtype", f"'{S.CODE}' has type {code_t}, expected string", path, S.CODE)
    return is_str


def _drop_null_subjects(rep: CohortReport, path: str, t: pa.Table) -> pa.Table:
    """``t`` without rows whose subject_id is null (a fatal error when there are any)."""
    sid_null = t[S.SUBJECT_ID].null_count
    if not sid_null:
        return t
    rep.add(
        Problem(
            "error",
            "null_subject_id",
            f"{sid_null} row(s) have a null subject_id",
            path,
            S.SUBJECT_ID,
            count=sid_null,
            fatal=True,
        )
    )
    return t.filter(pc.is_valid(t[S.SUBJECT_ID]))


def _check_null_codes(rep: CohortReport, path: str, t: pa.Table, sid: np.ndarray) -> None:
    code_null = np.asarray(pc.is_null(t[S.CODE]).to_numpy(zero_copy_only=False), dtype=bool)
    rep.add_subjects(
        "error",
        "null_code",
        f"{int(code_null.sum())} row(s) have a null code",
        np.unique(sid[code_null]),
        path,
        S.CODE,
        count=int(code_null.sum()),
    )


def _check_empty_codes(rep: CohortReport, path: str, t: pa.Table, sid: np.ndarray) -> None:
    """Empty or whitespace-only codes would become tokens without a word: refused (an error
    naming the subjects; ``data.drop_bad_subjects=true`` drops them)."""
    codes = t[S.CODE]
    if not t.num_rows:
        return
    empty = np.asarray(
        pc.fill_null(pc.equal(pc.utf8_trim_whitespace(codes), ""), False).to_numpy(
            zero_copy_only=False
        ),
        dtype=bool,
    )
    rep.add_subjects(
        "error",
        "empty_code",
        f"{int(empty.sum())} row(s) have an empty or whitespace-only code",
        np.unique(sid[empty]),
        path,
        S.CODE,
        count=int(empty.sum()),
    )


def _check_order(
    rep: CohortReport, path: str, sid: np.ndarray, tu: np.ndarray, tnull: np.ndarray
) -> None:
    """Contiguity and time order within the file (allowed but reported; the reader sorts)."""
    change = np.flatnonzero(sid[1:] != sid[:-1]) + 1
    run_subj = sid[np.concatenate([[0], change])]
    uniq, counts = np.unique(run_subj, return_counts=True)
    split = uniq[counts > 1]
    rep.add_subjects(
        "warning",
        "non_contiguous_subject",
        f"{len(split)} subject(s) are not contiguous in the file "
        "(MEDS expects contiguous, time-sorted rows; the reader re-groups them)",
        split,
        path,
        S.SUBJECT_ID,
    )
    idx = np.flatnonzero(~tnull)
    s2, t2 = sid[idx], tu[idx]
    back = (s2[1:] == s2[:-1]) & (t2[1:] < t2[:-1])
    bad = np.unique(s2[1:][back])
    rep.add_subjects(
        "warning",
        "unsorted_times",
        f"times are not sorted within {len(bad)} subject(s) (the reader sorts them)",
        bad,
        path,
        S.TIME,
    )


def _is_code(codes: pa.ChunkedArray, code: str) -> np.ndarray:
    """bool [rows]: the row's code is ``code`` (null codes are not)."""
    return np.asarray(
        pc.fill_null(pc.equal(codes, code), False).to_numpy(zero_copy_only=False), dtype=bool
    )


def _summarise(
    sid: np.ndarray, tu: np.ndarray, tnull: np.ndarray, is_birth: np.ndarray, is_death: np.ndarray
) -> FileSummary:
    """Per-subject aggregates: birth, first/last event time (non-static, not birth/death)."""
    uniq, inv = np.unique(sid, return_inverse=True)
    n = len(uniq)
    birth = np.full(n, NO_TIME_MAX, dtype=np.int64)
    bmask = is_birth & ~tnull
    np.minimum.at(birth, inv[bmask], tu[bmask])
    birth[birth == NO_TIME_MAX] = NO_TIME_MIN
    birth_last = np.full(n, NO_TIME_MIN, dtype=np.int64)
    np.maximum.at(birth_last, inv[bmask], tu[bmask])
    ev = ~tnull & ~is_birth & ~is_death
    first = np.full(n, NO_TIME_MAX, dtype=np.int64)
    last = np.full(n, NO_TIME_MIN, dtype=np.int64)
    np.minimum.at(first, inv[ev], tu[ev])
    np.maximum.at(last, inv[ev], tu[ev])
    return FileSummary(uniq, birth, birth_last, first, last)
