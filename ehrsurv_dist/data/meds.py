"""Read and validate a MEDS cohort plus its outcome table (DESIGN.md §1).

A cohort directory holds ``data/**/*.parquet`` (one row per measurement), optionally
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet``, and ``outcomes.parquet``.

:func:`validate_cohort` reads every shard once, file by file (bounded memory), and returns a
:class:`CohortReport`: counts per problem with the file, column and a few example subject ids.
Errors are either *fatal* (a file or column is unusable: nothing can be trusted) or
*subject-level* (those subjects can be dropped and written to a rejects file on request).
Warnings never fail validation. Nothing here prints codes, dates or ages of a subject.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.data.visits import GRANULARITY_US, time_us
from ehrsurv_dist.errors import CohortError

MAX_EXAMPLES = 5  # error messages name at most this many subject ids
MAX_AGE_YEARS = 125.0
US_PER_YEAR = 365.25 * 86_400 * 1_000_000

Severity = Literal["error", "warning"]


@dataclass
class Problem:
    """One kind of problem found in the cohort, aggregated over rows and subjects."""

    severity: Severity
    check: str
    message: str
    file: str | None = None
    column: str | None = None
    count: int = 0
    subjects: list[int] = field(default_factory=list)
    fatal: bool = False  # True: cannot be fixed by dropping subjects

    def line(self) -> str:
        where = ", ".join(
            p for p in (f"file {self.file}" if self.file else "", _col(self.column)) if p
        )
        ex = f"; e.g. subject_id {', '.join(map(str, self.subjects))}" if self.subjects else ""
        n = f" ({self.count})" if self.count else ""
        return (
            f"{self.severity.upper()} [{self.check}]{n} {self.message}"
            + (f" — {where}" if where else "")
            + ex
        )


def _col(c: str | None) -> str:
    return f"column '{c}'" if c else ""


@dataclass
class CohortReport:
    """The result of :func:`validate_cohort`; also what ``ehrsurv validate`` prints."""

    cohort: str
    outcomes: str | None
    files: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_static_rows: int = 0
    n_subjects: int = 0
    n_codes: int = 0
    n_outcome_rows: int = 0
    n_events: int = 0
    problems: list[Problem] = field(default_factory=list)
    # subject id -> reason, for subject-level errors (what a drop would reject)
    bad_subjects: dict[int, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.errors)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, problem: Problem, bad: Iterable[int] = (), reason: str | None = None) -> None:
        self.problems.append(problem)
        for s in bad:
            self.bad_subjects.setdefault(int(s), reason or problem.check)

    def format(self) -> str:
        lines = [
            f"MEDS cohort {self.cohort}",
            f"  files {len(self.files)}  rows {self.n_rows:,}  static rows {self.n_static_rows:,}"
            f"  subjects {self.n_subjects:,}  distinct codes {self.n_codes:,}",
            f"  outcomes {self.outcomes or '(none)'}: rows {self.n_outcome_rows:,}"
            f"  events {self.n_events:,}",
        ]
        if not self.problems:
            lines.append("  no problems found")
        for p in self.problems:
            lines.append("  " + p.line())
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
            + (
                f"; {len(self.bad_subjects):,} subject(s) could be dropped with "
                "data.drop_bad_subjects=true"
                if self.errors and not self.fatal
                else ""
            )
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("bad_subjects")
        d["n_bad_subjects"] = len(self.bad_subjects)
        d["ok"] = self.ok
        return d

    def raise_if_unusable(self, drop_bad_subjects: bool) -> None:
        """Raise :class:`CohortError` unless the cohort is usable (after drops, if allowed)."""
        if self.ok:
            return
        first = self.errors[0].line()
        more = (
            f" (+{len(self.errors) - 1} more; run `ehrsurv validate`)"
            if len(self.errors) > 1
            else ""
        )
        if self.fatal:
            raise CohortError(f"cohort {self.cohort} is unusable: {first}{more}")
        if not drop_bad_subjects:
            raise CohortError(
                f"cohort {self.cohort} has errors in {len(self.bad_subjects):,} subject(s): "
                f"{first}{more}. Fix the data or pass data.drop_bad_subjects=true to drop them "
                "(they are written to the rejects file)."
            )


def data_files(cohort: str) -> tuple[Any, list[str], list[str]]:
    """(filesystem, Parquet shard paths, other files) under ``COHORT/data``."""
    fs, root = io.resolve(cohort)
    files = io.list_files(fs, io.join(root, S.DATA_SUBDIR))
    parquet = [f for f in files if f.endswith(".parquet")]
    other = [f for f in files if not f.endswith(".parquet")]
    return fs, parquet, other


def default_outcomes_path(cohort: str) -> str:
    fs, root = io.resolve(cohort)
    return (
        io.join(root, S.OUTCOMES_FILE)
        if "://" not in cohort
        else cohort.rstrip("/") + "/" + S.OUTCOMES_FILE
    )


# --------------------------------------------------------------------------------------------
# Per-file checks


@dataclass
class _FileSummary:
    """Per-subject aggregates of one shard, kept for the cross-file checks."""

    subjects: np.ndarray  # unique subject ids in the file
    birth: np.ndarray  # earliest MEDS_BIRTH, int64 us, or INT64_MIN sentinel where none
    birth_last: np.ndarray  # latest MEDS_BIRTH (differs from birth: conflicting births)
    first: np.ndarray  # first non-static, non-birth/death event time (us); INT64_MAX if none
    last: np.ndarray  # last such time; INT64_MIN if none


_NO_TIME_MAX = np.iinfo(np.int64).max
_NO_TIME_MIN = np.iinfo(np.int64).min


def _check_schema(rep: CohortReport, path: str, sch: pa.Schema) -> bool:
    """Column presence and types. Returns False if the file cannot be read further."""
    ok = True
    for col in (S.SUBJECT_ID, S.TIME, S.CODE):
        if col not in sch.names:
            rep.add(
                Problem(
                    "error",
                    "missing_column",
                    f"required MEDS column '{col}' is missing "
                    f"(columns present: {', '.join(sch.names) or 'none'})",
                    path,
                    col,
                    fatal=True,
                )
            )
            ok = False
    if not ok:
        return False
    want = meds.DataSchema.schema()
    sid_t, time_t, code_t = (sch.field(c).type for c in (S.SUBJECT_ID, S.TIME, S.CODE))
    if not pa.types.is_integer(sid_t):
        rep.add(
            Problem(
                "error",
                "wrong_dtype",
                f"'{S.SUBJECT_ID}' has type {sid_t}, expected {want.field(S.SUBJECT_ID).type}",
                path,
                S.SUBJECT_ID,
                fatal=True,
            )
        )
        ok = False
    if not pa.types.is_timestamp(time_t):
        rep.add(
            Problem(
                "error",
                "wrong_dtype",
                f"'{S.TIME}' has type {time_t}, expected {want.field(S.TIME).type}"
                + (
                    " (string times: parse them into timestamps in your ETL)"
                    if pa.types.is_string(time_t) or pa.types.is_large_string(time_t)
                    else ""
                ),
                path,
                S.TIME,
                fatal=True,
            )
        )
        ok = False
    elif time_t.unit != "us" or time_t.tz is not None:
        rep.add(
            Problem(
                "warning",
                "time_unit",
                f"'{S.TIME}' is {time_t}; it is read as timestamp[us] without a time zone",
                path,
                S.TIME,
            )
        )
    is_str = (
        pa.types.is_string(code_t)
        or pa.types.is_large_string(code_t)
        or (pa.types.is_dictionary(code_t) and pa.types.is_string(code_t.value_type))
    )
    if not is_str:
        rep.add(
            Problem(
                "error",
                "wrong_dtype",
                f"'{S.CODE}' has type {code_t}, expected string",
                path,
                S.CODE,
                fatal=True,
            )
        )
        ok = False
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


def _check_file(rep: CohortReport, path: str, fs: Any) -> tuple[_FileSummary | None, set[str]]:
    try:
        with fs.open_input_file(path) as f:
            sch = pq.read_schema(f)
    except Exception as e:  # truncated / not Parquet / permission: name the file, no traceback
        rep.add(
            Problem(
                "error",
                "unreadable_file",
                f"cannot read Parquet file: {_short(e)}",
                path,
                fatal=True,
            )
        )
        return None, set()
    if not _check_schema(rep, path, sch):
        return None, set()
    try:
        t = read_events_table(path, fs)
    except Exception as e:
        rep.add(
            Problem("error", "unreadable_file", f"cannot read data: {_short(e)}", path, fatal=True)
        )
        return None, set()

    rep.n_rows += t.num_rows
    sid_null = t[S.SUBJECT_ID].null_count
    if sid_null:
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
        t = t.filter(pc.is_valid(t[S.SUBJECT_ID]))
    sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    code_null = np.asarray(pc.is_null(t[S.CODE]).to_numpy(zero_copy_only=False), dtype=bool)
    if code_null.any():
        bad = np.unique(sid[code_null])
        rep.add(
            Problem(
                "error",
                "null_code",
                f"{int(code_null.sum())} row(s) have a null code",
                path,
                S.CODE,
                count=int(code_null.sum()),
                subjects=bad[:MAX_EXAMPLES].tolist(),
            ),
            bad,
        )
    tu, tnull = time_us(t[S.TIME])
    rep.n_static_rows += int(tnull.sum())
    codes = t[S.CODE]
    is_birth = np.asarray(
        pc.fill_null(pc.equal(codes, S.BIRTH_CODE), False).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    is_death = np.asarray(
        pc.fill_null(pc.equal(codes, S.DEATH_CODE), False).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    distinct = set(pc.unique(codes.drop_null()).to_pylist()) if t.num_rows else set()

    # Contiguity and order within the file (allowed but reported; the reader sorts).
    if len(sid) > 1:
        change = np.flatnonzero(sid[1:] != sid[:-1]) + 1
        run_starts = np.concatenate([[0], change])
        run_subj = sid[run_starts]
        uniq, counts = np.unique(run_subj, return_counts=True)
        split = uniq[counts > 1]
        if len(split):
            rep.add(
                Problem(
                    "warning",
                    "non_contiguous_subject",
                    f"{len(split)} subject(s) are not contiguous in the file "
                    "(MEDS expects contiguous, time-sorted rows; the reader re-groups them)",
                    path,
                    S.SUBJECT_ID,
                    count=len(split),
                    subjects=split[:MAX_EXAMPLES].tolist(),
                )
            )
        timed = ~tnull
        idx = np.flatnonzero(timed)
        s2, t2 = sid[idx], tu[idx]
        back = (s2[1:] == s2[:-1]) & (t2[1:] < t2[:-1])
        if back.any():
            bad = np.unique(s2[1:][back])
            rep.add(
                Problem(
                    "warning",
                    "unsorted_times",
                    f"times are not sorted within {len(bad)} subject(s) (the reader sorts them)",
                    path,
                    S.TIME,
                    count=len(bad),
                    subjects=bad[:MAX_EXAMPLES].tolist(),
                )
            )

    # Per-subject aggregates: birth, first/last event time (non-static, not birth/death).
    uniq, inv = np.unique(sid, return_inverse=True)
    n = len(uniq)
    birth = np.full(n, _NO_TIME_MAX, dtype=np.int64)
    bmask = is_birth & ~tnull
    np.minimum.at(birth, inv[bmask], tu[bmask])
    birth[birth == _NO_TIME_MAX] = _NO_TIME_MIN
    birth_last = np.full(n, _NO_TIME_MIN, dtype=np.int64)
    np.maximum.at(birth_last, inv[bmask], tu[bmask])
    ev = ~tnull & ~is_birth & ~is_death
    first = np.full(n, _NO_TIME_MAX, dtype=np.int64)
    last = np.full(n, _NO_TIME_MIN, dtype=np.int64)
    np.minimum.at(first, inv[ev], tu[ev])
    np.maximum.at(last, inv[ev], tu[ev])
    return _FileSummary(uniq, birth, birth_last, first, last), distinct


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:300]


# --------------------------------------------------------------------------------------------
# Outcomes


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
        raise CohortError(f"cannot read outcome table {path}: {_short(e)}") from None
    for col in (S.SUBJECT_ID, S.OUTCOME_EVENT, S.OUTCOME_TIME):
        if col not in t.column_names:
            raise CohortError(
                f"outcome table {path}: required column '{col}' is missing "
                f"(columns present: {', '.join(t.column_names)})"
            )
    typ = t.schema.field(S.OUTCOME_TIME).type
    if not pa.types.is_timestamp(typ):
        raise CohortError(
            f"outcome table {path}: column '{S.OUTCOME_TIME}' has type {typ}, "
            "expected timestamp[us]"
        )
    etyp = t.schema.field(S.OUTCOME_EVENT).type
    if not (pa.types.is_boolean(etyp) or pa.types.is_integer(etyp)):
        raise CohortError(
            f"outcome table {path}: column '{S.OUTCOME_EVENT}' has type {etyp}, expected bool"
        )
    if not pa.types.is_integer(t.schema.field(S.SUBJECT_ID).type):
        raise CohortError(
            f"outcome table {path}: column '{S.SUBJECT_ID}' has type "
            f"{t.schema.field(S.SUBJECT_ID).type}, expected int64"
        )
    return pa.table(
        {
            S.SUBJECT_ID: t[S.SUBJECT_ID].cast(pa.int64()),
            S.OUTCOME_EVENT: t[S.OUTCOME_EVENT].cast(pa.bool_()),
            S.OUTCOME_TIME: t[S.OUTCOME_TIME].cast(pa.timestamp("us")),
        }
    )


def _check_outcomes(
    rep: CohortReport,
    path: str,
    subjects: np.ndarray,
    first: np.ndarray,
    granularity: str,
) -> None:
    try:
        t = read_outcomes(path)
    except CohortError as e:
        rep.add(Problem("error", "bad_outcomes", str(e), path, fatal=True))
        return
    rep.n_outcome_rows = t.num_rows
    for col in (S.SUBJECT_ID, S.OUTCOME_EVENT, S.OUTCOME_TIME):
        nn = t[col].null_count
        if nn:
            rep.add(
                Problem(
                    "error",
                    "null_outcome",
                    f"{nn} outcome row(s) have a null '{col}'",
                    path,
                    col,
                    count=nn,
                    fatal=col == S.SUBJECT_ID,
                ),
                np.asarray(t.filter(pc.is_null(t[col]))[S.SUBJECT_ID].drop_null().to_numpy()),
            )
    t = t.filter(pc.is_valid(t[S.SUBJECT_ID]))
    osid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    ev = np.asarray(pc.fill_null(t[S.OUTCOME_EVENT], False).to_numpy(zero_copy_only=False))
    rep.n_events = int(ev.sum())
    uniq, counts = np.unique(osid, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        rep.add(
            Problem(
                "error",
                "duplicate_outcome",
                f"{len(dup)} subject(s) have more than one outcome row",
                path,
                S.SUBJECT_ID,
                count=len(dup),
                subjects=dup[:MAX_EXAMPLES].tolist(),
            ),
            dup,
        )
    unknown = np.setdiff1d(uniq, subjects)
    if len(unknown):
        rep.add(
            Problem(
                "error",
                "unknown_outcome_subject",
                f"{len(unknown)} outcome row(s) name subjects that are not in the data",
                path,
                S.SUBJECT_ID,
                count=len(unknown),
                subjects=unknown[:MAX_EXAMPLES].tolist(),
            ),
            unknown,
        )
    missing = np.setdiff1d(subjects, uniq)
    if len(missing):
        rep.add(
            Problem(
                "warning",
                "no_outcome",
                f"{len(missing)} subject(s) have no outcome row: usable for pretraining only",
                path,
                S.SUBJECT_ID,
                count=len(missing),
                subjects=missing[:MAX_EXAMPLES].tolist(),
            )
        )
    # Outcome at or before the first visit: no input history (DESIGN.md §2).
    tu, tnull = time_us(t[S.OUTCOME_TIME])
    pos = np.searchsorted(subjects, osid)
    pos_c = np.minimum(pos, max(len(subjects) - 1, 0))
    known = (len(subjects) > 0) & (subjects[pos_c] == osid) & ~tnull
    g = GRANULARITY_US[granularity]
    f = first[pos_c]
    has_visit = f != _NO_TIME_MAX
    okey = np.floor_divide(tu, g)
    fkey = np.floor_divide(np.where(has_visit, f, 0), g)
    no_hist = known & (
        ~has_visit | np.where(ev, fkey >= okey, fkey > okey)
    )  # event: needs a visit strictly before; censored: at or before
    if no_hist.any():
        bad = np.unique(osid[no_hist])
        rep.add(
            Problem(
                "error",
                "outcome_before_first_visit",
                f"{len(bad)} subject(s) have their outcome before (or, for an event, on the day of)"
                " their first visit: no input history",
                path,
                S.OUTCOME_TIME,
                count=len(bad),
                subjects=bad[:MAX_EXAMPLES].tolist(),
            ),
            bad,
        )


# --------------------------------------------------------------------------------------------


def validate_cohort(
    cohort: str,
    outcomes: str | None = None,
    granularity: str = "day",
    require_outcomes: bool = False,
) -> CohortReport:
    """Check a MEDS cohort and its outcome table; never raises for bad data.

    Args:
        cohort: cohort directory (local path or pyarrow filesystem URI).
        outcomes: outcome table path; default ``COHORT/outcomes.parquet`` when it exists.
        granularity: visit granularity (used for the outcome-before-first-visit check).
        require_outcomes: report a missing outcome table as an error rather than a warning.

    Returns:
        The report; ``report.ok`` is False when there is at least one error.
    """
    if granularity not in GRANULARITY_US:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITY_US)}")
    rep = CohortReport(cohort=cohort, outcomes=None)
    try:
        fs, files, other = data_files(cohort)
    except Exception as e:
        rep.add(
            Problem("error", "unreadable_cohort", f"cannot list {cohort}: {_short(e)}", fatal=True)
        )
        return rep
    rep.files = files
    for o in other:
        rep.add(Problem("warning", "ignored_file", "not a .parquet file; ignored", o))
    if not files:
        rep.add(
            Problem(
                "error",
                "empty_cohort",
                f"no Parquet files under {io.join(cohort, S.DATA_SUBDIR)}",
                fatal=True,
            )
        )
        return rep

    summaries: list[_FileSummary] = []
    codes: set[str] = set()
    for path in files:
        summ, distinct = _check_file(rep, path, fs)
        if summ is not None:
            summaries.append(summ)
            codes |= distinct
    rep.n_codes = len(codes - set(S.NON_INPUT_CODES))
    if not summaries:
        return rep

    all_sid = np.concatenate([s.subjects for s in summaries])
    subjects, inv, nfiles = np.unique(all_sid, return_inverse=True, return_counts=True)
    rep.n_subjects = len(subjects)
    if rep.n_subjects == 0:
        rep.add(Problem("error", "empty_cohort", "the cohort has no rows", fatal=True))
        return rep
    # Birth = the earliest MEDS_BIRTH over every shard (as the reader uses it, flatten.py).
    birth = np.full(len(subjects), _NO_TIME_MAX, dtype=np.int64)
    birth_last = np.full(len(subjects), _NO_TIME_MIN, dtype=np.int64)
    first = np.full(len(subjects), _NO_TIME_MAX, dtype=np.int64)
    last = np.full(len(subjects), _NO_TIME_MIN, dtype=np.int64)
    births = np.concatenate([s.birth for s in summaries])
    np.minimum.at(birth, inv, np.where(births == _NO_TIME_MIN, _NO_TIME_MAX, births))
    birth[birth == _NO_TIME_MAX] = _NO_TIME_MIN
    np.maximum.at(birth_last, inv, np.concatenate([s.birth_last for s in summaries]))
    np.minimum.at(first, inv, np.concatenate([s.first for s in summaries]))
    np.maximum.at(last, inv, np.concatenate([s.last for s in summaries]))

    spans = subjects[nfiles > 1]
    if len(spans):
        rep.add(
            Problem(
                "warning",
                "subject_spans_shards",
                f"{len(spans)} subject(s) appear in more than one shard "
                "(MEDS expects one shard per subject; the reader merges them)",
                None,
                S.SUBJECT_ID,
                count=len(spans),
                subjects=spans[:MAX_EXAMPLES].tolist(),
            )
        )
    no_birth = subjects[birth == _NO_TIME_MIN]
    if len(no_birth):
        rep.add(
            Problem(
                "error",
                "no_birth",
                f"{len(no_birth)} subject(s) have no {S.BIRTH_CODE} event with a time "
                "(age cannot be computed)",
                None,
                S.CODE,
                count=len(no_birth),
                subjects=no_birth[:MAX_EXAMPLES].tolist(),
            ),
            no_birth,
        )
    hb = birth != _NO_TIME_MIN
    conflict = subjects[hb & (birth_last != birth)]
    if len(conflict):
        rep.add(
            Problem(
                "error",
                "conflicting_birth",
                f"{len(conflict)} subject(s) have {S.BIRTH_CODE} events at different times "
                "(in one shard or across shards): the age is ambiguous",
                None,
                S.TIME,
                count=len(conflict),
                subjects=conflict[:MAX_EXAMPLES].tolist(),
            ),
            conflict,
        )
    has_ev = first != _NO_TIME_MAX
    neg = subjects[hb & has_ev & (first < birth)]
    if len(neg):
        rep.add(
            Problem(
                "error",
                "negative_age",
                f"{len(neg)} subject(s) have events before {S.BIRTH_CODE} (age < 0)",
                None,
                S.TIME,
                count=len(neg),
                subjects=neg[:MAX_EXAMPLES].tolist(),
            ),
            neg,
        )
    old = subjects[hb & has_ev & ((last - birth) / US_PER_YEAR > MAX_AGE_YEARS)]
    if len(old):
        rep.add(
            Problem(
                "error",
                "age_over_125",
                f"{len(old)} subject(s) have events at an age over {MAX_AGE_YEARS:g} years",
                None,
                S.TIME,
                count=len(old),
                subjects=old[:MAX_EXAMPLES].tolist(),
            ),
            old,
        )
    novis = subjects[~has_ev]
    if len(novis):
        rep.add(
            Problem(
                "warning",
                "no_visits",
                f"{len(novis)} subject(s) have no timed events besides birth/death: no visits",
                None,
                S.TIME,
                count=len(novis),
                subjects=novis[:MAX_EXAMPLES].tolist(),
            )
        )

    opath = outcomes or default_outcomes_path(cohort)
    ofs, op = io.resolve(opath)
    if io.exists(ofs, op):
        rep.outcomes = opath
        _check_outcomes(rep, opath, subjects, first, granularity)
    elif outcomes is not None or require_outcomes:
        rep.add(
            Problem("error", "no_outcomes", f"outcome table not found: {opath}", opath, fatal=True)
        )
    else:
        rep.add(
            Problem(
                "warning",
                "no_outcomes",
                f"no outcome table at {opath}: the cohort can be used for pretraining only",
                opath,
            )
        )
    return rep
