"""Visits and survival labels from MEDS events (DESIGN.md §1–§2), pure numpy/pyarrow.

A *visit* is the set of a subject's events whose timestamps share the same value truncated to
the granularity (default: calendar day). Within a visit, codes keep their order of appearance.
``MEDS_BIRTH`` sets the age and ``MEDS_DEATH`` is an outcome: neither is an input token, and
static rows (null time) form no visit.

Labels: for an **event**, the input history is the visits strictly before the outcome's visit
key (an event on a visit day excludes that visit); for a **censored** subject, the visits at or
before it (censoring on a visit day keeps that visit). ``T`` is the index of the last input
visit. A subject left with no input visit is rejected with a reason, never silently dropped.

Everything is vectorised over all subjects at once (no per-subject Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S

GRANULARITY_US: dict[str, int] = {
    "day": 86_400_000_000,
    "hour": 3_600_000_000,
    "minute": 60_000_000,
    "second": 1_000_000,
}
US_PER_YEAR = 365.25 * 86_400 * 1_000_000

# Reasons written to the rejects file.
REJECT_NO_BIRTH = "no_birth: no MEDS_BIRTH event, age unknown"
REJECT_NO_OUTCOME = "no_outcome: subject has no outcome row"
REJECT_NO_VISITS = "no_visits: no timed events besides birth/death"
REJECT_NO_HISTORY = "no_history: no visit before the outcome"


@dataclass
class SubjectVisits:
    """Visits of many subjects in CSR layout (offsets into flat arrays).

    Attributes:
        subject_id: int64 [N], sorted ascending.
        event: bool [N]; True = event in the interval after visit T.
        last_visit: int64 [N]; T = index of the last input visit (``num_visits - 1``).
        visit_offsets: int64 [N + 1]; visits of subject i are ``visit_offsets[i]:[i + 1]``.
        visit_time: int64 [NV]; time (µs since epoch) of the visit's first event.
        visit_age: float32 [NV]; age in years at ``visit_time``.
        code_offsets: int64 [NV + 1]; codes of visit j are ``codes[code_offsets[j]:[j + 1]]``.
        codes: string array [NC]; the visit's codes in order of appearance.
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    visit_offsets: np.ndarray
    visit_time: np.ndarray
    visit_age: np.ndarray
    code_offsets: np.ndarray
    codes: pa.Array

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    @property
    def num_visits(self) -> np.ndarray:
        """int64 [N]: T + 1 per subject."""
        return np.diff(self.visit_offsets)

    def subject(self, i: int) -> dict[str, object]:
        """Plain-Python view of subject ``i`` (for tests and debugging)."""
        v0, v1 = int(self.visit_offsets[i]), int(self.visit_offsets[i + 1])
        visits = []
        for j in range(v0, v1):
            c0, c1 = int(self.code_offsets[j]), int(self.code_offsets[j + 1])
            visits.append(
                {
                    "time": int(self.visit_time[j]),
                    "age": float(self.visit_age[j]),
                    "codes": self.codes[c0:c1].to_pylist(),
                }
            )
        return {
            "subject_id": int(self.subject_id[i]),
            "event": bool(self.event[i]),
            "last_visit": int(self.last_visit[i]),
            "visits": visits,
        }


def _bool(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def time_us(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 µs with nulls as 0, bool null mask), straight from the Arrow buffers."""
    arr = col.cast(pa.timestamp("us")).cast(pa.int64())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    if arr.null_count == 0:
        return np.asarray(arr.to_numpy(), dtype=np.int64), np.zeros(n, dtype=bool)
    validity, data = arr.buffers()[0], arr.buffers()[1]
    off = arr.offset
    vals = np.frombuffer(data, dtype=np.int64, count=off + n)[off:]
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
    valid = bits[off : off + n].view(bool)
    return np.where(valid, vals, 0), ~valid


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in sorted ``table_keys`` and whether each was found."""
    if len(table_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(table_keys, keys)
    pos_c = np.minimum(pos, len(table_keys) - 1)
    return pos_c, table_keys[pos_c] == keys


def build_visits(
    events: pa.Table,
    outcomes: pa.Table | None,
    granularity: str = "day",
) -> tuple[SubjectVisits, pa.Table]:
    """Group MEDS events into visits and cut each history at its outcome.

    Args:
        events: columns ``subject_id`` int64, ``time`` timestamp[us], ``code`` string; rows of a
            subject may be unsorted and spread over the table (they are re-grouped).
        outcomes: ``subject_id``, ``event`` bool, ``time`` timestamp[us], one row per subject;
            ``None`` for pretraining (all visits kept, ``event`` False).
        granularity: one of :data:`GRANULARITY_US`.

    Returns:
        ``(visits, rejects)``; ``rejects`` has ``subject_id`` and ``reason`` for every subject
        that appears in ``events`` (or ``outcomes``) but not in ``visits``.
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
    _, has_birth = _lookup(r_sid, b_subj)
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
        opos, has_out = _lookup(r_sid, o_sid)
        has_out &= o_ok[opos]
        ev_row = o_ev[opos]
        okey_row = o_key[opos]
        in_hist = np.where(ev_row, r_key < okey_row, r_key <= okey_row)
        keep = keep & has_out & in_hist

    rows, r_sid, r_key = rows[keep], r_sid[keep], r_key[keep]
    # Stable sort by (subject, visit key): codes keep their order of appearance in a visit.
    order = np.lexsort((r_key, r_sid))
    rows, r_sid, r_key = rows[order], r_sid[order], r_key[order]
    r_time = tu[rows]

    n_rows = len(rows)
    new_subj = np.ones(n_rows, dtype=bool)
    new_visit = np.ones(n_rows, dtype=bool)
    if n_rows > 1:
        new_subj[1:] = r_sid[1:] != r_sid[:-1]
        new_visit[1:] = new_subj[1:] | (r_key[1:] != r_key[:-1])
    visit_start = np.flatnonzero(new_visit)
    subj_start_rows = np.flatnonzero(new_subj)
    subjects = r_sid[subj_start_rows]
    # visit index of each subject's first visit = cumulative count of visits before it
    visit_of_row = np.cumsum(new_visit) - 1
    visit_offsets = np.append(visit_of_row[subj_start_rows], len(visit_start)).astype(np.int64)
    code_offsets = np.append(visit_start, n_rows).astype(np.int64)
    visit_time = r_time[visit_start]
    bpos_v, _ = _lookup(r_sid[visit_start], b_subj)
    visit_age = ((visit_time - b_time[bpos_v]) / US_PER_YEAR).astype(np.float32)

    if outcomes is not None:
        opos_s, _ = _lookup(subjects, o_sid)
        event = o_ev[opos_s].copy()
        lost = np.setdiff1d(np.intersect1d(o_sid[o_ok], all_subjects), subjects)
        for s in lost:
            rejects.setdefault(int(s), REJECT_NO_HISTORY)
    else:
        event = np.zeros(len(subjects), dtype=bool)
    last_visit = (np.diff(visit_offsets) - 1).astype(np.int64)

    visits = SubjectVisits(
        subject_id=subjects,
        event=event,
        last_visit=last_visit,
        visit_offsets=visit_offsets,
        visit_time=visit_time,
        visit_age=visit_age,
        code_offsets=code_offsets,
        codes=pc.take(codes, pa.array(rows)).combine_chunks()
        if isinstance(codes, pa.ChunkedArray)
        else pc.take(codes, pa.array(rows)),
    )
    rej_ids = np.array(sorted(rejects), dtype=np.int64)
    rej = pa.table(
        {
            S.SUBJECT_ID: pa.array(rej_ids, pa.int64()),
            S.REJECT_REASON: pa.array([rejects[int(s)] for s in rej_ids], pa.string()),
        }
    )
    return visits, rej


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths  # output position where each range starts
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total)


def select_subjects(sv: SubjectVisits, idx: np.ndarray) -> SubjectVisits:
    """The subjects at positions ``idx`` (in that order), with their visits and codes."""
    idx = np.asarray(idx, dtype=np.int64)
    v0 = sv.visit_offsets[idx]
    nv = sv.visit_offsets[idx + 1] - v0
    vis = concat_ranges(v0, nv)
    c0 = sv.code_offsets[vis]
    nc = sv.code_offsets[vis + 1] - c0
    cod = concat_ranges(c0, nc)
    return SubjectVisits(
        subject_id=sv.subject_id[idx],
        event=sv.event[idx],
        last_visit=sv.last_visit[idx],
        visit_offsets=np.concatenate([[0], np.cumsum(nv)]).astype(np.int64),
        visit_time=sv.visit_time[vis],
        visit_age=sv.visit_age[vis],
        code_offsets=np.concatenate([[0], np.cumsum(nc)]).astype(np.int64),
        codes=pc.take(sv.codes, pa.array(cod, pa.int64())),
    )
