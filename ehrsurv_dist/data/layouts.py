"""The two model layouts of a subject's visits: flat tokens and visits × codes, pure numpy.

:func:`flatten` (flat BEHRT layout, docs/data.md) and :func:`to_hierarchical` (visit × code
layout, docs/data.md) turn :class:`visits.SubjectVisits` plus vocabulary ids into per-subject
sequences, vectorised over all subjects at once: truncation and visit-id rebasing.

Truncation (``keep_recent``, the default): keep the last ``max_visits`` visits, then the last
``max_seq_len`` tokens of those; the cut is at token level, so the oldest kept visit may keep only
its last codes (the last L_max tokens are kept, docs/data.md). Visit ids are rebased so that the
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
from ehrsurv_dist.data.views import RaggedField
from ehrsurv_dist.data.visits import SubjectLabels, SubjectVisits
from ehrsurv_dist.ragged import Ragged, concat_ranges, offsets_of, rows_any

Truncation = Literal["keep_recent", "keep_oldest"]


@dataclass(frozen=True)
class Limits:
    """How much of each history the layouts keep (``truncation``: see the module doc).

    Attributes:
        max_seq_len: most tokens per subject (flat).
        max_visits: most visits per subject (both layouts).
        max_codes_per_visit: most codes per visit, its first ones (hierarchical).
        truncation: ``keep_recent`` or ``keep_oldest``.
    """

    max_seq_len: int = 512
    max_visits: int = 256
    max_codes_per_visit: int = 32
    truncation: Truncation = "keep_recent"


@dataclass
class FlatTokens(SubjectLabels):
    """Per-subject token sequences after lookup and truncation, the flat layout.

    Attributes:
        subject_id, event, last_visit: [N] (``event`` after ``keep_oldest`` censoring, see the
            module doc; ``last_visit`` T' = kept visits − 1).
        truncated: bool [N]; True if tokens or visits were cut.
        tokens: subjects → tokens; values ``codes`` int32 [NT] (vocabulary ids), ``ages``
            float32 [NT] (age at the token's visit), ``visit_ids`` int32 [NT] (rebased visit
            index, 0 = oldest kept visit). ``offsets``, ``lengths``, ``codes``, ``ages``,
            ``visit_ids`` read its parts.
    """

    truncated: np.ndarray
    tokens: Ragged

    offsets = RaggedField("tokens", part="offsets")  # int64 [N + 1]
    lengths = RaggedField("tokens", part="lengths")  # int64 [N]: real tokens per subject
    codes = RaggedField("tokens", S.CODES)  # int32 [NT]
    ages = RaggedField("tokens", S.AGES)  # float32 [NT]
    visit_ids = RaggedField("tokens", S.VISIT_IDS)  # int32 [NT]

    @property
    def num_visits(self) -> np.ndarray:
        return self.last_visit + 1  # type: ignore[no-any-return]

    def subject(self, i: int) -> dict[str, object]:
        """Plain-Python view of subject ``i`` (for tests and debugging)."""
        row = self.tokens.row(i)
        return {**self.labels_of(i), **{k: v.tolist() for k, v in row.items()}}  # type: ignore[union-attr]


@dataclass
class VisitTokens(SubjectLabels):
    """Per-subject visits of code ids, the hierarchical layout (docs/data.md).

    Attributes:
        subject_id, event, last_visit, truncated: [N] as in :class:`FlatTokens`.
        visits: subjects → visits; values ``ages`` float32 [NV] (age at the visit),
            ``time_deltas`` float32 [NV] (days since the previous kept visit, 0 for the first)
            and ``codes``, visits → codes (int32 [NC], the first ``max_codes_per_visit`` codes
            of each kept visit). The attributes below read its parts.
    """

    truncated: np.ndarray
    visits: Ragged

    num_visits = RaggedField("visits", part="lengths")  # int64 [N]
    visit_offsets = RaggedField("visits", part="offsets")  # int64 [N + 1]
    visit_ages = RaggedField("visits", S.AGES)  # float32 [NV]
    time_deltas = RaggedField("visits", S.TIME_DELTAS)  # float32 [NV]
    visit_codes = RaggedField("visits", S.CODES)  # Ragged: visits → codes
    code_offsets = RaggedField("visits", S.CODES, part="offsets")  # int64 [NV + 1]
    visit_sizes = RaggedField("visits", S.CODES, part="lengths")  # int64 [NV]
    codes = RaggedField("visits", S.CODES, part="values")  # int32 [NC]


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


def flatten(sv: SubjectVisits, code_ids: np.ndarray, limits: Limits = Limits()) -> FlatTokens:
    """Flatten visits into token sequences (docs/data.md), truncating all tensors together.

    Args:
        sv: visits of N subjects.
        code_ids: int [NC]; the vocabulary id of each code of ``sv`` (aligned with
            ``sv.codes``).
        limits: ``max_seq_len`` (most tokens kept per subject), ``max_visits`` (most visits
            kept per subject) and ``truncation`` (see the module doc).

    Returns:
        :class:`FlatTokens`.
    """
    max_seq_len, max_visits, truncation = limits.max_seq_len, limits.max_visits, limits.truncation
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
        extra=sv.extra,
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
    sv: SubjectVisits, code_ids: np.ndarray, limits: Limits = Limits()
) -> VisitTokens:
    """Visits × codes layout: keep ``max_visits`` visits (by ``truncation``) and the first
    ``max_codes_per_visit`` codes of each (docs/data.md).

    Args:
        sv: visits of N subjects.
        code_ids: int [NC] vocabulary ids aligned with ``sv.codes``.
        limits: ``max_visits`` (most visits kept per subject, the recent or the oldest ones),
            ``max_codes_per_visit`` (most codes kept per visit, its first ones) and
            ``truncation`` (which visits are kept; ``keep_oldest`` that drops the last visit
            censors the subject at its last kept visit).

    Returns:
        :class:`VisitTokens`.
    """
    max_visits, max_codes_per_visit = limits.max_visits, limits.max_codes_per_visit
    truncation = limits.truncation
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
    cut_codes = rows_any(voff, size > max_codes_per_visit)
    event = sv.event.copy()
    if truncation == "keep_oldest":
        event &= kv1 == sv.visit_offsets[1:]
    return VisitTokens(
        subject_id=sv.subject_id,
        event=event,
        last_visit=(kn - 1).astype(np.int64),
        truncated=(kn < sv.num_visits) | cut_codes,
        visits=Ragged(values, voff),
        extra=sv.extra,
    )
