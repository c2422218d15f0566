"""IPCW metrics at whole horizons: Brier score, integrated Brier score, td-AUC (docs/design.md §4).

All three predict ``S(k − 1)`` at whole time k (see
:func:`~ehrsurv_dist.metrics.event_free_at`) and weight by the Kaplan–Meier censoring
distribution of the train split (scikit-survival). The valid horizons and the default grids are
chosen here too. Pure numpy / scikit-survival.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

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


def split_by_range(horizons: npt.ArrayLike, lo: int, hi: int) -> tuple[IntArray, IntArray]:
    """Whole horizons (sorted unique) inside ``[lo, hi]``, and those outside it.

    Raises:
        ValueError: ``horizons`` empty or not whole.
    """
    ks = as_whole_times(horizons, "horizons")
    inside = (ks >= lo) & (ks <= hi)
    return ks[inside], ks[~inside]


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


class IpcwInputs(NamedTuple):
    """The checked inputs of an IPCW metric at whole horizons k.

    Attributes:
        table: the split's hazards (N subjects).
        event: bool ``[N]``.
        horizons: int ``[K]`` sorted, inside :func:`valid_horizon_range`.
        y_train: scikit-survival ``(event, time)`` ``[M]`` of the train split.
        y_test: the same ``[N]`` for the split, times above the largest horizon lowered (see
            :func:`~ehrsurv_dist.metrics.inputs.structured_y_capped`).
        event_free: float64 ``[N, K]`` predicted ``S(k − 1)``.
    """

    table: HazardTable
    event: BoolArray
    horizons: IntArray
    y_train: npt.NDArray[Any]
    y_test: npt.NDArray[Any]
    event_free: FloatArray


R = TypeVar("R")


@dataclass(frozen=True)
class IpcwMetric(Generic[R]):
    """An IPCW metric at whole horizons k: the inputs are checked here, ``score`` computes it.

    Censoring weights come from the Kaplan–Meier censoring distribution of the train split
    (scikit-survival); the prediction at k is ``S(k − 1)``. The metrics of this module
    (:data:`brier_scores`, :data:`integrated_brier`, :data:`td_auc`) are instances, called as
    functions; each instance's doc is that of its ``score``.

    Attributes:
        score: the metric of the checked inputs.
        default: the default horizons, from ``(last_visit, event, train_last_visit, train_event)``.
    """

    score: Callable[[IpcwInputs], R]
    default: Callable[[IntArray, BoolArray, IntArray, BoolArray], IntArray]

    def __post_init__(self) -> None:
        object.__setattr__(self, "__doc__", self.score.__doc__)

    def __call__(
        self,
        hazards: HazardsLike,
        last_visit: npt.ArrayLike | None,
        event: npt.ArrayLike,
        train_last_visit: npt.ArrayLike,
        train_event: npt.ArrayLike,
        horizons: npt.ArrayLike | None = None,
    ) -> R:
        """The metric of a split.

        Args:
            hazards: see :func:`~ehrsurv_dist.metrics.as_hazard_table`.
            last_visit: int ``[N]``.
            event: bool ``[N]``.
            train_last_visit: int ``[M]``.
            train_event: bool ``[M]``.
            horizons: whole k within :func:`valid_horizon_range`; default ``self.default``.

        Raises:
            ValueError: bad inputs; horizons outside the valid range, or no valid default
                horizon.
        """
        table = as_hazard_table(hazards, last_visit)
        ev = as_event(event, "event", table.n)
        tlv, tev = check_pair(train_last_visit, train_event, "train_")
        lo, hi = valid_horizon_range(table.last_visit, ev, tlv, tev)
        if horizons is None:
            ks = self.default(table.last_visit, ev, tlv, tev)
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
        return self.score(IpcwInputs(table, ev, ks, y_train, y_test, surv))


def _brier(x: IpcwInputs) -> HorizonScores:
    """IPCW Brier score at whole horizons k (scikit-survival), predicting ``S(k − 1)``.

    Called as ``brier_scores(hazards, last_visit, event, train_last_visit, train_event,
    horizons=None)`` (see :class:`IpcwMetric`); default horizons :func:`default_horizons`.

    Returns:
        The scores at the sorted unique horizons.
    """
    _, scores = brier_score(x.y_train, x.y_test, x.event_free, x.horizons.astype(np.float64))
    return HorizonScores(x.horizons, np.asarray(scores, dtype=np.float64))


def _integrated_brier(x: IpcwInputs) -> float:
    """Integrated IPCW Brier score over whole horizons (scikit-survival, trapezoid rule).

    Called as ``integrated_brier(hazards, last_visit, event, train_last_visit, train_event,
    horizons=None)`` (see :class:`IpcwMetric`) with at least two horizons; default
    :func:`default_ibs_grid`.

    Returns:
        The IBS.

    Raises:
        ValueError: fewer than two valid horizons.
    """
    ks = x.horizons
    if ks.shape[0] < 2:
        raise ValueError(f"horizons: the IBS needs at least two horizons, got {ks.tolist()}")
    return float(integrated_brier_score(x.y_train, x.y_test, x.event_free, ks.astype(np.float64)))


def _td_auc(x: IpcwInputs) -> HorizonScores:
    """Cumulative/dynamic time-dependent AUC (scikit-survival) with risk ``1 − S(k − 1)`` at k.

    Called as ``td_auc(hazards, last_visit, event, train_last_visit, train_event,
    horizons=None)`` (see :class:`IpcwMetric`); default horizons :func:`default_horizons`.
    Cases at k: events with ``T + 0.5 ≤ k`` (IPCW-weighted, train censoring distribution);
    controls: subjects still followed after k.

    Returns:
        AUC per horizon; NaN at a horizon with no case yet.
    """
    ks, ev = x.horizons, x.event
    scores = np.full(ks.shape[0], math.nan)
    first_case = int(x.table.last_visit[ev].min()) + 1 if ev.any() else np.iinfo(np.int64).max
    has_case = ks >= first_case
    if has_case.any():
        auc, _ = cumulative_dynamic_auc(
            x.y_train, x.y_test, 1.0 - x.event_free[:, has_case], ks[has_case].astype(np.float64)
        )
        scores[has_case] = auc
    return HorizonScores(ks, scores)


brier_scores = IpcwMetric(_brier, default_horizons)
integrated_brier = IpcwMetric(_integrated_brier, default_ibs_grid)
td_auc = IpcwMetric(_td_auc, default_horizons)
