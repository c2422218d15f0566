"""Scoring a calendar-axis run: predictions, metrics, plots and the MEDS-evaluation file.

On the calendar axis a prediction row is a sample (subject, prediction time) with K day-bin
hazards; survival is read at the bins' right edges ``e_1 … e_K`` and the metrics live on the day
scale (:mod:`ehrsurv_dist.metrics.calendar`). Pure numpy / pyarrow (no Ray): ``evaluate.py``
gathers the predictions and calls :func:`score_splits`.

Files (the run directory, or ``ehrsurv evaluate --out DIR`` when another cohort is scored):

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
import pyarrow.parquet as pq

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist.train.loop import Predictions


def survival_at_edges(p: Predictions) -> np.ndarray:
    """float64 [N, K]: S at the bins' right edges, ``Π_{l≤j} (1 − h_l)`` (the log-space
    survival of :class:`~ehrsurv_dist.metrics.HazardTable`, as on the visit axis; every row
    holds the K bins' hazards)."""
    n = len(p.subject_id)
    if n == 0:
        return np.zeros((0, 0))
    table = M.hazard_table_from_csr(p.values, p.offsets)
    return np.exp(table.log_survival_flat).reshape(n, -1)


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
    out: str,
    spec: Any,
    edges: list[float],
    train: tuple[np.ndarray, np.ndarray],
    preds: dict[str, Predictions],
    n_boot: int | None,
) -> dict[str, Any]:
    """Metrics of every split on the day scale (JSON-ready), plus the predictions Parquet, the
    time axis, the MEDS-evaluation file and the plots.

    Args:
        out: the output directory (the run directory, or ``evaluate --out`` for another
            cohort), laid out as a run directory: ``predictions/``, ``plots/``.
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
    pdir = rundir.path(out, rundir.PLOTS)
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
            n_bootstrap=n_boot_of(spec, n_boot),
            seed=spec.seed,
        )
        m["leakage"] = _leakage(p, time_days)
        oracle = _oracle(spec.data.cohort, p, e, train, spec.seed, n_boot_of(spec, n_boot))
        if oracle is not None:
            m["oracle"] = oracle
        results[split] = M.jsonable(m)
        tables.append(predictions_table(p, split, edges))
        meds.append(
            M.meds_eval_table(
                p.subject_id, p.extra[S.PREDICTION_TIME], time_days, p.event, surv[:, -1], horizon
            )
        )
        _plots(pdir, split, surv, e, time_days, p.event, m)
    if tables:
        atomic.write_parquet(pa.concat_tables(tables), rundir.path(out, rundir.PREDICTIONS))
        atomic.write_parquet(
            pa.concat_tables(meds),
            os.path.join(rundir.path(out, rundir.PREDICTIONS_DIR), S.MEDS_EVAL_FILE),
        )
        atomic.write_json(M.time_axis_dict(e), rundir.path(out, rundir.PREDICTIONS_TIME_AXIS))
    return results


def n_boot_of(spec: Any, n_boot: int | None) -> int:
    """Bootstrap resamples: ``n_boot``, else the run's ``eval.n_boot``."""
    return int(spec.eval.n_boot if n_boot is None else n_boot)


def _leakage(p: Predictions, time_days: np.ndarray) -> dict[str, Any]:
    """The length-only diagnostic on the calendar axis: Harrell's C of the number of input
    visits as the risk. Nothing after the prediction time is input, so a length signal here is
    history, not a leak (on the visit axis, where the input ends at the outcome, it is the
    warning sign); it tells how much of the score the history's length alone explains."""
    return {
        "length_only_c_index_harrell": M.harrell_c_days(
            (p.last_visit + 1).astype(np.float64), time_days, p.event
        )
    }


def _oracle(
    cohort: str,
    p: Predictions,
    edges: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    seed: int,
    n_boot: int,
) -> dict[str, Any] | None:
    """The synthetic generator's oracle on this split's samples at the run's bins, when the
    cohort has calendar truth (``truth.parquet`` with a per-sample rate) for every sample:
    ``observable`` (frailty at its mean: the fair ceiling) and ``frailty`` (the true rate)."""
    from ehrsurv_dist.data import synth_calendar as SC

    path = os.path.join(cohort, S.TRUTH_FILE)
    if "://" in cohort or not os.path.exists(path):
        return None
    truth = pq.read_table(path)
    if SC.TRUTH_RATE_OBSERVABLE not in truth.column_names:
        return None
    rows = SC.truth_for_samples(truth, p.subject_id, p.extra[S.PREDICTION_TIME])
    if rows is None:
        return None  # samples the generator has no truth for (e.g. another rule's samples)
    out: dict[str, Any] = {}
    for name, observable in (("observable", True), ("frailty", False)):
        m = M.calendar_metrics(
            SC.oracle_survival(rows, edges, observable=observable),
            edges,
            p.extra[S.TIME_DAYS],
            p.event,
            p.subject_id,
            train_time_days=train[0],
            train_event=train[1],
            horizons_days=(),
            n_bootstrap=n_boot,
            seed=seed,
        )
        out[name] = {
            "c_index_td": m["c_index_td"],
            "c_index_td_ci": m["ci"].get("c_index_td"),
            "c_index_harrell": m["c_index_harrell"],
            "ibs": m["ibs"],
            "ece": m["calibration"]["ece"],
        }
    return out


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
