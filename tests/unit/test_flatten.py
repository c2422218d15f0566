"""Grouping (against the reference oracle), flattening, truncation and the hierarchical layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.blocks import flat_from_arrow, flat_to_arrow, hier_from_arrow, hier_to_arrow
from ehrsurv_dist.data.layouts import Limits, flatten, to_hierarchical
from ehrsurv_dist.data.visits import SubjectVisits, build_visits
from ehrsurv_dist.testing import events_table, outcomes_table
from tests.oracles.visits_reference import build_visits_reference

BIRTH = "1960-01-01"


def _same_visits(a: SubjectVisits, b: SubjectVisits) -> None:
    for name in (
        "subject_id",
        "event",
        "last_visit",
        "visit_offsets",
        "visit_time",
        "visit_age",
        "code_offsets",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.codes.cast(pa.string()).equals(b.codes.cast(pa.string()))


def _random_cohort(seed: int) -> tuple[pa.Table, pa.Table]:
    """Messy events: unsorted rows, statics, deaths, missing births/outcomes, same-day events."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, str | None, str]] = []
    outs: list[tuple[int, bool, str]] = []
    for s in range(1, 41):
        if rng.random() > 0.1:
            rows.append((s, f"19{rng.integers(30, 90)}-0{rng.integers(1, 9)}-01", S.BIRTH_CODE))
        rows.append((s, None, "GENDER/F"))
        n = int(rng.integers(0, 12))
        for _ in range(n):
            day = int(rng.integers(1, 28))
            hour = int(rng.integers(0, 24))
            rows.append(
                (s, f"2020-0{rng.integers(1, 4)}-{day:02d} {hour:02d}:00", f"C{rng.integers(0, 6)}")
            )
        if rng.random() < 0.2:
            rows.append((s, "2020-03-15 12:00", S.DEATH_CODE))
        if rng.random() > 0.1:
            day = int(rng.integers(1, 28))
            outs.append(
                (s, bool(rng.random() < 0.5), f"2020-0{rng.integers(1, 4)}-{day:02d} 12:00")
            )
    order = rng.permutation(len(rows)) if seed % 2 else np.arange(len(rows))
    return events_table([rows[i] for i in order]), outcomes_table(outs)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("granularity", ["day", "hour"])
def test_group_visits_matches_the_reference_oracle(seed: int, granularity: str) -> None:
    ev, out = _random_cohort(seed)
    sv_ref, rej_ref = build_visits_reference(ev, out, granularity)
    sv, rej = build_visits(ev, out, granularity)
    _same_visits(sv, sv_ref)
    assert rej.equals(rej_ref)
    # dictionary-encoded input and no outcomes (pretraining) agree too
    ev_d = ev.set_column(2, S.CODE, ev[S.CODE].dictionary_encode())
    sv2, rej2 = build_visits(ev_d, None, granularity)
    sv2_ref, rej2_ref = build_visits_reference(ev, None, granularity)
    _same_visits(sv2, sv2_ref)
    assert rej2.equals(rej2_ref)


def _seed_example() -> tuple[SubjectVisits, np.ndarray]:
    """docs/data.md: [250,401,500]@62, [250,428]@62, [428]@63 (ids = the numbers)."""
    ev = events_table(
        [
            (1, "1958-01-01", S.BIRTH_CODE),
            (1, "2020-01-02 09:00", "250"),
            (1, "2020-01-02 09:00", "401"),
            (1, "2020-01-02 10:00", "500"),
            (1, "2020-06-01 09:00", "250"),
            (1, "2020-06-01 09:00", "428"),
            (1, "2021-01-05 09:00", "428"),
        ]
    )
    sv, _ = build_visits(ev, outcomes_table([(1, True, "2021-06-01")]))
    ids = np.array([int(c) for c in sv.codes.to_pylist()], dtype=np.int32)
    return sv, ids


def test_flatten_seed_example() -> None:
    sv, ids = _seed_example()
    ft = flatten(sv, ids)
    s = ft.subject(0)
    assert s["codes"] == [250, 401, 500, 250, 428, 428]
    assert s["visit_ids"] == [0, 0, 0, 1, 1, 2]
    assert [round(a) for a in s["ages"]] == [62, 62, 62, 62, 62, 63]
    assert s["last_visit"] == 2 and s["event"] is True
    assert not ft.truncated[0]


def test_keep_recent_cuts_tokens_rebases_visits_and_shifts_last_visit() -> None:
    sv, ids = _seed_example()
    ft = flatten(sv, ids, Limits(max_seq_len=4, truncation="keep_recent"))
    s = ft.subject(0)
    # the last 4 tokens: visit 0 keeps its last code only, visits are rebased to 0
    assert s["codes"] == [500, 250, 428, 428]
    assert s["visit_ids"] == [0, 1, 1, 2]
    assert s["last_visit"] == 2 and s["event"] is True
    assert ft.truncated[0]
    ft = flatten(sv, ids, Limits(max_seq_len=3, truncation="keep_recent"))
    assert ft.subject(0)["visit_ids"] == [0, 0, 1] and ft.last_visit[0] == 1
    ft = flatten(sv, ids, Limits(max_visits=1, truncation="keep_recent"))
    assert ft.subject(0)["codes"] == [428] and ft.last_visit[0] == 0 and ft.event[0]


def test_keep_oldest_censors_when_the_last_visit_is_cut() -> None:
    sv, ids = _seed_example()
    ft = flatten(sv, ids, Limits(max_seq_len=4, truncation="keep_oldest"))
    s = ft.subject(0)
    assert s["codes"] == [250, 401, 500, 250] and s["visit_ids"] == [0, 0, 0, 1]
    assert s["last_visit"] == 1 and s["event"] is False  # the event came after visit 2
    ft = flatten(sv, ids, Limits(max_seq_len=5, truncation="keep_oldest"))
    assert ft.last_visit[0] == 1 and not ft.event[0]
    ft = flatten(sv, ids, Limits(max_seq_len=512, truncation="keep_oldest"))
    assert ft.last_visit[0] == 2 and ft.event[0]  # nothing cut: label kept


def test_flatten_many_subjects_vectorised_equals_per_subject() -> None:
    ev, out = _random_cohort(3)
    sv, _ = build_visits(ev, out)
    ids = np.arange(len(sv.codes), dtype=np.int32) + 10  # a distinct id per code occurrence
    for trunc in ("keep_recent", "keep_oldest"):
        ft = flatten(sv, ids, Limits(max_seq_len=5, max_visits=3, truncation=trunc))  # type: ignore[arg-type]
        for i in range(sv.num_subjects):
            v0, v1 = sv.visit_offsets[i], sv.visit_offsets[i + 1]
            visits = [
                list(range(sv.code_offsets[j], sv.code_offsets[j + 1])) for j in range(v0, v1)
            ]
            visits = visits[-3:] if trunc == "keep_recent" else visits[:3]
            toks = [(t, vi) for vi, v in enumerate(visits) for t in v]
            toks = toks[-5:] if trunc == "keep_recent" else toks[:5]
            first = toks[0][1]
            s = ft.subject(i)
            assert s["codes"] == [int(ids[t]) for t, _ in toks]
            assert s["visit_ids"] == [vi - first for _, vi in toks]
            assert s["last_visit"] == toks[-1][1] - first


def test_hierarchical_caps_deltas_and_rebasing() -> None:
    sv, ids = _seed_example()
    vt = to_hierarchical(sv, ids, Limits(max_visits=2, max_codes_per_visit=1))
    assert vt.num_visits.tolist() == [2]
    assert vt.codes.tolist() == [250, 428]  # first code of each of the last 2 visits
    assert vt.last_visit.tolist() == [1] and vt.event.tolist() == [True]
    assert vt.time_deltas[0] == 0.0
    assert vt.time_deltas[1] == pytest.approx(218.0)  # 2020-06-01 -> 2021-01-05
    assert vt.truncated.tolist() == [True]
    full = to_hierarchical(sv, ids)
    assert full.visit_sizes.tolist() == [3, 2, 1] and not full.truncated[0]
    old = to_hierarchical(sv, ids, Limits(max_visits=2, truncation="keep_oldest"))
    assert old.last_visit.tolist() == [1] and old.event.tolist() == [False]


def test_wire_format_roundtrip() -> None:
    ev, out = _random_cohort(4)
    sv, _ = build_visits(ev, out)
    ids = np.arange(len(sv.codes), dtype=np.int32) + 3
    ft = flatten(sv, ids, Limits(max_seq_len=6))
    back = flat_from_arrow(flat_to_arrow(ft, unit=7))
    names = ("subject_id", "event", "last_visit", "truncated", "offsets", "codes", "ages")
    for name in (*names, "visit_ids"):
        a, b = getattr(ft, name), getattr(back, name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype, name
    # a sliced table (as Ray may hand over) decodes the same rows
    t = flat_to_arrow(ft, unit=7).slice(2, 5)
    part = flat_from_arrow(t)
    assert part.subject(0) == ft.subject(2)
    vt = to_hierarchical(sv, ids, Limits(max_codes_per_visit=2))
    vb = hier_from_arrow(hier_to_arrow(vt, unit=1))
    for name in ("visit_offsets", "visit_ages", "time_deltas", "code_offsets", "codes", "event"):
        np.testing.assert_array_equal(getattr(vt, name), getattr(vb, name), err_msg=name)
