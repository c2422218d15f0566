"""Scoring a calendar-axis run: predictions, metrics, plots and the MEDS-evaluation file.

On the calendar axis a prediction row is a sample (subject, prediction time) with K day-bin
hazards; survival is read at the bins' right edges ``e_1 … e_K`` and the metrics live on the day
scale (:mod:`ehrsurv_dist.metrics.calendar`). Pure numpy / pyarrow (no Ray): ``evaluate.py``
gathers the predictions and calls :func:`score_splits`.

Files (the run directory):

- ``predictions/predictions.parquet``: ``subject_id`` int64, ``split`` string,
  ``prediction_time`` timestamp[us], ``event`` bool (event within the horizon), ``time_days``
  float64 (to the event or censoring, capped at the horizon), ``risk`` float64 (1 − S(horizon)),
  ``hazard`` and ``survival`` list<float32> (K: per bin, and S at e_1 … e_K);
- ``predictions/time_axis.json``: ``{"axis": "calendar", "unit": "day", "edges": [...]}``;
- ``predictions/meds_eval.parquet``: the MEDS-evaluation form (``subject_id``,
  ``prediction_time``, ``boolean_value``, ``predicted_boolean_value``,
  ``predicted_boolean_probability``);
- ``plots/calibration_days_<split>.png``, ``plots/survival_days_<split>.png``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist.train.loop import Predictions


def survival_at_edges(p: Predictions) -> np.ndarray:
    """float64 [N, K]: S at the bins' right edges, ``Π_{l≤j} (1 − h_l)`` in log space."""
    n = len(p.subject_id)
    h = np.asarray(p.values, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 0))
    return np.exp(np.cumsum(np.log1p(-np.clip(h, 0.0, 1.0 - 1e-12)), axis=1))


def predictions_table(p: Predictions, split: str, edges: list[float]) -> pa.Table:
    """The predictions Parquet rows of one split of a calendar run (columns: module doc)."""
    n = len(p.subject_id)
    k = len(edges) - 1
    surv = survival_at_edges(p)
    off = pa.array((np.arange(n + 1) * k).astype(np.int32))
    risk = 1.0 - surv[:, -1] if n else np.zeros(0)
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(p.subject_id, pa.int64()),
            S.SPLIT: pa.array([split] * n, pa.string()),
            S.PREDICTION_TIME: pa.array(p.extra[S.PREDICTION_TIME], pa.int64()).cast(
                pa.timestamp("us")
            ),
            S.EVENT: pa.array(p.event, pa.bool_()),
            S.TIME_DAYS: pa.array(p.extra[S.TIME_DAYS], pa.float64()),
            "risk": pa.array(risk, pa.float64()),
            "hazard": pa.ListArray.from_arrays(off, pa.array(p.values.astype(np.float32))),
            "survival": pa.ListArray.from_arrays(off, pa.array(surv.reshape(-1), pa.float32())),
        }
    )


def score_splits(
    run_dir: str,
    spec: Any,
    edges: list[float],
    train: tuple[np.ndarray, np.ndarray],
    preds: dict[str, Predictions],
    n_boot: int | None,
) -> dict[str, Any]:
    """Metrics of every split on the day scale (JSON-ready), plus the predictions Parquet, the
    time axis, the MEDS-evaluation file and the plots.

    Args:
        run_dir: the run directory.
        spec: the run's job (``eval``, ``seed``, ``task``).
        edges: the run's day-bin edges ``[0, …, horizon]``.
        train: (time_days, event) of the train split (censoring distribution for IPCW).
        preds: predictions per split.
        n_boot: bootstrap resamples (None: the run's ``eval.n_boot``).
    """
    e = np.asarray(edges, dtype=np.float64)
    horizon = float(e[-1])
    results: dict[str, Any] = {}
    tables, meds = [], []
    pdir = rundir.path(run_dir, rundir.PLOTS)
    for split, p in preds.items():
        if len(p.subject_id) == 0:
            results[split] = {"n_samples": 0, "warnings": [f"split {split} is empty"]}
            continue
        surv = survival_at_edges(p)
        time_days = p.extra[S.TIME_DAYS]
        m = M.calendar_metrics(
            surv,
            e,
            time_days,
            p.event,
            p.subject_id,
            train_time_days=train[0],
            train_event=train[1],
            horizons_days=tuple(spec.eval.horizons_days),
            n_bootstrap=spec.eval.n_boot if n_boot is None else n_boot,
            seed=spec.seed,
        )
        results[split] = M.jsonable(m)
        tables.append(predictions_table(p, split, edges))
        meds.append(
            M.meds_eval_table(
                p.subject_id, p.extra[S.PREDICTION_TIME], time_days, p.event, surv[:, -1], horizon
            )
        )
        _plots(pdir, split, surv, e, time_days, p.event, m)
    if tables:
        atomic.write_parquet(pa.concat_tables(tables), rundir.path(run_dir, rundir.PREDICTIONS))
        atomic.write_parquet(
            pa.concat_tables(meds),
            os.path.join(rundir.path(run_dir, rundir.PREDICTIONS_DIR), S.MEDS_EVAL_FILE),
        )
        atomic.write_json(M.time_axis_dict(e), rundir.path(run_dir, rundir.PREDICTIONS_TIME_AXIS))
    return results


def _plots(
    pdir: str,
    split: str,
    surv: np.ndarray,
    edges: np.ndarray,
    time_days: np.ndarray,
    event: np.ndarray,
    m: dict[str, Any],
) -> None:
    """Calibration at the horizon and mean predicted survival vs Kaplan–Meier, in days."""
    os.makedirs(pdir, exist_ok=True)
    from ehrsurv_dist.metrics.calendar import plot_calibration_days, plot_survival_days

    plot_calibration_days(m["calibration"], os.path.join(pdir, f"calibration_days_{split}.png"))
    plot_survival_days(
        surv, edges, time_days, event, os.path.join(pdir, f"survival_days_{split}.png")
    )
