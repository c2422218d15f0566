"""Every metric of one split: the ``metrics.json`` entry of docs/design.md §5.

:func:`evaluate_split` checks its inputs once, then computes in turn the counts, the
concordances, the horizons, the Brier scores and td-AUC, the IBS, the calibration and the
bootstrap intervals, each in a function of its own that appends to one list of warnings.
Degenerate splits do not raise: an undefined metric is NaN and a warning says why.
Pure numpy / scikit-survival.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ehrsurv_dist.metrics import brier
from ehrsurv_dist.metrics.bootstrap import (
    percentile_interval,
    resampled_metrics,
    td_concordance_interval,
)
from ehrsurv_dist.metrics.calibration import CalibrationResult, calibration_at
from ehrsurv_dist.metrics.concordance import (
    TdConcordance,
    harrell_c,
    length_only_baseline,
    uno_c,
    uno_default_tau,
)
from ehrsurv_dist.metrics.hazards import HazardsLike, HazardTable, as_hazard_table
from ehrsurv_dist.metrics.inputs import (
    BoolArray,
    FloatArray,
    IntArray,
    as_event,
    check_pair,
)
from ehrsurv_dist.metrics.risk import risk_score_name, risk_scores


@dataclass(frozen=True)
class _Split:
    """The checked inputs of one split: its hazards and events, and the train labels."""

    table: HazardTable
    event: BoolArray  # [N]
    train: tuple[IntArray, BoolArray]  # (last_visit [M], event [M]) of the train split

    @property
    def last_visit(self) -> IntArray:
        return self.table.last_visit

    @property
    def n_events(self) -> int:
        return int(self.event.sum())


def evaluate_split(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    risk_score: str = "mean_hazard",
    horizons: npt.ArrayLike | None = None,
    n_boot: int = 0,
    *,
    risk_k: int = 10,
    risk_n: int = 10,
    seed: int = 0,
    alpha: float = 0.05,
    calibration_horizon: int | None = None,
    n_bins: int = 10,
    tied_tol: float = 1e-8,
) -> dict[str, Any]:
    """All metrics of one split, the ``metrics.json`` entry of docs/design.md §5.

    Computed over the whole split. Degenerate splits (no event, a single subject, no valid
    horizon) do not raise: undefined metrics are NaN and ``"warnings"`` says why.

    Args:
        hazards: see :func:`~ehrsurv_dist.metrics.as_hazard_table`.
        last_visit: int ``[N]``.
        event: bool ``[N]``.
        train_last_visit: int ``[M]``, the train split (censoring distribution for IPCW).
        train_event: bool ``[M]``.
        risk_score: the score for Harrell's and Uno's C (see
            :func:`~ehrsurv_dist.metrics.risk_scores`).
        horizons: whole k for Brier and td-AUC; default
            :func:`~ehrsurv_dist.metrics.default_horizons`. Invalid horizons are dropped with a
            warning.
        n_boot: bootstrap replicates for the 95% intervals ``c_index_td_ci``,
            ``c_index_harrell_ci``, ``c_index_uno_ci`` (at the split's ``uno_tau``) and ``ibs_ci``
            (on the split's IBS grid); every metric sees the same resampled subjects (0: none).
        risk_k: k for ``risk_score="horizon"``.
        risk_n: n for ``risk_score="first_n"``.
        seed: bootstrap seed (same draws as :func:`~ehrsurv_dist.metrics.bootstrap_ci` with that
            seed).
        alpha: bootstrap interval level ``1 − alpha``.
        calibration_horizon: whole k; default the median default horizon.
        n_bins: calibration bins.
        tied_tol: tie tolerance of the concordances.

    Returns:
        ``{"c_index_td", "c_index_harrell", "c_index_uno", "ibs", "brier": {"<k>": f},
        "td_auc": {"<k>": f}, "n_subjects", "n_events", "risk_score", "c_index_td_ci",
        "c_index_harrell_ci", "c_index_uno_ci", "ibs_ci" (when n_boot > 0), "calibration",
        "length_only", "uno_tau", "ibs_horizons", "warnings"}``. Floats may be NaN; see
        :func:`jsonable` before writing strict JSON.

    Raises:
        ValueError: malformed inputs (shapes, dtypes, empty split, unknown ``risk_score``).
    """
    split = _check_split(hazards, last_visit, event, train_last_visit, train_event, n_boot)
    risk = risk_scores(split.table, None, risk_score, risk_k=risk_k, risk_n=risk_n)
    warn: list[str] = []
    out = _counts(split, risk_score_name(risk_score, risk_k, risk_n), warn)
    td = TdConcordance(split.table, split.event, tied_tol)
    out.update(_concordances(split, td, risk, tied_tol, warn))
    if n_boot > 0:
        ci = td_concordance_interval(td, split.table.n, n_boot, seed, alpha)
        out["c_index_td_ci"] = list(ci)
    ks = _horizons(split, horizons, warn)
    out.update(_horizon_scores(split, ks, warn))
    grid = brier.default_ibs_grid(split.last_visit, split.event, *split.train)
    out.update(_ibs(split, grid, warn))
    out["calibration"] = _calibration(split, ks, calibration_horizon, n_bins, warn)
    if n_boot > 0:
        ibs_grid = grid if np.isfinite(out["ibs"]) else None
        boot = resampled_metrics(
            split.table,
            risk,
            split.event,
            split.train,
            out["uno_tau"],
            ibs_grid,
            n_boot,
            seed,
            tied_tol,
        )
        out.update({f"{k}_ci": list(percentile_interval(v, alpha)) for k, v in boot.items()})
    out["warnings"] = warn
    return out


def _check_split(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None,
    event: npt.ArrayLike,
    train_last_visit: npt.ArrayLike,
    train_event: npt.ArrayLike,
    n_boot: int,
) -> _Split:
    """The inputs of :func:`evaluate_split`, checked (ValueError names the bad argument)."""
    table = as_hazard_table(hazards, last_visit)
    ev = as_event(event, "event", table.n)
    train = check_pair(train_last_visit, train_event, "train_")
    if n_boot < 0:
        raise ValueError(f"n_boot: must be >= 0, got {n_boot}")
    return _Split(table, ev, train)


def _counts(split: _Split, risk_name: str, warn: list[str]) -> dict[str, Any]:
    """Subjects, events and the risk score's label; warns about splits too small to score."""
    if split.n_events == 0:
        warn.append("no event in the split: concordances, Brier scores and td-AUC are undefined")
    if split.table.n == 1:
        warn.append("a single subject: no pair to compare")
    return {"n_subjects": split.table.n, "n_events": split.n_events, "risk_score": risk_name}


def _concordances(
    split: _Split, td: TdConcordance, risk: FloatArray, tied_tol: float, warn: list[str]
) -> dict[str, Any]:
    """td-C, Harrell's C, Uno's C (with its tau) and the length-only baseline."""
    lv, ev = split.last_visit, split.event
    out: dict[str, Any] = {"c_index_td": td.score()}
    if split.n_events > 0 and math.isnan(out["c_index_td"]):
        warn.append("no comparable pair: every event is at the largest last visit")
    out["c_index_harrell"] = harrell_c(risk, lv, ev, tied_tol)
    tau = uno_default_tau(lv, ev, *split.train)
    out["uno_tau"] = tau
    if tau is not None:
        warn.append(f"Uno's C truncated at tau={tau}: test events after the last train time")
    out["c_index_uno"] = _guarded(
        "c_index_uno", warn, uno_c, risk, lv, ev, *split.train, tau, tied_tol
    )
    out["length_only"] = length_only_baseline(lv, ev)
    return out


def _horizons(split: _Split, horizons: npt.ArrayLike | None, warn: list[str]) -> IntArray:
    """The whole horizons of Brier and td-AUC: the given ones inside the valid range (the
    others dropped with a warning), else the defaults."""
    lo, hi = brier.valid_horizon_range(split.last_visit, split.event, *split.train)
    if horizons is None:
        ks = brier.default_horizons(split.last_visit, split.event, *split.train)
    else:
        ks, dropped = brier.split_by_range(horizons, lo, hi)
        if dropped.size:
            warn.append(
                f"horizons {dropped.tolist()} dropped: outside the valid range [{lo}, {hi}]"
            )
    if ks.size == 0 and split.n_events > 0:
        warn.append(f"no valid horizon (valid range [{lo}, {hi}]): no Brier score or td-AUC")
    return ks


def _horizon_scores(split: _Split, ks: IntArray, warn: list[str]) -> dict[str, dict[str, float]]:
    """``{"brier": {"<k>": f}, "td_auc": {"<k>": f}}`` at ``ks`` (empty where undefined)."""
    out: dict[str, dict[str, float]] = {"brier": {}, "td_auc": {}}
    if ks.size == 0:
        return out
    metrics = {"brier": brier.brier_scores, "td_auc": brier.td_auc}
    for name, fn in metrics.items():
        scores = _guarded(name, warn, fn, split.table, None, split.event, *split.train, ks)
        if isinstance(scores, brier.HorizonScores):
            out[name] = scores.as_dict()
    return out


def _ibs(split: _Split, grid: IntArray, warn: list[str]) -> dict[str, Any]:
    """The integrated Brier score on the split's default grid, and the grid's ends."""
    out: dict[str, Any] = {"ibs_horizons": [int(grid[0]), int(grid[-1])] if grid.size else []}
    if grid.size >= 2 and split.n_events > 0:
        out["ibs"] = _guarded(
            "ibs", warn, brier.integrated_brier, split.table, None, split.event, *split.train, grid
        )
    else:
        out["ibs"] = math.nan
        if split.n_events > 0:
            warn.append("integrated Brier score undefined: fewer than two valid horizons")
    return out


def _calibration(
    split: _Split, ks: IntArray, horizon: int | None, n_bins: int, warn: list[str]
) -> dict[str, Any] | None:
    """Calibration at ``horizon`` (default: the median of ``ks``), as a dict; None without one."""
    if horizon is None and ks.size:
        horizon = int(ks[ks.shape[0] // 2])
    if horizon is None:
        warn.append("no calibration: no valid horizon")
        return None
    cal = _guarded(
        "calibration",
        warn,
        calibration_at,
        split.table,
        None,
        split.event,
        int(horizon),
        n_bins=n_bins,
    )
    return cal.as_dict() if isinstance(cal, CalibrationResult) else None


def _guarded(name: str, warn: list[str], fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)``; a ValueError from a degenerate split becomes NaN plus a warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kw)
    except ValueError as e:
        warn.append(f"{name} undefined: {e}")
        return math.nan


def jsonable(obj: Any) -> Any:
    """A copy of a metrics dict that strict JSON accepts: NaN/inf → None, numpy → Python types."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
