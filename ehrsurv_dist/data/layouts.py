"""The two model layouts of a subject's visits: flat tokens and visits × codes, pure numpy.

:func:`flatten` (flat BEHRT layout, seed-spec §1.3) and :func:`to_hierarchical` (visit × code
layout, seed-spec §1.5) turn :class:`visits.SubjectVisits` plus vocabulary ids into per-subject
sequences, vectorised over all subjects at once: truncation and visit-id rebasing.

Truncation (``keep_recent``, the default): keep the last ``max_visits`` visits, then the last
``max_seq_len`` tokens of those; the cut is at token level, so the oldest kept visit may keep only
its last codes (seed-spec §1.3 keeps the last L_max tokens). Visit ids are rebased so that the
oldest kept visit is 0; ``last_visit`` = kept visits − 1. The last visit is always kept, so the
event label is unchanged.

``keep_oldest``: keep the first ``max_visits`` visits, then the first ``max_seq_len`` tokens. When
this removes the last visit, the outcome happened after visits the model no longer sees: the
subject becomes **censored at its last kept visit** (``event=False``), which uses only the
intervals we can vouch for. (If only codes of the last visit are cut, the label is unchanged.)

Shape vocabulary: ``N`` subjects, ``NV`` visits, ``NT`` tokens, ``NC`` codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import DAY_US
from ehrsurv_dist.data.visits import SubjectVisits
from ehrsurv_dist.ragged import Ragged, concat_ranges, offsets_of

Truncation = Literal["keep_recent", "keep_oldest"]


@dataclass
class FlatTokens:
    """Per-subject token sequences after lookup and truncation, the flat layout.

    Attributes:
        subject_id: int64 [N].
        event: bool [N] (after ``keep_oldest`` censoring, see the module doc).
        last_visit: int64 [N]; T' = kept visits − 1.
        truncated: bool [N]; True if tokens or visits were cut.
        tokens: subjects → tokens; values ``codes`` int32 [NT] (vocabulary ids), ``ages``
            float32 [NT] (age at the token's visit), ``visit_ids`` int32 [NT] (rebased visit
            index, 0 = oldest kept visit).
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    truncated: np.ndarray
    tokens: Ragged

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    @property
    def offsets(self) -> np.ndarray:
        """int64 [N + 1]; tokens of subject i are ``offsets[i]:offsets[i + 1]``."""
        return self.tokens.offsets

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N]: real tokens per subject."""
        return self.tokens.lengths

    @property
    def codes(self) -> np.ndarray:
        return self.tokens.values[S.CODES]  # type: ignore[no-any-return,index]

    @property
    def ages(self) -> np.ndarray:
        return self.tokens.values[S.AGES]  # type: ignore[no-any-return,index]

    @property
    def visit_ids(self) -> np.ndarray:
        return self.tokens.values[S.VISIT_IDS]  # type: ignore[no-any-return,index]

    @property
    def num_visits(self) -> np.ndarray:
        return self.last_visit + 1  # type: ignore[no-any-return]

    def subject(self, i: int) -> dict[str, object]:
        """Plain-Python view of subject ``i`` (for tests and debugging)."""
        row = self.tokens.row(i)
        return {
            "subject_id": int(self.subject_id[i]),
            "event": bool(self.event[i]),
            "last_visit": int(self.last_visit[i]),
            **{k: row[k].tolist() for k in (S.CODES, S.AGES, S.VISIT_IDS)},  # type: ignore[index]
        }


@dataclass
class VisitTokens:
    """Per-subject visits of code ids, the hierarchical layout (seed-spec §1.5).

    Attributes:
        subject_id, event, last_visit, truncated: [N] as in :class:`FlatTokens`.
        visits: subjects → visits; values ``ages`` float32 [NV] (age at the visit),
            ``time_deltas`` float32 [NV] (days since the previous kept visit, 0 for the first)
            and ``codes``, visits → codes (int32 [NC], the first ``max_codes_per_visit`` codes
            of each kept visit).
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    truncated: np.ndarray
    visits: Ragged

    @property
    def num_subjects(self) -> int:
        return len(self.subject_id)

    @property
    def num_visits(self) -> np.ndarray:
        return self.visits.lengths

    @property
    def visit_offsets(self) -> np.ndarray:
        return self.visits.offsets

    @property
    def visit_ages(self) -> np.ndarray:
        return self.visits.values[S.AGES]  # type: ignore[no-any-return,index]

    @property
    def time_deltas(self) -> np.ndarray:
        return self.visits.values[S.TIME_DELTAS]  # type: ignore[no-any-return,index]

    @property
    def visit_codes(self) -> Ragged:
        return self.visits.values[S.CODES]  # type: ignore[return-value,index]

    @property
    def code_offsets(self) -> np.ndarray:
        return self.visit_codes.offsets

    @property
    def codes(self) -> np.ndarray:
        return self.visit_codes.values  # type: ignore[return-value]

    @property
    def visit_sizes(self) -> np.ndarray:
        return self.visit_codes.lengths


def _kept_visits(
    sv: SubjectVisits, max_visits: int, truncation: Truncation
) -> tuple[np.ndarray, np.ndarray]:
    """Global [first, end) visit range kept per subject (int64 [N] each)."""
    v0, v1 = sv.visit_offsets[:-1], sv.visit_offsets[1:]
    if truncation == "keep_recent":
        return np.maximum(v0, v1 - max_visits), v1
    if truncation == "keep_oldest":
        return v0, np.minimum(v1, v0 + max_visits)
    raise ValueError(f"truncation must be keep_recent or keep_oldest, got {truncation!r}")


def _kept_token_ranges(
    sv: SubjectVisits, max_seq_len: int, max_visits: int, truncation: Truncation
) -> tuple[np.ndarray, np.ndarray]:
    """Global [start, end) token range kept per subject (contiguous by construction)."""
    kv0, kv1 = _kept_visits(sv, max_visits, truncation)
    ts, te = sv.code_offsets[kv0], sv.code_offsets[kv1]
    if truncation == "keep_recent":
        return np.maximum(ts, te - max_seq_len), te
    return ts, np.minimum(te, ts + max_seq_len)


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
    visit_of_tok = sv.visit_codes.row_ids()  # [NC]
    ts, te = _kept_token_ranges(sv, max_seq_len, max_visits, truncation)
    lengths = te - ts
    truncated = lengths < sv.tokens_per_subject
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
    values = {
        S.CODES: np.asarray(codes, dtype=np.int32),
        S.AGES: sv.visit_age[vis],
        S.VISIT_IDS: visit_ids,
    }
    return FlatTokens(
        subject_id=sv.subject_id,
        event=event,
        last_visit=(last_vis - first_vis).astype(np.int64),
        truncated=truncated,
        tokens=Ragged.from_lengths(values, lengths),
    )


def _time_deltas(visit_time: np.ndarray, visit_offsets: np.ndarray) -> np.ndarray:
    """float32 [NV]: days since the subject's previous kept visit (0 for its first)."""
    delta = np.zeros(len(visit_time), dtype=np.float64)
    if len(visit_time) > 1:
        delta[1:] = (visit_time[1:] - visit_time[:-1]) / DAY_US
    kn = np.diff(visit_offsets)
    delta[visit_offsets[:-1][kn > 0]] = 0.0  # first kept visit of each subject
    return np.maximum(delta, 0.0).astype(np.float32)


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
    kv0, kv1 = _kept_visits(sv, max_visits, truncation)
    kn = kv1 - kv0
    vis = concat_ranges(kv0, kn)  # kept visits, global index [NV']
    c0 = sv.code_offsets[vis]
    size = sv.code_offsets[vis + 1] - c0
    ksize = np.minimum(size, max_codes_per_visit)
    voff = offsets_of(kn)
    codes = Ragged.from_lengths(
        np.asarray(code_ids, dtype=np.int32)[concat_ranges(c0, ksize)], ksize
    )
    values = {
        S.AGES: sv.visit_age[vis],
        S.TIME_DELTAS: _time_deltas(sv.visit_time[vis], voff),
        S.CODES: codes,
    }
    cut_codes = np.zeros(len(kn), dtype=bool)
    if len(vis):
        over = np.concatenate([[0], np.cumsum(size > max_codes_per_visit)])
        cut_codes = (over[voff[1:]] - over[voff[:-1]]) > 0
    event = sv.event.copy()
    if truncation == "keep_oldest":
        event &= kv1 == sv.visit_offsets[1:]
    return VisitTokens(
        subject_id=sv.subject_id,
        event=event,
        last_visit=(kn - 1).astype(np.int64),
        truncated=(kn < sv.num_visits) | cut_codes,
        visits=Ragged(values, voff),
    )
