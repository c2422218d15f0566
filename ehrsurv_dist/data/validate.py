""":func:`validate_cohort`: check a MEDS cohort and its outcome table (docs/design.md §1).

Every shard is read once (bounded memory; :mod:`ehrsurv_dist.data.validate_files`), each on its
own, by a *mapper*: one after another in this process, in a process pool
(:func:`process_mapper`, the default for large cohorts: :func:`default_mapper`), or on Ray tasks
(the pipeline's mapper when Ray is up). The per-shard results are merged in file order, so every
mapper gives the same report. Then the per-subject aggregates are merged across shards for the
birth and age checks, and the outcome table is checked against the subjects and their first
visits. The result is a :class:`~ehrsurv_dist.data.validation_report.CohortReport`: counts per
problem with the file, column and a few example subject ids.

:mod:`ehrsurv_dist.data.validation_cache` keeps the report under the cohort's fingerprint so that
later commands skip the scan.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_DAY, US_PER_YEAR
from ehrsurv_dist.data import io
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.meds_read import (
    default_outcomes_path,
    list_data_files,
    read_outcomes,
    short_error,
)
from ehrsurv_dist.data.samples import (
    TaskSpec,
    check_label_subjects,
    event_code_mask,
    read_labels,
)
from ehrsurv_dist.data.splits import cohort_splits_path, read_split_file
from ehrsurv_dist.data.validate_files import (
    NO_TIME_MAX,
    NO_TIME_MIN,
    FileCheck,
    FileSummary,
    check_file,
)
from ehrsurv_dist.data.validation_report import MAX_EXAMPLES, CohortReport, Problem
from ehrsurv_dist.data.visits import GRANULARITY_US
from ehrsurv_dist.errors import CohortError

MAX_AGE_YEARS = 125.0
OUTCOME_AFTER_END_DAYS = 365.0  # an outcome this long after the cohort's last record: reported
# Bump when a change to the checks changes the report of some cohort: cached reports of older
# versions are then never reused (data/validation_cache.py).
VALIDATOR_VERSION = 1
# The process pool pays ~1 s to start its workers (fresh interpreters importing pyarrow): below
# this many bytes of shards the serial scan is as fast (docs/data.md, "Validation").
PARALLEL_MIN_BYTES = 256 << 20
WORKERS_ENV = "EHRSURV_VALIDATE_WORKERS"  # processes of the default mapper (1: serial)

log = logging.getLogger(__name__)

# A mapper applies a picklable one-argument function to every item and returns the results in
# the items' order (a serial loop, a process pool, Ray tasks).
Mapper = Callable[[Callable[[str], FileCheck], Sequence[str]], list[FileCheck]]


def serial_mapper(fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
    """One item after another, in this process."""
    return [fn(x) for x in items]


def process_mapper(workers: int) -> Mapper:
    """A mapper over a pool of ``workers`` processes, ``spawn``ed: safe when this process runs
    threads (as it does once torch or pyarrow's pools are up; ``fork`` is not). As with any
    spawned pool, a script that validates must keep its work under
    ``if __name__ == "__main__":`` (the workers import the main module); if the pool cannot
    start or breaks, the shards are checked in this process (with a warning)."""

    def run(fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
        n = max(1, min(workers, len(items)))
        if n == 1:
            return serial_mapper(fn, items)
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
                return list(pool.map(fn, items))
        except (BrokenProcessPool, OSError) as e:
            log.warning("validation's process pool failed (%s): checking the shards here", e)
            return serial_mapper(fn, items)

    return run


def default_workers() -> int:
    """Processes of the default mapper: ``$EHRSURV_VALIDATE_WORKERS``, else the CPUs this
    process may use."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be an integer >= 1, got {env!r}") from None
        if n < 1:
            raise ValueError(f"{WORKERS_ENV} must be an integer >= 1, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_mapper(fs: Any, files: Sequence[str], parallel: Mapper | None = None) -> Mapper:
    """Serial for small cohorts (one shard, or under :data:`PARALLEL_MIN_BYTES`), else
    ``parallel`` (e.g. Ray tasks), else a process pool of ``min(default_workers(), shards)``
    processes (``$EHRSURV_VALIDATE_WORKERS=1``: always serial)."""
    workers = min(default_workers(), len(files))
    if len(files) <= 1 or (parallel is None and workers <= 1):
        return serial_mapper
    try:
        total = sum(int(i.size or 0) for i in fs.get_file_info(list(files)))
    except Exception:  # sizes unknown: let the scan report what is wrong
        return serial_mapper
    if total < PARALLEL_MIN_BYTES:
        return serial_mapper
    if parallel is not None:
        return parallel
    log.info("validating %d shards in %d processes", len(files), workers)
    return process_mapper(workers)


def validate_cohort(
    cohort: str,
    outcomes: str | None = None,
    granularity: str = "day",
    require_outcomes: bool = False,
    task: TaskSpec | None = None,
    mapper: Mapper | None = None,
    parallel: Mapper | None = None,
) -> CohortReport:
    """Check a MEDS cohort and its outcome table; never raises for bad data.

    Args:
        cohort: cohort directory (local path or pyarrow filesystem URI).
        outcomes: outcome table path; default ``COHORT/outcomes.parquet`` when it exists.
        granularity: visit granularity (used for the outcome-before-first-visit check).
        require_outcomes: report a missing outcome table as an error rather than a warning.
        task: a calendar-axis task: its label file and event codes (or, with
            ``task.outcomes``, its outcome table, checked as the visit axis's but for the
            history check) are checked against the cohort (unknown subjects, unreadable labels
            and event codes that never occur are fatal; prediction times before birth or after
            a subject's last record are counted as warnings: those samples are skipped and
            written to the rejects file). ``outcomes`` is not read then.
        mapper: how the shards are checked (:data:`Mapper`); None: :func:`default_mapper`.
            Every mapper gives the same report.
        parallel: the parallel mapper :func:`default_mapper` picks for a large cohort (None:
            a process pool).

    Returns:
        The report; ``report.ok`` is False when there is at least one error.
    """
    if granularity not in GRANULARITY_US:
        raise ValueError(f"granularity must be one of {sorted(GRANULARITY_US)}")
    rep = CohortReport(cohort=cohort, outcomes=None)
    summaries, codes = _check_files(rep, cohort, mapper, parallel)
    if not summaries:
        return rep
    subj = _merge_summaries(summaries)
    rep.n_subjects = len(subj.ids)
    if rep.n_subjects == 0:
        rep.add(Problem("error", "empty_cohort", "the cohort has no rows", fatal=True))
        return rep
    rep.add_subjects(
        "warning",
        "subject_spans_shards",
        f"{len(subj.spans)} subject(s) appear in more than one shard "
        "(MEDS expects one shard per subject; the reader merges them)",
        subj.spans,
        None,
        S.SUBJECT_ID,
    )
    _check_birth_and_age(rep, subj)
    _check_splits(rep, cohort, subj.ids)
    if task is None:
        _check_outcome_table(rep, cohort, outcomes, require_outcomes, subj, granularity)
    else:
        _check_task(rep, task, subj, codes, require_outcomes)
    return rep


def _check_task(
    rep: CohortReport, task: TaskSpec, s: _Subjects, codes: set[str], require_events: bool
) -> None:
    """The calendar task against the cohort: event codes that occur (an error when training,
    ``require_events``; a warning for ``predict``) or, with ``task.outcomes``, that outcome
    table instead; label rows that name known subjects at times inside their records."""
    if task.outcomes is not None:
        _check_task_outcomes(rep, task.outcomes, s, require_events)
    dictionary = pa.array(sorted(codes), pa.string())
    for pattern in task.event_codes if task.outcomes is None else ():
        if not bool(event_code_mask((pattern,), dictionary).any()):
            msg = (
                f"task.event_codes: {pattern!r} matches no code of the cohort "
                f"({len(codes):,} distinct codes)"
            )
            if require_events:
                rep.add_fatal("task_event_code", msg, None, S.CODE)
            else:
                rep.add(Problem("warning", "task_event_code", msg, None, S.CODE))
    if task.labels is None:
        return
    try:
        labels = read_labels(task.labels)
        check_label_subjects(labels, s.ids)
    except CohortError as e:
        rep.add_fatal("task_labels", str(e), task.labels)
        return
    pos = np.minimum(np.searchsorted(s.ids, labels.subject_id), len(s.ids) - 1)
    pt = labels.prediction_time_us
    before_birth = (s.birth[pos] != NO_TIME_MIN) & (pt < s.birth[pos])
    after_last = (s.last[pos] != NO_TIME_MIN) & (pt > s.last[pos])
    for sel, check, what in (
        (before_birth, "prediction_before_birth", f"before the subject's {S.BIRTH_CODE}"),
        (after_last, "prediction_after_last_record", "after the subject's last record"),
    ):
        rep.add_subjects(
            "warning",
            check,
            f"{int(sel.sum())} label row(s) have a prediction time {what}: those samples are "
            "skipped and written to the rejects file",
            np.unique(labels.subject_id[sel]),
            task.labels,
            S.PREDICTION_TIME,
            count=int(sel.sum()),
        )


def _check_task_outcomes(rep: CohortReport, path: str, s: _Subjects, required: bool) -> None:
    """``task.outcomes``: the visit axis's checks of an outcome table (readable, typed, no
    nulls, one row per subject, known subjects; subjects without a row are a warning) but the
    history check: on the calendar axis an outcome before some prediction time only skips
    that sample."""
    ofs, op = io.resolve(path)
    if not io.exists(ofs, op):
        msg = f"task.outcomes: outcome table not found: {path}"
        if required:
            rep.add_fatal("no_outcomes", msg, path)
        else:
            rep.add(Problem("warning", "no_outcomes", msg, path))
        return
    rep.outcomes = path
    _check_outcomes(rep, path, s, "day", calendar=True)


@dataclass
class _Subjects:
    """Per-subject aggregates over every shard: [S] each, sorted by subject id."""

    ids: np.ndarray
    spans: np.ndarray  # ids of the subjects found in more than one shard
    birth: np.ndarray  # earliest MEDS_BIRTH, NO_TIME_MIN where none
    birth_last: np.ndarray  # latest MEDS_BIRTH
    first: np.ndarray  # first event time, NO_TIME_MAX where none
    last: np.ndarray  # last event time, NO_TIME_MIN where none


def _check_files(
    rep: CohortReport, cohort: str, mapper: Mapper | None, parallel: Mapper | None
) -> tuple[list[FileSummary], set[str]]:
    """List and check every shard (``mapper``), merged in file order: the summaries of the
    usable ones (none: nothing to merge) and the distinct codes."""
    try:
        listing = list_data_files(cohort)
    except Exception as e:
        rep.add_fatal("unreadable_cohort", f"cannot list {cohort}: {short_error(e)}", None)
        return [], set()
    fs, files = listing.fs, listing.parquet
    rep.files = files
    for o in listing.other:
        rep.add(Problem("warning", "ignored_file", "not a .parquet file; ignored", o))
    for o in listing.hidden:
        rep.add(
            Problem(
                "warning",
                "ignored_file",
                "hidden file (its name or a folder's starts with '.' or '_'); ignored, as "
                "Spark, Hive and pyarrow datasets do",
                o,
            )
        )
    if not files:
        rep.add_fatal(
            "empty_cohort", f"no Parquet files under {io.join(cohort, S.DATA_SUBDIR)}", None
        )
        return [], set()
    summaries: list[FileSummary] = []
    codes: set[str] = set()
    run = mapper if mapper is not None else default_mapper(fs, files, parallel)
    for res in run(functools.partial(check_file, fs=fs), files):
        res.merge_into(rep)
        if res.summary is not None:
            summaries.append(res.summary)
            codes |= res.codes
    rep.n_codes = len(codes - set(S.NON_INPUT_CODES))
    return summaries, codes


def _merge_summaries(summaries: list[FileSummary]) -> _Subjects:
    """Merge per-shard aggregates per subject.

    Birth = the earliest MEDS_BIRTH over every shard (as the reader uses it, data/visits.py).
    """
    all_sid = np.concatenate([s.subjects for s in summaries])
    subjects, inv, nfiles = np.unique(all_sid, return_inverse=True, return_counts=True)
    birth = np.full(len(subjects), NO_TIME_MAX, dtype=np.int64)
    birth_last = np.full(len(subjects), NO_TIME_MIN, dtype=np.int64)
    first = np.full(len(subjects), NO_TIME_MAX, dtype=np.int64)
    last = np.full(len(subjects), NO_TIME_MIN, dtype=np.int64)
    births = np.concatenate([s.birth for s in summaries])
    np.minimum.at(birth, inv, np.where(births == NO_TIME_MIN, NO_TIME_MAX, births))
    birth[birth == NO_TIME_MAX] = NO_TIME_MIN
    np.maximum.at(birth_last, inv, np.concatenate([s.birth_last for s in summaries]))
    np.minimum.at(first, inv, np.concatenate([s.first for s in summaries]))
    np.maximum.at(last, inv, np.concatenate([s.last for s in summaries]))
    return _Subjects(subjects, subjects[nfiles > 1], birth, birth_last, first, last)


def _check_birth_and_age(rep: CohortReport, s: _Subjects) -> None:
    """Birth present and unambiguous, events at ages in [0, MAX_AGE_YEARS], some visits."""
    no_birth = s.ids[s.birth == NO_TIME_MIN]
    rep.add_subjects(
        "error",
        "no_birth",
        f"{len(no_birth)} subject(s) have no {S.BIRTH_CODE} event with a time "
        "(age cannot be computed)",
        no_birth,
        None,
        S.CODE,
    )
    hb = s.birth != NO_TIME_MIN
    conflict = s.ids[hb & (s.birth_last != s.birth)]
    rep.add_subjects(
        "error",
        "conflicting_birth",
        f"{len(conflict)} subject(s) have {S.BIRTH_CODE} events at different times "
        "(in one shard or across shards): the age is ambiguous",
        conflict,
        None,
        S.TIME,
    )
    has_ev = s.first != NO_TIME_MAX
    neg = s.ids[hb & has_ev & (s.first < s.birth)]
    rep.add_subjects(
        "error",
        "negative_age",
        f"{len(neg)} subject(s) have events before {S.BIRTH_CODE} (age < 0)",
        neg,
        None,
        S.TIME,
    )
    old = s.ids[hb & has_ev & ((s.last - s.birth) / US_PER_YEAR > MAX_AGE_YEARS)]
    rep.add_subjects(
        "error",
        "age_over_125",
        f"{len(old)} subject(s) have events at an age over {MAX_AGE_YEARS:g} years",
        old,
        None,
        S.TIME,
    )
    novis = s.ids[~has_ev]
    rep.add_subjects(
        "warning",
        "no_visits",
        f"{len(novis)} subject(s) have no timed events besides birth/death: no visits",
        novis,
        None,
        S.TIME,
    )


def _check_outcome_table(
    rep: CohortReport,
    cohort: str,
    outcomes: str | None,
    require_outcomes: bool,
    s: _Subjects,
    granularity: str,
) -> None:
    """Check the outcome table if there is one; its absence is an error only when asked for."""
    opath = outcomes or default_outcomes_path(cohort)
    ofs, op = io.resolve(opath)
    if io.exists(ofs, op):
        rep.outcomes = opath
        _check_outcomes(rep, opath, s, granularity)
    elif outcomes is not None or require_outcomes:
        rep.add_fatal("no_outcomes", f"outcome table not found: {opath}", opath)
    else:
        rep.add(
            Problem(
                "warning",
                "no_outcomes",
                f"no outcome table at {opath}: the cohort can be used for pretraining only",
                opath,
            )
        )


def _check_outcomes(
    rep: CohortReport, path: str, s: _Subjects, granularity: str, calendar: bool = False
) -> None:
    """Outcome rows: no nulls, one per subject, subjects known, plausible times, some history
    before each (on the visit axis; ``calendar``: ``task.outcomes``, whose samples are cut at
    their prediction times instead)."""
    try:
        t = read_outcomes(path)
    except CohortError as e:
        rep.add_fatal("bad_outcomes", str(e), path)
        return
    rep.n_outcome_rows = t.num_rows
    for col in (S.SUBJECT_ID, S.OUTCOME_EVENT, S.OUTCOME_TIME):
        nn = t[col].null_count
        if nn:
            who = np.unique(
                np.asarray(t.filter(pc.is_null(t[col]))[S.SUBJECT_ID].drop_null().to_numpy())
            )
            rep.add(
                Problem(
                    "error",
                    "null_outcome",
                    f"{nn} outcome row(s) have a null '{col}'",
                    path,
                    col,
                    count=nn,
                    subjects=who[:MAX_EXAMPLES].tolist(),
                    fatal=col == S.SUBJECT_ID,
                ),
                who,
            )
    t = t.filter(pc.is_valid(t[S.SUBJECT_ID]))
    osid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    ev = np.asarray(pc.fill_null(t[S.OUTCOME_EVENT], False).to_numpy(zero_copy_only=False))
    rep.n_events = int(ev.sum())
    _check_outcome_subjects(rep, path, s.ids, osid, calendar)
    _check_outcome_times(rep, path, s, t, osid)
    if not calendar:
        _check_history(rep, path, s.ids, s.first, granularity, t, osid, ev)


def _check_outcome_times(
    rep: CohortReport, path: str, s: _Subjects, t: pa.Table, osid: np.ndarray
) -> None:
    """Implausible outcome times: before the subject's birth (an error naming the subjects), or
    more than :data:`OUTCOME_AFTER_END_DAYS` after the cohort's last record (a warning with the
    count: a follow-up end or event in the future of the extract is most likely a typo)."""
    tu, tnull = time_us(t[S.OUTCOME_TIME])
    if not len(s.ids) or not len(osid):
        return
    pos = np.minimum(np.searchsorted(s.ids, osid), len(s.ids) - 1)
    known = (s.ids[pos] == osid) & ~tnull
    birth = s.birth[pos]
    before = known & (birth != NO_TIME_MIN) & (tu < birth)
    rep.add_subjects(
        "error",
        "outcome_before_birth",
        f"{int(before.sum())} outcome row(s) have a time before the subject's {S.BIRTH_CODE}",
        np.unique(osid[before]),
        path,
        S.OUTCOME_TIME,
        count=int(before.sum()),
    )
    has_last = s.last != NO_TIME_MIN
    if not bool(has_last.any()):
        return
    end = int(s.last[has_last].max())
    late = ~tnull & (tu > end + int(OUTCOME_AFTER_END_DAYS * US_PER_DAY))
    rep.add_subjects(
        "warning",
        "outcome_after_data_end",
        f"{int(late.sum())} outcome row(s) have a time more than {OUTCOME_AFTER_END_DAYS:g} "
        "days after the cohort's last record (a typo? the extract ends there); they are used "
        "as written",
        np.unique(osid[late]),
        path,
        S.OUTCOME_TIME,
        count=int(late.sum()),
    )


def _check_splits(rep: CohortReport, cohort: str, subjects: np.ndarray) -> None:
    """The MEDS split file: its names mapped (aliases reported, unknown names and subjects in
    two splits refused: fatal), subjects it lists that the data lacks and subjects of the
    data it does not list (assigned by the hash) counted."""
    path = cohort_splits_path(cohort)
    if path is None:
        return
    try:
        sf = read_split_file(path)
    except CohortError as e:
        rep.add_fatal("bad_splits", str(e), path, S.SPLIT)
        return
    for name, (canon, rows) in sf.aliases.items():
        rep.add(
            Problem(
                "warning",
                "split_alias",
                f"split name {name[:40]!r} read as '{canon}'",
                path,
                S.SPLIT,
                count=rows,
            )
        )
    if sf.unknown:
        names = ", ".join(repr(n[:40]) for n in list(sf.unknown)[:MAX_EXAMPLES])
        rows = sum(sf.unknown.values())
        rep.add(
            Problem(
                "error",
                "unknown_split",
                f"{rows} row(s) name an unknown split ({names}); use "
                f"{', '.join(S.SPLITS)} (or test → held_out, val/valid/validation → tuning)",
                path,
                S.SPLIT,
                count=rows,
                subjects=sf.unknown_subjects[:MAX_EXAMPLES].tolist(),
                fatal=True,
            )
        )
    if len(sf.conflicting):
        rep.add(
            Problem(
                "error",
                "conflicting_split",
                f"{len(sf.conflicting)} subject(s) are listed in two different splits",
                path,
                S.SUBJECT_ID,
                count=len(sf.conflicting),
                subjects=sf.conflicting[:MAX_EXAMPLES].tolist(),
                fatal=True,
            )
        )
    if sf.null_rows:
        rep.add(
            Problem(
                "warning",
                "null_split",
                f"{sf.null_rows} row(s) have a null split: those subjects are assigned by the hash",
                path,
                S.SPLIT,
                count=sf.null_rows,
            )
        )
    listed = _unique(sf.subject_id)
    unknown = np.setdiff1d(listed, subjects, assume_unique=True)
    rep.add_subjects(
        "warning",
        "unknown_split_subject",
        f"{len(unknown)} subject(s) of the split file are not in the data (ignored)",
        unknown,
        path,
        S.SUBJECT_ID,
    )
    unlisted = np.setdiff1d(subjects, listed, assume_unique=True)
    rep.add_subjects(
        "warning",
        "no_split",
        f"{len(unlisted)} subject(s) are not in the split file: assigned by the hash",
        unlisted,
        path,
        S.SUBJECT_ID,
    )


def _check_outcome_subjects(
    rep: CohortReport, path: str, subjects: np.ndarray, osid: np.ndarray, calendar: bool = False
) -> None:
    """One outcome row per subject, for subjects of the data; subjects without one are noted."""
    uniq, counts = np.unique(osid, return_counts=True)
    dup = uniq[counts > 1]
    rep.add_subjects(
        "error",
        "duplicate_outcome",
        f"{len(dup)} subject(s) have more than one outcome row",
        dup,
        path,
        S.SUBJECT_ID,
    )
    unknown = np.setdiff1d(uniq, subjects, assume_unique=True)
    rep.add_subjects(
        "error",
        "unknown_outcome_subject",
        f"{len(unknown)} outcome row(s) name subjects that are not in the data",
        unknown,
        path,
        S.SUBJECT_ID,
    )
    missing = np.setdiff1d(subjects, uniq, assume_unique=True)
    rep.add_subjects(
        "warning",
        "no_outcome",
        f"{len(missing)} subject(s) have no outcome row: "
        + (
            "their samples are skipped and written to the rejects file"
            if calendar
            else "usable for pretraining only"
        ),
        missing,
        path,
        S.SUBJECT_ID,
    )


def _check_history(
    rep: CohortReport,
    path: str,
    subjects: np.ndarray,
    first: np.ndarray,
    granularity: str,
    t: pa.Table,
    osid: np.ndarray,
    ev: np.ndarray,
) -> None:
    """Outcome at or before the first visit: no input history (docs/design.md §2)."""
    tu, tnull = time_us(t[S.OUTCOME_TIME])
    pos = np.searchsorted(subjects, osid)
    pos_c = np.minimum(pos, max(len(subjects) - 1, 0))
    known = (len(subjects) > 0) & (subjects[pos_c] == osid) & ~tnull
    g = GRANULARITY_US[granularity]
    f = first[pos_c]
    has_visit = f != NO_TIME_MAX
    okey = np.floor_divide(tu, g)
    fkey = np.floor_divide(np.where(has_visit, f, 0), g)
    no_hist = known & (
        ~has_visit | np.where(ev, fkey >= okey, fkey > okey)
    )  # event: needs a visit strictly before; censored: at or before
    bad = np.unique(osid[no_hist])
    rep.add_subjects(
        "error",
        "outcome_before_first_visit",
        f"{len(bad)} subject(s) have their outcome before (or, for an event, on the day of)"
        " their first visit: no input history",
        bad,
        path,
        S.OUTCOME_TIME,
    )


def _unique(a: np.ndarray) -> np.ndarray:
    """The sorted unique values of an integer array, by sorting: numpy 2.4's ``np.unique``
    (hash-based when no index, inverse or counts is asked for) takes 0.23 s on 400k sorted ids,
    this 5 ms."""
    a = np.sort(np.asarray(a))
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a
