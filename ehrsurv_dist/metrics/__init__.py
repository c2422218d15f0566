"""Survival metrics and diagnostic plots (pure numpy / scipy / scikit-survival / matplotlib).

Conventions used by every metric (docs/design.md §2, §4):

- Subject i has hazards ``h_i[0..T_i]`` over its real visits (``T_i`` = ``last_visit[i]``, the index
  of the last input visit) and an event flag ``δ_i``: the event happened in the interval after
  visit ``T_i``.
- Survival ``S_i(t) = Π_{s≤t} (1 − h_i[s])`` is computed in log space (a running sum of
  ``log1p(−h)``). Beyond the last visit the last hazard is held constant:
  ``S_i(t) = S_i(T_i) · (1 − h_i[T_i])^(t − T_i)`` for ``t > T_i``.
- Time for scikit-survival (and any function that takes one time per subject): an event is passed
  as time ``T + 0.5`` and a censoring as time ``T`` (see :func:`to_sksurv_time`). A subject censored
  at the same last visit as an event is then not comparable to it; one censored later is.
- On that time scale the predicted probability of being event-free at a whole time ``k`` is
  ``S(k − 1)`` with ``S(−1) = 1`` (see :func:`event_free_at`). Brier scores, time-dependent AUC and
  calibration are evaluated at whole ``k`` with that value.

Hazards arrive either as a padded 2-D array ``[N, V]`` plus ``last_visit`` (entries after
``T_i`` are padding and are ignored) or as a ragged sequence of 1-D arrays of length ``T_i + 1``;
:func:`as_hazard_table` turns both into one flat container. Metrics are always computed over a
whole split, never averaged over batches.

The code lives in one module per job: :mod:`~ehrsurv_dist.metrics.inputs` (argument checks, the
time convention), :mod:`~ehrsurv_dist.metrics.hazards` (the hazard table, survival curves),
:mod:`~ehrsurv_dist.metrics.concordance`, :mod:`~ehrsurv_dist.metrics.brier` (Brier, IBS,
td-AUC, horizons), :mod:`~ehrsurv_dist.metrics.calibration`, :mod:`~ehrsurv_dist.metrics.risk`,
:mod:`~ehrsurv_dist.metrics.bootstrap` and :mod:`~ehrsurv_dist.metrics.report` (one split).
Tasks on the calendar axis (days after a prediction time, several samples per subject) are
scored by :mod:`~ehrsurv_dist.metrics.calendar` (:func:`calendar_metrics`, the MEDS-evaluation
table, and its two plots, which import matplotlib only when called).
The plots live in :mod:`ehrsurv_dist.metrics.plots` and are not imported here, so that importing
the metrics does not import matplotlib.
"""

from ehrsurv_dist.metrics.bootstrap import bootstrap_ci
from ehrsurv_dist.metrics.brier import (
    HorizonScores,
    brier_scores,
    default_horizons,
    default_ibs_grid,
    integrated_brier,
    td_auc,
    valid_horizon_range,
)
from ehrsurv_dist.metrics.calendar import (
    calendar_metrics,
    calibration_days,
    concordance_td_days,
    harrell_c_days,
    meds_eval_table,
    subject_bootstrap_counts,
    survival_at_days,
    time_axis_dict,
    uno_c_days,
)
from ehrsurv_dist.metrics.calibration import CalibrationResult, calibration_at
from ehrsurv_dist.metrics.concordance import (
    concordance_td,
    harrell_c,
    length_only_baseline,
    uno_c,
    uno_default_tau,
)
from ehrsurv_dist.metrics.hazards import (
    HazardsLike,
    HazardTable,
    as_hazard_table,
    event_free_at,
    hazard_table_from_csr,
    pad_hazards,
    survival_curves,
)
from ehrsurv_dist.metrics.inputs import structured_y, to_sksurv_time
from ehrsurv_dist.metrics.report import evaluate_split, jsonable
from ehrsurv_dist.metrics.risk import risk_score_name, risk_scores

__all__ = [
    "CalibrationResult",
    "HazardTable",
    "HazardsLike",
    "HorizonScores",
    "as_hazard_table",
    "bootstrap_ci",
    "brier_scores",
    "calendar_metrics",
    "calibration_at",
    "calibration_days",
    "concordance_td",
    "concordance_td_days",
    "default_horizons",
    "default_ibs_grid",
    "evaluate_split",
    "event_free_at",
    "harrell_c",
    "harrell_c_days",
    "hazard_table_from_csr",
    "integrated_brier",
    "jsonable",
    "length_only_baseline",
    "meds_eval_table",
    "pad_hazards",
    "risk_score_name",
    "risk_scores",
    "structured_y",
    "subject_bootstrap_counts",
    "survival_at_days",
    "survival_curves",
    "td_auc",
    "time_axis_dict",
    "to_sksurv_time",
    "uno_c",
    "uno_c_days",
    "uno_default_tau",
    "valid_horizon_range",
]
