"""IPCW scores at days (Brier, IBS, td-AUC helpers), calibration at a horizon and the
subject-bootstrap counts.

Conventions: :mod:`ehrsurv_dist.metrics.calendar`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.nonparametric import CensoringDistributionEstimator
from sksurv.util import Surv

from ehrsurv_dist.metrics.bootstrap import bootstrap_indices
from ehrsurv_dist.metrics.calendar.inputs import (
    _Split,
    check_times,
    edge_index,
)
from ehrsurv_dist.metrics.calendar.pairs import (
    _as_risk,
)
from ehrsurv_dist.metrics.calibration import risk_bin_edges, risk_bins
from ehrsurv_dist.metrics.inputs import FloatArray, IntArray, as_event

IBS_MAX_POINTS = 365  # the IBS grid steps by whole days, at most this many points
_CHUNK_ENTRIES = 2_000_000  # bootstrap replicates are evaluated in chunks of ~this many cells


def horizon_key(day: float) -> str:
    """The ``metrics.json`` key of a day value: ``"30"`` for 30.0, ``"30.5"`` for 30.5."""
    return str(int(day)) if float(day).is_integer() else repr(float(day))


def follow_up_limit(split: _Split) -> float:
    """Days ``d`` with ``min(t) ≤ d <`` this limit are inside the follow-up (IPCW-estimable):
    someone in the split is followed beyond d, and the train censoring distribution is known."""
    return min(float(split.time.max()), float(split.train_time.max()))


def _capped_y(split: _Split, max_day: float) -> npt.NDArray[Any]:
    """The split's ``(event, time)`` with times above ``max_day`` lowered half-way towards
    :func:`follow_up_limit`.

    Every case/control label and every censoring weight that scikit-survival's Brier score and
    cumulative/dynamic AUC use at days ``≤ max_day`` is unchanged, but no weight is asked at the
    last train time, where the censoring distribution may be zero or unknown.
    """
    cap = 0.5 * (max_day + follow_up_limit(split))
    return Surv.from_arrays(split.event, np.minimum(split.time, cap))


def ibs_grid_days(split: _Split) -> FloatArray:
    """The IBS day grid: whole days (step ``ceil(horizon / 365)``) below the horizon, inside
    ``[min(t), follow_up_limit)``: float64 ``[G]``, possibly with fewer than two points."""
    step = max(1, math.ceil(split.horizon / IBS_MAX_POINTS))
    days = np.arange(step, math.ceil(split.horizon), step, dtype=np.float64)
    keep = (days >= split.time.min()) & (days < follow_up_limit(split)) & (days < split.horizon)
    return days[keep]


def brier_contributions(split: _Split, grid: FloatArray) -> FloatArray:
    """Each sample's share of the IBS on ``grid``: float ``[N]`` whose mean is the IBS.

    ``(1 / span) ∫ [S_i(d)² · case_i(d) / G(t_i) + (1 − S_i(d))² · control_i(d) / G(d)] dd`` by
    the trapezoid rule, exactly the terms of scikit-survival's ``brier_score`` (zeros of ``G``
    read as infinite weights' reciprocal 0), so a weighted mean is the IBS of a resampled split.
    """
    y = _capped_y(split, float(grid[-1]))
    cens = CensoringDistributionEstimator().fit(
        Surv.from_arrays(split.train_event, split.train_time)
    )
    g_grid = cens.predict_proba(grid)
    g_grid[g_grid == 0] = np.inf
    g_obs = cens.predict_proba(y["time"])
    g_obs[g_obs == 0] = np.inf
    col = edge_index(split.edges, grid)
    out = np.empty(split.time.shape[0])
    rows = max(1, _CHUNK_ENTRIES // grid.shape[0])  # bounded memory: [rows, G] at a time
    for r0 in range(0, out.shape[0], rows):
        r = slice(r0, r0 + rows)
        s = split.survival[r][:, col].astype(np.float64)  # [rows, G]
        t = y["time"][r][:, None]
        case = (t <= grid) & split.event[r][:, None]
        control = t > grid
        terms = np.square(s) * case / g_obs[r][:, None] + np.square(1.0 - s) * control / g_grid
        out[r] = np.trapezoid(terms, grid, axis=1)
    return out / (grid[-1] - grid[0])


def _valid_days(
    split: _Split, days: Sequence[float], warn: list[str]
) -> tuple[FloatArray, list[str]]:
    """The evaluation days ``≤ horizon`` inside the follow-up; the others skipped with a warning."""
    lo, hi = float(split.time.min()), follow_up_limit(split)
    kept: list[float] = []
    for d in sorted({float(x) for x in days}):
        if d > split.horizon:
            warn.append(f"horizon {horizon_key(d)} days skipped: beyond the task horizon")
        elif not lo <= d < hi:
            warn.append(
                f"horizon {horizon_key(d)} days skipped: outside the follow-up range "
                f"[{lo:g}, {hi:g}) (nobody followed beyond it, or the train censoring unknown)"
            )
        else:
            kept.append(d)
    return np.asarray(kept, dtype=np.float64), [horizon_key(d) for d in kept]


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def calibration_days(
    survival_at_horizon: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    horizon_days: float,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Predicted risk ``1 − S(horizon)`` against the Kaplan–Meier risk by the horizon, per bin.

    Bins are quantiles (deciles by default) of the predicted risk, duplicate edges merged, empty
    bins dropped. In each bin the observed risk is ``1 − KM(horizon)`` of that bin's samples
    (scikit-survival's estimator, held at its last value; 0 without an event).

    Args:
        survival_at_horizon: float ``[N]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        horizon_days: the horizon.
        n_bins: number of quantile bins before merging.

    Returns:
        ``{"horizon_days", "ece", "bin_edges" [B + 1], "predicted" [B], "observed" [B],
        "n" [B], "n_at_risk" [B]}``; ``ece = Σ_b n_b / N · |predicted_b − observed_b|``;
        ``n_at_risk``: samples still followed at the horizon.
    """
    t = check_times(time_days, "time_days")
    ev = as_event(event, "event", t.shape[0])
    risk = 1.0 - _as_risk(survival_at_horizon, t.shape[0])
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected a positive int, got {n_bins!r}")
    edges = risk_bin_edges(risk, n_bins, "quantile")
    kept_edges, pred, obs, cnt, at_risk = risk_bins(
        risk, edges, ev, t, float(horizon_days), t >= horizon_days
    )
    n = np.asarray(cnt, dtype=np.float64)
    gap = np.abs(np.asarray(pred) - np.asarray(obs))
    return {
        "horizon_days": float(horizon_days),
        "ece": float(np.sum(n / n.sum() * gap)),
        "bin_edges": [float(x) for x in kept_edges],
        "predicted": pred,
        "observed": obs,
        "n": cnt,
        "n_at_risk": at_risk,
    }


# ---------------------------------------------------------------------------------------------
# Bootstrap over subjects
# ---------------------------------------------------------------------------------------------


def subject_bootstrap_counts(subject_id: npt.ArrayLike, n_bootstrap: int, seed: int) -> IntArray:
    """How many times each sample is taken in each replicate: int64 ``[B, N]``.

    Replicate b draws U subjects with replacement from the U sorted unique subjects
    (:func:`~ehrsurv_dist.metrics.bootstrap.bootstrap_indices` with ``seed``) and takes all their
    samples, so the samples of one subject always share a count.
    """
    sid = np.asarray(subject_id)
    uniq, inv = np.unique(sid, return_inverse=True)
    out = np.empty((n_bootstrap, sid.shape[0]), dtype=np.int64)
    for b, draw in enumerate(bootstrap_indices(uniq.shape[0], n_bootstrap, seed)):
        out[b] = np.bincount(draw, minlength=uniq.shape[0])[inv]
    return out
