"""Load a validated cohort as visits + labels + splits, single process (the reference path).

This is what every consumer that does not stream (tests, the single-process ingest baseline,
small evaluations) calls. It validates first (or reuses the report cached under the cohort's
fingerprint: :mod:`~ehrsurv_dist.data.validation_cache`), refuses a cohort with errors unless
dropping is allowed, and then writes every dropped subject with its reason to a rejects file:
nothing is lost silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.data.meds import (
    CohortReport,
    data_files,
    default_outcomes_path,
    read_events_table,
    read_outcomes,
)
from ehrsurv_dist.data.splits import subject_splits
from ehrsurv_dist.data.validation_cache import validate_cached
from ehrsurv_dist.data.visits import SubjectVisits, build_visits

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    """A cohort ready for batching.

    Attributes:
        visits: visits and labels of the kept subjects.
        split: split name per kept subject (aligned with ``visits.subject_id``).
        rejects: ``subject_id``, ``reason`` of every dropped subject.
        report: the validation report the load was based on.
    """

    visits: SubjectVisits
    split: np.ndarray
    rejects: pa.Table
    report: CohortReport

    def subset(self, split: str) -> SubjectVisits:
        return self.visits.take(np.flatnonzero(self.split == split))


def load_cohort(
    cohort: str,
    outcomes: str | None = None,
    granularity: str = "day",
    drop_bad_subjects: bool = False,
    rejects_path: str | None = None,
    require_outcomes: bool = True,
    split_seed: int = 0,
) -> Cohort:
    """Validate, read and label a MEDS cohort.

    Args:
        cohort: cohort directory (local path or pyarrow filesystem URI).
        outcomes: outcome table; default ``COHORT/outcomes.parquet``.
        granularity: visit granularity.
        drop_bad_subjects: drop subjects with subject-level errors instead of refusing.
        rejects_path: where to write the rejects Parquet (atomically) when any subject is
            dropped; ``None`` keeps them in memory only.
        require_outcomes: False for pretraining (no outcome table needed).
        split_seed: seed of the hash split for subjects without a split file entry.

    Raises:
        CohortError: fatal problems, or subject-level errors without ``drop_bad_subjects``.
    """
    report = validate_cached(cohort, outcomes, granularity, require_outcomes=require_outcomes)
    report.raise_if_unusable(drop_bad_subjects)
    fs, files, _ = data_files(cohort)
    events = pa.concat_tables([read_events_table(f, fs) for f in files])
    bad = np.array(sorted(report.bad_subjects), dtype=np.int64)
    if len(bad):
        keep = ~np.isin(np.asarray(events[S.SUBJECT_ID].to_numpy()), bad)
        events = events.filter(pa.array(keep))
    out_path = report.outcomes or (outcomes if outcomes else None)
    out_t = None
    if out_path is not None:
        out_t = read_outcomes(out_path)
        if len(bad):
            osid = np.asarray(out_t[S.SUBJECT_ID].to_numpy(zero_copy_only=False))
            out_t = out_t.filter(pa.array(~np.isin(osid, bad)))
    elif require_outcomes:  # pragma: no cover - validate_cohort already reported it as fatal
        out_path = default_outcomes_path(cohort)
    visits, rej = build_visits(events, out_t, granularity)
    if len(bad):
        pre = pa.table(
            {
                S.SUBJECT_ID: pa.array(bad, pa.int64()),
                S.REJECT_REASON: pa.array([report.bad_subjects[int(s)] for s in bad], pa.string()),
            }
        )
        rej = pa.concat_tables([pre, rej]).sort_by(S.SUBJECT_ID)
    if rej.num_rows:
        log.warning("dropped %d subject(s); reasons are in the rejects file", rej.num_rows)
        if rejects_path is not None:
            atomic.write_parquet(rej, rejects_path)
    split = subject_splits(cohort, visits.subject_id, split_seed)
    return Cohort(visits=visits, split=split, rejects=rej, report=report)
