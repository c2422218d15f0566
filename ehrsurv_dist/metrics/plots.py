"""Diagnostic plots for survival predictions, written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never through pyplot, so
that no global backend is set and nothing needs a display. Each file is written atomically: to a
temporary file in the target folder, then ``os.replace``-d over the target, so that a reader never
sees a half-written PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from ehrsurv_dist import atomic
from ehrsurv_dist.metrics.calibration import CalibrationResult
from ehrsurv_dist.metrics.hazards import HazardsLike, as_hazard_table
from ehrsurv_dist.metrics.inputs import as_event, as_last_visit, as_risk


def plot_survival_curves(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    path: str | os.PathLike[str],
    *,
    event: npt.ArrayLike | None = None,
    max_curves: int = 20,
    horizon: int | None = None,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """Plot predicted survival curves ``S_i(t)`` for a random sample of subjects.

    Solid over the real visits, dotted over the constant-hazard extension; the last real visit is
    marked with a cross for an event and a circle for a censoring. The mean curve of all subjects
    is drawn in black.

    Args:
        hazards: see :func:`ehrsurv_dist.metrics.as_hazard_table`.
        last_visit: int ``[N]``.
        path: target PNG file (parent folders are created).
        event: bool ``[N]``, optional, for the end markers.
        max_curves: number of subjects drawn.
        horizon: grid points ``0..K−1``; default ``max(T) + 1``.
        seed: sampling seed.
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: bad inputs.
    """
    table = as_hazard_table(hazards, last_visit)
    k = int(table.last_visit.max()) + 1 if horizon is None else int(horizon)
    if k < 1:
        raise ValueError(f"horizon: expected a positive int, got {horizon!r}")
    ev = None if event is None else as_event(event, "event", table.n)
    grid = np.arange(k)
    surv = np.exp(table.log_survival(grid))  # [N, K]
    rng = np.random.default_rng(seed)
    pick = rng.choice(table.n, size=min(max_curves, table.n), replace=False)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i in pick:
        T = int(table.last_visit[i])
        (line,) = ax.plot(grid[: T + 1], surv[i, : T + 1], lw=1, alpha=0.7)
        if T + 1 < k:
            ax.plot(grid[T:], surv[i, T:], lw=1, ls=":", color=line.get_color(), alpha=0.7)
        if ev is not None and T < k:
            ax.plot(T, surv[i, T], "x" if ev[i] else "o", color=line.get_color(), ms=5, mfc="none")
    ax.plot(grid, surv.mean(axis=0), color="black", lw=2, label=f"mean of {table.n} subjects")
    ax.set_xlabel("visit index t")
    ax.set_ylabel("predicted S(t)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Predicted survival (dotted: last hazard held after the last visit)")
    ax.legend(loc="lower left")
    return Path(atomic.write_png(fig, path, dpi))


def plot_calibration(
    calibration: CalibrationResult | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    dpi: int = 100,
) -> Path:
    """Plot predicted against observed (Kaplan–Meier) event probability per risk bin.

    Args:
        calibration: a :class:`CalibrationResult` or its ``as_dict()`` form (as stored under
            ``"calibration"`` by ``evaluate_split``).
        path: target PNG file.
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: a mapping without the calibration keys, or mismatched lengths.
    """
    c = calibration.as_dict() if isinstance(calibration, CalibrationResult) else calibration
    return calibration_figure(
        c,
        "horizon",
        path,
        xlabel=f"predicted P(event by k={c.get('horizon')}) = 1 − S(k−1)",
        title=f"Calibration at k={c.get('horizon')}",
        points="risk bins (size: n)",
        dpi=dpi,
    )


def calibration_figure(
    c: Mapping[str, Any],
    horizon_key: str,
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    title: str,
    points: str,
    dpi: int = 100,
) -> Path:
    """The calibration plot both axes draw: predicted against observed (Kaplan–Meier) per risk
    bin, point size by bin size, the diagonal, the ECE in the title.

    Args:
        c: ``predicted``, ``observed``, ``n`` (1-D, equal length), ``ece`` and ``horizon_key``.
        horizon_key: the key holding the horizon (checked present).
        path: target PNG (written atomically).
        xlabel, title, points: the axis label, the title (the ECE is appended), the points' legend.
        dpi: resolution.

    Raises:
        ValueError: a mapping without the calibration keys, or mismatched lengths.
    """
    missing = {horizon_key, "ece", "predicted", "observed", "n"} - set(c)
    if missing:
        raise ValueError(f"calibration: missing keys {sorted(missing)}")
    pred = np.asarray(c["predicted"], dtype=np.float64)
    obs = np.asarray(c["observed"], dtype=np.float64)
    n = np.asarray(c["n"], dtype=np.float64)
    if not pred.shape == obs.shape == n.shape or pred.ndim != 1:
        raise ValueError("calibration: predicted, observed and n must be 1-D of equal length")

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    top = float(max(1e-3, pred.max(initial=0.0), obs.max(initial=0.0))) * 1.05
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="perfect")
    sizes = 20 + 180 * n / max(n.max(initial=1.0), 1.0)
    ax.plot(pred, obs, color="C0", lw=1)
    ax.scatter(pred, obs, s=sizes, color="C0", zorder=3, label=points)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("observed (Kaplan–Meier)")
    ax.set_title(f"{title}, ECE={float(c['ece']):.3f}")
    ax.legend(loc="upper left")
    return Path(atomic.write_png(fig, path, dpi))


def plot_risk_vs_length(
    risk: npt.ArrayLike,
    last_visit: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    event: npt.ArrayLike | None = None,
    risk_name: str = "risk",
    max_points: int = 5000,
    seed: int = 0,
    dpi: int = 100,
) -> Path:
    """The seed's length-bias diagnostic: risk score against number of visits ``T + 1``.

    A risk that rises with length ranks by follow-up rather than by hazard (docs/survival.md). The
    title gives Spearman's ρ between risk and length; the black line is the mean risk per length.

    Args:
        risk: float ``[N]``.
        last_visit: int ``[N]``.
        path: target PNG file.
        event: bool ``[N]``, optional, to colour events and censorings.
        risk_name: the risk score's name for the axis label.
        max_points: at most this many subjects are scattered (a random sample).
        seed: sampling and jitter seed.
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        ValueError: bad inputs.
    """
    lv = as_last_visit(last_visit, "last_visit")
    r = as_risk(risk, "risk", lv.shape[0])
    ev = None if event is None else as_event(event, "event", lv.shape[0])
    length = lv + 1
    rho = float(spearmanr(r, length).statistic) if np.ptp(length) and np.ptp(r) else float("nan")
    rng = np.random.default_rng(seed)
    pick = rng.choice(lv.shape[0], size=min(max_points, lv.shape[0]), replace=False)
    x = length[pick] + rng.uniform(-0.25, 0.25, size=pick.shape[0])  # jitter: lengths are ints

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    if ev is None:
        ax.scatter(x, r[pick], s=6, alpha=0.4, color="C0")
    else:
        for flag, label, colour in ((False, "censored", "C0"), (True, "event", "C3")):
            m = ev[pick] == flag
            ax.scatter(x[m], r[pick][m], s=6, alpha=0.4, color=colour, label=label)
    uniq, inv = np.unique(length, return_inverse=True)
    mean_r = np.bincount(inv, weights=r) / np.bincount(inv)
    ax.plot(uniq, mean_r, color="black", lw=2, label="mean per length")
    ax.set_xlabel("number of visits (T + 1)")
    ax.set_ylabel(risk_name)
    ax.set_title(f"{risk_name} vs sequence length (Spearman ρ = {rho:.3f})")
    ax.legend(loc="best")
    return Path(atomic.write_png(fig, path, dpi))


def km_by_risk_group(
    hazards: HazardsLike,
    risk: npt.ArrayLike,
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    groups: int = 3,
) -> list[dict[str, Any]]:
    """Kaplan–Meier curves of the subjects grouped by predicted risk (quantile groups).

    On the evaluation time scale of docs/design.md §4 (an event at visit T happens at T + 0.5, a
    censoring at T), so the KM value just before whole visit k is the observed probability of
    being event-free at k, comparable to the mean predicted ``S(k − 1)`` of the group.

    Returns:
        One dict per group, lowest risk first: ``n``, ``events``, ``risk_range`` (min, max),
        ``km_time``/``km_survival`` (scikit-survival's estimator), ``pred_time`` (whole k) and
        ``pred_survival`` (the group's mean predicted S(k − 1), last hazard held constant).
    """
    from sksurv.nonparametric import kaplan_meier_estimator

    table = as_hazard_table(hazards, last_visit)
    lv = table.last_visit
    r = as_risk(risk, "risk", lv.shape[0])
    ev = as_event(event, "event", lv.shape[0])
    time = lv + 0.5 * ev
    order = np.argsort(r, kind="stable")
    k = np.arange(0, int(lv.max()) + 2)
    surv_prev = np.exp(table.log_survival(k - 1))  # [N, K]: S(k - 1), S(-1) = 1
    out = []
    for part in np.array_split(order, groups):
        if part.size == 0:
            continue
        kt, ks = kaplan_meier_estimator(ev[part], time[part])
        out.append(
            {
                "n": int(part.size),
                "events": int(ev[part].sum()),
                "risk_range": (float(r[part].min()), float(r[part].max())),
                "km_time": np.concatenate([[0.0], kt]),
                "km_survival": np.concatenate([[1.0], ks]),
                "pred_time": k.astype(np.float64),
                "pred_survival": surv_prev[part].mean(axis=0),
            }
        )
    return out


def plot_km_by_risk_group(
    hazards: HazardsLike,
    risk: npt.ArrayLike,
    last_visit: npt.ArrayLike,
    event: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    groups: int = 3,
    risk_name: str = "risk",
    dpi: int = 100,
) -> Path:
    """Kaplan–Meier curves of the predicted-risk tertiles (or ``groups`` quantile groups).

    Solid steps: the observed (KM) survival of each group; dashed: the group's mean predicted
    survival. Well-separated solid curves mean the model ranks; dashed curves on the solid ones
    mean it is calibrated. See :func:`km_by_risk_group`.
    """
    data = km_by_risk_group(hazards, risk, last_visit, event, groups)
    names = {3: ["low", "middle", "high"], 2: ["low", "high"]}.get(len(data))
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, g in enumerate(data):
        name = names[i] if names else f"group {i + 1}"
        label = f"{name} {risk_name} (n={g['n']}, {g['events']} events)"
        ax.step(g["km_time"], g["km_survival"], where="post", color=f"C{i}", lw=2, label=label)
        ax.plot(g["pred_time"], g["pred_survival"], ls="--", color=f"C{i}", lw=1.2)
    ax.set_xlabel("visit index (events at T + 0.5, censorings at T)")
    ax.set_ylabel("event-free probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Kaplan–Meier by predicted {risk_name} group (dashed: mean predicted)")
    ax.legend(loc="best", fontsize=8)
    return Path(atomic.write_png(fig, path, dpi))


def plot_training_curves(
    history: Sequence[Mapping[str, float]], path: str | os.PathLike[str], *, dpi: int = 110
) -> Path:
    """Training loss and the validation score per epoch (one PNG, two panels)."""
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [int(h["epoch"]) for h in history]
    ax1.plot(epochs, [h.get("train_loss", float("nan")) for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    key = "val_c_index_td" if any("val_c_index_td" in h for h in history) else "val_loss"
    ax2.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(key.replace("_", " "))
    best = [h for h in history if h.get("epoch") == h.get("best_epoch")]
    if best:
        ax2.axvline(best[-1]["epoch"], color="grey", linestyle=":", label="best")
        ax2.legend()
    fig.tight_layout()
    return Path(atomic.write_png(fig, path, dpi))
