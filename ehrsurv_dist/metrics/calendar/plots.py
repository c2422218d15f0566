"""Plots of the calendar axis: calibration at a horizon and survival curves (matplotlib,
imported inside the functions).

Conventions: :mod:`ehrsurv_dist.metrics.calendar`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.nonparametric import kaplan_meier_estimator

from ehrsurv_dist.metrics.calendar.inputs import (
    check_edges,
    check_survival,
    check_times,
)
from ehrsurv_dist.metrics.calendar.scores import (
    horizon_key,
)
from ehrsurv_dist.metrics.inputs import as_event


def plot_calibration_days(
    calibration: Mapping[str, Any], path: str | os.PathLike[str], *, dpi: int = 100
) -> Path:
    """Predicted against Kaplan–Meier risk by the horizon per risk decile, with the diagonal.

    Args:
        calibration: the dict of :func:`calibration_days` (``calendar_metrics()["calibration"]``).
        path: target PNG (written atomically; parent folders created).
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: a mapping without the calibration keys, or mismatched lengths.
    """
    from ehrsurv_dist.metrics.plots import calibration_figure

    h = horizon_key(float(calibration.get("horizon_days", float("nan"))))
    return calibration_figure(
        calibration,
        "horizon_days",
        path,
        xlabel=f"predicted P(event by {h} days) = 1 − S({h})",
        title=f"Calibration at {h} days",
        points="risk deciles (size: n)",
        dpi=dpi,
    )


def plot_survival_days(
    survival: npt.ArrayLike,
    edges: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    dpi: int = 100,
) -> Path:
    """Mean predicted survival over days against the split's Kaplan–Meier curve.

    The prediction is drawn as the metrics read it (:func:`edge_index`): ``S(e_j)`` over
    ``(e_{j-1}, e_j]``, a step at each bin edge (marked); the Kaplan–Meier curve of
    ``(time_days, event)`` is scikit-survival's, a right-continuous step.

    Args:
        survival: float ``[N, K]``.
        edges: float ``[K + 1]``.
        time_days: float ``[N]``.
        event: bool ``[N]``.
        path: target PNG (written atomically).
        dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    from ehrsurv_dist import atomic

    e = check_edges(edges)
    s = check_survival(survival, e.shape[0] - 1)
    t = check_times(time_days, "time_days", s.shape[0])
    ev = as_event(event, "event", s.shape[0])
    mean_s = np.concatenate([[1.0], s.astype(np.float64).mean(axis=0)])
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    label = f"mean predicted S (n={s.shape[0]})"
    ax.step(e, mean_s, where="pre", color="C0", lw=2, label=label)
    ax.plot(e[1:], mean_s[1:], "o", color="C0", ms=3)
    lowest = float(mean_s.min())
    if ev.any():
        km_t, km_s = kaplan_meier_estimator(ev, t)
        km_label = f"Kaplan–Meier ({int(ev.sum())} events)"
        ax.step(np.r_[0.0, km_t], np.r_[1.0, km_s], where="post", color="black", label=km_label)
        lowest = min(lowest, float(km_s.min()))
    ax.set_xlim(0, float(e[-1]))
    ax.set_ylim(max(0.0, lowest - 0.05), 1.01)
    ax.set_xlabel("days after the prediction time (steps: bin edges)")
    ax.set_ylabel("event-free probability")
    ax.set_title("Predicted vs observed survival")
    ax.legend(loc="lower left")
    return Path(atomic.write_png(fig, path, dpi))
