"""Read and validate a MEDS cohort plus its outcome table (docs/design.md §1): the one import point.

A cohort directory holds ``data/**/*.parquet`` (one row per measurement), optionally
``metadata/subject_splits.parquet`` and ``metadata/codes.parquet``, and ``outcomes.parquet``.

The work is done in one module per job, re-exported here so that callers need one name:

- :mod:`~ehrsurv_dist.data.meds_read`: the readers (shards, event columns, outcome table);
- :mod:`~ehrsurv_dist.data.validate`: :func:`validate_cohort` and its cross-shard checks, with the
  per-shard checks in :mod:`~ehrsurv_dist.data.validate_files`;
- :mod:`~ehrsurv_dist.data.validation_report`: :class:`CohortReport` and :class:`Problem`.
"""

from __future__ import annotations

from ehrsurv_dist.data.meds_read import (
    data_files,
    default_outcomes_path,
    read_events_table,
    read_outcomes,
    short_error,
)
from ehrsurv_dist.data.validate import MAX_AGE_YEARS, validate_cohort
from ehrsurv_dist.data.validation_report import MAX_EXAMPLES, CohortReport, Problem, Severity

__all__ = [
    "MAX_AGE_YEARS",
    "MAX_EXAMPLES",
    "CohortReport",
    "Problem",
    "Severity",
    "data_files",
    "default_outcomes_path",
    "read_events_table",
    "read_outcomes",
    "short_error",
    "validate_cohort",
]
