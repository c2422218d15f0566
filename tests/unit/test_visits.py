"""Visits and labels (docs/design.md §2) on hand-worked subjects."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.visits import (
    REJECT_NO_BIRTH,
    REJECT_NO_HISTORY,
    REJECT_NO_OUTCOME,
    REJECT_NO_VISITS,
    build_visits,
)
from ehrsurv_dist.testing import events_table, outcomes_table

BIRTH = "1960-01-01"


def _subject(sv, sid):  # type: ignore[no-untyped-def]
    i = int(np.flatnonzero(sv.subject_id == sid)[0])
    return sv.subject(i)


def _codes(subj):  # type: ignore[no-untyped-def]
    return [v["codes"] for v in subj["visits"]]


def test_event_on_visit_day_excludes_that_visit() -> None:
    ev = events_table(
        [
            (1, BIRTH, S.BIRTH_CODE),
            (1, "2020-01-01 09:00", "A"),
            (1, "2020-01-01 10:00", "B"),  # same day: same visit, order kept
            (1, "2020-02-01 08:00", "C"),
            (1, "2020-03-01 08:00", "OUTCOME_CODE"),  # on the event day: excluded
            (1, "2020-03-01 23:00", "D"),
        ]
    )
    sv, rej = build_visits(ev, outcomes_table([(1, True, "2020-03-01 12:00")]))
    s = _subject(sv, 1)
    assert _codes(s) == [["A", "B"], ["C"]]
    assert s["last_visit"] == 1 and s["event"] is True
    assert rej.num_rows == 0


def test_censoring_on_visit_day_keeps_that_visit() -> None:
    ev = events_table(
        [
            (2, BIRTH, S.BIRTH_CODE),
            (2, "2020-01-01 09:00", "A"),
            (2, "2020-03-01 18:00", "B"),  # later on the censoring day: still kept
            (2, "2020-03-02 08:00", "C"),  # after censoring: dropped
        ]
    )
    sv, _ = build_visits(ev, outcomes_table([(2, False, "2020-03-01 12:00")]))
    s = _subject(sv, 2)
    assert _codes(s) == [["A"], ["B"]]
    assert s["last_visit"] == 1 and s["event"] is False


def test_no_visit_before_event_is_rejected_with_reason() -> None:
    ev = events_table(
        [
            (3, BIRTH, S.BIRTH_CODE),
            (3, "2020-01-05 09:00", "A"),
            (4, BIRTH, S.BIRTH_CODE),
            (4, "2020-01-01 09:00", "A"),
        ]
    )
    out = outcomes_table([(3, True, "2020-01-05 23:00"), (4, True, "2020-01-02 00:00")])
    sv, rej = build_visits(ev, out)
    assert sv.subject_id.tolist() == [4]
    assert rej.to_pylist() == [{S.SUBJECT_ID: 3, S.REJECT_REASON: REJECT_NO_HISTORY}]


def test_several_events_at_one_timestamp_form_one_visit_in_order() -> None:
    ev = events_table(
        [
            (5, BIRTH, S.BIRTH_CODE),
            (5, "2020-01-01 09:00", "Z"),
            (5, "2020-01-01 09:00", "A"),
            (5, "2020-01-01 09:00", "M"),
            (5, "2020-01-03 09:00", "Q"),
        ]
    )
    sv, _ = build_visits(ev, outcomes_table([(5, False, "2021-01-01")]))
    assert _codes(_subject(sv, 5)) == [["Z", "A", "M"], ["Q"]]


def test_static_rows_birth_and_death_form_no_visit_and_no_token() -> None:
    ev = events_table(
        [
            (6, None, "GENDER/F"),
            (6, BIRTH, S.BIRTH_CODE),
            (6, "2020-01-01 09:00", "A"),
            (6, "2020-06-01 09:00", S.DEATH_CODE),
        ]
    )
    sv, _ = build_visits(ev, outcomes_table([(6, True, "2020-06-01 09:00")]))
    s = _subject(sv, 6)
    assert _codes(s) == [["A"]]
    # age at the visit: (2020-01-01 09:00 - 1960-01-01) in years of 365.25 days
    days = (np.datetime64("2020-01-01T09:00") - np.datetime64("1960-01-01T00:00")) / np.timedelta64(
        1, "D"
    )
    assert s["visits"][0]["age"] == pytest.approx(days / 365.25, rel=1e-6)


def test_unsorted_rows_and_subject_split_over_the_table_are_regrouped() -> None:
    ev = events_table(
        [
            (7, "2020-02-01 09:00", "B"),
            (8, BIRTH, S.BIRTH_CODE),
            (7, BIRTH, S.BIRTH_CODE),
            (8, "2020-01-01 09:00", "X"),
            (7, "2020-01-01 09:00", "A"),
        ]
    )
    sv, _ = build_visits(ev, outcomes_table([(7, False, "2021-01-01"), (8, False, "2021-01-01")]))
    assert sv.subject_id.tolist() == [7, 8]
    assert _codes(_subject(sv, 7)) == [["A"], ["B"]]
    assert sv.num_visits.tolist() == [2, 1]
    assert sv.last_visit.tolist() == [1, 0]


def test_rejects_no_birth_no_outcome_no_visits() -> None:
    ev = events_table(
        [
            (10, "2020-01-01 09:00", "A"),  # no birth
            (11, BIRTH, S.BIRTH_CODE),
            (11, "2020-01-01 09:00", "A"),  # no outcome row
            (12, BIRTH, S.BIRTH_CODE),
            (12, None, "GENDER/M"),  # no timed events
            (13, BIRTH, S.BIRTH_CODE),
            (13, "2020-01-01 09:00", "A"),
        ]
    )
    out = outcomes_table(
        [(10, False, "2021-01-01"), (12, False, "2021-01-01"), (13, False, "2021-01-01")]
    )
    sv, rej = build_visits(ev, out)
    assert sv.subject_id.tolist() == [13]
    assert dict(
        zip(rej[S.SUBJECT_ID].to_pylist(), rej[S.REJECT_REASON].to_pylist(), strict=True)
    ) == {
        10: REJECT_NO_BIRTH,
        11: REJECT_NO_OUTCOME,
        12: REJECT_NO_VISITS,
    }


def test_pretraining_without_outcomes_keeps_all_visits() -> None:
    ev = events_table([(1, BIRTH, S.BIRTH_CODE), (1, "2020-01-01", "A"), (1, "2020-01-02", "B")])
    sv, rej = build_visits(ev, None)
    assert sv.num_visits.tolist() == [2] and not sv.event.any() and rej.num_rows == 0


@pytest.mark.parametrize(("gran", "expected"), [("day", [["A", "B"]]), ("hour", [["A"], ["B"]])])
def test_granularity(gran: str, expected: list[list[str]]) -> None:
    ev = events_table(
        [(1, BIRTH, S.BIRTH_CODE), (1, "2020-01-01 09:10", "A"), (1, "2020-01-01 10:05", "B")]
    )
    sv, _ = build_visits(ev, outcomes_table([(1, False, "2021-01-01")]), granularity=gran)
    assert _codes(_subject(sv, 1)) == expected


def test_csr_layout_is_consistent() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for sid in range(20):
        rows.append((sid, BIRTH, S.BIRTH_CODE))
        for _ in range(rng.integers(1, 15)):
            day = int(rng.integers(0, 60))
            rows.append(
                (sid, str(np.datetime64("2020-01-01") + np.timedelta64(day, "D")), f"C{day}")
            )
    ev = events_table(rows)
    sv, _ = build_visits(ev, None)
    assert sv.visit_offsets[0] == 0 and sv.visit_offsets[-1] == len(sv.visit_time)
    assert sv.code_offsets[-1] == len(sv.codes) == sum(1 for r in rows if r[2] != S.BIRTH_CODE)
    assert np.all(np.diff(sv.code_offsets) > 0)  # no empty visit
    assert isinstance(sv.codes, pa.Array)


def test_docs_worked_example() -> None:
    """The worked example of docs/data.md, exactly as documented."""
    rows = [
        (7, None, "GENDER/F"),
        (7, "1960-01-01", S.BIRTH_CODE),
        (7, "2020-01-01 09:00", "ICD9CM/250"),
        (7, "2020-01-01 09:30", "RX/100"),
        (7, "2020-02-10 08:00", "LOINC/300"),
        (7, "2020-03-05 14:00", "ICD9CM/428"),
        (7, "2020-03-05 15:00", S.DEATH_CODE),
    ]
    sv, _ = build_visits(events_table(rows), outcomes_table([(7, True, "2020-03-05 15:00")]))
    s = _subject(sv, 7)
    assert _codes(s) == [["ICD9CM/250", "RX/100"], ["LOINC/300"]]
    assert [round(v["age"], 2) for v in s["visits"]] == [60.00, 60.11]
    assert (s["last_visit"], s["event"]) == (1, True)
    sv, _ = build_visits(events_table(rows), outcomes_table([(7, False, "2020-03-05 23:59")]))
    s = _subject(sv, 7)
    assert _codes(s)[-1] == ["ICD9CM/428"] and s["last_visit"] == 2
