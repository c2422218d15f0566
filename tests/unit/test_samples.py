"""Calendar-axis samples: label files, prediction-time rules, outcomes, the as-of cut.

``make_samples`` is pinned to the loop in ``tests/oracles/samples_reference.py`` on random units
and to hand-worked subjects; ``read_labels`` on every error it reports and on the sample data of
``meds-testing-helpers`` as that package writes it.
"""

from __future__ import annotations

import importlib.resources
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_DAY
from ehrsurv_dist.data.events import EventArrays, OutcomeArrays, event_arrays
from ehrsurv_dist.data.samples import (
    REASONS,
    REJECT_AFTER_LAST,
    REJECT_BEFORE_BIRTH,
    REJECT_CENSORED_BEFORE,
    REJECT_NO_BIRTH,
    REJECT_NO_INPUT,
    REJECT_NO_OUTCOME_ROW,
    REJECT_NOT_AT_RISK,
    REJECT_SHORT_HISTORY,
    LabelArrays,
    SampleUnit,
    TaskSpec,
    check_codes_exist,
    check_label_subjects,
    event_code_mask,
    make_samples,
    read_labels,
)
from ehrsurv_dist.data.visits import GRANULARITY_US, SubjectVisits, build_visits
from ehrsurv_dist.errors import CohortError, ConfigError, LabelError
from ehrsurv_dist.testing import events_table
from tests.oracles.samples_reference import samples_reference

BIRTH = "1960-01-01"
H = 3_600_000_000  # µs per hour


def us(iso: str) -> int:
    return int(np.datetime64(iso, "us").astype(np.int64))


def labels_of(pairs: list[tuple[int, int]]) -> LabelArrays:
    pairs = sorted(pairs)
    return LabelArrays(
        np.array([p[0] for p in pairs], np.int64),
        np.array([p[1] for p in pairs], np.int64),
        np.zeros(len(pairs), np.int32),
        ("labels.parquet",),
    )


def visits_of(sv: SubjectVisits, i: int) -> list[dict[str, Any]]:
    """The visits of row ``i``, codes as plain strings."""
    vis = cast(list[dict[str, Any]], sv.subject(i)["visits"])
    return [{**v, "codes": [str(c) for c in v["codes"]]} for v in vis]


def as_dicts(su: SampleUnit) -> list[dict[str, Any]]:
    out = []
    sv = su.visits
    for i in range(sv.num_subjects):
        s = sv.subject(i)
        s["visits"] = visits_of(sv, i)
        out.append(
            {
                **s,
                "prediction_time": int(su.prediction_time_us[i]),
                "time_days": float(su.time_days[i]),
                "prediction_age": float(su.prediction_age[i]),
            }
        )
    return out


def rejects_of(su: SampleUnit) -> list[tuple[int, int, str]]:
    t = su.rejects
    pts = t[S.PREDICTION_TIME].cast(pa.int64()).to_pylist()
    return list(zip(t[S.SUBJECT_ID].to_pylist(), pts, t[S.REJECT_REASON].to_pylist(), strict=True))


def run(
    rows: Sequence[tuple[int, str | None, str]],
    task: TaskSpec,
    labels: Sequence[tuple[int, str]] | None = None,
    gran: str = "day",
) -> SampleUnit:
    ev = event_arrays(events_table(rows))
    lab = labels_of([(s, us(t)) for s, t in labels]) if labels is not None else None
    return make_samples(ev, task, lab, gran)


def label_task(**kw: Any) -> TaskSpec:
    return TaskSpec(
        event_codes=kw.pop("event_codes", ("MEDS_DEATH",)),
        horizon_days=kw.pop("horizon_days", 365.0),
        labels="labels.parquet",
        **kw,
    )


# --- the randomised comparison with the reference ---------------------------------------------
CODES = ["A", "B", "LAB//X", "LAB//Y", "DX2//Z", "DX//I21", "DX//I50", S.DEATH_CODE]
CODE_P = [0.3, 0.25, 0.15, 0.15, 0.07, 0.03, 0.03, 0.02]


def random_unit(rng: np.random.Generator, n_subjects: int) -> list[tuple[int, int | None, str]]:
    """Rows of random subjects, shuffled: static rows, births (some missing or doubled), visits
    of several rows spread within a day (so the prediction time can straddle a visit)."""
    base = us("2015-01-01")
    rows: list[tuple[int, int | None, str]] = []
    for sid in rng.choice(10_000, size=n_subjects, replace=False):
        sid = int(sid)
        if rng.random() < 0.5:
            rows.append((sid, None, "STATIC//F"))
        u = rng.random()
        if u > 0.08:
            rows.append((sid, base - int(rng.integers(20, 80)) * 365 * US_PER_DAY, S.BIRTH_CODE))
        if u > 0.95:
            rows.append((sid, base - 90 * 365 * US_PER_DAY, S.BIRTH_CODE))
        n_days = int(rng.integers(0, 6))
        days = np.sort(rng.choice(60, size=n_days, replace=False))
        for d in days:
            for _ in range(int(rng.integers(1, 5))):
                t = base + int(d) * US_PER_DAY + int(rng.integers(0, 6)) * 4 * H
                t += int(rng.integers(0, 4)) * 15 * 60_000_000 + 60_000_000  # several in an hour
                rows.append((sid, t, str(rng.choice(CODES, p=CODE_P))))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def random_labels(
    rng: np.random.Generator, rows: list[tuple[int, int | None, str]]
) -> list[tuple[int, int]]:
    """Several prediction times per subject: on record times (ties), within a day, before the
    records, after them, before birth."""
    base = us("2015-01-01")
    by: dict[int, list[int]] = {}
    for s, t, _ in rows:
        if t is not None:
            by.setdefault(s, []).append(t)
    subjects = sorted({r[0] for r in rows})
    out: set[tuple[int, int]] = set()
    for s in subjects:
        for _ in range(int(rng.integers(0, 5))):
            u = rng.random()
            times = by.get(s, [base])
            if u < 0.3:
                t = int(rng.choice(times))  # exactly on a record
            elif u < 0.45:
                t = int(rng.choice(times)) - 1  # just before a record: straddles its visit
            elif u < 0.85:
                t = int(rng.choice(times)) + int(rng.integers(-30, 30)) * H  # near a record
                t += int(rng.integers(0, 4)) * 10 * 60_000_000
            elif u < 0.95:
                t = base + 200 * US_PER_DAY  # after every record
            else:
                t = base - 100 * 365 * US_PER_DAY  # before birth
            out.add((s, t))
    return sorted(out)


def rows_table(rows: list[tuple[int, int | None, str]]) -> pa.Table:
    return pa.table(
        {
            S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            S.TIME: pa.array([r[1] for r in rows], pa.int64()).cast(pa.timestamp("us")),
            S.CODE: pa.array([r[2] for r in rows], pa.string()),
        }
    )


def outcomes_of(rows: Sequence[tuple[int, bool, int | None]]) -> OutcomeArrays:
    """The outcome table of (subject, event, time µs or None) rows, in this (file) order."""
    return OutcomeArrays.from_table(
        pa.table(
            {
                S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
                S.OUTCOME_EVENT: pa.array([r[1] for r in rows], pa.bool_()),
                S.OUTCOME_TIME: pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us")),
            }
        )
    )


def check_against_reference(
    rows: list[tuple[int, int | None, str]],
    task: TaskSpec,
    labels: list[tuple[int, int]] | None,
    gran: str = "day",
    outcomes: list[tuple[int, bool, int | None]] | None = None,
) -> SampleUnit:
    lab = labels_of(labels) if labels is not None else None
    out = outcomes_of(outcomes) if outcomes is not None else None
    su = make_samples(event_arrays(rows_table(rows)), task, lab, gran, out)
    kept, rej = samples_reference(rows, task, labels, gran, outcomes)
    got = as_dicts(su)
    assert [(d["subject_id"], d["prediction_time"]) for d in got] == [
        (d["subject_id"], d["prediction_time"]) for d in kept
    ]
    assert got == kept
    assert rejects_of(su) == rej
    counts = {r: sum(1 for x in rej if x[2] == r) for r in REASONS}
    assert su.reject_counts == counts
    return su


@pytest.mark.parametrize("seed", range(6))
def test_make_samples_equals_reference_on_label_times(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = random_unit(rng, 80)
    labels = random_labels(rng, rows)
    task = label_task(
        event_codes=("DX//*", "MEDS_DEATH"),
        horizon_days=float(rng.choice([5.0, 20.0, 400.0])),
        min_history_days=float(rng.choice([0.0, 2.5])),
    )
    gran = str(rng.choice(["day", "hour"]))
    su = check_against_reference(rows, task, labels, gran)
    # The random units do exercise what they are meant to: events and censorings, several
    # samples per subject, visits that straddle the prediction time, most exclusions.
    assert su.num_samples > 10 and su.visits.event.any() and (~su.visits.event).any()
    g = GRANULARITY_US[gran]
    straddles = sum(
        any(r[0] == sid and r[1] is not None and r[1] > pt and r[1] // g == pt // g for r in rows)
        for sid, pt in zip(
            su.visits.subject_id.tolist(), su.prediction_time_us.tolist(), strict=True
        )
    )
    assert straddles > 0
    assert len(set(su.visits.subject_id.tolist())) < su.num_samples  # several per subject
    assert sum(v > 0 for v in su.reject_counts.values()) >= 4


@pytest.mark.parametrize("seed", range(3))
def test_make_samples_equals_reference_on_rules(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    rows = random_unit(rng, 50)
    at = TaskSpec(event_codes=("DX//I21",), horizon_days=30.0, at_code="LAB//*")
    su = check_against_reference(rows, at, None)
    assert su.num_samples > 5
    after = TaskSpec(
        event_codes=("DX//*",), horizon_days=10.0, days_after_first_record=2.5, min_history_days=1
    )
    su = check_against_reference(rows, after, None)
    assert su.num_samples > 3


def random_outcomes(
    rng: np.random.Generator, rows: list[tuple[int, int | None, str]]
) -> list[tuple[int, bool, int | None]]:
    """An outcome table for the subjects of ``rows``, shuffled: most subjects have one row, at
    or near one of their record times (ties with prediction times on records), 200 days after
    them (beyond short horizons), or before them; some have none, a null time, or two rows
    (the first wins); one row names a subject with no records."""
    base = us("2015-01-01")
    by: dict[int, list[int]] = {}
    for s, rt, _ in rows:
        by.setdefault(s, [])
        if rt is not None:
            by[s].append(rt)
    out: list[tuple[int, bool, int | None]] = [(10_001, True, base)]
    for s in sorted(by):
        times = by[s] or [base]
        n = 0 if rng.random() < 0.08 else 2 if rng.random() < 0.05 else 1
        for _ in range(n):
            u = rng.random()
            t: int | None
            if u < 0.3:
                t = int(rng.choice(times))  # on a record
            elif u < 0.75:
                t = int(rng.choice(times)) + int(rng.integers(-30, 60)) * H
            elif u < 0.9:
                t = max(times) + 200 * US_PER_DAY
            elif u < 0.96:
                t = min(times) - 10 * US_PER_DAY
            else:
                t = None
            out.append((s, bool(rng.random() < 0.5), t))
    return [out[i] for i in rng.permutation(len(out))]


@pytest.mark.parametrize("seed", range(6))
def test_make_samples_with_an_outcome_table_equals_reference(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    rows = random_unit(rng, 80)
    labels = random_labels(rng, rows)
    outcomes = random_outcomes(rng, rows)
    task = label_task(
        event_codes=("DX//*", "MEDS_DEATH"),  # ignored: the table gives the outcome
        horizon_days=float(rng.choice([5.0, 20.0, 400.0])),
        min_history_days=float(rng.choice([0.0, 2.5])),
        outcomes="outcomes.parquet",
    )
    gran = str(rng.choice(["day", "hour"]))
    su = check_against_reference(rows, task, labels, gran, outcomes)
    assert su.num_samples > 10 and su.visits.event.any() and (~su.visits.event).any()
    for r in (REJECT_NO_OUTCOME_ROW, REJECT_NOT_AT_RISK, REJECT_CENSORED_BEFORE):
        assert su.reject_counts[r] > 0, r
    # the rules too, and an empty table
    at = TaskSpec(("DX//I21",), 30.0, at_code="LAB//*", outcomes="o.parquet")
    assert check_against_reference(rows, at, None, gran, outcomes).num_samples > 5
    su = check_against_reference(rows, at, None, gran, [])
    assert su.num_samples == 0 and su.reject_counts[REJECT_NO_OUTCOME_ROW] > 0


@pytest.mark.parametrize(("seed", "shift"), [(0, 0), (1, 0), (2, -1), (3, -1)])
def test_one_sample_per_subject_at_the_last_record_equals_reference(seed: int, shift: int) -> None:
    """One sample per subject at (or 1 µs before) its last record: the cut keeps every row (or
    every row but the straddling last ones), the path that skips the copy of the rows."""
    rng = np.random.default_rng(200 + seed)
    rows = random_unit(rng, 40)
    births = {r[0] for r in rows if r[2] == S.BIRTH_CODE}
    last: dict[int, int] = {}
    for sid, t, code in rows:
        if sid in births and t is not None and code != S.BIRTH_CODE:
            last[sid] = max(last.get(sid, t), t)
    rows = [r for r in rows if r[0] in last]
    for sid, t, _ in rows:  # the last record of any code
        last[sid] = max(last[sid], t if t is not None else last[sid])
    labels = [(sid, t + shift) for sid, t in sorted(last.items())]
    task = label_task(event_codes=("NO_SUCH",), horizon_days=30.0)
    su = check_against_reference(rows, task, labels)
    assert su.num_samples >= len(last) - 3


def test_sorted_input_takes_the_same_path_as_unsorted() -> None:
    rng = np.random.default_rng(7)
    rows = random_unit(rng, 40)
    labels = random_labels(rng, rows)
    task = label_task(event_codes=("DX//*",), horizon_days=30.0)
    rows_sorted = sorted(rows, key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    a = as_dicts(make_samples(event_arrays(rows_table(rows_sorted)), task, labels_of(labels)))
    b = samples_reference(rows_sorted, task, labels)[0]
    assert a == b


# --- hand-worked subjects ----------------------------------------------------------------------
def test_outcome_event_censoring_and_horizon() -> None:
    rows = [
        (1, BIRTH, S.BIRTH_CODE),
        (1, "2020-01-01 09:00", "A"),
        (1, "2020-01-11 09:00", "DX//I21"),  # event 10 days after a 2020-01-01 09:00 cut
        (1, "2020-03-01 09:00", "B"),
        (2, BIRTH, S.BIRTH_CODE),
        (2, "2020-01-01 09:00", "A"),
        (2, "2020-01-04 21:00", "B"),  # last record: censored 3.5 days after
    ]
    task = label_task(event_codes=("DX//*",), horizon_days=30.0)
    su = run(rows, task, labels=[(1, "2020-01-01 09:00"), (2, "2020-01-01 09:00")])
    assert su.visits.subject_id.tolist() == [1, 2]
    assert su.visits.event.tolist() == [True, False]
    assert su.time_days.tolist() == [10.0, 3.5]
    assert su.time_days.dtype == np.float64
    # The same with a 5-day horizon: subject 1's event is beyond it, censored at the horizon.
    su = run(
        rows,
        label_task(event_codes=("DX//*",), horizon_days=5.0),
        labels=[(1, "2020-01-01 09:00"), (2, "2020-01-01 09:00")],
    )
    assert su.visits.event.tolist() == [False, False]
    assert su.time_days.tolist() == [5.0, 3.5]
    # An event exactly at the horizon is an event.
    su = run(
        rows,
        label_task(event_codes=("DX//*",), horizon_days=10.0),
        labels=[(1, "2020-01-01 09:00")],
    )
    assert su.visits.event.tolist() == [True] and su.time_days.tolist() == [10.0]


def test_as_of_cut_is_inclusive_and_splits_a_straddling_day() -> None:
    rows = [
        (1, BIRTH, S.BIRTH_CODE),
        (1, None, "STATIC//F"),
        (1, "2020-01-01 09:00", "A"),
        (1, "2020-01-02 08:00", "B"),
        (1, "2020-01-02 12:00", "C"),  # == prediction time: input (inclusive)
        (1, "2020-01-02 12:00:01", "D"),  # same day, after: not input
        (1, "2020-01-02 07:00", "E"),  # same day, earlier, later in the file: input, in file order
        (1, "2020-01-03 08:00", "F"),
    ]
    su = run(rows, label_task(), labels=[(1, "2020-01-02 12:00")])
    vis = visits_of(su.visits, 0)
    assert [v["codes"] for v in vis] == [["A"], ["B", "C", "E"]]
    assert vis[1]["time"] == us("2020-01-02 08:00")  # its first row, as on the visit axis
    assert su.visits.last_visit.tolist() == [1]
    assert su.prediction_age[0] == np.float32(
        (us("2020-01-02 12:00") - us(BIRTH)) / (365.25 * US_PER_DAY)
    )


def test_as_of_cut_matches_the_visit_axis_on_the_same_rows() -> None:
    """The input visits of a sample are those the visit axis builds from the cut rows."""
    rng = np.random.default_rng(3)
    rows = random_unit(rng, 30)
    labels = random_labels(rng, rows)
    task = label_task(event_codes=("NO_SUCH",), horizon_days=30.0)
    su = make_samples(event_arrays(rows_table(rows)), task, labels_of(labels))
    assert su.num_samples > 10
    for i in range(su.num_samples):
        sid, pt = int(su.visits.subject_id[i]), int(su.prediction_time_us[i])
        cut = [r for r in rows if r[0] == sid and (r[1] is None or r[1] <= pt)]
        sv, _ = build_visits(rows_table(cut), None)
        assert visits_of(su.visits, i) == visits_of(sv, 0)


def test_every_exclusion_reason() -> None:
    rows = [
        (1, "2020-01-01 09:00", "A"),  # no birth
        (2, BIRTH, S.BIRTH_CODE),
        (2, "2020-01-01 09:00", "A"),
        (3, BIRTH, S.BIRTH_CODE),
        (3, "2020-01-01 09:00", "A"),
        (4, BIRTH, S.BIRTH_CODE),
        (4, "2020-01-01 09:00", "A"),
        (4, "2020-01-05 09:00", "DX//I21"),
        (4, "2020-02-01 09:00", "B"),
        (5, BIRTH, S.BIRTH_CODE),
        (5, "2020-01-01 09:00", "A"),
        (5, "2020-02-01 09:00", "B"),
        (6, BIRTH, S.BIRTH_CODE),
        (6, "2020-01-01 09:00", "A"),
        (6, "2020-03-01 09:00", "B"),
        (7, BIRTH, S.BIRTH_CODE),
        (7, None, "STATIC//F"),
        (7, "2020-01-01 09:00", S.DEATH_CODE),
    ]
    labels = [
        (1, "2020-01-01 09:00"),
        (2, "1959-01-01 00:00"),  # before birth
        (3, "2020-01-01 09:00:01"),  # after the last record
        (4, "2020-01-05 09:00"),  # event at the prediction time: not at risk
        (4, "2020-01-06 00:00"),  # ... and after it
        (5, "2020-01-02 09:00"),  # 1 day of history < 2
        (6, "2020-01-01 08:00"),  # before the first visit: no input
        (6, "2020-01-03 09:00"),  # kept
        (7, "2020-01-01 09:00"),  # only death at the prediction time: no input visit
    ]
    task = label_task(event_codes=("DX//*",), horizon_days=30.0, min_history_days=2.0)
    su = run(rows, task, labels=labels)
    assert rejects_of(su) == [
        (1, us("2020-01-01 09:00"), REJECT_NO_BIRTH),
        (2, us("1959-01-01 00:00"), REJECT_BEFORE_BIRTH),
        (3, us("2020-01-01 09:00:01"), REJECT_AFTER_LAST),
        (4, us("2020-01-05 09:00"), REJECT_NOT_AT_RISK),
        (4, us("2020-01-06 00:00"), REJECT_NOT_AT_RISK),
        (5, us("2020-01-02 09:00"), REJECT_SHORT_HISTORY),
        (6, us("2020-01-01 08:00"), REJECT_SHORT_HISTORY),
        (7, us("2020-01-01 09:00"), REJECT_SHORT_HISTORY),
    ]
    su = run(rows, label_task(event_codes=("DX//*",), horizon_days=30.0), labels=labels)
    rej = rejects_of(su)
    assert (6, us("2020-01-01 08:00"), REJECT_NO_INPUT) in rej
    assert (7, us("2020-01-01 09:00"), REJECT_NO_INPUT) in rej
    assert su.reject_counts == {
        REJECT_NO_BIRTH: 1,
        REJECT_BEFORE_BIRTH: 1,
        REJECT_AFTER_LAST: 1,
        REJECT_NO_OUTCOME_ROW: 0,
        REJECT_NOT_AT_RISK: 2,
        REJECT_CENSORED_BEFORE: 0,
        REJECT_SHORT_HISTORY: 0,
        REJECT_NO_INPUT: 2,
    }
    assert su.visits.subject_id.tolist() == [5, 6]
    assert su.rejects.schema.field(S.PREDICTION_TIME).type == pa.timestamp("us")


def test_outcome_table_gives_the_outcome_and_its_exclusions() -> None:
    """task.outcomes: each rule of the table, and an event code in the data that is ignored."""
    rows = [(s, BIRTH, S.BIRTH_CODE) for s in range(1, 10)]
    rows += [(s, "2020-01-01 09:00", "A") for s in range(1, 10)]
    rows += [(s, "2020-03-01 09:00", "B") for s in range(1, 10)]
    rows += [(1, "2020-01-05 09:00", "DX//I21")]  # an event code: ignored with a table
    pt = "2020-01-02 09:00"
    table = [
        (1, False, us("2020-01-12 09:00")),  # censored 10 days after
        (2, True, us("2020-01-12 09:00")),  # event 10 days after
        (3, True, us("2020-02-11 09:00")),  # event 40 days after: beyond the 30-day horizon
        (4, True, us("2020-02-01 09:00")),  # event exactly at the horizon: an event
        (5, False, us(pt)),  # censored at the prediction time: kept, 0 days
        (6, True, us(pt)),  # event at the prediction time: not at risk
        (7, True, us("2020-01-01 09:00")),  # event before it: not at risk
        (8, False, us("2020-01-02 08:59")),  # censored before it
        (10, True, us(pt)),  # a subject without samples: unused
        # subject 9: no row
    ]
    task = label_task(event_codes=("DX//*",), horizon_days=30.0, outcomes="o.parquet")
    ev = event_arrays(events_table(rows))
    lab = labels_of([(s, us(pt)) for s in range(1, 10)])
    su = make_samples(ev, task, lab, "day", outcomes_of(table))
    assert su.visits.subject_id.tolist() == [1, 2, 3, 4, 5]
    assert su.visits.event.tolist() == [False, True, False, True, False]
    assert su.time_days.tolist() == [10.0, 10.0, 30.0, 30.0, 0.0]
    assert rejects_of(su) == [
        (6, us(pt), REJECT_NOT_AT_RISK),
        (7, us(pt), REJECT_NOT_AT_RISK),
        (8, us(pt), REJECT_CENSORED_BEFORE),
        (9, us(pt), REJECT_NO_OUTCOME_ROW),
    ]
    assert su.reject_counts[REJECT_NOT_AT_RISK] == 2
    assert su.reject_counts[REJECT_CENSORED_BEFORE] == 1
    assert su.reject_counts[REJECT_NO_OUTCOME_ROW] == 1
    # a null outcome time is no row; of two rows the first wins
    su = make_samples(
        ev, task, lab, "day", outcomes_of([(1, True, None), (2, False, us(pt)), (2, True, 0)])
    )
    assert su.visits.subject_id.tolist() == [2] and su.time_days.tolist() == [0.0]
    assert (1, us(pt), REJECT_NO_OUTCOME_ROW) in rejects_of(su)
    # the input-side exclusions still come first: a prediction time before birth
    su = make_samples(ev, task, labels_of([(9, us("1950-01-01"))]), "day", outcomes_of(table))
    assert rejects_of(su) == [(9, us("1950-01-01"), REJECT_BEFORE_BIRTH)]
    with pytest.raises(ValueError, match="OutcomeArrays"):
        make_samples(ev, task, lab)


def test_rules_at_code_and_days_after_first_record() -> None:
    rows = [
        (1, BIRTH, S.BIRTH_CODE),
        (1, "2020-01-01 09:00", "ADMIT//ER"),
        (1, "2020-01-01 09:00", "ADMIT//ER"),  # same time twice: one sample
        (1, "2020-01-01 10:00", "A"),
        (1, "2020-01-03 09:00", "ADMIT//ICU"),
        (1, "2020-01-09 09:00", S.DEATH_CODE),
        (2, BIRTH, S.BIRTH_CODE),
        (2, "2020-02-01 00:00", "A"),  # no admission: no sample
    ]
    su = run(rows, TaskSpec(("MEDS_DEATH",), 30.0, at_code="ADMIT//*"))
    assert su.prediction_time_us.tolist() == [us("2020-01-01 09:00"), us("2020-01-03 09:00")]
    assert su.visits.subject_id.tolist() == [1, 1]
    assert su.time_days.tolist() == [8.0, 6.0] and su.visits.event.all()
    assert [len(visits_of(su.visits, i)) for i in range(2)] == [1, 2]
    su = run(rows, TaskSpec(("MEDS_DEATH",), 30.0, days_after_first_record=1.5))
    assert su.prediction_time_us.tolist() == [us("2020-01-02 21:00")]
    assert su.visits.event.tolist() == [True] and su.time_days.tolist() == [6.5]
    assert rejects_of(su) == [(2, us("2020-02-02 12:00"), REJECT_AFTER_LAST)]


def test_empty_unit_and_no_samples() -> None:
    rows = [(1, BIRTH, S.BIRTH_CODE), (1, "2020-01-01 09:00", "A")]
    su = run(rows, label_task(), labels=[(99, "2020-01-01 09:00")])
    assert su.num_samples == 0 and su.rejects.num_rows == 0
    su = run([(1, None, "STATIC")], label_task(), labels=[(1, "2020-01-01 09:00")])
    assert rejects_of(su) == [(1, us("2020-01-01 09:00"), REJECT_NO_BIRTH)]


# --- task spec, event codes --------------------------------------------------------------------
def test_task_spec_validation_and_pickling() -> None:
    t = TaskSpec(["DX//*"], 30.0, labels="x")  # type: ignore[arg-type]
    assert t.event_codes == ("DX//*",)
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(ConfigError, match="exactly one source"):
        TaskSpec(("A",), 30.0, labels="x", at_code="B")
    with pytest.raises(ConfigError, match="exactly one source"):
        TaskSpec(("A",), 30.0)
    with pytest.raises(ConfigError, match="horizon_days"):
        TaskSpec(("A",), 0.0, labels="x")
    with pytest.raises(ConfigError, match="PREFIX//"):
        TaskSpec(("DX*",), 3.0, labels="x")
    with pytest.raises(ConfigError, match="event_codes"):
        TaskSpec((), 3.0, labels="x")
    with pytest.raises(ConfigError, match="outcomes"):
        TaskSpec(("A",), 3.0, labels="x", outcomes="")
    t = TaskSpec(("A",), 3.0, labels="x", outcomes="o.parquet")
    assert pickle.loads(pickle.dumps(t)) == t


def test_event_code_mask_and_unmatched_patterns() -> None:
    d = pa.array(["DX//I21", "DX//I50", "DX2//Z", "DX", "MEDS_DEATH", "LAB//DX//1"])
    assert event_code_mask(("DX//*",), d).tolist() == [True, True, False, False, False, False]
    assert event_code_mask(("MEDS_DEATH", "DX2//*"), d).tolist() == [
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    check_codes_exist(("DX//*", "MEDS_DEATH"), d, "task.event_codes")
    with pytest.raises(ConfigError, match=r"task\.event_codes: 'ICD//\*', 'X' match no code"):
        check_codes_exist(("ICD//*", "X", "DX"), d, "task.event_codes")


# --- label files -------------------------------------------------------------------------------
def write_labels(path: Path, sids: list[Any], times: list[Any], **extra: Any) -> str:
    cols: dict[str, Any] = {S.SUBJECT_ID: sids, S.PREDICTION_TIME: times, **extra}
    pq.write_table(pa.table(cols), path)
    return str(path)


def ts(values: list[str | None], unit: str = "us") -> pa.Array:
    arr = np.array(["NaT" if v is None else v for v in values], dtype=f"datetime64[{unit}]")
    return pa.array(arr, pa.timestamp(unit), from_pandas=True)


def test_read_labels_accepts_third_party_files(tmp_path: Path) -> None:
    d = tmp_path / "labels"
    (d / "sub").mkdir(parents=True)
    write_labels(
        d / "a.parquet",
        pa.array([3, 1, 1], pa.int32()),
        ts(["2020-01-02", "2020-01-05", "2020-01-01"], "ns"),
        boolean_value=pa.array([True, None, False]),
        integer_value=pa.array([None, None, None], pa.int64()),
    )
    write_labels(
        d / "sub" / "b.parquet", pa.array([2], pa.int64()), ts(["2020-03-01 10:00:00"], "s")
    )
    (d / ".task_names.json").write_text("[]")
    lab = read_labels(str(d))
    assert lab.subject_id.tolist() == [1, 1, 2, 3]
    assert lab.prediction_time_us.tolist() == [
        us("2020-01-01"),
        us("2020-01-05"),
        us("2020-03-01 10:00"),
        us("2020-01-02"),
    ]
    assert [
        lab.files[i].endswith(n)
        for i, n in zip(lab.file_index, ["a.parquet"] * 2 + ["b.parquet", "a.parquet"], strict=True)
    ] == [True] * 4
    one = read_labels(str(d / "a.parquet"))
    assert one.subject_id.tolist() == [1, 1, 3]


def test_several_prediction_times_per_subject_give_one_sample_each(tmp_path: Path) -> None:
    path = write_labels(
        tmp_path / "l.parquet",
        [1, 1, 1],
        ts(["2020-01-01 09:00", "2020-01-02 09:00", "2020-01-03 09:00"]),
    )
    rows = [
        (1, BIRTH, S.BIRTH_CODE),
        (1, "2020-01-01 09:00", "A"),
        (1, "2020-01-02 09:00", "B"),
        (1, "2020-01-03 09:00", "C"),
        (1, "2020-01-10 09:00", "D"),
    ]
    su = make_samples(event_arrays(events_table(rows)), label_task(), read_labels(path))
    assert su.visits.subject_id.tolist() == [1, 1, 1]
    assert su.visits.last_visit.tolist() == [0, 1, 2]
    assert su.time_days.tolist() == [9.0, 8.0, 7.0]


@pytest.mark.parametrize(
    ("cols", "match"),
    [
        ({S.SUBJECT_ID: [1]}, r"l\.parquet: column 'prediction_time' missing"),
        ({S.PREDICTION_TIME: ts(["2020-01-01"])}, r"l\.parquet: column 'subject_id' missing"),
        (
            {S.SUBJECT_ID: ["a"], S.PREDICTION_TIME: ts(["2020-01-01"])},
            r"l\.parquet: column 'subject_id' has type string, expected an integer",
        ),
        (
            {S.SUBJECT_ID: [1], S.PREDICTION_TIME: ["2020-01-01"]},
            r"l\.parquet: column 'prediction_time' has type string, expected a timestamp",
        ),
        (
            {S.SUBJECT_ID: [1, None, 3, None], S.PREDICTION_TIME: ts(["2020-01-01"] * 4)},
            r"l\.parquet: column 'subject_id': 2 null values \(rows 1, 3\)",
        ),
        (
            {S.SUBJECT_ID: [7, 8, 9], S.PREDICTION_TIME: ts([None, "2020-01-01", None])},
            r"l\.parquet: column 'prediction_time': 2 null values \(2 subjects: 7, 9\)",
        ),
        (
            {
                S.SUBJECT_ID: [5, 4, 5, 4, 4],
                S.PREDICTION_TIME: ts(
                    ["2020-01-01", "2020-01-02", "2020-01-01", "2020-01-02", "2020-01-02"]
                ),
            },
            r"l\.parquet: columns 'subject_id', 'prediction_time': 3 duplicate rows over 2 "
            r"subjects \(first: subject 4 at 2020-01-02 00:00:00; subjects 4, 5\)",
        ),
    ],
)
def test_read_labels_errors(tmp_path: Path, cols: dict[str, Any], match: str) -> None:
    pq.write_table(pa.table(cols), tmp_path / "l.parquet")
    with pytest.raises(LabelError, match=match) as e:
        read_labels(str(tmp_path / "l.parquet"))
    assert "\n" not in str(e.value) and isinstance(e.value, CohortError)


def test_read_labels_errors_on_folders(tmp_path: Path) -> None:
    with pytest.raises(LabelError, match="no such label file"):
        read_labels(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelError, match="holds no Parquet label files"):
        read_labels(str(tmp_path / "empty"))
    d = tmp_path / "two"
    d.mkdir()
    write_labels(d / "a.parquet", [1, 2], ts(["2020-01-01", "2020-01-01"]))
    write_labels(d / "b.parquet", [2], ts(["2020-01-01"]))
    with pytest.raises(
        LabelError, match=r"a\.parquet and .*b\.parquet: .* 1 duplicate rows over 1 subjects"
    ):
        read_labels(str(d))
    (d / "bad.parquet").write_text("not parquet")
    with pytest.raises(LabelError, match=r"bad\.parquet: cannot read as Parquet"):
        read_labels(str(d))


def test_check_label_subjects(tmp_path: Path) -> None:
    path = write_labels(
        tmp_path / "l.parquet",
        [1, 2, 9, 9, 8],
        ts(["2020-01-01", "2020-01-01", "2020-01-01", "2020-01-02", "2020-01-01"]),
    )
    lab = read_labels(path)
    check_label_subjects(lab, np.array([2, 1, 9, 8, 5]))
    with pytest.raises(
        LabelError,
        match=r"l\.parquet: column 'subject_id': 3 label rows name 2 subjects not in the cohort \(8, 9\)",
    ):
        check_label_subjects(lab, np.array([1, 2, 3]))


# --- the sample data of meds-testing-helpers ---------------------------------------------------
def test_meds_testing_helpers_sample_data(tmp_path: Path) -> None:
    from meds_testing_helpers.dataset import MEDSDataset

    yaml = (
        importlib.resources.files("meds_testing_helpers")
        / "static_sample_data"
        / "simple_static_sharded_by_split_with_tasks.yaml"
    )
    ds = MEDSDataset.from_yaml(Path(str(yaml))).write(tmp_path / "cohort")
    label_dir = tmp_path / "cohort" / "task_labels" / "boolean_value_task"
    lab = read_labels(str(label_dir))
    assert len(lab) == 21 and len(lab.files) == 2
    shards = sorted((tmp_path / "cohort" / "data").rglob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    check_label_subjects(lab, table[S.SUBJECT_ID].to_numpy())
    ev = event_arrays(table)
    task = TaskSpec(("DISCHARGE",), horizon_days=1.0, labels=str(label_dir))
    su = make_samples(ev, task, lab)
    # Every label row lies between the admission and the discharge: all kept, all events.
    assert su.num_samples == 21 and su.rejects.num_rows == 0
    assert su.visits.event.all()
    i = int(np.flatnonzero(su.prediction_time_us == us("2010-05-11 18:00"))[0])
    assert su.visits.subject_id[i] == 239684
    assert visits_of(su.visits, i)[0]["codes"] == [
        "ADMISSION//CARDIAC",
        "HR",
        "TEMP",
        "HR",
        "TEMP",
    ]
    assert su.time_days[i] == pytest.approx(
        (us("2010-05-11 19:27:19") - us("2010-05-11 18:00")) / US_PER_DAY
    )
    assert ds.task_names == ["boolean_value_task"]
    rows = [
        (r[S.SUBJECT_ID], r[S.TIME], r[S.CODE])
        for r in table.select([S.SUBJECT_ID, S.TIME, S.CODE])
        .cast(pa.schema([(S.SUBJECT_ID, pa.int64()), (S.TIME, pa.int64()), (S.CODE, pa.string())]))
        .to_pylist()
    ]
    pairs = list(zip(lab.subject_id.tolist(), lab.prediction_time_us.tolist(), strict=True))
    kept, _ = samples_reference(rows, task, pairs)
    assert as_dicts(su) == kept


# --- performance sanity ------------------------------------------------------------------------
def big_unit(n_subjects: int, rows_per: int, seed: int = 0) -> EventArrays:
    """Rows in (subject, time) order (the MEDS norm): a birth, then visits of ~5 rows a day."""
    rng = np.random.default_rng(seed)
    n = n_subjects * rows_per
    sid = np.repeat(np.arange(n_subjects, dtype=np.int64), rows_per)
    day = np.sort(rng.integers(0, 3000, size=(n_subjects, rows_per)) // 5 * 5, axis=1)
    tu = us("2010-01-01") + day.reshape(-1) * US_PER_DAY + rng.integers(0, 8, n) * H
    tu = np.sort(tu.reshape(n_subjects, rows_per), axis=1).reshape(-1)
    code = rng.integers(2, 300, n).astype(np.int32)
    code[::rows_per] = 0  # MEDS_BIRTH first
    tu[::rows_per] = us("1970-01-01")
    names = [S.BIRTH_CODE, "DX//I21"] + [f"C{i}" for i in range(298)]
    code[rng.random(n) < 0.0005] = 1
    return EventArrays(sid, tu, np.zeros(n, bool), code, pa.array(names))


def test_performance_sanity() -> None:
    ev = big_unit(2000, 500)
    task = TaskSpec(("DX//*",), 365.0, days_after_first_record=2000.0)
    make_samples(ev, task)  # warm-up
    t0 = time.perf_counter()
    su = make_samples(ev, task)
    dt = time.perf_counter() - t0
    from ehrsurv_dist.data.visits import group_visits

    t0 = time.perf_counter()
    group_visits(ev, None)
    dv = time.perf_counter() - t0
    print(
        f"\nmake_samples: 2000 subjects x 500 rows, {su.num_samples} samples: {dt * 1e3:.0f} ms "
        f"(group_visits on the whole unit: {dv * 1e3:.0f} ms)"
    )
    assert su.num_samples > 1000
