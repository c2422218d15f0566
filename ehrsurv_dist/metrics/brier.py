"""IPCW metrics at whole horizons: Brier score, integrated Brier score, td-AUC (DESIGN.md §4).

All three predict ``S(k − 1)`` at whole time k (see
:func:`~ehrsurv_dist.metrics.event_free_at`) and weight by the Kaplan–Meier censoring
distribution of the train split (scikit-survival). The valid horizons and the default grids are
chosen here too. Pure numpy / scikit-survival.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score

from ehrsurv_dist.metrics.hazards import HazardsLike, HazardTable, as_hazard_table
from ehrsurv_dist.metrics.inputs import (
    BoolArray,
    FloatArray,
    IntArray,
    as_event,
    as_whole_times,
    check_pair,
    sksurv_y,
    structured_y_capped,
)


class HorizonScores(NamedTuple):
    """A metric at whole horizons k.

    Attributes:
        horizons: int ``[K]`` sorted.
        scores: float ``[K]``.
    """

    horizons: IntArray
    scores: FloatArray

    def as_dict(self) -> dict[str, float]:
        """``{"<k>": score}``, the ``metrics.json`` form."""
        return {str(int(k)): float(s) for k, s in zip(self.horizons, self.scores, strict=True)}


def valid_horizon_range(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> tuple[int, int]:
    """The whole horizons ``lo ≤ k ≤ hi`` at which IPCW Brier scores and td-AUC are defined.

    ``k ≥ 1`` (at ``k = 0`` everyone is event-free by definition), ``k ≥`` the smallest test
    time (scikit-survival), ``k <`` the largest test time (someone must still be followed) and
    ``k <`` the largest train time (the censoring distribution is unknown beyond it).

    Returns:
        ``(lo, hi)``; ``hi < lo`` when no horizon is valid.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = check_pair(last_visit, event)
    tlv, tev = check_pair(train_last_visit, train_event, "train_")
    t = lv + 0.5 * ev
    t_train = tlv + 0.5 * tev
    lo = max(1, math.ceil(float(t.min())))
    hi = min(math.ceil(float(t.max())), math.ceil(float(t_train.max()))) - 1
    return lo, hi


def default_horizons(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    quantiles: Sequence[float] = (0.25, 0.5, 0.75),
) -> IntArray:
    """Default whole horizons for Brier scores and td-AUC.

    The quantiles (nearest rank) of ``T + 1`` over the split's events (the first whole time by
    which each event has happened), clipped to :func:`valid_horizon_range`, de-duplicated.

    Returns:
        int ``[K]``, possibly empty (no event, or no valid horizon).

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = check_pair(last_visit, event)
    lo, hi = valid_horizon_range(lv, ev, train_last_visit, train_event)
    if hi < lo or not ev.any():
        return np.zeros(0, dtype=np.int64)
    q = np.quantile(lv[ev] + 1, np.asarray(quantiles, dtype=float), method="nearest")
    return np.unique(np.clip(q.astype(np.int64), lo, hi))


def default_ibs_grid(
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
) -> IntArray:
    """Default grid for the integrated Brier score: every whole k in the valid range up to the
    90th percentile (nearest rank) of ``T + 1`` over events, where IPCW weights are still stable;
    the whole valid range when that leaves fewer than two points.

    Returns:
        int ``[K]``, possibly with fewer than two points (then the IBS is undefined).

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = check_pair(last_visit, event)
    lo, hi = valid_horizon_range(lv, ev, train_last_visit, train_event)
    if hi < lo:
        return np.zeros(0, dtype=np.int64)
    top = hi
    if ev.any():
        q90 = int(np.quantile(lv[ev] + 1, 0.9, method="nearest"))
        top = min(hi, max(q90, lo + 1))
    return np.arange(lo, top + 1, dtype=np.int64)


def ipcw_inputs(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None,
    grid: Callable[..., IntArray],
) -> tuple[HazardTable, BoolArray, IntArray, npt.NDArray[Any], npt.NDArray[Any], FloatArray]:
    """Shared validation for the IPCW metrics: (table, event, horizons, y_train, y_test, S(k−1))."""
    table = as_hazard_table(hazards, last_visit)
    ev = as_event(event, "event", table.n)
    tlv, tev = check_pair(train_last_visit, train_event, "train_")
    lo, hi = valid_horizon_range(table.last_visit, ev, tlv, tev)
    if horizons is None:
        ks = grid(table.last_visit, ev, tlv, tev)
        if ks.size == 0:
            raise ValueError(f"horizons: no valid default horizon (valid range [{lo}, {hi}])")
    else:
        ks = as_whole_times(horizons, "horizons")
    if ks.min() < lo or ks.max() > hi:
        raise ValueError(
            f"horizons: {ks.tolist()} outside the valid range [{lo}, {hi}] "
            "(k >= 1, within the test follow-up, before the last train time)"
        )
    y_train = sksurv_y(tlv, tev)
    y_test = structured_y_capped(table.last_visit, ev, float(ks.max()) + 0.25)
    surv = np.exp(table.log_survival(ks - 1))  # [N, K] S(k − 1)
    return table, ev, ks, y_train, y_test, surv


def brier_scores(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> HorizonScores:
    """IPCW Brier score at whole horizons k (scikit-survival), predicting ``S(k − 1)``.

    Censoring weights come from the Kaplan–Meier censoring distribution of the train split.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: whole k within :func:`valid_horizon_range`; default :func:`default_horizons`.

    Returns:
        The scores at the sorted unique horizons.

    Raises:
        ValueError: bad inputs; horizons outside the valid range, or no valid default horizon.
    """
    *_, ks, y_train, y_test, surv = ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_horizons
    )
    _, scores = brier_score(y_train, y_test, surv, ks.astype(np.float64))
    return HorizonScores(ks, np.asarray(scores, dtype=np.float64))


def integrated_brier(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> float:
    """Integrated IPCW Brier score over whole horizons (scikit-survival, trapezoid rule).

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: at least two whole k within :func:`valid_horizon_range`; default
            :func:`default_ibs_grid`.

    Returns:
        The IBS.

    Raises:
        ValueError: bad inputs; fewer than two valid horizons.
    """
    *_, ks, y_train, y_test, surv = ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_ibs_grid
    )
    if ks.shape[0] < 2:
        raise ValueError(f"horizons: the IBS needs at least two horizons, got {ks.tolist()}")
    return float(integrated_brier_score(y_train, y_test, surv, ks.astype(np.float64)))


def td_auc(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons: npt.ArrayLike | None = None,
) -> HorizonScores:
    """Cumulative/dynamic time-dependent AUC (scikit-survival) with risk ``1 − S(k − 1)`` at k.

    Cases at k: events with ``T + 0.5 ≤ k`` (IPCW-weighted, train censoring distribution);
    controls: subjects still followed after k.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``.
        train_event: bool ``[M]``.
        horizons: whole k within :func:`valid_horizon_range`; default :func:`default_horizons`.

    Returns:
        AUC per horizon; NaN at a horizon with no case yet.

    Raises:
        ValueError: bad inputs; horizons outside the valid range, or no valid default horizon.
    """
    table, ev, ks, y_train, y_test, surv = ipcw_inputs(
        hazards, last_visit, event, train_last_visit, train_event, horizons, default_horizons
    )
    scores = np.full(ks.shape[0], math.nan)
    has_case = ks >= (int(table.last_visit[ev].min()) + 1 if ev.any() else np.iinfo(np.int64).max)
    if has_case.any():
        auc, _ = cumulative_dynamic_auc(
            y_train, y_test, 1.0 - surv[:, has_case], ks[has_case].astype(np.float64)
        )
        scores[has_case] = auc
    return HorizonScores(ks, scores)
