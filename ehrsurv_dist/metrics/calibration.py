"""Calibration of the predicted event probability at a whole time k, per risk bin (docs/design.md §4).

The predicted risk is ``1 − S(k − 1)`` (see :func:`~ehrsurv_dist.metrics.event_free_at`); the
observed probability in a bin is one minus the Kaplan–Meier estimate at k on the
:func:`~ehrsurv_dist.metrics.to_sksurv_time` scale, which handles censoring.
Pure numpy / scikit-survival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.nonparametric import kaplan_meier_estimator

from ehrsurv_dist.metrics.hazards import HazardsLike, as_hazard_table
from ehrsurv_dist.metrics.inputs import BoolArray, FloatArray, IntArray, as_event, check_int

STRATEGIES = ("quantile", "uniform")


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration of the predicted event probability by whole time k, per risk bin.

    Attributes:
        horizon: the whole time k.
        bin_edges: float ``[B + 1]`` predicted-risk edges of the non-empty bins.
        predicted: float ``[B]`` mean predicted risk ``1 − S(k − 1)`` per bin.
        observed: float ``[B]`` Kaplan–Meier probability of an event by k per bin.
        n: int ``[B]`` subjects per bin.
        n_at_risk: int ``[B]`` subjects per bin still followed after k (few: unstable estimate).
        ece: expected calibration error, ``Σ_b n_b / N · |predicted_b − observed_b|``.
    """

    horizon: int
    bin_edges: FloatArray
    predicted: FloatArray
    observed: FloatArray
    n: IntArray
    n_at_risk: IntArray
    ece: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists and Python scalars)."""
        return {
            "horizon": int(self.horizon),
            "ece": float(self.ece),
            "bin_edges": self.bin_edges.tolist(),
            "predicted": self.predicted.tolist(),
            "observed": self.observed.tolist(),
            "n": self.n.tolist(),
            "n_at_risk": self.n_at_risk.tolist(),
        }


def calibration_at(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    horizon: int,
    n_bins: int = 10,
    strategy: str = "quantile",
) -> CalibrationResult:
    """Predicted risk ``1 − S(k − 1)`` against the observed Kaplan–Meier event probability by k.

    Subjects are binned on predicted risk; in each bin the observed probability is one minus the
    Kaplan–Meier estimate at k on the :func:`~ehrsurv_dist.metrics.to_sksurv_time` scale, which
    handles censoring.

    Args:
        hazards: see :func:`~ehrsurv_dist.metrics.as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        horizon: whole time k ≥ 1.
        n_bins: number of bins (before dropping empty ones).
        strategy: ``"quantile"`` (equal counts; robust for skewed risks) or ``"uniform"`` (equal
            width on [0, 1], as in the seed).

    Returns:
        The per-bin table and its ECE.

    Raises:
        ValueError: bad inputs, ``horizon``, ``n_bins`` or ``strategy``.
    """
    table = as_hazard_table(hazards, last_visit)
    ev = as_event(event, "event", table.n)
    k = check_int(horizon, "horizon", 1, "a whole time k >= 1")
    check_int(n_bins, "n_bins", 1, "a positive int")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected 'quantile' or 'uniform', got {strategy!r}")
    risk = 1.0 - np.exp(table.log_survival(np.array([k - 1])))[:, 0]  # [N]
    edges = risk_bin_edges(risk, int(n_bins), strategy)
    return _binned(risk, edges, ev, table.last_visit + 0.5 * ev, k)


def risk_bin_edges(risk: FloatArray, n_bins: int, strategy: str) -> FloatArray:
    """float ``[B + 1]`` edges of ``n_bins`` risk bins (quantile edges: duplicates merged)."""
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.unique(np.quantile(risk, np.linspace(0.0, 1.0, n_bins + 1)))
    if edges.shape[0] == 1:  # all predictions equal: one bin
        edges = np.array([edges[0], edges[0]])
    return edges


def risk_bins(
    risk: FloatArray,
    edges: FloatArray,
    ev: BoolArray,
    t: FloatArray,
    time: float,
    followed: BoolArray,
) -> tuple[FloatArray, list[float], list[float], list[int], list[int]]:
    """The non-empty risk bins of ``edges``: (their edges, ``[B' + 1]``; then per bin, as lists:
    mean predicted risk, Kaplan–Meier observed risk at ``time``, samples, samples still
    ``followed`` at ``time``); both time axes' calibration tables are built from these."""
    bin_id = np.clip(np.searchsorted(edges[1:-1], risk, side="right"), 0, edges.shape[0] - 2)
    keep: list[int] = []
    pred: list[float] = []
    obs: list[float] = []
    cnt: list[int] = []
    at_risk: list[int] = []
    for b in range(edges.shape[0] - 1):
        m = bin_id == b
        if not m.any():
            continue
        keep.append(b)
        pred.append(float(risk[m].mean()))
        obs.append(km_risk_at(ev[m], t[m], time))
        cnt.append(int(m.sum()))
        at_risk.append(int(np.sum(followed[m])))
    return np.append(edges[keep], edges[keep[-1] + 1]), pred, obs, cnt, at_risk


def _binned(
    risk: FloatArray, edges: FloatArray, ev: BoolArray, t: FloatArray, k: int
) -> CalibrationResult:
    """Predicted against observed per non-empty bin.

    Args:
        risk: float ``[N]`` predicted risk by k.
        edges: float ``[B + 1]`` bin edges.
        ev: bool ``[N]``.
        t: float ``[N]`` observed times on the scikit-survival scale.
        k: the whole time.
    """
    kept_edges, pred, obs, cnt, at_risk = risk_bins(risk, edges, ev, t, k, t > k)
    predicted = np.asarray(pred)
    observed = np.asarray(obs)
    n = np.asarray(cnt, dtype=np.int64)
    return CalibrationResult(
        horizon=k,
        bin_edges=kept_edges.astype(np.float64),
        predicted=predicted,
        observed=observed,
        n=n,
        n_at_risk=np.asarray(at_risk, dtype=np.int64),
        ece=float(np.sum(n / n.sum() * np.abs(predicted - observed))),
    )


def km_risk_at(ev: BoolArray, t: FloatArray, time: float) -> float:
    """1 − Kaplan–Meier survival at ``time`` (held at its last value past the last observed
    time; 0 without an event): the observed risk of a calibration bin, on either time axis."""
    if not ev.any():
        return 0.0
    times, surv = kaplan_meier_estimator(ev, t)
    i = int(np.searchsorted(times, time, side="right")) - 1
    return 0.0 if i < 0 else float(1.0 - surv[i])
