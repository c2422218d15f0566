"""Unit tests for ehrsurv_dist.metrics.calendar: day-scale metrics of the calendar axis, pinned
against pycox, scikit-survival and slow loops."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pycox.evaluation import EvalSurv
from sksurv.metrics import (
    brier_score,
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from ehrsurv_dist.metrics import (
    calendar_metrics,
    calibration_days,
    concordance_td_days,
    harrell_c_days,
    jsonable,
    meds_eval_table,
    subject_bootstrap_counts,
    time_axis_dict,
    uno_c_days,
)
from ehrsurv_dist.metrics.bootstrap import bootstrap_indices
from ehrsurv_dist.metrics.calendar import (
    RiskConcordance,
    TdConcordanceDays,
    brier_contributions,
    ibs_grid_days,
    plot_calibration_days,
    plot_survival_days,
    survival_at_days,
    uno_weights,
)
from ehrsurv_dist.metrics.calendar.inputs import _check_split

EDGES = np.array([0.0, 10.0, 30.0, 60.0, 120.0, 200.0, 365.0])
H = 365.0


def split(seed: int, n: int = 240, n_subjects: int = 80, tied: bool = True) -> dict:
    """Random split with ties in times and in survival values, times before e_1 and at edges,
    censorings at the horizon, several samples per subject; and a train split."""
    rng = np.random.default_rng(seed)
    k = EDGES.shape[0] - 1
    if tied:
        h = rng.choice(np.array([0.01, 0.03, 0.08, 0.15]), size=(n, k))
        t = np.minimum(rng.integers(0, 420, size=n).astype(float), H)
    else:
        h = rng.uniform(0.0, 0.2, size=(n, k))
        t = np.minimum(rng.uniform(0, 420, size=n), H)
    s = np.cumprod(1.0 - h, axis=1)
    ev = (rng.random(n) < 0.5) & (t < H)
    t[:6] = [0.0, 3.0, 10.0, 30.0, 30.0, 365.0]  # before e_1, at edges, at the horizon
    ev[:5] = True
    tt = np.minimum(rng.integers(0, 420, size=400).astype(float), H)
    te = (rng.random(400) < 0.5) & (tt < H)
    sid = rng.integers(0, n_subjects, size=n).astype(np.int64) * 7 + 3
    return {"s": s, "t": t, "ev": ev, "sid": sid, "tt": tt, "te": te}


def pycox_td(s: np.ndarray, t: np.ndarray, ev: np.ndarray) -> float:
    surv = pd.DataFrame(s.T, index=EDGES[1:])
    es = EvalSurv(surv, t, ev.astype(np.int64), censor_surv="km", steps="pre")
    return float(es.concordance_td("antolini"))


def metrics(d: dict, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return calendar_metrics(
            d["s"],
            EDGES,
            d["t"],
            d["ev"],
            d["sid"],
            train_time_days=d["tt"],
            train_event=d["te"],
            **kw,
        )


# ---------------------------------------------------------------------------------------------
# Concordance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tied", [True, False])
def test_td_c_equals_pycox(seed: int, tied: bool) -> None:
    d = split(seed, tied=tied)
    ours = concordance_td_days(d["s"], EDGES, d["t"], d["ev"])
    assert ours == pytest.approx(pycox_td(d["s"], d["t"], d["ev"]), abs=1e-9)
    assert 0.2 < ours < 0.8  # random predictions: an informative, not degenerate, value


def test_td_c_equals_pycox_float32_and_before_first_edge() -> None:
    d = split(5)
    s32 = d["s"].astype(np.float32)
    assert concordance_td_days(s32, EDGES, d["t"], d["ev"]) == pytest.approx(
        pycox_td(s32, d["t"], d["ev"]), abs=1e-9
    )
    # every event before e_1: pycox judges it on S(e_1), not S(0) = 1
    t = np.array([2.0, 5.0, 50.0, 365.0])
    ev = np.array([True, True, False, False])
    s = np.array([[0.9, 0.5, 0.4, 0.3, 0.2, 0.1]] * 2 + [[0.95, 0.9, 0.8, 0.7, 0.6, 0.5]] * 2)
    s[1, 0] = 0.99  # sample 1 above samples 2 and 3 at e_1: its two pairs are discordant
    assert concordance_td_days(s, EDGES, t, ev) == pytest.approx(pycox_td(s, t, ev), abs=1e-12)
    # pairs (0,1), (0,2), (0,3) concordant at e_1, (1,2), (1,3) not; with S(0) = 1 all would tie
    assert concordance_td_days(s, EDGES, t, ev) == pytest.approx(3 / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-8, 0.0, 0.01])
def test_harrell_and_uno_equal_sksurv(seed: int, tol: float) -> None:
    d = split(seed)
    risk = 1.0 - d["s"][:, -1]
    ref = concordance_index_censored(d["ev"], d["t"], risk, tied_tol=tol)[0]
    assert harrell_c_days(risk, d["t"], d["ev"], tol) == pytest.approx(ref, abs=1e-12)
    y_tr, y_te = Surv.from_arrays(d["te"], d["tt"]), Surv.from_arrays(d["ev"], d["t"])
    for tau in (H, 100.0):
        ref_u = concordance_index_ipcw(y_tr, y_te, risk, tau=tau, tied_tol=tol)[0]
        ours = uno_c_days(risk, d["t"], d["ev"], d["tt"], d["te"], tau, tol)
        assert ours == pytest.approx(ref_u, abs=1e-12)


def test_perfect_and_reversed_predictions() -> None:
    rng = np.random.default_rng(4)
    n = 200
    t = np.sort(rng.uniform(0.5, 364.0, size=n))
    ev = rng.random(n) < 0.6
    rate = np.linspace(0.02, 0.001, n)  # earlier time, higher hazard
    s = np.exp(-rate[:, None] * EDGES[None, 1:])
    tt, te = np.r_[t, H], np.r_[ev, False]
    for surv, want in ((s, 1.0), (s[::-1], 0.0)):
        risk = 1.0 - surv[:, -1]
        assert concordance_td_days(surv, EDGES, t, ev) == want
        assert harrell_c_days(risk, t, ev) == want
        assert uno_c_days(risk, t, ev, tt, te, H) == pytest.approx(want, abs=1e-12)


def test_no_event_gives_nan() -> None:
    d = split(0)
    ev = np.zeros_like(d["ev"])
    assert math.isnan(concordance_td_days(d["s"], EDGES, d["t"], ev))
    assert math.isnan(harrell_c_days(1 - d["s"][:, -1], d["t"], ev))


# ---------------------------------------------------------------------------------------------
# IBS, Brier, td-AUC
# ---------------------------------------------------------------------------------------------


def test_ibs_brier_auc_equal_sksurv() -> None:
    d = split(7)
    d["t"][d["ev"]] = np.minimum(d["t"][d["ev"]], 300.0)  # sksurv needs G > 0 at every event
    m = metrics(d, horizons_days=(30, 90.5, 365, 400), n_bootstrap=0)
    y_tr, y_te = Surv.from_arrays(d["te"], d["tt"]), Surv.from_arrays(d["ev"], d["t"])
    grid = np.arange(1.0, 365.0)
    s_grid = survival_at_days(d["s"], EDGES, grid)
    assert m["ibs_days"] == [1.0, 364.0, 1.0]
    assert m["ibs"] == pytest.approx(integrated_brier_score(y_tr, y_te, s_grid, grid), abs=1e-12)
    days = np.array([30.0, 90.5])
    s_days = survival_at_days(d["s"], EDGES, days)
    np.testing.assert_array_equal(s_days[:, 0], d["s"][:, 1])  # 30 is e_2: S(e_2)
    np.testing.assert_array_equal(s_days[:, 1], d["s"][:, 3])  # (60, 120]: S(e_4)
    _, bs = brier_score(y_tr, y_te, s_days, days)
    auc, _ = cumulative_dynamic_auc(y_tr, y_te, 1 - s_days, days)
    assert list(m["brier"]) == ["30", "90.5"] and list(m["td_auc"]) == ["30", "90.5"]
    np.testing.assert_allclose([m["brier"]["30"], m["brier"]["90.5"]], bs, atol=1e-12)
    np.testing.assert_allclose([m["td_auc"]["30"], m["td_auc"]["90.5"]], auc, atol=1e-12)
    assert any("365 days skipped" in w for w in m["warnings"])
    assert any("400 days skipped" in w and "beyond" in w for w in m["warnings"])


def test_skipped_horizons_warn() -> None:
    d = split(1)
    with pytest.warns(UserWarning, match="365 days skipped"):
        calendar_metrics(
            d["s"],
            EDGES,
            d["t"],
            d["ev"],
            d["sid"],
            train_time_days=d["tt"],
            train_event=d["te"],
            horizons_days=(30, 365),
            n_bootstrap=0,
        )


@pytest.mark.parametrize("chunk", [None, 1000])
def test_brier_contributions_average_to_sksurv_ibs(chunk, monkeypatch) -> None:
    if chunk is not None:  # several row chunks of the [N, G] terms
        monkeypatch.setattr("ehrsurv_dist.metrics.calendar.scores._CHUNK_ENTRIES", chunk)
    d = split(8)
    sp = _check_split(d["s"], EDGES, d["t"], d["ev"], d["sid"], d["tt"], d["te"])
    grid = ibs_grid_days(sp)
    contrib = brier_contributions(sp, grid)
    assert contrib.shape == (d["t"].shape[0],)
    assert contrib.mean() == pytest.approx(metrics(d, n_bootstrap=0)["ibs"], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def slow_calibration(s_h: np.ndarray, t: np.ndarray, ev: np.ndarray, n_bins: int) -> list:
    risk = 1 - s_h
    q = np.unique(np.quantile(risk, np.linspace(0, 1, n_bins + 1)))
    rows = []
    for b in range(q.shape[0] - 1):
        last = b == q.shape[0] - 2
        m = (risk >= q[b]) & ((risk <= q[b + 1]) if last else (risk < q[b + 1]))
        if not m.any():
            continue
        obs = 0.0
        if ev[m].any():
            kt, ks = kaplan_meier_estimator(ev[m], t[m])
            below = kt <= H
            obs = 1.0 - ks[below][-1] if below.any() else 0.0
        rows.append((risk[m].mean(), obs, int(m.sum())))
    return rows


@pytest.mark.parametrize("tied", [True, False])
def test_calibration_equals_slow_loop(tied: bool) -> None:
    d = split(3, n=500, tied=tied)
    cal = calibration_days(d["s"][:, -1], d["t"], d["ev"], H)
    rows = slow_calibration(d["s"][:, -1], d["t"], d["ev"], 10)
    np.testing.assert_allclose(cal["predicted"], [r[0] for r in rows], atol=1e-12)
    np.testing.assert_allclose(cal["observed"], [r[1] for r in rows], atol=1e-12)
    assert cal["n"] == [r[2] for r in rows] and sum(cal["n"]) == 500
    n = np.array(cal["n"])
    gap = np.abs(np.array(cal["predicted"]) - np.array(cal["observed"]))
    assert cal["ece"] == pytest.approx(float(np.sum(n / n.sum() * gap)), abs=1e-12)
    assert metrics(d, n_bootstrap=0)["calibration"] == cal


# ---------------------------------------------------------------------------------------------
# Bootstrap over subjects
# ---------------------------------------------------------------------------------------------


def test_bootstrap_moves_a_subjects_samples_together() -> None:
    d = split(0)
    counts = subject_bootstrap_counts(d["sid"], 50, seed=3)
    uniq, first, inv = np.unique(d["sid"], return_index=True, return_inverse=True)
    assert counts.shape == (50, d["sid"].shape[0])
    np.testing.assert_array_equal(counts, counts[:, first][:, inv])  # one count per subject
    assert np.all(counts[:, first].sum(axis=1) == uniq.shape[0])  # U subjects drawn per replicate
    draws = list(bootstrap_indices(uniq.shape[0], 50, 3))
    np.testing.assert_array_equal(counts[7][first], np.bincount(draws[7], minlength=uniq.size))
    assert not np.array_equal(counts[0], counts[1])


def test_weighted_replicates_equal_resampled_splits() -> None:
    d = split(2)
    d["t"][d["ev"]] = np.minimum(d["t"][d["ev"]], 300.0)
    sp = _check_split(d["s"], EDGES, d["t"], d["ev"], d["sid"], d["tt"], d["te"])
    counts = subject_bootstrap_counts(d["sid"], 4, seed=0)
    w = counts.astype(np.float64)
    risk = 1 - d["s"][:, -1]
    td = TdConcordanceDays(sp.survival, sp.edges, sp.time, sp.event).weighted(w)
    rc = RiskConcordance(risk, sp.time, sp.event, 1e-8)
    harrell = rc.weighted(w, sp.event.astype(float))
    uno = rc.weighted(w, uno_weights(sp.time, sp.event, sp.train_time, sp.train_event, H))
    grid = ibs_grid_days(sp)
    ibs = (w @ brier_contributions(sp, grid)) / w.sum(axis=1)
    y_tr = Surv.from_arrays(d["te"], d["tt"])
    for b in range(4):
        idx = np.repeat(np.arange(d["t"].shape[0]), counts[b])  # all samples of drawn subjects
        s, t, ev = d["s"][idx], d["t"][idx], d["ev"][idx]
        assert td[b] == pytest.approx(pycox_td(s, t, ev), abs=1e-9)
        assert harrell[b] == pytest.approx(concordance_index_censored(ev, t, risk[idx])[0])
        y = Surv.from_arrays(ev, t)
        assert uno[b] == pytest.approx(concordance_index_ipcw(y_tr, y, risk[idx], tau=H)[0])
        s_grid = survival_at_days(s, EDGES, grid)
        assert ibs[b] == pytest.approx(integrated_brier_score(y_tr, y, s_grid, grid), abs=1e-12)


def test_ci_deterministic_and_around_the_estimate() -> None:
    d = split(1, n=400, n_subjects=150)
    m1, m2 = metrics(d, n_bootstrap=60, seed=5), metrics(d, n_bootstrap=60, seed=5)
    assert m1["ci"] == m2["ci"]
    assert set(m1["ci"]) == {"c_index_td", "c_index_harrell", "c_index_uno", "ibs"}
    for k, (lo, hi) in m1["ci"].items():
        assert lo < m1[k] < hi, k
    assert metrics(d, n_bootstrap=60, seed=6)["ci"] != m1["ci"]
    assert metrics(d, n_bootstrap=0)["ci"] == {}


def test_metrics_entry_is_json_ready() -> None:
    d = split(0)
    m = metrics(d, n_bootstrap=5)
    assert m["n_samples"] == 240 and m["n_subjects"] == np.unique(d["sid"]).size
    assert m["n_events"] == int(d["ev"].sum()) and m["risk_score"] == "1-S(horizon)"
    assert m["horizon_days"] == 365.0
    json.dumps(jsonable(m), allow_nan=False)


def test_bad_inputs_raise_one_line() -> None:
    d = split(0)
    kw = {"train_time_days": d["tt"], "train_event": d["te"], "n_bootstrap": 0}
    with pytest.raises(ValueError, match="edges: must start at 0"):
        calendar_metrics(d["s"], EDGES[::-1], d["t"], d["ev"], d["sid"], **kw)
    with pytest.raises(ValueError, match="survival: 6 columns, but edges give K = 5"):
        calendar_metrics(d["s"], EDGES[:-1], d["t"], d["ev"], d["sid"], **kw)
    with pytest.raises(ValueError, match="time_days: times must be finite"):
        calendar_metrics(d["s"], EDGES, -d["t"] - 1, d["ev"], d["sid"], **kw)
    with pytest.raises(ValueError, match="subject_id"):
        calendar_metrics(d["s"], EDGES, d["t"], d["ev"], d["sid"][:-1], **kw)


# ---------------------------------------------------------------------------------------------
# MEDS-evaluation table, time axis, plots
# ---------------------------------------------------------------------------------------------


def test_meds_eval_table_nulls_and_types() -> None:
    t = np.array([10.0, 365.0, 50.0, 365.0, 400.0])
    ev = np.array([True, True, False, False, False])
    s_h = np.array([0.2, 0.5, 0.9, 0.51, 0.7])
    pt = np.array(["2020-01-01T10:00", "2020-02-01", "2021-03-04", "2019-01-01", "2018-05-05"])
    tab = meds_eval_table(np.arange(5) + 100, pt.astype("datetime64[us]"), t, ev, s_h, 365.0)
    assert tab.schema == pa.schema(
        [
            ("subject_id", pa.int64()),
            ("prediction_time", pa.timestamp("us")),
            ("boolean_value", pa.bool_()),
            ("predicted_boolean_value", pa.bool_()),
            ("predicted_boolean_probability", pa.float64()),
        ]
    )
    assert tab["boolean_value"].to_pylist() == [True, True, None, False, False]
    assert tab["predicted_boolean_value"].to_pylist() == [True, True, False, False, False]
    np.testing.assert_allclose(tab["predicted_boolean_probability"].to_numpy(), 1 - s_h)
    us = pt.astype("datetime64[us]").astype(np.int64)
    assert tab["prediction_time"].cast(pa.int64()).to_pylist() == us.tolist()
    same = meds_eval_table(np.arange(5) + 100, us, t, ev, s_h, 365.0)
    assert same.equals(tab)


def test_time_axis_dict() -> None:
    d = time_axis_dict(np.array([0, 7, 30.5]))
    assert d == {"axis": "calendar", "unit": "day", "edges": [0.0, 7.0, 30.5]}
    json.dumps(d)
    with pytest.raises(ValueError, match="edges"):
        time_axis_dict([1.0, 2.0])


def test_plots_write_png(tmp_path) -> None:
    d = split(0)
    cal = metrics(d, n_bootstrap=0)["calibration"]
    p1 = plot_calibration_days(cal, tmp_path / "a" / "cal.png")
    p2 = plot_survival_days(d["s"], EDGES, d["t"], d["ev"], tmp_path / "surv.png")
    for p in (p1, p2):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in tmp_path.rglob("*") if x.is_file()) == ["cal.png", "surv.png"]
    with pytest.raises(ValueError, match="missing keys"):
        plot_calibration_days({"ece": 0.1}, tmp_path / "x.png")
