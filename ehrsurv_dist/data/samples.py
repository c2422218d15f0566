"""Samples of a calendar-axis task: prediction times, outcomes (event codes or an outcome
table), the as-of cut.

On the calendar axis (the calendar-axis contract, docs/design.md) a *sample* is a pair
(subject, prediction time). Prediction times come from MEDS label files (:func:`read_labels`) or
from a rule of the :class:`TaskSpec` (every distinct time of a code; a fixed offset after the
subject's first record). For each sample:

- **Outcome.** The first record strictly after the prediction time whose code matches
  ``task.event_codes`` is the event; otherwise the sample is censored at the subject's last timed
  record; always censored at ``prediction_time + horizon_days``. ``time_days`` is the (float)
  number of days from the prediction time to the event or censoring, capped at the horizon;
  ``event`` says the event happened within the horizon.
- **Outcome from a table** (``task.outcomes``; ``event_codes`` are then ignored): a subject's
  row (``event``, ``time`` = t) gives every sample of the subject its outcome: an event at
  ``t <= prediction time`` makes the sample not at risk (excluded); an event after it gives
  ``time_days = min(t - pt, horizon)``, ``event = t - pt <= horizon``; a censoring at
  ``t < prediction time`` excludes the sample, otherwise ``time_days = min(t - pt, horizon)``
  and no event. A subject without a row (or whose row has a null time; the first row wins
  when there are several, as on the visit axis) has its samples excluded.
- **Input (the as-of cut).** The subject's rows with ``time <= prediction_time`` (inclusive, as in
  MEDS), grouped into visits exactly as on the visit axis by
  :func:`ehrsurv_dist.data.visits.group_visits` (``MEDS_BIRTH`` sets the age, ``MEDS_BIRTH`` and
  ``MEDS_DEATH`` are never tokens, static rows form no visit). A day-granularity visit may
  straddle the prediction time: only its rows at or before the prediction time are input.
- **Exclusions**, each with a reason (the first that applies wins, in this order): no
  ``MEDS_BIRTH``; prediction time before birth; prediction time after the subject's last record;
  (outcome table) no outcome row; an event at or before the prediction time (not at risk);
  (outcome table) censored before the prediction time; history (prediction time minus
  the first timed record other than ``MEDS_BIRTH``) shorter than ``min_history_days``; no input
  visit at or before the prediction time.

"First record" means the earliest timed row whose code is not ``MEDS_BIRTH`` (the start of the
recorded care: with birth counted, ``min_history_days`` would test the age); "last record" is the
latest timed row of any code (a ``MEDS_DEATH`` row included).

Everything is vectorised over a unit of complete subjects; the (subject, visit key) sort is
skipped when rows already come in order (the MEDS norm). ``tests/oracles/samples_reference.py``
states the same rules sample by sample, and a randomised test keeps the two equal. Pure
numpy/pyarrow; no Ray.

Shape vocabulary: ``R`` event rows, ``K`` distinct codes, ``N`` subjects, ``S`` samples, ``L``
label rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_DAY, US_PER_YEAR
from ehrsurv_dist.data import io
from ehrsurv_dist.data.events import EventArrays, OutcomeArrays, lookup, sorted_unique, time_us
from ehrsurv_dist.data.visits import (
    GRANULARITY_US,
    SubjectVisits,
    group_token_rows,
    input_code_classes,
    token_rows,
)
from ehrsurv_dist.errors import ConfigError, LabelError, require
from ehrsurv_dist.ragged import concat_ranges

FAMILY_SUFFIX = "//*"  # "PREFIX//*" matches every code that starts with "PREFIX//"

# Reasons written to the rejects file (one per excluded sample; the first that applies wins).
REJECT_NO_BIRTH = "no_birth: no MEDS_BIRTH event, age unknown"
REJECT_BEFORE_BIRTH = "before_birth: prediction time before MEDS_BIRTH"
REJECT_AFTER_LAST = "after_last_record: prediction time after the subject's last record"
REJECT_NO_OUTCOME_ROW = "no_outcome_row: the subject has no row in task.outcomes"
REJECT_NOT_AT_RISK = "not_at_risk: event code at or before the prediction time"
REJECT_CENSORED_BEFORE = "censored_before: censored before the prediction time (task.outcomes)"
REJECT_SHORT_HISTORY = "short_history: history shorter than min_history_days"
REJECT_NO_INPUT = "no_input_visit: no visit at or before the prediction time"
REASONS: tuple[str, ...] = (
    REJECT_NO_BIRTH,
    REJECT_BEFORE_BIRTH,
    REJECT_AFTER_LAST,
    REJECT_NO_OUTCOME_ROW,
    REJECT_NOT_AT_RISK,
    REJECT_CENSORED_BEFORE,
    REJECT_SHORT_HISTORY,
    REJECT_NO_INPUT,
)
_REASONS = np.array(REASONS, dtype=object)
_R = {r: i for i, r in enumerate(REASONS)}  # reason -> its index in REASONS
_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min
_NOT_INPUT = 8  # make_samples' code class of MEDS_BIRTH / MEDS_DEATH (no input token)
_MAX_NAMED = 5  # offending subjects named in an error message


# --- the task ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """A calendar-axis task: where the prediction times come from and what the event is.

    Attributes:
        event_codes: codes whose first occurrence after the prediction time is the event; each a
            code or ``PREFIX//*`` (every code starting with ``PREFIX//``). Ignored when
            ``outcomes`` is set.
        horizon_days: follow-up after the prediction time (> 0); later events are censored.
        labels: path of a MEDS label file or a folder of Parquet label files.
        at_code: a code (or ``PREFIX//*``): every distinct time it occurs is a prediction time.
        days_after_first_record: one prediction time per subject, this many days after the
            subject's first timed record (``MEDS_BIRTH`` not counted).
        min_history_days: samples whose history (prediction time minus the first record) is
            shorter are excluded.
        outcomes: path of an outcome table (``subject_id``, ``event``, ``time``): the outcome
            of every sample comes from its subject's row instead of ``event_codes``.

    Exactly one of ``labels``, ``at_code`` and ``days_after_first_record`` is set.
    """

    event_codes: tuple[str, ...]
    horizon_days: float
    labels: str | None = None
    at_code: str | None = None
    days_after_first_record: float | None = None
    min_history_days: float = 0.0
    outcomes: str | None = None

    def __post_init__(self) -> None:
        codes = self.event_codes
        if isinstance(codes, str):
            codes = (codes,)
        object.__setattr__(self, "event_codes", tuple(codes))
        require(len(self.event_codes) > 0, "event_codes", "needs at least one code")
        for c in self.event_codes:
            _check_pattern(c, "event_codes")
        if self.at_code is not None:
            _check_pattern(self.at_code, "at_code")
        require(
            bool(np.isfinite(self.horizon_days)) and self.horizon_days > 0,
            "horizon_days",
            f"must be > 0, got {self.horizon_days}",
        )
        require(
            bool(np.isfinite(self.min_history_days)) and self.min_history_days >= 0,
            "min_history_days",
            f"must be >= 0, got {self.min_history_days}",
        )
        if self.days_after_first_record is not None:
            d = self.days_after_first_record
            require(
                bool(np.isfinite(d)) and d >= 0,
                "days_after_first_record",
                f"must be >= 0, got {d}",
            )
        require(
            self.outcomes is None or (isinstance(self.outcomes, str) and self.outcomes != ""),
            "outcomes",
            "must be a path (or null: outcomes from event_codes)",
        )
        n = sum(x is not None for x in (self.labels, self.at_code, self.days_after_first_record))
        require(
            n == 1,
            "labels",
            f"set exactly one source of prediction times (labels, at_code, "
            f"days_after_first_record), got {n}",
        )


def _check_pattern(code: Any, key: str) -> None:
    require(isinstance(code, str) and code != "", key, f"codes must be non-empty strings: {code!r}")
    star = code.find("*")
    require(
        star < 0 or (code.endswith(FAMILY_SUFFIX) and star == len(code) - 1 and len(code) > 3),
        key,
        f"{code!r}: '*' is only allowed as 'PREFIX//*' (every code starting with 'PREFIX//')",
    )


def event_code_mask(event_codes: tuple[str, ...] | list[str], dictionary: pa.Array) -> np.ndarray:
    """bool [K]: which codes of ``dictionary`` (string array [K]) match any of ``event_codes``
    (a code, or ``PREFIX//*`` for every code that starts with ``PREFIX//``)."""
    dictionary = dictionary.cast(pa.string())
    exact = [c for c in event_codes if not c.endswith(FAMILY_SUFFIX)]
    out = np.zeros(len(dictionary), dtype=bool)
    if exact and len(dictionary):
        hit = pc.is_in(dictionary, value_set=pa.array(exact, pa.string()))
        out |= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    for c in event_codes:
        if c.endswith(FAMILY_SUFFIX) and len(dictionary):
            hit = pc.starts_with(dictionary, c[:-1])
            out |= np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)
    return out


def check_codes_exist(
    patterns: tuple[str, ...] | list[str], cohort_codes: pa.Array | list[str], key: str
) -> None:
    """Raise when a code or pattern matches no code of the cohort.

    Args:
        patterns: codes or ``PREFIX//*`` patterns (``task.event_codes``, ``[task.at_code]``).
        cohort_codes: every distinct code of the cohort (string array or list).
        key: the dotted config key to name (``"task.event_codes"``).

    Raises:
        ConfigError: one line naming the key and the patterns that match nothing.
    """
    codes = cohort_codes if isinstance(cohort_codes, pa.Array) else pa.array(cohort_codes)
    codes = codes.cast(pa.string())
    missing = [p for p in patterns if not bool(event_code_mask([p], codes).any())]
    if missing:
        shown = ", ".join(repr(m) for m in missing)
        raise ConfigError(
            key, f"{shown} match{'es' if len(missing) == 1 else ''} no code of the cohort"
        )


# --- label files -------------------------------------------------------------------------------
@dataclass
class LabelArrays:
    """Prediction times from MEDS label files, sorted by (subject, time).

    Attributes:
        subject_id: int64 [L].
        prediction_time_us: int64 [L]; µs since the epoch.
        file_index: int32 [L]; index into ``files`` of each row's file (for messages).
        files: the files read.
    """

    subject_id: np.ndarray
    prediction_time_us: np.ndarray
    file_index: np.ndarray
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.subject_id)

    def take(self, rows: np.ndarray) -> LabelArrays:
        """Rows ``rows`` (int [n]), in that order."""
        return LabelArrays(
            self.subject_id[rows], self.prediction_time_us[rows], self.file_index[rows], self.files
        )

    def for_subjects(self, subjects: np.ndarray) -> LabelArrays:
        """The rows of ``subjects`` (sorted int64 [n]); order kept."""
        if len(subjects) == 0 or len(self) == 0:
            return self.take(np.zeros(0, dtype=np.int64))
        a = int(np.searchsorted(self.subject_id, subjects[0], side="left"))
        b = int(np.searchsorted(self.subject_id, subjects[-1], side="right"))
        _, found = lookup(self.subject_id[a:b], subjects)
        return self.take(a + np.flatnonzero(found))


def _fmt_time(us: int) -> str:
    stamp = np.array([us], dtype=np.int64).view("datetime64[us]")
    text = np.datetime_as_string(stamp, unit="s" if us % 1_000_000 == 0 else "us")
    return str(text[0]).replace("T", " ")


def _first(values: np.ndarray) -> str:
    vals = [str(int(v)) for v in values[:_MAX_NAMED]]
    return ", ".join(vals) + (", ..." if len(values) > _MAX_NAMED else "")


def _label_files(path: str) -> tuple[Any, list[str], list[str]]:
    """(filesystem, paths inside it, names for messages) of a label file or folder."""
    fs, root = io.resolve(path)
    info = fs.get_file_info(root)
    if info.type == io.pafs.FileType.File:
        return fs, [root], [path]
    if info.type != io.pafs.FileType.Directory:
        raise LabelError(f"{path}: no such label file or folder")
    files = [
        f
        for f in io.list_files(fs, root)
        if f.endswith(".parquet") and not os.path.basename(f).startswith((".", "_"))
    ]
    if not files:
        raise LabelError(f"{path}: the folder holds no Parquet label files")
    prefix = path.rstrip("/")
    return fs, files, [prefix + f[len(root) :] for f in files]


def _read_label_file(fs: Any, path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 subject ids, int64 µs prediction times) of one label file, checked."""
    try:
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except Exception as e:
        raise LabelError(f"{name}: cannot read as Parquet: {e}") from None
    for col, ok, want in (
        (S.SUBJECT_ID, pa.types.is_integer, "an integer type (int64)"),
        (S.PREDICTION_TIME, pa.types.is_timestamp, "a timestamp (timestamp[us])"),
    ):
        if col not in schema.names:
            raise LabelError(
                f"{name}: column '{col}' missing: a MEDS label file needs "
                f"'{S.SUBJECT_ID}' (int64) and '{S.PREDICTION_TIME}' (timestamp[us]); "
                f"found {schema.names}"
            )
        typ = schema.field(col).type
        if not ok(typ):
            raise LabelError(f"{name}: column '{col}' has type {typ}, expected {want}")
    with fs.open_input_file(path) as f:
        t = pq.read_table(f, columns=[S.SUBJECT_ID, S.PREDICTION_TIME])
    sid_col = t[S.SUBJECT_ID]
    if sid_col.null_count:
        rows = np.flatnonzero(
            np.asarray(pc.is_null(sid_col).to_numpy(zero_copy_only=False), dtype=bool)
        )
        raise LabelError(
            f"{name}: column '{S.SUBJECT_ID}': {len(rows)} null values (rows {_first(rows)})"
        )
    try:
        sid = np.asarray(sid_col.cast(pa.int64()).to_numpy(), dtype=np.int64)
    except pa.ArrowInvalid as e:
        raise LabelError(
            f"{name}: column '{S.SUBJECT_ID}': not representable as int64: {e}"
        ) from None
    pt_col = pc.cast(t[S.PREDICTION_TIME], pa.timestamp("us"), safe=False)
    pt, null = time_us(pt_col)
    if bool(null.any()):
        bad = sorted_unique(sid[null])
        raise LabelError(
            f"{name}: column '{S.PREDICTION_TIME}': {int(null.sum())} null values "
            f"({len(bad)} subjects: {_first(bad)})"
        )
    return sid, pt


def read_labels(path: str) -> LabelArrays:
    """The prediction times of a MEDS label file or folder (``meds.LabelSchema``).

    Accepts what third-party tools write: extra value columns (``boolean_value`` ...; not read),
    any integer ``subject_id`` type, ``prediction_time`` in any timestamp unit (sub-µs parts are
    truncated), one file or a folder of many (recursive, ``*.parquet``), any number of rows per
    subject.

    Args:
        path: a Parquet file, or a folder of them (local path or filesystem URI).

    Returns:
        :class:`LabelArrays` sorted by (subject, prediction time).

    Raises:
        LabelError: one line naming the file, the column and the first offending subjects: a
            missing column or wrong type, null subject ids or prediction times, duplicate
            (subject_id, prediction_time) rows.
    """
    fs, paths, names = _label_files(path)
    sids, pts, fidx = [], [], []
    for i, (p, name) in enumerate(zip(paths, names, strict=True)):
        sid, pt = _read_label_file(fs, p, name)
        sids.append(sid)
        pts.append(pt)
        fidx.append(np.full(len(sid), i, dtype=np.int32))
    sid, pt, fi = np.concatenate(sids), np.concatenate(pts), np.concatenate(fidx)
    if len(sid) > 1 and not bool(
        np.all((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (pt[1:] >= pt[:-1])))
    ):
        order = np.lexsort((pt, sid))
        sid, pt, fi = sid[order], pt[order], fi[order]
    dup = np.flatnonzero((sid[1:] == sid[:-1]) & (pt[1:] == pt[:-1])) + 1
    if len(dup):
        bad = sorted_unique(sid[dup])
        where = sorted({names[int(fi[dup[0] - 1])], names[int(fi[dup[0]])]})
        raise LabelError(
            f"{' and '.join(where)}: columns '{S.SUBJECT_ID}', '{S.PREDICTION_TIME}': "
            f"{len(dup)} duplicate rows over {len(bad)} subjects (first: subject "
            f"{int(sid[dup[0]])} at {_fmt_time(int(pt[dup[0]]))}; subjects {_first(bad)})"
        )
    return LabelArrays(sid, pt, fi, tuple(names))


def check_label_subjects(labels: LabelArrays, cohort_subjects: np.ndarray) -> None:
    """Raise when label rows name subjects that are not in the cohort.

    Args:
        labels: the label rows.
        cohort_subjects: int64 [N], every subject of the cohort (any order).

    Raises:
        LabelError: one line naming the file, the column and the first unknown subjects.
    """
    cohort = sorted_unique(np.asarray(cohort_subjects, dtype=np.int64))
    _, found = lookup(labels.subject_id, cohort)
    if bool(found.all()):
        return
    rows = np.flatnonzero(~found)
    bad = sorted_unique(labels.subject_id[rows])
    files = sorted({labels.files[int(i)] for i in sorted_unique(labels.file_index[rows])})
    where = files[0] + (f" (and {len(files) - 1} more files)" if len(files) > 1 else "")
    raise LabelError(
        f"{where}: column '{S.SUBJECT_ID}': {len(rows)} label rows name {len(bad)} subjects "
        f"not in the cohort ({_first(bad)})"
    )


# --- samples -----------------------------------------------------------------------------------
@dataclass
class SampleUnit:
    """:func:`make_samples` output: the kept samples' input visits and labels, and rejects.

    Attributes:
        visits: one row per kept sample, sorted by (subject, prediction time); ``subject_id`` is
            the real subject id (repeated for several samples of a subject), ``event`` = event
            within the horizon, ``last_visit`` = index of the last input visit; ``visits.codes``
            is a dictionary array (as on the visit axis).
        prediction_time_us: int64 [S]; µs since the epoch.
        time_days: float64 [S]; days to the event or censoring, capped at the horizon.
        prediction_age: float32 [S]; years from birth to the prediction time.
        rejects: ``subject_id`` int64, ``prediction_time`` timestamp[us], ``reason`` string of
            every excluded sample, sorted by (subject, prediction time).
        reject_counts: excluded samples per reason (every reason of :data:`REASONS`, zeros
            included).
    """

    visits: SubjectVisits
    prediction_time_us: np.ndarray
    time_days: np.ndarray
    prediction_age: np.ndarray
    rejects: pa.Table
    reject_counts: dict[str, int]

    @property
    def num_samples(self) -> int:
        return len(self.prediction_time_us)

    def take(self, idx: np.ndarray) -> SampleUnit:
        """The samples at positions ``idx`` (in that order); rejects unchanged."""
        idx = np.asarray(idx, dtype=np.int64)
        return SampleUnit(
            self.visits.take(idx),
            self.prediction_time_us[idx],
            self.time_days[idx],
            self.prediction_age[idx],
            self.rejects,
            self.reject_counts,
        )


@dataclass
class _Timed:
    """The unit's rows stably sorted by (subject, visit key), with per-subject facts. Static
    rows (null time) stay, with the smallest key: first in their subject, inside every as-of
    cut, and dropped by :func:`group_visits` as everywhere (not copying them out saves a pass
    of gathers over the unit).

    ``pos`` are positions into the sorted rows; subject ``i`` (of ``subjects``) holds sorted
    rows ``start[i]:end[i]``.
    """

    sid: np.ndarray  # int64 [R]
    tu: np.ndarray  # int64 [R] (0 where null)
    null: np.ndarray  # bool [R]: static rows
    key: np.ndarray  # int64 [R] (_I64_MIN where null)
    code: np.ndarray  # int32 [R]
    subjects: np.ndarray  # int64 [N], sorted: every subject of the unit
    start: np.ndarray  # int64 [N]
    end: np.ndarray  # int64 [N]


def _timed_rows(ev: EventArrays, g: int) -> _Timed:
    """Rows stably sorted by (subject, visit key), statics first: a visit's rows keep their
    order of appearance, as in :func:`group_visits`; no copy or sort when already in order."""
    sid, tu, null, code = ev.subject_id, ev.time_us, ev.time_null, ev.code_index
    key = np.floor_divide(tu, g)
    if bool(null.any()):
        key[null] = _I64_MIN
    if len(sid) > 1 and not bool(
        np.all((sid[1:] > sid[:-1]) | ((sid[1:] == sid[:-1]) & (key[1:] >= key[:-1])))
    ):
        o = np.lexsort((key, sid))
        sid, tu, null, code, key = sid[o], tu[o], null[o], code[o], key[o]
    new_s = np.empty(len(sid), dtype=bool)
    new_s[:1] = True
    np.not_equal(sid[1:], sid[:-1], out=new_s[1:])
    start = np.flatnonzero(new_s)
    end = np.append(start[1:], len(sid)).astype(np.int64)
    return _Timed(sid, tu, null, key, code, sid[start], start, end)


def _subject_reduce(
    ufunc: np.ufunc, tr: _Timed, values: np.ndarray, rows: np.ndarray | None, fill: int
) -> np.ndarray:
    """int64 [NT + 1]: ``ufunc`` per subject over ``values`` of its sorted rows (``rows``: the
    positions ``values`` [m] hold, ascending; None = every row); ``fill`` for subjects without
    such a row and for the extra last slot (subjects not in the unit)."""
    nt = len(tr.subjects)
    out = np.full(nt + 1, fill, dtype=np.int64)
    if rows is None:
        if len(values):
            out[:nt] = ufunc.reduceat(values, tr.start)
        return out
    if len(rows):
        subj = np.searchsorted(tr.start, rows, side="right") - 1
        first = np.flatnonzero(np.concatenate([[True], subj[1:] != subj[:-1]]))
        out[subj[first]] = ufunc.reduceat(values, first)
    return out


def _count_le(vals: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int64 [S]: for each j, how many of ``vals[lo[j]:hi[j]]`` (ascending) are ``<= x[j]``.

    A vectorised bisection: one pass over the samples per halving (log2 of the longest range),
    no loop over samples.
    """
    lo, hi = lo.astype(np.int64), hi.astype(np.int64)
    first = lo.copy()
    active = lo < hi
    while bool(active.any()):
        mid = (lo + hi) >> 1
        right = np.zeros(len(lo), dtype=bool)
        right[active] = vals[mid[active]] <= x[active]
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
        active = lo < hi
    return lo - first


def _prediction_times(
    tr: _Timed,
    task: TaskSpec,
    labels: LabelArrays | None,
    all_subjects: np.ndarray,
    is_at: np.ndarray,
    first_rec: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(subject [S], prediction time µs [S]) of the unit's samples, sorted by (subject, time)."""
    if task.labels is not None:
        if labels is None:
            raise ValueError("task.labels is set: pass the LabelArrays to make_samples")
        lab = labels.for_subjects(all_subjects)
        return lab.subject_id, lab.prediction_time_us
    if task.at_code is not None:
        sel = np.flatnonzero(is_at[tr.code] & ~tr.null)
        s, t = tr.sid[sel], tr.tu[sel]
        if len(s) > 1:
            o = np.lexsort((t, s))
            s, t = s[o], t[o]
            keep = np.concatenate([[True], (s[1:] != s[:-1]) | (t[1:] != t[:-1])])
            s, t = s[keep], t[keep]
        return s, t
    assert task.days_after_first_record is not None
    has = first_rec != _I64_MAX
    off = int(round(task.days_after_first_record * US_PER_DAY))
    return tr.subjects[has], first_rec[has] + off


def _sample_outcomes(
    outcomes: OutcomeArrays, s_sid: np.ndarray, all_subjects: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(has a usable row, event, time µs), each [S], of the samples' subjects ``s_sid`` from
    the outcome table: the subject's first row; a null time counts as no row."""
    n = len(s_sid)
    if len(all_subjects):
        outcomes = outcomes.between(int(all_subjects[0]), int(all_subjects[-1]))
    if len(outcomes.subject_id) == 0 or n == 0:
        return np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64)
    opos, found = lookup(s_sid, outcomes.subject_id)
    found &= outcomes.ok[opos]
    return found, found & outcomes.event[opos], outcomes.time_us[opos]


def make_samples(
    ev: EventArrays,
    task: TaskSpec,
    labels: LabelArrays | None = None,
    granularity: str = "day",
    outcomes: OutcomeArrays | None = None,
) -> SampleUnit:
    """Samples, outcomes and as-of-cut input visits of one unit (complete subjects).

    Args:
        ev: every row of the unit's subjects (any order).
        task: the task (event codes, horizon, source of the prediction times).
        labels: the label rows when ``task.labels`` is set (may hold other subjects: only the
            unit's are used); ignored otherwise.
        granularity: visit granularity, one of ``GRANULARITY_US``.
        outcomes: the outcome table when ``task.outcomes`` is set (may hold other subjects);
            ignored otherwise.

    Returns:
        A :class:`SampleUnit`: kept samples sorted by (subject, prediction time), and the
        excluded ones with their reasons.
    """
    g = GRANULARITY_US[granularity]
    use_table = task.outcomes is not None
    if use_table and outcomes is None:
        raise ValueError("task.outcomes is set: pass the OutcomeArrays to make_samples")
    k = len(ev.dictionary)
    dnames = np.asarray(ev.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    # One class per code (extra slot: null code): 1 = MEDS_BIRTH, 2 = event code, 4 = at_code,
    # 8 = no input token (MEDS_BIRTH, MEDS_DEATH): one gather over the rows serves them all.
    cls = np.zeros(k + 1, dtype=np.int8)
    cls[input_code_classes(ev.dictionary)[1]] |= _NOT_INPUT
    cls[:k][dnames == S.BIRTH_CODE] |= 1
    if not use_table:  # with an outcome table the event codes are ignored
        cls[:k][event_code_mask(task.event_codes, ev.dictionary)] |= 2
    if task.at_code is not None:
        cls[:k][event_code_mask([task.at_code], ev.dictionary)] |= 4
    is_at = (cls & 4) > 0

    tr = _timed_rows(ev, g)
    nt = len(tr.subjects)
    # Per-subject facts over the timed rows, with one extra slot (index nt) for subjects not in
    # the unit; the births and event rows are few, so their subsets are cheap.
    row_cls = cls[tr.code]
    marked = np.flatnonzero(row_cls)
    marked = marked[~tr.null[marked]]
    m_cls = row_cls[marked]
    bsel, esel = marked[(m_cls & 1) > 0], marked[(m_cls & 2) > 0]
    any_null = bool(tr.null.any())
    timed_tu = np.where(tr.null, _I64_MIN, tr.tu) if any_null else tr.tu
    last_rec = _subject_reduce(np.maximum, tr, timed_tu, None, _I64_MIN)
    birth = _subject_reduce(np.minimum, tr, tr.tu[bsel], bsel, _I64_MAX)
    first_ev = _subject_reduce(np.minimum, tr, tr.tu[esel], esel, _I64_MAX)
    if task.days_after_first_record is not None or task.min_history_days > 0:
        not_birth = np.where(((row_cls & 1) > 0) | tr.null, _I64_MAX, tr.tu)
        first_rec = _subject_reduce(np.minimum, tr, not_birth, None, _I64_MAX)
    else:  # not needed
        first_rec = np.full(nt + 1, _I64_MAX, dtype=np.int64)

    s_sid, s_pt = _prediction_times(tr, task, labels, tr.subjects, is_at, first_rec[:nt])
    n = len(s_sid)

    # Exclusions, the first that applies wins.
    spos, found = lookup(s_sid, tr.subjects)
    spos = np.where(found, spos, nt)
    b, last, first, fev = birth[spos], last_rec[spos], first_rec[spos], first_ev[spos]
    reason = np.full(n, -1, dtype=np.int64)
    reason[b == _I64_MAX] = _R[REJECT_NO_BIRTH]
    reason[(reason < 0) & (s_pt < b)] = _R[REJECT_BEFORE_BIRTH]
    reason[(reason < 0) & (s_pt > last)] = _R[REJECT_AFTER_LAST]
    if use_table:
        assert outcomes is not None
        o_has, o_ev, o_t = _sample_outcomes(outcomes, s_sid, tr.subjects)
        reason[(reason < 0) & ~o_has] = _R[REJECT_NO_OUTCOME_ROW]
        reason[(reason < 0) & o_ev & (o_t <= s_pt)] = _R[REJECT_NOT_AT_RISK]
        reason[(reason < 0) & o_has & ~o_ev & (o_t < s_pt)] = _R[REJECT_CENSORED_BEFORE]
    else:
        reason[(reason < 0) & (fev <= s_pt)] = _R[REJECT_NOT_AT_RISK]
    if task.min_history_days > 0:
        short = (first == _I64_MAX) | ((s_pt - first) < task.min_history_days * US_PER_DAY)
        reason[(reason < 0) & short] = _R[REJECT_SHORT_HISTORY]
    cand = np.flatnonzero(reason < 0)

    # The as-of cut: rows with key <= the prediction time's key (a prefix of the subject's
    # sorted rows), less the rows of a straddling visit that come after the prediction time.
    c_pt = s_pt[cand]
    c_key = np.floor_divide(c_pt, g)
    lo, hi = tr.start[spos[cand]], tr.end[spos[cand]]
    n_le = _count_le(tr.key, lo, hi, c_key)
    n_lt = _count_le(tr.key, lo, hi, c_key - 1)
    c_sid = s_sid[cand]
    one_per_subject = len(c_sid) < 2 or bool(np.all(c_sid[1:] > c_sid[:-1]))
    whole = one_per_subject and len(cand) == nt and int(n_le.sum()) == len(tr.sid)
    pos = None if whole else concat_ranges(lo, n_le)  # None: every row, in order
    straddle = n_le > n_lt  # the prediction time's visit has rows: some may come later
    if bool(straddle.any()):
        sj = np.flatnonzero(straddle)
        spot = concat_ranges(lo[sj] + n_lt[sj], n_le[sj] - n_lt[sj])  # positions in tr
        late_s = np.repeat(sj, n_le[sj] - n_lt[sj])
        late = tr.tu[spot] > c_pt[late_s]
        if bool(late.any()):
            if pos is None:
                pos = np.arange(len(tr.sid), dtype=np.int64)
            out_start = np.cumsum(n_le) - n_le  # where each sample's rows start in pos
            within = spot - lo[late_s]  # offset of each straddle row in its sample's rows
            keep = np.ones(len(pos), dtype=bool)
            keep[(out_start[late_s] + within)[late]] = False
            pos = pos[keep]
            n_le = n_le - np.bincount(late_s[late], minlength=len(cand))
    # The cut's input-token rows (timed, neither birth nor death), already in (sample, visit
    # key) order: grouped as they are (no second compaction, sort check or birth search),
    # keyed by subject when each has one sample, else by the sample's position in cand.
    is_tok = row_cls < _NOT_INPUT  # the highest class bit
    if any_null:
        is_tok &= ~tr.null
    if pos is None:
        rows = np.flatnonzero(is_tok)
        row_key = tr.sid[rows]
    else:
        sel = is_tok[pos]
        rows = pos[sel]
        row_key = tr.sid[rows] if one_per_subject else np.repeat(np.arange(len(cand)), n_le)[sel]
    s_key = c_sid if one_per_subject else np.arange(len(cand), dtype=np.int64)
    tok = token_rows(rows, row_key, tr.tu[rows], tr.key[rows])
    gu = group_token_rows(tok, tr.code, ev.dictionary, s_key, b[cand], s_key, None, g)
    if one_per_subject:
        kept_c = lookup(gu.visits.subject_id, c_sid)[0]
    else:
        kept_c = gu.visits.subject_id  # positions in cand, ascending
    no_input = np.ones(len(cand), dtype=bool)
    no_input[kept_c] = False
    reason[cand[no_input]] = _R[REJECT_NO_INPUT]
    kept = cand[kept_c]

    # Outcomes of the kept samples.
    pt = s_pt[kept]
    if use_table:  # the table's event or censoring time (at or after pt: checked above)
        has_ev, end = o_ev[kept], o_t[kept]
    else:  # the first event code after pt, else the last record
        fev_k = fev[kept]
        has_ev = fev_k != _I64_MAX
        end = np.where(has_ev, fev_k, last[kept])
    dt_days = (end - pt) / US_PER_DAY
    event = has_ev & (dt_days <= task.horizon_days)
    time_days = np.minimum(dt_days, task.horizon_days).astype(np.float64)
    age = ((pt - b[kept]) / US_PER_YEAR).astype(np.float32)

    sv = gu.visits
    visits = SubjectVisits(s_sid[kept], event, sv.last_visit, sv.visits)
    rej = np.flatnonzero(reason >= 0)
    rejects = pa.table(
        {
            S.SUBJECT_ID: pa.array(s_sid[rej], pa.int64()),
            S.PREDICTION_TIME: pa.array(s_pt[rej], pa.int64()).cast(pa.timestamp("us")),
            S.REJECT_REASON: pa.array(_REASONS[reason[rej]].tolist(), pa.string()),
        }
    )
    counts = np.bincount(reason[rej], minlength=len(REASONS))
    return SampleUnit(
        visits,
        pt,
        time_days,
        age,
        rejects,
        {r: int(c) for r, c in zip(REASONS, counts, strict=True)},
    )
