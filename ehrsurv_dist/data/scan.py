"""The vocabulary scan: per-unit facts (map) and their sums (reduce). Pure; no Ray.

:meth:`pipeline.IngestPipeline.fit` scans every unit once: :func:`scan_events` turns a unit's
rows into *facts* (per-split code counts and statistics, rejects) in one long Arrow table, and
:func:`reduce_facts` sums them in the driver, whose memory is bounded by the number of distinct
codes, not by the cohort. The vocabulary is then fitted on the train counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.encode import EncodeSpec, subject_split, unit_visits
from ehrsurv_dist.data.numeric import VALUE_FACT, ValueSketch, value_column, value_facts
from ehrsurv_dist.data.vocab import COUNT_CODE, COUNT_VALUE, Vocabulary, count_codes, merge_counts
from ehrsurv_dist.ragged import rows_any

FACTS_SCHEMA = pa.schema(
    [("kind", pa.string()), ("split", pa.string()), ("key", pa.string()), ("value", pa.int64())]
)
EVENT_MINUTES = "event_minutes"
MINUTES_PER_DAY = 1440.0

STAT_KEYS = (
    "subjects",
    "events",
    "visits",
    "tokens",
    "truncated_flat",
    "truncated_hierarchical",
    "tokens_kept",  # tokens after the layout's truncation (at most; see _kept)
    "visits_kept",  # visits after it
)


def _kept(
    spec: EncodeSpec,
    ntok: np.ndarray,
    nv: np.ndarray,
    visit_offsets: np.ndarray,
    vsize: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the tokens and visits its layout keeps: flat, at most ``max_seq_len`` tokens
    (and ``max_visits`` visits); hierarchical, the kept end's ``max_visits`` visits of at most
    ``max_codes_per_visit`` codes each. What ``data.cache: auto`` sizes the splits by
    (:mod:`cache_plan`)."""
    lim = spec.limits
    kept_vis = np.minimum(nv, lim.max_visits)
    if spec.layout == "flat":
        return np.minimum(ntok, lim.max_seq_len), kept_vis
    csum = np.concatenate([[0], np.cumsum(np.minimum(vsize, lim.max_codes_per_visit))])
    start = np.asarray(visit_offsets[:-1], dtype=np.int64)
    end = np.asarray(visit_offsets[1:], dtype=np.int64)
    if lim.truncation == "keep_oldest":
        end = np.minimum(end, start + lim.max_visits)
    else:
        start = np.maximum(start, end - lim.max_visits)
    return csum[end] - csum[start], kept_vis


def scan_events(table: pa.Table, spec: EncodeSpec) -> pa.Table:
    """One unit's rows → facts (long format): code counts and statistics per split, rejects.

    Rows: ``kind='count'`` (split, code, count), ``kind='stat'`` (split, name, value),
    ``kind='reject'`` (split null, reason, subject_id); on the calendar axis also
    ``kind='event_minutes'`` (split, '', minutes from the prediction time to each event): the
    train split's event times are what quantile day bins are fitted on; with
    ``data.numeric=quantile_bins`` also ``kind='value'`` (train, ``"<weight>:<code>"``, float64
    bits of a sketch point of the code's numeric values: :func:`numeric.value_facts`).
    """
    gu = unit_visits(table, spec)
    sv = gu.visits
    spl = subject_split(spec, sv.subject_id)
    nv = sv.num_visits
    ntok = sv.tokens_per_subject
    vsize = np.diff(sv.code_offsets)
    big_visit = rows_any(sv.visit_offsets, vsize > spec.limits.max_codes_per_visit)
    trunc_flat = (ntok > spec.limits.max_seq_len) | (nv > spec.limits.max_visits)
    trunc_hier = (nv > spec.limits.max_visits) | big_visit
    kept_tok, kept_vis = _kept(spec, ntok, nv, sv.visit_offsets, vsize)
    parts: list[pa.Table] = []
    for name in S.SPLITS:
        m = spl == name
        if not bool(m.any()):
            continue
        counts = count_codes(sv.codes, np.repeat(m, ntok))
        parts.append(_facts("count", name, counts[COUNT_CODE], counts[COUNT_VALUE]))
        vals = [
            int(m.sum()),
            int(sv.event[m].sum()),
            int(nv[m].sum()),
            int(ntok[m].sum()),
            int(trunc_flat[m].sum()),
            int(trunc_hier[m].sum()),
            int(kept_tok[m].sum()),
            int(kept_vis[m].sum()),
        ]
        parts.append(_facts("stat", name, pa.array(STAT_KEYS), pa.array(vals, pa.int64())))
        if S.TIME_DAYS in sv.extra:
            days = sv.extra[S.TIME_DAYS][m & sv.event]
            minutes = np.rint(days * MINUTES_PER_DAY).astype(np.int64)
            parts.append(_facts(EVENT_MINUTES, name, pa.array([""] * len(days)), minutes))
    if spec.numeric == "quantile_bins":
        parts.append(_value_facts(table, spec))
    if len(gu.reject_subjects):
        parts.append(
            _facts(
                "reject",
                None,
                pa.array(gu.reject_reasons.tolist(), pa.string()),
                pa.array(gu.reject_subjects, pa.int64()),
            )
        )
    return pa.concat_tables(parts) if parts else FACTS_SCHEMA.empty_table()


def _value_facts(table: pa.Table, spec: EncodeSpec) -> pa.Table:
    """``kind='value'`` facts: per-code sketches of the train subjects' numeric values (bad
    subjects left out); :mod:`numeric`."""
    sid = np.asarray(table[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    subjects, inv = np.unique(sid, return_inverse=True)
    train = subject_split(spec, subjects) == S.TRAIN_SPLIT
    if spec.bad_subjects:
        train &= ~np.isin(subjects, np.asarray(spec.bad_subjects, dtype=np.int64))
    col = table[S.CODE]
    code = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    keys, bits = value_facts(sid, code, value_column(table), train[inv])
    return _facts(
        VALUE_FACT, S.TRAIN_SPLIT, pa.array(keys, pa.string()), pa.array(bits, pa.int64())
    )


def _facts(kind: str, split: str | None, key: Any, value: Any) -> pa.Table:
    n = len(key)
    return pa.table(
        {
            "kind": pa.array([kind] * n, pa.string()),
            "split": pa.array([split] * n, pa.string()),
            "key": pa.array(key, pa.string())
            if not isinstance(key, pa.Array | pa.ChunkedArray)
            else key,
            "value": value,
        },
        schema=FACTS_SCHEMA,
    )


@dataclass
class IngestFit:
    """What :meth:`IngestPipeline.fit` learned from one scan of the cohort.

    Attributes:
        vocab: the vocabulary (fitted on train, or the one passed in).
        code_counts: per split, the ``code``/``count`` table of input tokens (before
            truncation).
        stats: per split, ``subjects``, ``events``, ``visits``, ``tokens``,
            ``truncated_flat`` (subjects cut by max_seq_len/max_visits),
            ``truncated_hierarchical`` (cut by max_visits/max_codes_per_visit),
            ``tokens_kept`` and ``visits_kept`` (what the layout keeps after truncation),
            ``unknown_tokens`` (tokens that map to UNK).
        rejects: ``subject_id``, ``reason`` of every dropped subject (calendar axis: sample).
        event_days: calendar axis, per split: float64 days from the prediction time to each
            event (to the minute); empty arrays on the visit axis.
    """

    vocab: Vocabulary
    code_counts: dict[str, pa.Table]
    stats: dict[str, dict[str, int]]
    rejects: pa.Table
    event_days: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab.size,
            "vocab_hash": self.vocab.hash,
            "rejects": self.rejects.num_rows,
            "splits": self.stats,
        }


@dataclass
class ScanTotals:
    """The facts of every unit, summed.

    Attributes:
        counts: per split, the ``code``/``count`` table of input tokens (before truncation).
        stats: per split, the :data:`STAT_KEYS` sums.
        reject_subjects: int64 [K], in scan order.
        reject_reasons: [K] reason strings.
        event_days: per split, float64 days to each event (calendar axis; else empty).
    """

    counts: dict[str, pa.Table]
    stats: dict[str, dict[str, int]]
    reject_subjects: np.ndarray
    reject_reasons: list[str]
    event_days: dict[str, np.ndarray] = field(default_factory=dict)
    values: ValueSketch = field(default_factory=ValueSketch)


def reduce_facts(facts: Iterable[pa.Table]) -> ScanTotals:
    """Sum :func:`scan_events` tables (the driver's memory grows with distinct codes only)."""
    counts: dict[str, list[pa.Table]] = {s: [] for s in S.SPLITS}
    stats: dict[str, dict[str, int]] = {s: dict.fromkeys(STAT_KEYS, 0) for s in S.SPLITS}
    rej_sid: list[np.ndarray] = []
    rej_why: list[str] = []
    ev_min: dict[str, list[np.ndarray]] = {s: [] for s in S.SPLITS}
    values = ValueSketch()
    for t in facts:
        kind = np.asarray(t["kind"].to_pylist(), dtype=object)
        for name in S.SPLITS:
            sel = (kind == "count") & (np.asarray(t["split"].to_pylist(), dtype=object) == name)
            if bool(sel.any()):
                sub = t.filter(pa.array(sel))
                counts[name].append(pa.table({COUNT_CODE: sub["key"], COUNT_VALUE: sub["value"]}))
                if len(counts[name]) >= 64:  # bound the driver's memory: merge as we go
                    counts[name] = [merge_counts(counts[name])]
        st = t.filter(pa.array(kind == "stat"))
        for split, key, value in zip(
            st["split"].to_pylist(), st["key"].to_pylist(), st["value"].to_pylist(), strict=True
        ):
            stats[split][key] += int(value)
        em = t.filter(pa.array(kind == EVENT_MINUTES))
        if em.num_rows:
            em_split = np.asarray(em["split"].to_pylist(), dtype=object)
            em_val = np.asarray(em["value"].to_numpy(), dtype=np.int64)
            for name in S.SPLITS:
                ev_min[name].append(em_val[em_split == name])
        vf = t.filter(pa.array(kind == VALUE_FACT))
        if vf.num_rows:
            values.add(vf["key"].to_pylist(), np.asarray(vf["value"].to_numpy(), np.int64))
        rj = t.filter(pa.array(kind == "reject"))
        if rj.num_rows:
            rej_sid.append(np.asarray(rj["value"].to_numpy(), dtype=np.int64))
            rej_why.extend(rj["key"].to_pylist())
    merged = {s: merge_counts(c) for s, c in counts.items()}
    sid = np.concatenate(rej_sid) if rej_sid else np.zeros(0, np.int64)
    days = {
        s: (np.concatenate(v) if v else np.zeros(0, np.int64)) / MINUTES_PER_DAY
        for s, v in ev_min.items()
    }
    return ScanTotals(merged, stats, sid, rej_why, days, values)


def count_unknown_tokens(totals: ScanTotals, vocab: Vocabulary) -> None:
    """Add ``unknown_tokens`` (input tokens that map to UNK) to every split's statistics."""
    for s, c in totals.counts.items():
        ids, _ = vocab.lookup(c[COUNT_CODE])
        n = np.asarray(c[COUNT_VALUE].to_numpy(), dtype=np.int64)
        totals.stats[s]["unknown_tokens"] = int(n[ids == S.UNK_ID].sum())


def rejects_table(bad_subjects: dict[int, str], totals: ScanTotals) -> pa.Table:
    """``subject_id``, ``reason`` of the validation's bad subjects and the scan's rejects,
    sorted by subject (stable: a bad subject comes before its scan reject)."""
    sid = np.concatenate([np.array(sorted(bad_subjects), dtype=np.int64), totals.reject_subjects])
    why = [bad_subjects[int(s)] for s in sorted(bad_subjects)] + totals.reject_reasons
    order = np.argsort(sid, kind="stable")
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(sid[order], pa.int64()),
            S.REJECT_REASON: pa.array([why[i] for i in order], pa.string()),
        }
    )
