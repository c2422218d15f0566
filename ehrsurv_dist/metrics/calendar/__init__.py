"""Survival metrics on the day scale: tasks on the calendar axis (the calendar-axis contract,
docs/design.md).

A split holds N samples (a subject may have several, one per prediction time). Each sample has
the predicted survival ``S`` at the bins' right edges ``e_1 … e_K`` (edges ``e_0 = 0 < … < e_K =
horizon``, in days after the prediction time), an observed ``time_days`` (to the event or the
censoring, capped at the horizon), an ``event`` flag and its ``subject_id``.

Conventions, shared by every metric here:

- **The survival between edges** is pycox's ``EvalSurv(..., steps="pre")`` step function: at a
  time ``t`` in ``(e_{j-1}, e_j]`` the prediction is ``S(e_j)``; at ``t ≤ e_1`` (including
  ``t = 0``) it is ``S(e_1)``, because pycox clips the index to the first column rather than
  using ``S(0) = 1``; beyond ``e_K`` it is ``S(e_K)``. See :func:`edge_index`.
- **Comparable pairs** (td-C, Harrell, Uno): sample i has an event and either ``t_j > t_i``, or
  ``t_j = t_i`` and j is censored. Samples of one subject are compared with each other like any
  other samples.
- **Risk** for Harrell's and Uno's C, td-AUC and calibration: ``1 − S(horizon) = 1 − S(e_K)``.
- **IPCW** metrics (Uno, Brier, IBS, td-AUC) weight by scikit-survival's Kaplan–Meier censoring
  distribution of the train split.
- **Bootstrap**: a replicate draws subjects with replacement (``numpy.random.default_rng(seed)``,
  the draws of :func:`~ehrsurv_dist.metrics.bootstrap.bootstrap_indices` over the sorted unique
  subjects) and takes all their samples; it is evaluated as per-sample weights (how many times
  the sample's subject was drawn), which is exactly the metric of the resampled split. Metrics
  are always computed over a whole split.

The concordances are counted without a loop over pairs: comparable pairs are those whose time
key is larger (:func:`time_keys`), and a pair counts when the comparator's value rank is below a
threshold, so each metric is a weighted two-dimensional dominance count, split by the bits of the
key into sorted segments (:class:`PairSums`, ``O(N log² N)`` once, then ``O(N log N)`` per
bootstrap replicate with only cumulative sums).

Pure numpy / pyarrow / scikit-survival; matplotlib only inside the plot functions.

Modules: ``inputs`` (checked inputs, one split, the step function, time keys), ``pairs`` (pair
counts and the concordances), ``scores`` (IPCW Brier/IBS, calibration, bootstrap counts),
``report`` (the ``metrics.json`` entry, the MEDS-evaluation table, the time axis), ``plots``.
"""

from __future__ import annotations

from ehrsurv_dist.metrics.calendar.inputs import (
    check_edges,
    check_survival,
    check_times,
    edge_index,
    survival_at_days,
    time_keys,
)
from ehrsurv_dist.metrics.calendar.pairs import (
    PairSums,
    RiskConcordance,
    TdConcordanceDays,
    concordance_td_days,
    harrell_c_days,
    uno_c_days,
    uno_weights,
)
from ehrsurv_dist.metrics.calendar.plots import (
    plot_calibration_days,
    plot_survival_days,
)
from ehrsurv_dist.metrics.calendar.report import (
    CI_METRICS,
    RISK_SCORE,
    calendar_metrics,
    meds_eval_table,
    time_axis_dict,
)
from ehrsurv_dist.metrics.calendar.scores import (
    IBS_MAX_POINTS,
    brier_contributions,
    calibration_days,
    follow_up_limit,
    horizon_key,
    ibs_grid_days,
    subject_bootstrap_counts,
)

__all__ = [
    "CI_METRICS",
    "IBS_MAX_POINTS",
    "PairSums",
    "RISK_SCORE",
    "RiskConcordance",
    "TdConcordanceDays",
    "brier_contributions",
    "calendar_metrics",
    "calibration_days",
    "check_edges",
    "check_survival",
    "check_times",
    "concordance_td_days",
    "edge_index",
    "follow_up_limit",
    "harrell_c_days",
    "horizon_key",
    "ibs_grid_days",
    "meds_eval_table",
    "plot_calibration_days",
    "plot_survival_days",
    "subject_bootstrap_counts",
    "survival_at_days",
    "time_axis_dict",
    "time_keys",
    "uno_c_days",
    "uno_weights",
]
