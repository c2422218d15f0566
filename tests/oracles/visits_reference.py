"""Reference oracle for visits and labels: the straightforward row-level implementation.

``ehrsurv_dist.data.visits.group_visits`` is the product implementation (built for throughput:
per-subject label look-ups, sorts skipped when rows are in order, row-level cut skipped when
nothing is cut). This module states the same semantics (docs/design.md §1–§2) directly, one boolean
per row, and a randomised test checks that both agree: the leakage cut keeps, for an **event**,
the visits strictly before the outcome's visit key and, for a **censored** subject, the visits
at or before it; nothing at or after the event enters the model.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_YEAR
from ehrsurv_dist.data.events import lookup, time_us
from ehrsurv_dist.data.visits import (
    GRANULARITY_US,
    REJECT_NO_BIRTH,
    REJECT_NO_HISTORY,
    REJECT_NO_OUTCOME,
    REJECT_NO_VISITS,
    SubjectVisits,
)
from ehrsurv_dist.ragged import Ragged


def _bool(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def build_visits_reference(
    events: pa.Table,
    outcomes: pa.Table | None,
    granularity: str = "day",
) -> tuple[SubjectVisits, pa.Table]:
    """Group MEDS events into visits and cut each history at its outcome (row by row).

    Args:
        events: columns ``subject_id`` int64, ``time`` timestamp[us], ``code`` string; rows of a
            subject may be unsorted and spread over the table.
        outcomes: ``subject_id``, ``event`` bool, ``time`` timestamp[us]; ``None`` for
            pretraining (all visits kept, ``event`` False).
        granularity: one of ``GRANULARITY_US``.

    Returns:
        ``(visits, rejects)`` as ``ehrsurv_dist.data.visits.build_visits`` returns them.
    """
    g = GRANULARITY_US[granularity]
    sid = np.asarray(events[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    tu, tnull = time_us(events[S.TIME])
    codes = events[S.CODE]
    is_birth = _bool(pc.equal(codes, S.BIRTH_CODE))
    is_death = _bool(pc.equal(codes, S.DEATH_CODE))
    all_subjects = np.unique(sid)

    # Birth per subject (earliest MEDS_BIRTH with a time).
    bsel = is_birth & ~tnull
    order_b = np.lexsort((tu[bsel], sid[bsel]))
    b_subj, b_first = np.unique(sid[bsel][order_b], return_index=True)
    b_time = tu[bsel][order_b][b_first]

    tok = ~tnull & ~is_birth & ~is_death
    rows = np.flatnonzero(tok)
    r_sid = sid[rows]
    r_key = np.floor_divide(tu[rows], g)

    rejects: dict[int, str] = {}
    _, has_birth = lookup(r_sid, b_subj)
    for s in np.setdiff1d(all_subjects, b_subj):
        rejects[int(s)] = REJECT_NO_BIRTH
    for s in np.setdiff1d(all_subjects, np.unique(r_sid)):
        rejects.setdefault(int(s), REJECT_NO_VISITS)
    keep = has_birth

    if outcomes is not None:
        o_sid = np.asarray(outcomes[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
        o_order = np.argsort(o_sid, kind="stable")
        o_sid = o_sid[o_order]
        o_ev = _bool(outcomes[S.OUTCOME_EVENT])[o_order]
        o_tu, o_null = time_us(outcomes[S.OUTCOME_TIME])
        o_key = np.floor_divide(o_tu[o_order], g)
        o_ok = ~o_null[o_order]
        for s in np.setdiff1d(all_subjects, o_sid[o_ok]):
            rejects.setdefault(int(s), REJECT_NO_OUTCOME)
        opos, has_out = lookup(r_sid, o_sid)
        has_out &= o_ok[opos]
        in_hist = np.where(o_ev[opos], r_key < o_key[opos], r_key <= o_key[opos])
        keep = keep & has_out & in_hist

    rows, r_sid, r_key = rows[keep], r_sid[keep], r_key[keep]
    # Stable sort by (subject, visit key): codes keep their order of appearance in a visit.
    order = np.lexsort((r_key, r_sid))
    rows, r_sid, r_key = rows[order], r_sid[order], r_key[order]

    n_rows = len(rows)
    new_subj = np.ones(n_rows, dtype=bool)
    new_visit = np.ones(n_rows, dtype=bool)
    if n_rows > 1:
        new_subj[1:] = r_sid[1:] != r_sid[:-1]
        new_visit[1:] = new_subj[1:] | (r_key[1:] != r_key[:-1])
    visit_start = np.flatnonzero(new_visit)
    subj_start_rows = np.flatnonzero(new_subj)
    subjects = r_sid[subj_start_rows]
    visit_of_row = np.cumsum(new_visit) - 1
    visit_offsets = np.append(visit_of_row[subj_start_rows], len(visit_start)).astype(np.int64)
    visit_time = tu[rows][visit_start]
    bpos_v, _ = lookup(r_sid[visit_start], b_subj)
    visit_age = ((visit_time - b_time[bpos_v]) / US_PER_YEAR).astype(np.float32)

    if outcomes is not None:
        opos_s, _ = lookup(subjects, o_sid)
        event = o_ev[opos_s].copy()
        lost = np.setdiff1d(np.intersect1d(o_sid[o_ok], all_subjects), subjects)
        for s in lost:
            rejects.setdefault(int(s), REJECT_NO_HISTORY)
    else:
        event = np.zeros(len(subjects), dtype=bool)

    taken = pc.take(codes, pa.array(rows))
    codes_r = Ragged(
        taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken,
        np.append(visit_start, n_rows),
    )
    visits = SubjectVisits(
        subject_id=subjects,
        event=event,
        last_visit=(np.diff(visit_offsets) - 1).astype(np.int64),
        visits=Ragged({"time": visit_time, "age": visit_age, "codes": codes_r}, visit_offsets),
    )
    rej_ids = np.array(sorted(rejects), dtype=np.int64)
    rej = pa.table(
        {
            S.SUBJECT_ID: pa.array(rej_ids, pa.int64()),
            S.REJECT_REASON: pa.array([rejects[int(s)] for s in rej_ids], pa.string()),
        }
    )
    return visits, rej
