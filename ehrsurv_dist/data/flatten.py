"""From MEDS events to per-subject token sequences (CSR), vectorised, pure numpy/pyarrow.

Two steps, each over all subjects of a unit at once (no per-event or per-subject Python loop):

1. :func:`group_visits` — the same visits and labels as :func:`visits.build_visits` (same
   semantics, same output, checked by a test), but built for throughput: codes stay
   dictionary-encoded (one integer per row), the sort is skipped when the rows are already in
   (subject, time) order (the MEDS norm), and label look-ups run per subject, not per row.
2. :func:`flatten` (flat BEHRT layout, seed-spec §1.3) or :func:`to_hierarchical`
   (visit × code layout, seed-spec §1.5) — vocabulary ids, truncation and visit-id rebasing.

Truncation (``keep_recent``, the default): keep the last ``max_visits`` visits, then the last
``max_seq_len`` tokens of those; the cut is at token level, so the oldest kept visit may keep only
its last codes (seed-spec §1.3 keeps the last L_max tokens). Visit ids are rebased so that the
oldest kept visit is 0; ``last_visit`` = kept visits − 1. The last visit is always kept, so the
event label is unchanged.

``keep_oldest``: keep the first ``max_visits`` visits, then the first ``max_seq_len`` tokens. When
this removes the last visit, the outcome happened after visits the model no longer sees: the
subject becomes **censored at its last kept visit** (``event=False``), which uses only the
intervals we can vouch for. (If only codes of the last visit are cut, the label is unchanged.)

Shape vocabulary: ``N`` subjects, ``NV`` visits, ``NT`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.visits import (
    GRANULARITY_US,
    REJECT_NO_BIRTH,
    REJECT_NO_HISTORY,
    REJECT_NO_OUTCOME,
    REJECT_NO_VISITS,
    US_PER_YEAR,
    SubjectVisits,
    concat_ranges,
    time_us,
)

Truncation = Literal["keep_recent", "keep_oldest"]
DAY_US = 86_400_000_000

# --------------------------------------------------------------------------------------------
# Column arrays


@dataclass
class EventArrays:
    """The three MEDS columns of a unit as numpy arrays (codes dictionary-encoded).

    Attributes:
        subject_id: int64 [R].
        time_us: int64 [R]; microseconds since the epoch, 0 where ``time_null``.
        time_null: bool [R]; static rows.
        code_index: int32 [R]; index into ``dictionary``; ``len(dictionary)`` for a null code.
        dictionary: string array [K] of the distinct codes.
    """

    subject_id: np.ndarray
    time_us: np.ndarray
    time_null: np.ndarray
    code_index: np.ndarray
    dictionary: pa.Array

    @property
    def num_rows(self) -> int:
        return len(self.subject_id)

    def take(self, rows: np.ndarray) -> EventArrays:
        return EventArrays(
            self.subject_id[rows],
            self.time_us[rows],
            self.time_null[rows],
            self.code_index[rows],
            self.dictionary,
        )

    def codes(self) -> pa.DictionaryArray:
        """Codes as a dictionary array (nulls for null codes)."""
        return dictionary_codes(self.code_index, self.dictionary)


def dictionary_codes(index: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """A dictionary array from int indices (``len(dictionary)`` = null) and a dictionary."""
    if len(index) == 0 or int(index.max()) < len(dictionary):  # no null code: zero-copy
        return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), dictionary)
    mask = index >= len(dictionary)
    indices = pa.array(
        np.where(mask, 0, index).astype(np.int32), mask=mask if bool(mask.any()) else None
    )
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def encode_codes(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(int32 index per row, string dictionary) of a string or dictionary code column.

    Null codes get index ``len(dictionary)``.
    """
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return np.zeros(0, np.int32), pa.array([], pa.string())
        if pa.types.is_dictionary(col.type):
            col = col.unify_dictionaries()
            chunks = col.chunks
            dictionary = chunks[0].dictionary
            idx = [c.indices for c in chunks]
            arr: pa.Array = pa.DictionaryArray.from_arrays(
                pa.concat_arrays([i.cast(pa.int32()) for i in idx]), dictionary
            )
        else:
            arr = col.combine_chunks()
    else:
        arr = col
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr.cast(pa.string()))
    dictionary = arr.dictionary.cast(pa.string())
    indices = arr.indices.cast(pa.int32())
    if indices.null_count:
        indices = pc.fill_null(indices, len(dictionary))
    return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int32), dictionary


def event_arrays(events: pa.Table) -> EventArrays:
    """Columns ``subject_id``, ``time``, ``code`` of a MEDS table as :class:`EventArrays`."""
    sid = events[S.SUBJECT_ID]
    if sid.null_count:
        raise ValueError("subject_id has nulls (validate the cohort first)")
    sid_np = np.asarray(sid.cast(pa.int64()).to_numpy(), dtype=np.int64)
    tu, tnull = time_us(events[S.TIME])
    cidx, dictionary = encode_codes(events[S.CODE])
    return EventArrays(sid_np, tu, tnull, cidx, dictionary)


@dataclass
class OutcomeArrays:
    """The outcome table sorted by subject (stable), for look-ups.

    Attributes:
        subject_id: int64 [M], ascending (duplicates keep file order; the first wins).
        event: bool [M].
        time_us: int64 [M] (0 where null).
        ok: bool [M]; False where the outcome time is null.
    """

    subject_id: np.ndarray
    event: np.ndarray
    time_us: np.ndarray
    ok: np.ndarray

    @classmethod
    def from_table(cls, outcomes: pa.Table) -> OutcomeArrays:
        sid = np.asarray(outcomes[S.SUBJECT_ID].cast(pa.int64()).to_numpy(), dtype=np.int64)
        ev = np.asarray(
            pc.fill_null(outcomes[S.OUTCOME_EVENT].cast(pa.bool_()), False).to_numpy(
                zero_copy_only=False
            ),
            dtype=bool,
        )
        tu, tnull = time_us(outcomes[S.OUTCOME_TIME])
        order = np.argsort(sid, kind="stable")
        return cls(sid[order], ev[order], tu[order], ~tnull[order])

    def between(self, lo: int, hi: int) -> OutcomeArrays:
        """Rows with ``lo <= subject_id <= hi``."""
        a, b = np.searchsorted(self.subject_id, [lo, hi + 1] if hi >= lo else [0, 0])
        return OutcomeArrays(self.subject_id[a:b], self.event[a:b], self.time_us[a:b], self.ok[a:b])


# --------------------------------------------------------------------------------------------
# Grouping into visits


def _lookup(keys: np.ndarray, table_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``keys`` in sorted ``table_keys`` (leftmost) and whether each was found."""
    if len(table_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    if len(keys) == len(table_keys) and np.array_equal(keys, table_keys):  # the common case
        return np.arange(len(keys), dtype=np.int64), np.ones(len(keys), dtype=bool)
    pos = np.searchsorted(table_keys, keys)
    pos_c = np.minimum(pos, len(table_keys) - 1)
    return pos_c, table_keys[pos_c] == keys


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based; numpy's hash-based unique is slow on int64)."""
    if len(a) < 2:
        return a.copy()
    d = a[1:] != a[:-1]
    if not bool(np.all(a[1:] >= a[:-1])):
        a = np.sort(a)
        d = a[1:] != a[:-1]
    return a[np.concatenate([[True], d])]


@dataclass
class GroupedUnit:
    """:func:`group_visits` output: visits (codes as dictionary indices) and rejects."""

    visits: SubjectVisits
    code_index: np.ndarray  # int32 [NC], index into ``dictionary`` per code of ``visits``
    dictionary: pa.Array
    reject_subjects: np.ndarray  # int64 [K], sorted
    reject_reasons: np.ndarray  # object [K] (reason strings)

    def rejects_table(self) -> pa.Table:
        return pa.table(
            {
                S.SUBJECT_ID: pa.array(self.reject_subjects, pa.int64()),
                S.REJECT_REASON: pa.array(self.reject_reasons.tolist(), pa.string()),
            }
        )


_REASONS = np.array(
    [REJECT_NO_BIRTH, REJECT_NO_VISITS, REJECT_NO_OUTCOME, REJECT_NO_HISTORY], dtype=object
)
_NO_LIMIT = np.iinfo(np.int64).min


def group_visits(
    ev: EventArrays,
    outcomes: OutcomeArrays | None,
    granularity: str = "day",
) -> GroupedUnit:
    """Visits and survival labels of every subject in ``ev`` (see :func:`visits.build_visits`).

    Same output as ``build_visits`` (a test checks it), in a handful of passes over the rows:
    when rows already come in (subject, time) order, as MEDS shards do, nothing is sorted.

    Args:
        ev: all rows of the unit's subjects (any order; every subject must be complete).
        outcomes: outcome rows (may hold other subjects); None for pretraining (all visits kept,
            ``event`` False).
        granularity: one of ``visits.GRANULARITY_US``.

    Returns:
        A :class:`GroupedUnit`; ``visits.codes`` is a dictionary array of the codes.
    """
    g = GRANULARITY_US[granularity]
    sid, tu, tnull, cidx = ev.subject_id, ev.time_us, ev.time_null, ev.code_index
    dnames = np.asarray(ev.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    d_birth = np.append(dnames == S.BIRTH_CODE, False)  # extra slot: null code
    d_skip = d_birth | np.append(dnames == S.DEATH_CODE, False)

    all_subjects = _sorted_unique(sid)
    if outcomes is not None and len(all_subjects):
        outcomes = outcomes.between(int(all_subjects[0]), int(all_subjects[-1]))

    # Birth per subject: the earliest MEDS_BIRTH with a time.
    bsel = np.flatnonzero(d_birth[cidx] & ~tnull)
    b_sid, b_tu = sid[bsel], tu[bsel]
    if len(b_sid) > 1 and not bool(np.all(b_sid[1:] > b_sid[:-1])):
        o = np.lexsort((b_tu, b_sid))
        b_sid, b_tu = b_sid[o], b_tu[o]
        first = np.concatenate([[True], b_sid[1:] != b_sid[:-1]])
        b_sid, b_tu = b_sid[first], b_tu[first]

    # Token rows in (subject, visit key) order; the sort is stable (codes keep their order)
    # and skipped when the rows are already in order.
    rows = np.flatnonzero(~(tnull | d_skip[cidx]))
    r_sid = sid[rows]
    r_tu = tu[rows]
    r_key = np.floor_divide(r_tu, g)
    n_rows = len(rows)
    ds = r_sid[1:] - r_sid[:-1]
    dk = r_key[1:] - r_key[:-1]
    if n_rows > 1 and not bool(np.all((ds > 0) | ((ds == 0) & (dk >= 0)))):
        order = np.lexsort((r_key, r_sid))
        rows, r_sid, r_tu, r_key = rows[order], r_sid[order], r_tu[order], r_key[order]
        ds = r_sid[1:] - r_sid[:-1]
        dk = r_key[1:] - r_key[:-1]

    new_s = np.empty(n_rows, dtype=bool)
    new_s[:1] = True
    np.not_equal(ds, 0, out=new_s[1:])
    s_start = np.flatnonzero(new_s)
    tok_subjects = r_sid[s_start]  # subjects with at least one token row
    run_len = np.diff(np.append(s_start, n_rows))
    _, has_birth = _lookup(tok_subjects, b_sid)
    keep_s = has_birth
    limit = np.full(len(tok_subjects), np.iinfo(np.int64).max, dtype=np.int64)
    if outcomes is not None:
        opos, has_out = _lookup(tok_subjects, outcomes.subject_id)
        if len(outcomes.subject_id):
            has_out &= outcomes.ok[opos]
            okey = np.floor_divide(outcomes.time_us[opos], g)
            # events: visits strictly before the outcome's key; censored: at or before it
            limit = np.where(outcomes.event[opos], okey - 1, okey)
        keep_s = keep_s & has_out
    limit = np.where(keep_s, limit, _NO_LIMIT)
    # Keys are sorted within a subject: when every subject's last key is within its limit
    # (the common case), no row is cut and the row-level pass is skipped.
    last_key = r_key[s_start + run_len - 1] if n_rows else r_key
    keep_row = None if bool(np.all(last_key <= limit)) else r_key <= np.repeat(limit, run_len)
    if keep_row is not None:
        rows, r_sid, r_tu, r_key = rows[keep_row], r_sid[keep_row], r_tu[keep_row], r_key[keep_row]
        n_rows = len(rows)
        ds = r_sid[1:] - r_sid[:-1]
        dk = r_key[1:] - r_key[:-1]
        new_s = np.empty(n_rows, dtype=bool)
        new_s[:1] = True
        np.not_equal(ds, 0, out=new_s[1:])
        s_start = np.flatnonzero(new_s)

    new_v = new_s.copy()
    if n_rows > 1:
        new_v[1:] |= dk != 0
    visit_start = np.flatnonzero(new_v)
    subjects = r_sid[s_start]
    visit_offsets = np.append(np.flatnonzero(new_s[visit_start]), len(visit_start)).astype(np.int64)
    code_offsets = np.append(visit_start, n_rows)
    visit_time = r_tu[visit_start]
    nv = np.diff(visit_offsets)
    bpos, _ = _lookup(subjects, b_sid)
    b_time_v = np.repeat(b_tu[bpos], nv) if len(subjects) else np.zeros(0, np.int64)
    visit_age = ((visit_time - b_time_v) / US_PER_YEAR).astype(np.float32)

    if outcomes is not None and len(outcomes.subject_id):
        opos_s, _ = _lookup(subjects, outcomes.subject_id)
        event = outcomes.event[opos_s].copy()
    else:
        event = np.zeros(len(subjects), dtype=bool)

    # Rejects, first reason wins: no birth, no visits, no outcome, no history.
    if len(all_subjects) == len(subjects):  # every subject kept (subjects ⊆ all_subjects)
        rej_sid, rej_reason = all_subjects[:0], _REASONS[:0]
    else:
        reason = np.full(len(all_subjects), -1, dtype=np.int64)
        _, has_b_all = _lookup(all_subjects, b_sid)
        _, has_tok_all = _lookup(all_subjects, tok_subjects)
        _, kept_all = _lookup(all_subjects, subjects)
        reason[~has_b_all] = 0
        reason[(reason < 0) & ~has_tok_all] = 1
        if outcomes is not None:
            _, has_ok_all = _lookup(all_subjects, outcomes.subject_id[outcomes.ok])
            reason[(reason < 0) & ~has_ok_all] = 2
            reason[(reason < 0) & has_ok_all & ~kept_all] = 3
        rej = reason >= 0
        rej_sid, rej_reason = all_subjects[rej], _REASONS[reason[rej]]

    code_index = cidx[rows]
    visits = SubjectVisits(
        subject_id=subjects,
        event=event,
        last_visit=(nv - 1).astype(np.int64),
        visit_offsets=visit_offsets,
        visit_time=visit_time,
        visit_age=visit_age,
        code_offsets=code_offsets,
        codes=dictionary_codes(code_index, ev.dictionary),
    )
    return GroupedUnit(visits, code_index, ev.dictionary, rej_sid, rej_reason)


def build_visits_fast(
    events: pa.Table, outcomes: pa.Table | None, granularity: str = "day"
) -> tuple[SubjectVisits, pa.Table]:
    """Drop-in equivalent of :func:`visits.build_visits` (codes come back dictionary-encoded)."""
    gu = group_visits(
        event_arrays(events),
        OutcomeArrays.from_table(outcomes) if outcomes is not None else None,
        granularity,
    )
    return gu.visits, gu.rejects_table()


# --------------------------------------------------------------------------------------------
# Flat layout


@dataclass
class FlatTokens:
    """Per-subject token sequences after lookup and truncation (CSR), the flat layout.

    Attributes:
        subject_id: int64 [N].
        event: bool [N] (after ``keep_oldest`` censoring, see the module doc).
        last_visit: int64 [N]; T' = kept visits − 1.
        offsets: int64 [N + 1]; tokens of subject i are ``offsets[i]:offsets[i + 1]``.
        codes: int32 [NT]; vocabulary ids.
        ages: float32 [NT]; age at the token's visit.
        visit_ids: int32 [NT]; rebased visit index (0 = oldest kept visit).
        truncated: bool [N]; True if tokens or visits were cut.
        nvp_codes, nvp_offsets: patient-level NVP targets (the codes of the visit after the
            history, CSR per subject), or None.
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    offsets: np.ndarray
    codes: np.ndarray
    ages: np.ndarray
    visit_ids: np.ndarray
    truncated: np.ndarray
    nvp_codes: np.ndarray | None = None
    nvp_offsets: np.ndarray | None = None

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N]: real tokens per subject."""
        return np.diff(self.offsets)

    @property
    def num_visits(self) -> np.ndarray:
        return self.last_visit + 1

    def subject(self, i: int) -> dict[str, object]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "subject_id": int(self.subject_id[i]),
            "event": bool(self.event[i]),
            "last_visit": int(self.last_visit[i]),
            "codes": self.codes[a:b].tolist(),
            "ages": self.ages[a:b].tolist(),
            "visit_ids": self.visit_ids[a:b].tolist(),
        }


def _kept_token_ranges(
    sv: SubjectVisits, max_seq_len: int, max_visits: int, truncation: Truncation
) -> tuple[np.ndarray, np.ndarray]:
    """Global [start, end) token range kept per subject (contiguous by construction)."""
    v0, v1 = sv.visit_offsets[:-1], sv.visit_offsets[1:]
    if truncation == "keep_recent":
        kv0 = np.maximum(v0, v1 - max_visits)
        ts, te = sv.code_offsets[kv0], sv.code_offsets[v1]
        ts = np.maximum(ts, te - max_seq_len)
    elif truncation == "keep_oldest":
        kv1 = np.minimum(v1, v0 + max_visits)
        ts, te = sv.code_offsets[v0], sv.code_offsets[kv1]
        te = np.minimum(te, ts + max_seq_len)
    else:
        raise ValueError(f"truncation must be keep_recent or keep_oldest, got {truncation!r}")
    return ts, te


def flatten(
    sv: SubjectVisits,
    code_ids: np.ndarray,
    max_seq_len: int = 512,
    max_visits: int = 256,
    truncation: Truncation = "keep_recent",
) -> FlatTokens:
    """Flatten visits into token sequences (seed-spec §1.3), truncating all tensors together.

    Args:
        sv: visits of N subjects.
        code_ids: int [NC]; the vocabulary id of each code of ``sv`` (aligned with
            ``sv.codes``).
        max_seq_len: most tokens kept per subject.
        max_visits: most visits kept per subject.
        truncation: ``keep_recent`` or ``keep_oldest`` (see the module doc).

    Returns:
        :class:`FlatTokens`.
    """
    if max_seq_len < 1 or max_visits < 1:
        raise ValueError("max_seq_len and max_visits must be >= 1")
    nc = len(code_ids)
    if nc != int(sv.code_offsets[-1]):
        raise ValueError(f"code_ids has {nc} entries, the visits hold {int(sv.code_offsets[-1])}")
    n_vis = len(sv.visit_time)
    vsize = np.diff(sv.code_offsets)
    visit_of_tok = np.repeat(np.arange(n_vis, dtype=np.int64), vsize)  # [NC]
    ts, te = _kept_token_ranges(sv, max_seq_len, max_visits, truncation)
    total = sv.code_offsets[sv.visit_offsets[1:]] - sv.code_offsets[sv.visit_offsets[:-1]]
    lengths = te - ts
    truncated = lengths < total
    if bool(truncated.any()):
        tok = concat_ranges(ts, lengths)
        vis = visit_of_tok[tok]
        codes = code_ids[tok]
    else:  # nothing cut: every token, in order
        vis = visit_of_tok
        codes = code_ids
    first_vis = np.where(lengths > 0, visit_of_tok[np.minimum(ts, max(nc - 1, 0))], 0)
    last_vis = np.where(lengths > 0, visit_of_tok[np.maximum(te - 1, 0)], 0)
    visit_ids = (vis - np.repeat(first_vis, lengths)).astype(np.int32)
    event = sv.event.copy()
    if truncation == "keep_oldest":
        lost_last = last_vis < sv.visit_offsets[1:] - 1
        event &= ~lost_last
    return FlatTokens(
        subject_id=sv.subject_id,
        event=event,
        last_visit=(last_vis - first_vis).astype(np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        codes=np.asarray(codes, dtype=np.int32),
        ages=sv.visit_age[vis],
        visit_ids=visit_ids,
        truncated=truncated,
    )


# --------------------------------------------------------------------------------------------
# Hierarchical layout


@dataclass
class VisitTokens:
    """Per-subject visits of code ids (CSR), the hierarchical layout (seed-spec §1.5).

    Attributes:
        subject_id, event, last_visit, truncated: [N] as in :class:`FlatTokens`.
        visit_offsets: int64 [N + 1].
        visit_ages: float32 [NV]; age at the visit.
        time_deltas: float32 [NV]; days since the previous kept visit, 0 for the first.
        code_offsets: int64 [NV + 1].
        codes: int32 [NC]; the first ``max_codes_per_visit`` codes of each kept visit.
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    visit_offsets: np.ndarray
    visit_ages: np.ndarray
    time_deltas: np.ndarray
    code_offsets: np.ndarray
    codes: np.ndarray
    truncated: np.ndarray

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    @property
    def num_visits(self) -> np.ndarray:
        return np.diff(self.visit_offsets)

    @property
    def visit_sizes(self) -> np.ndarray:
        return np.diff(self.code_offsets)


def to_hierarchical(
    sv: SubjectVisits,
    code_ids: np.ndarray,
    max_visits: int = 256,
    max_codes_per_visit: int = 32,
    truncation: Truncation = "keep_recent",
) -> VisitTokens:
    """Visits × codes layout: keep ``max_visits`` visits (by ``truncation``) and the first
    ``max_codes_per_visit`` codes of each (seed-spec §1.5).

    Args:
        sv: visits of N subjects.
        code_ids: int [NC] vocabulary ids aligned with ``sv.codes``.
        max_visits: most visits kept per subject (the recent or the oldest ones).
        max_codes_per_visit: most codes kept per visit (its first ones).
        truncation: which visits are kept; ``keep_oldest`` that drops the last visit censors
            the subject at its last kept visit.

    Returns:
        :class:`VisitTokens`.
    """
    if max_visits < 1 or max_codes_per_visit < 1:
        raise ValueError("max_visits and max_codes_per_visit must be >= 1")
    v0, v1 = sv.visit_offsets[:-1], sv.visit_offsets[1:]
    nv = v1 - v0
    if truncation == "keep_recent":
        kv0, kv1 = np.maximum(v0, v1 - max_visits), v1
    elif truncation == "keep_oldest":
        kv0, kv1 = v0, np.minimum(v1, v0 + max_visits)
    else:
        raise ValueError(f"truncation must be keep_recent or keep_oldest, got {truncation!r}")
    kn = kv1 - kv0
    vis = concat_ranges(kv0, kn)  # kept visits, global index [NV']
    c0 = sv.code_offsets[vis]
    size = sv.code_offsets[vis + 1] - c0
    ksize = np.minimum(size, max_codes_per_visit)
    tok = concat_ranges(c0, ksize)
    vt = sv.visit_time[vis]
    delta = np.zeros(len(vis), dtype=np.float64)
    if len(vis) > 1:
        delta[1:] = (vt[1:] - vt[:-1]) / DAY_US
    visit_offsets = np.concatenate([[0], np.cumsum(kn)]).astype(np.int64)
    delta[visit_offsets[:-1][kn > 0]] = 0.0  # first kept visit of each subject
    delta = np.maximum(delta, 0.0)
    cut_codes = np.zeros(len(kn), dtype=bool)
    if len(vis):
        over = (size > max_codes_per_visit).astype(np.int64)
        cs = np.concatenate([[0], np.cumsum(over)])
        cut_codes = (cs[visit_offsets[1:]] - cs[visit_offsets[:-1]]) > 0
    event = sv.event.copy()
    if truncation == "keep_oldest":
        event &= kv1 == v1
    return VisitTokens(
        subject_id=sv.subject_id,
        event=event,
        last_visit=(kn - 1).astype(np.int64),
        visit_offsets=visit_offsets,
        visit_ages=sv.visit_age[vis],
        time_deltas=delta.astype(np.float32),
        code_offsets=np.concatenate([[0], np.cumsum(ksize)]).astype(np.int64),
        codes=np.asarray(code_ids, dtype=np.int32)[tok],
        truncated=(kn < nv) | cut_codes,
    )


# --------------------------------------------------------------------------------------------
# Patient-level next-visit prediction (bidirectional attention, DESIGN.md §3)


def split_last_visit(sv: SubjectVisits) -> tuple[SubjectVisits, np.ndarray, np.ndarray]:
    """History = every visit but the last; target = the last visit's codes.

    Subjects with a single visit have no history and are left out.

    Returns:
        ``(history, target_code_pos, target_offsets)``: the history visits of the M subjects
        with >= 2 visits (``event`` False, ``last_visit`` = history visits − 1); int64 positions
        into ``sv.codes`` of each subject's target codes, concatenated; int64 [M + 1] offsets.
    """
    nv = sv.num_visits
    idx = np.flatnonzero(nv >= 2)
    v0 = sv.visit_offsets[idx]
    hn = nv[idx] - 1
    hvis = concat_ranges(v0, hn)
    c0 = sv.code_offsets[hvis]
    csz = sv.code_offsets[hvis + 1] - c0
    hcod = concat_ranges(c0, csz)
    last = v0 + hn
    t0 = sv.code_offsets[last]
    tn = sv.code_offsets[last + 1] - t0
    history = SubjectVisits(
        subject_id=sv.subject_id[idx],
        event=np.zeros(len(idx), dtype=bool),
        last_visit=(hn - 1).astype(np.int64),
        visit_offsets=np.concatenate([[0], np.cumsum(hn)]).astype(np.int64),
        visit_time=sv.visit_time[hvis],
        visit_age=sv.visit_age[hvis],
        code_offsets=np.concatenate([[0], np.cumsum(csz)]).astype(np.int64),
        codes=sv.codes.take(pa.array(hcod, pa.int64())),
    )
    return history, concat_ranges(t0, tn), np.concatenate([[0], np.cumsum(tn)]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Wire format: one Arrow row per subject, list columns (what a Ray Data block carries)

UNIT = "unit"
UNIT_SIZE = "unit_size"  # subjects of the unit: lets a consumer reassemble a unit Ray split
TRUNCATED = "truncated"
VISIT_SIZES = "visit_sizes"
NVP_CODES = "nvp_codes"


def _list(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def _unlist(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, int64 offsets from 0) of a list column, zero-copy where possible."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    off = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    vals = arr.values.to_numpy(zero_copy_only=False)
    if len(off) and (off[0] != 0 or off[-1] != len(vals)):
        vals = vals[off[0] : off[-1]]
        off = off - off[0]
    return vals, off


def _np(col: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False) if len(col) else [], dtype=dtype)


def flat_to_arrow(ft: FlatTokens, unit: int) -> pa.Table:
    """One row per subject: labels plus ``codes``/``ages``/``visit_ids`` lists."""
    cols: dict[str, pa.Array] = {
        UNIT: pa.array(np.full(ft.num_subjects, unit, dtype=np.int64)),
        UNIT_SIZE: pa.array(np.full(ft.num_subjects, ft.num_subjects, dtype=np.int64)),
        S.SUBJECT_ID: pa.array(ft.subject_id, pa.int64()),
        S.EVENT: pa.array(ft.event, pa.bool_()),
        S.LAST_VISIT: pa.array(ft.last_visit, pa.int64()),
        TRUNCATED: pa.array(ft.truncated, pa.bool_()),
        S.CODES: _list(ft.codes.astype(np.int32), ft.offsets),
        S.AGES: _list(ft.ages.astype(np.float32), ft.offsets),
        S.VISIT_IDS: _list(ft.visit_ids.astype(np.int32), ft.offsets),
    }
    if ft.nvp_codes is not None and ft.nvp_offsets is not None:
        cols[NVP_CODES] = _list(ft.nvp_codes.astype(np.int32), ft.nvp_offsets)
    return pa.table(cols)


def flat_from_arrow(t: pa.Table) -> FlatTokens:
    codes, off = _unlist(t[S.CODES])
    ages, _ = _unlist(t[S.AGES])
    vids, _ = _unlist(t[S.VISIT_IDS])
    nvp_codes = nvp_off = None
    if NVP_CODES in t.column_names:
        nvp_codes, nvp_off = _unlist(t[NVP_CODES])
    return FlatTokens(
        subject_id=_np(t[S.SUBJECT_ID], np.int64),
        event=_np(t[S.EVENT], np.bool_),
        last_visit=_np(t[S.LAST_VISIT], np.int64),
        offsets=off,
        codes=np.asarray(codes, dtype=np.int32),
        ages=np.asarray(ages, dtype=np.float32),
        visit_ids=np.asarray(vids, dtype=np.int32),
        truncated=_np(t[TRUNCATED], np.bool_),
        nvp_codes=None if nvp_codes is None else np.asarray(nvp_codes, dtype=np.int32),
        nvp_offsets=nvp_off,
    )


def hier_to_arrow(vt: VisitTokens, unit: int) -> pa.Table:
    """One row per subject: labels plus per-visit lists and the codes list."""
    return pa.table(
        {
            UNIT: pa.array(np.full(vt.num_subjects, unit, dtype=np.int64)),
            UNIT_SIZE: pa.array(np.full(vt.num_subjects, vt.num_subjects, dtype=np.int64)),
            S.SUBJECT_ID: pa.array(vt.subject_id, pa.int64()),
            S.EVENT: pa.array(vt.event, pa.bool_()),
            S.LAST_VISIT: pa.array(vt.last_visit, pa.int64()),
            TRUNCATED: pa.array(vt.truncated, pa.bool_()),
            S.AGES: _list(vt.visit_ages.astype(np.float32), vt.visit_offsets),
            S.TIME_DELTAS: _list(vt.time_deltas.astype(np.float32), vt.visit_offsets),
            VISIT_SIZES: _list(vt.visit_sizes.astype(np.int32), vt.visit_offsets),
            S.CODES: _list(vt.codes.astype(np.int32), vt.code_offsets[vt.visit_offsets]),
        }
    )


def hier_from_arrow(t: pa.Table) -> VisitTokens:
    ages, voff = _unlist(t[S.AGES])
    deltas, _ = _unlist(t[S.TIME_DELTAS])
    sizes, _ = _unlist(t[VISIT_SIZES])
    codes, _ = _unlist(t[S.CODES])
    return VisitTokens(
        subject_id=_np(t[S.SUBJECT_ID], np.int64),
        event=_np(t[S.EVENT], np.bool_),
        last_visit=_np(t[S.LAST_VISIT], np.int64),
        visit_offsets=voff,
        visit_ages=np.asarray(ages, dtype=np.float32),
        time_deltas=np.asarray(deltas, dtype=np.float32),
        code_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        codes=np.asarray(codes, dtype=np.int32),
        truncated=_np(t[TRUNCATED], np.bool_),
    )
