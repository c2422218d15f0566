"""The ``metrics.json`` entry of a calendar-axis split (:func:`calendar_metrics`), the
MEDS-evaluation table and the time-axis description.

Conventions: :mod:`ehrsurv_dist.metrics.calendar`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from ehrsurv_dist.metrics.bootstrap import percentile_interval
from ehrsurv_dist.metrics.calendar.inputs import (
    _check_split,
    _Split,
    check_edges,
    check_times,
    survival_at_days,
)
from ehrsurv_dist.metrics.calendar.pairs import (
    RiskConcordance,
    TdConcordanceDays,
    _as_risk,
    uno_weights,
)
from ehrsurv_dist.metrics.calendar.scores import (
    _CHUNK_ENTRIES,
    _capped_y,
    _valid_days,
    brier_contributions,
    calibration_days,
    ibs_grid_days,
    subject_bootstrap_counts,
)
from ehrsurv_dist.metrics.inputs import FloatArray, as_event

RISK_SCORE = "1-S(horizon)"
CI_METRICS = ("c_index_td", "c_index_harrell", "c_index_uno", "ibs")


def calendar_metrics(
    survival: npt.ArrayLike,
    edges: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    subject_id: npt.ArrayLike,
    *,
    train_time_days: npt.ArrayLike,
    train_event: npt.ArrayLike,
    horizons_days: Sequence[float] = (30, 90, 365),
    n_bootstrap: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    tied_tol: float = 1e-8,
) -> dict[str, Any]:
    """Every metric of one split on the day scale: its ``metrics.json`` entry.

    Args:
        survival: float ``[N, K]``, S at the bins' right edges ``e_1..e_K``.
        edges: float ``[K + 1]``, ``e_0 = 0``, ``e_K`` = the horizon in days.
        time_days: float ``[N]``, days to the event or censoring, capped at the horizon.
        event: bool ``[N]``.
        subject_id: int ``[N]``; the bootstrap resamples subjects.
        train_time_days: float ``[M]``, the train split (censoring distribution, IPCW).
        train_event: bool ``[M]``.
        horizons_days: days for ``brier`` and ``td_auc``; those beyond the horizon or outside the
            follow-up range (``min(t) ≤ d < min(max t, max train t)``) are skipped with a warning.
        n_bootstrap: replicates for the ``ci`` intervals (0: none).
        seed: bootstrap seed.
        alpha: intervals cover ``1 − alpha``.
        n_bins: calibration bins (quantiles of predicted risk).
        tied_tol: risk-tie tolerance of Harrell's and Uno's C.

    Returns:
        ``{"c_index_td", "c_index_harrell", "c_index_uno", "ibs", "ibs_days": [first, last,
        step], "brier": {"<day>": f}, "td_auc": {"<day>": f}, "calibration": {...} (see
        :func:`calibration_days`), "n_samples", "n_subjects", "n_events", "risk_score",
        "horizon_days", "ci": {metric: [lo, hi]}, "warnings": [str]}``. Undefined metrics are NaN
        (pass through :func:`~ehrsurv_dist.metrics.jsonable` before strict JSON); each warning is
        also issued as a ``UserWarning``.

    Raises:
        ValueError: malformed inputs.
    """
    split = _check_split(
        survival, edges, time_days, event, subject_id, train_time_days, train_event
    )
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected an int >= 0, got {n_bootstrap!r}")
    warn: list[str] = []
    ev = split.event
    s_h = split.survival[:, -1].astype(np.float64)
    risk = 1.0 - s_h
    out: dict[str, Any] = {
        "n_samples": int(ev.shape[0]),
        "n_subjects": int(np.unique(split.subject).shape[0]),
        "n_events": int(ev.sum()),
        "risk_score": RISK_SCORE,
        "horizon_days": split.horizon,
    }
    if not ev.any():
        warn.append("no event in the split: concordances, Brier scores and td-AUC are undefined")
    td = TdConcordanceDays(split.survival, split.edges, split.time, ev) if ev.any() else None
    out["c_index_td"] = td.score() if td is not None else math.nan
    rc = RiskConcordance(risk, split.time, ev, tied_tol)
    out["c_index_harrell"] = rc.score(ev.astype(np.float64))
    uno_a: FloatArray | None = None
    try:
        uno_a = uno_weights(split.time, ev, split.train_time, split.train_event, split.horizon)
        out["c_index_uno"] = rc.score(uno_a)
    except ValueError as e:
        warn.append(f"c_index_uno undefined: {e}")
        out["c_index_uno"] = math.nan

    grid = ibs_grid_days(split)
    contrib: FloatArray | None = None
    out["ibs_days"] = (
        [float(grid[0]), float(grid[-1]), float(grid[1] - grid[0])] if grid.size > 1 else []
    )
    if grid.size >= 2 and ev.any():
        y = _capped_y(split, float(grid[-1]))
        y_train = Surv.from_arrays(split.train_event, split.train_time)
        s_grid = survival_at_days(split.survival, split.edges, grid)
        out["ibs"] = float(integrated_brier_score(y_train, y, s_grid, grid))
        contrib = brier_contributions(split, grid)
    else:
        out["ibs"] = math.nan
        warn.append("ibs undefined: fewer than two grid days inside the follow-up, or no event")

    out.update(_horizon_scores(split, horizons_days, warn))
    out["calibration"] = calibration_days(s_h, split.time, ev, split.horizon, n_bins)

    out["ci"] = {}
    if n_bootstrap > 0:
        reps = _bootstrap(split, td, rc, uno_a, contrib, n_bootstrap, seed)
        out["ci"] = {k: list(percentile_interval(v.tolist(), alpha)) for k, v in reps.items()}
    for w in warn:
        warnings.warn(w, UserWarning, stacklevel=2)
    out["warnings"] = warn
    return out


def _horizon_scores(
    split: _Split, horizons_days: Sequence[float], warn: list[str]
) -> dict[str, dict[str, float]]:
    """``{"brier": {"<day>": f}, "td_auc": {"<day>": f}}`` at the valid days."""
    out: dict[str, dict[str, float]] = {"brier": {}, "td_auc": {}}
    days, keys = _valid_days(split, horizons_days, warn)
    if days.size == 0 or not split.event.any():
        return out
    y = _capped_y(split, float(days[-1]))
    y_train = Surv.from_arrays(split.train_event, split.train_time)
    s = survival_at_days(split.survival, split.edges, days)  # [N, H]
    _, scores = brier_score(y_train, y, s, days)
    out["brier"] = {k: float(v) for k, v in zip(keys, scores, strict=True)}
    first_case = float(split.time[split.event].min())
    for i, (d, k) in enumerate(zip(days, keys, strict=True)):
        if d < first_case:
            warn.append(f"td_auc at {k} days undefined: no event by then")
            out["td_auc"][k] = math.nan
            continue
        auc, _ = cumulative_dynamic_auc(y_train, y, 1.0 - s[:, i], d)
        out["td_auc"][k] = float(auc[0])
    return out


def _bootstrap(
    split: _Split,
    td: TdConcordanceDays | None,
    rc: RiskConcordance,
    uno_a: FloatArray | None,
    contrib: FloatArray | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, FloatArray]:
    """Replicate values of :data:`CI_METRICS` (NaN where undefined), subjects resampled."""
    counts = subject_bootstrap_counts(split.subject, n_bootstrap, seed)
    nan = np.full(n_bootstrap, np.nan)
    out = {k: nan.copy() for k in CI_METRICS}
    ev_f = split.event.astype(np.float64)
    entries = max(rc.pairs.n_entries, td.pairs.n_entries if td is not None else 0, 1)
    chunk = max(1, _CHUNK_ENTRIES // (entries + split.time.shape[0]))
    for b0 in range(0, n_bootstrap, chunk):
        w = counts[b0 : b0 + chunk].astype(np.float64)
        sl = slice(b0, b0 + w.shape[0])
        if td is not None:
            out["c_index_td"][sl] = td.weighted(w)
        out["c_index_harrell"][sl] = rc.weighted(w, ev_f)
        if uno_a is not None:
            out["c_index_uno"][sl] = rc.weighted(w, uno_a)
        if contrib is not None:
            out["ibs"][sl] = (w @ contrib) / w.sum(axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# MEDS-evaluation output and the time axis
# ---------------------------------------------------------------------------------------------


def meds_eval_table(
    subject_id: npt.ArrayLike,
    prediction_time_us: npt.ArrayLike,
    time_days: npt.ArrayLike,
    event: npt.ArrayLike,
    survival_at_horizon: npt.ArrayLike,
    horizon_days: float,
) -> pa.Table:
    """Predictions in the MEDS-evaluation form (binary task: an event within the horizon).

    Args:
        subject_id: int ``[N]``.
        prediction_time_us: int64 ``[N]`` µs since the epoch, or datetime64 ``[N]``.
        time_days: float ``[N]`` to the event or censoring.
        event: bool ``[N]``.
        survival_at_horizon: float ``[N]`` predicted ``S(horizon)``.
        horizon_days: the horizon.

    Returns:
        Columns ``subject_id`` int64, ``prediction_time`` timestamp[us], ``boolean_value`` bool
        (true: event at or before the horizon; false: followed to the horizon event-free; null:
        censored before the horizon), ``predicted_boolean_value`` bool (probability ≥ 0.5),
        ``predicted_boolean_probability`` float64 ``1 − S(horizon)``.

    Raises:
        ValueError: bad shapes or values.
    """
    sid = np.asarray(subject_id)
    n = sid.shape[0] if sid.ndim == 1 else -1
    if n < 0 or sid.dtype.kind not in "iu":
        raise ValueError(f"subject_id: expected a 1-D int array, got {sid.dtype} {sid.shape}")
    pt = np.asarray(prediction_time_us)
    if pt.dtype.kind == "M":
        pt = pt.astype("datetime64[us]").astype(np.int64)
    if pt.shape != (n,) or pt.dtype.kind not in "iu":
        raise ValueError(f"prediction_time_us: expected int64 µs or datetime64 [{n}]")
    t = check_times(time_days, "time_days", n)
    ev = as_event(event, "event", n)
    prob = 1.0 - _as_risk(survival_at_horizon, n)
    label = ev & (t <= horizon_days)
    unknown = ~ev & (t < horizon_days)
    return pa.table(
        {
            "subject_id": pa.array(sid.astype(np.int64), type=pa.int64()),
            "prediction_time": pa.array(pt.astype(np.int64), type=pa.int64()).cast(
                pa.timestamp("us")
            ),
            "boolean_value": pa.array(label, mask=unknown, type=pa.bool_()),
            "predicted_boolean_value": pa.array(prob >= 0.5, type=pa.bool_()),
            "predicted_boolean_probability": pa.array(prob, type=pa.float64()),
        }
    )


def time_axis_dict(edges: npt.ArrayLike) -> dict[str, Any]:
    """``{"axis": "calendar", "unit": "day", "edges": [e_0, …, e_K]}`` (predictions/time_axis.json)."""
    return {"axis": "calendar", "unit": "day", "edges": [float(x) for x in check_edges(edges)]}
