"""Visits and survival labels from MEDS events (docs/design.md §1–§2), pure numpy/pyarrow.

A *visit* is the set of a subject's events whose timestamps share the same value truncated to
the granularity (default: calendar day). Within a visit, codes keep their order of appearance.
``MEDS_BIRTH`` sets the age and ``MEDS_DEATH`` is an outcome: neither is an input token, and
static rows (null time) form no visit.

**The leakage cut.** For an **event**, the input history is the visits strictly before the
outcome's visit key (an event on a visit day excludes that visit: nothing at or after the event
enters the model); for a **censored** subject, the visits at or before it (censoring on a visit
day keeps that visit). ``T`` is the index of the last input visit. A subject left with no input
visit is rejected with a reason, never silently dropped.

:func:`group_visits` is the one implementation, built for throughput: codes stay
dictionary-encoded, the sort is skipped when rows already come in (subject, time) order (the
MEDS norm), label look-ups run per subject, and the row-level cut is skipped when it cuts
nothing. ``tests/oracles/visits_reference.py`` states the same rules row by row, and a
randomised test keeps the two equal.

Shape vocabulary: ``N`` subjects, ``NV`` visits, ``NC`` codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import US_PER_YEAR
from ehrsurv_dist.data.events import (
    EventArrays,
    OutcomeArrays,
    dictionary_codes,
    event_arrays,
    lookup,
    sorted_unique,
)
from ehrsurv_dist.data.views import RaggedField
from ehrsurv_dist.ragged import Ragged

GRANULARITY_US: dict[str, int] = {
    "day": 86_400_000_000,
    "hour": 3_600_000_000,
    "minute": 60_000_000,
    "second": 1_000_000,
}

# Reasons written to the rejects file.
REJECT_NO_BIRTH = "no_birth: no MEDS_BIRTH event, age unknown"
REJECT_NO_OUTCOME = "no_outcome: subject has no outcome row"
REJECT_NO_VISITS = "no_visits: no timed events besides birth/death"
REJECT_NO_HISTORY = "no_history: no visit before the outcome"
_REASONS = np.array(
    [REJECT_NO_BIRTH, REJECT_NO_VISITS, REJECT_NO_OUTCOME, REJECT_NO_HISTORY], dtype=object
)
_NO_LIMIT = np.iinfo(np.int64).min


@dataclass
class SubjectLabels:
    """Per-subject survival labels, the part every per-subject container shares.

    Attributes:
        subject_id: int64 [N].
        event: bool [N]; True = event in the interval after visit T.
        last_visit: int64 [N]; T = index of the last input visit.
        extra: more per-row label columns, aligned with ``subject_id`` (the calendar axis's
            ``prediction_time``, ``time_days``, ``prediction_age``: ``schema.CALENDAR_FIELDS``);
            empty on the visit axis. Every selection of rows carries them along.
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict, kw_only=True)

    def extra_take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """``extra`` at rows ``idx``."""
        return {k: v[idx] for k, v in self.extra.items()}

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    def labels_of(self, i: int) -> dict[str, object]:
        """Plain-Python labels of subject ``i``."""
        return {
            "subject_id": int(self.subject_id[i]),
            "event": bool(self.event[i]),
            "last_visit": int(self.last_visit[i]),
            **{k: v[i].item() for k, v in self.extra.items()},
        }


@dataclass
class SubjectVisits(SubjectLabels):
    """Visits of N subjects (sorted by ``subject_id``): labels over a two-level :class:`Ragged`.

    Attributes:
        visits: subjects → visits; its values are ``time`` int64 [NV] (µs of the visit's first
            event), ``age`` float32 [NV] (years at ``time``) and ``codes``, visits → codes
            (a string or dictionary array [NC], in order of appearance). ``visit_offsets``,
            ``visit_time``, ``visit_age``, ``code_offsets``, ``codes`` read its parts.
    """

    visits: Ragged

    num_visits = RaggedField("visits", part="lengths")  # int64 [N]: T + 1 per subject
    visit_offsets = RaggedField("visits", part="offsets")  # int64 [N + 1]
    visit_time = RaggedField("visits", "time")  # int64 [NV]
    visit_age = RaggedField("visits", "age")  # float32 [NV]
    visit_codes = RaggedField("visits", "codes")  # Ragged: visits → codes
    code_offsets = RaggedField("visits", "codes", part="offsets")  # int64 [NV + 1]
    codes = RaggedField("visits", "codes", part="values")  # string or dictionary array [NC]

    @property
    def tokens_per_subject(self) -> np.ndarray:
        """int64 [N]: codes of each subject's visits."""
        co, vo = self.code_offsets, self.visit_offsets
        return co[vo[1:]] - co[vo[:-1]]  # type: ignore[no-any-return]

    def take(self, idx: np.ndarray) -> SubjectVisits:
        """The subjects at positions ``idx`` (in that order), with their visits and codes."""
        idx = np.asarray(idx, dtype=np.int64)
        return SubjectVisits(
            self.subject_id[idx],
            self.event[idx],
            self.last_visit[idx],
            self.visits.take(idx),
            extra=self.extra_take(idx),
        )

    def subject(self, i: int) -> dict[str, object]:
        """Plain-Python view of subject ``i`` (for tests and debugging)."""
        visits = [
            {
                "time": int(self.visit_time[j]),
                "age": float(self.visit_age[j]),
                "codes": self.visit_codes.row(j).to_pylist(),
            }
            for j in range(int(self.visit_offsets[i]), int(self.visit_offsets[i + 1]))
        ]
        return {**self.labels_of(i), "visits": visits}


@dataclass
class GroupedUnit:
    """:func:`group_visits` output: visits (codes as dictionary indices) and rejects.

    Attributes:
        visits: the kept subjects' visits; ``visits.codes`` is a dictionary array.
        dictionary: string array of the distinct codes.
        reject_subjects: int64 [K], sorted.
        reject_reasons: object [K] (reason strings).
    """

    visits: SubjectVisits
    dictionary: pa.Array
    reject_subjects: np.ndarray
    reject_reasons: np.ndarray

    def rejects_table(self) -> pa.Table:
        """``subject_id``, ``reason`` of every rejected subject."""
        return pa.table(
            {
                S.SUBJECT_ID: pa.array(self.reject_subjects, pa.int64()),
                S.REJECT_REASON: pa.array(self.reject_reasons.tolist(), pa.string()),
            }
        )


@dataclass
class _TokenRows:
    """Input-token rows in (subject, visit key) order: row index, subject, time, visit key."""

    rows: np.ndarray
    sid: np.ndarray
    tu: np.ndarray
    key: np.ndarray

    def take(self, sel: np.ndarray) -> _TokenRows:
        return _TokenRows(self.rows[sel], self.sid[sel], self.tu[sel], self.key[sel])

    def subject_starts(self) -> np.ndarray:
        """bool [n]: the row starts a subject's run."""
        new_s = np.empty(len(self.rows), dtype=bool)
        new_s[:1] = True
        np.not_equal(self.sid[1:], self.sid[:-1], out=new_s[1:])
        return new_s


def _births(ev: EventArrays, is_birth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted subjects with a timed MEDS_BIRTH, int64 µs of their earliest one)."""
    bsel = np.flatnonzero(is_birth[ev.code_index] & ~ev.time_null)
    b_sid, b_tu = ev.subject_id[bsel], ev.time_us[bsel]
    if len(b_sid) > 1 and not bool(np.all(b_sid[1:] > b_sid[:-1])):
        o = np.lexsort((b_tu, b_sid))
        b_sid, b_tu = b_sid[o], b_tu[o]
        first = np.concatenate([[True], b_sid[1:] != b_sid[:-1]])
        b_sid, b_tu = b_sid[first], b_tu[first]
    return b_sid, b_tu


def _token_rows(ev: EventArrays, skip: np.ndarray, g: int) -> _TokenRows:
    """Timed rows whose code is an input token, stably sorted by (subject, visit key); the
    sort keeps codes in their order of appearance and is skipped when rows are in order."""
    rows = np.flatnonzero(~(ev.time_null | skip[ev.code_index]))
    r_tu = ev.time_us[rows]
    tr = _TokenRows(rows, ev.subject_id[rows], r_tu, np.floor_divide(r_tu, g))
    s, k = tr.sid, tr.key
    if len(rows) > 1 and not bool(
        np.all((s[1:] > s[:-1]) | ((s[1:] == s[:-1]) & (k[1:] >= k[:-1])))
    ):
        tr = tr.take(np.lexsort((k, s)))
    return tr


def _history_limits(
    subjects: np.ndarray, b_sid: np.ndarray, outcomes: OutcomeArrays | None, g: int
) -> np.ndarray:
    """int64 [n]: the last visit key each subject's history may hold (the leakage cut).

    Events keep visits strictly before the outcome's key, censored subjects those at or before
    it; subjects without a birth (or, with outcomes, without a usable outcome) get no visit.
    """
    _, keep = lookup(subjects, b_sid)
    limit = np.full(len(subjects), np.iinfo(np.int64).max, dtype=np.int64)
    if outcomes is not None:
        opos, has_out = lookup(subjects, outcomes.subject_id)
        if len(outcomes.subject_id):
            has_out &= outcomes.ok[opos]
            okey = np.floor_divide(outcomes.time_us[opos], g)
            limit = np.where(outcomes.event[opos], okey - 1, okey)
        keep = keep & has_out
    return np.where(keep, limit, _NO_LIMIT)


def _cut_history(tr: _TokenRows, new_s: np.ndarray, limit: np.ndarray) -> _TokenRows | None:
    """The rows within their subject's limit; None when nothing is cut. Keys are sorted within
    a subject, so comparing each subject's last key settles the common case without a pass
    over the rows."""
    s_start = np.flatnonzero(new_s)
    run_len = np.diff(np.append(s_start, len(tr.rows)))
    last_key = tr.key[s_start + run_len - 1] if len(tr.rows) else tr.key
    if bool(np.all(last_key <= limit)):
        return None
    return tr.take(tr.key <= np.repeat(limit, run_len))


def _rejects(
    all_subjects: np.ndarray,
    kept: np.ndarray,
    b_sid: np.ndarray,
    tok_subjects: np.ndarray,
    outcomes: OutcomeArrays | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted rejected subjects, reasons); the first reason wins: no birth, no visits, no
    outcome, no history."""
    if len(all_subjects) == len(kept):  # every subject kept (kept ⊆ all_subjects)
        return all_subjects[:0], _REASONS[:0]
    reason = np.full(len(all_subjects), -1, dtype=np.int64)
    _, has_b_all = lookup(all_subjects, b_sid)
    _, has_tok_all = lookup(all_subjects, tok_subjects)
    _, kept_all = lookup(all_subjects, kept)
    reason[~has_b_all] = 0
    reason[(reason < 0) & ~has_tok_all] = 1
    if outcomes is not None:
        _, has_ok_all = lookup(all_subjects, outcomes.subject_id[outcomes.ok])
        reason[(reason < 0) & ~has_ok_all] = 2
        reason[(reason < 0) & has_ok_all & ~kept_all] = 3
    rej = reason >= 0
    return all_subjects[rej], _REASONS[reason[rej]]


def input_code_classes(dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(is_birth, skip): bool [K + 1] per dictionary code (extra slot: the null code) —
    ``MEDS_BIRTH``, and the codes that are no input token (``MEDS_BIRTH``, ``MEDS_DEATH``)."""
    dnames = np.asarray(dictionary.to_numpy(zero_copy_only=False), dtype=object)
    is_birth = np.append(dnames == S.BIRTH_CODE, False)
    return is_birth, is_birth | np.append(dnames == S.DEATH_CODE, False)


def group_visits(
    ev: EventArrays,
    outcomes: OutcomeArrays | None,
    granularity: str = "day",
) -> GroupedUnit:
    """Visits and survival labels of every subject in ``ev``, cut at the outcome.

    Args:
        ev: all rows of the unit's subjects (any order; every subject must be complete).
        outcomes: outcome rows (may hold other subjects); None for pretraining (all visits kept,
            ``event`` False).
        granularity: one of :data:`GRANULARITY_US`.

    Returns:
        A :class:`GroupedUnit`; ``visits.codes`` is a dictionary array of the codes.
    """
    g = GRANULARITY_US[granularity]
    is_birth, skip = input_code_classes(ev.dictionary)
    all_subjects = sorted_unique(ev.subject_id)
    if outcomes is not None and len(all_subjects):
        outcomes = outcomes.between(int(all_subjects[0]), int(all_subjects[-1]))
    b_sid, b_tu = _births(ev, is_birth)
    tr = _token_rows(ev, skip, g)
    return group_token_rows(
        tr, ev.code_index, ev.dictionary, b_sid, b_tu, all_subjects, outcomes, g
    )


def token_rows(rows: np.ndarray, sid: np.ndarray, tu: np.ndarray, key: np.ndarray) -> _TokenRows:
    """Input-token rows a caller has already selected and sorted by (subject, visit key), codes
    in order of appearance within a visit (e.g. the calendar axis's as-of cut): ``rows`` index
    the code array given to :func:`group_token_rows`."""
    return _TokenRows(rows, sid, tu, key)


def group_token_rows(
    tr: _TokenRows,
    code_index: np.ndarray,
    dictionary: pa.Array,
    b_sid: np.ndarray,
    b_tu: np.ndarray,
    all_subjects: np.ndarray,
    outcomes: OutcomeArrays | None,
    granularity_us: int,
) -> GroupedUnit:
    """:func:`group_visits` after its row selection: visits and labels from input-token rows
    in (subject, visit key) order.

    Args:
        tr: the token rows (see :func:`token_rows`).
        code_index: int32 code of every row ``tr.rows`` indexes, into ``dictionary``.
        dictionary: the codes.
        b_sid, b_tu: sorted subjects with a birth, and its time (µs).
        all_subjects: sorted: every subject of the unit (rejects name those left out).
        outcomes: outcome rows of these subjects, or None (all visits kept, no event).
        granularity_us: the visit granularity in µs (``tr.key`` = time // it).
    """
    new_s = tr.subject_starts()
    tok_subjects = tr.sid[new_s]  # subjects with at least one token row
    limit = _history_limits(tok_subjects, b_sid, outcomes, granularity_us)
    cut = _cut_history(tr, new_s, limit)
    if cut is not None:
        tr, new_s = cut, cut.subject_starts()

    new_v = new_s.copy()
    if len(tr.rows) > 1:
        new_v[1:] |= tr.key[1:] != tr.key[:-1]
    visit_start = np.flatnonzero(new_v)
    subjects = tr.sid[new_s]
    visit_offsets = np.append(np.flatnonzero(new_s[visit_start]), len(visit_start))
    nv = np.diff(visit_offsets)
    visit_time = tr.tu[visit_start]
    bpos, _ = lookup(subjects, b_sid)
    b_time_v = np.repeat(b_tu[bpos], nv) if len(subjects) else np.zeros(0, np.int64)
    visit_age = ((visit_time - b_time_v) / US_PER_YEAR).astype(np.float32)
    if outcomes is not None and len(outcomes.subject_id):
        event = outcomes.event[lookup(subjects, outcomes.subject_id)[0]].copy()
    else:
        event = np.zeros(len(subjects), dtype=bool)

    codes = Ragged(
        dictionary_codes(code_index[tr.rows], dictionary), np.append(visit_start, len(tr.rows))
    )
    visits = SubjectVisits(
        subject_id=subjects,
        event=event,
        last_visit=(nv - 1).astype(np.int64),
        visits=Ragged({"time": visit_time, "age": visit_age, "codes": codes}, visit_offsets),
    )
    rej_sid, rej_reason = _rejects(all_subjects, subjects, b_sid, tok_subjects, outcomes)
    return GroupedUnit(visits, dictionary, rej_sid, rej_reason)


def build_visits(
    events: pa.Table, outcomes: pa.Table | None, granularity: str = "day"
) -> tuple[SubjectVisits, pa.Table]:
    """Visits and labels of a MEDS events table (:func:`group_visits` on Arrow tables).

    Args:
        events: columns ``subject_id`` int64, ``time`` timestamp[us], ``code`` string (or
            dictionary); rows of a subject may be unsorted and spread over the table.
        outcomes: ``subject_id``, ``event`` bool, ``time`` timestamp[us]; ``None`` for
            pretraining (all visits kept, ``event`` False).
        granularity: one of :data:`GRANULARITY_US`.

    Returns:
        ``(visits, rejects)``; ``visits.codes`` are strings; ``rejects`` has ``subject_id`` and
        ``reason`` for every subject of ``events`` that is not in ``visits``.
    """
    gu = group_visits(
        event_arrays(events),
        OutcomeArrays.from_table(outcomes) if outcomes is not None else None,
        granularity,
    )
    sv = gu.visits
    codes = sv.visit_codes.with_values(sv.codes.cast(pa.string()))
    visits = Ragged({"time": sv.visit_time, "age": sv.visit_age, "codes": codes}, sv.visit_offsets)
    return SubjectVisits(sv.subject_id, sv.event, sv.last_visit, visits), gu.rejects_table()
