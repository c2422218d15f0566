"""Unit tests for ehrsurv_dist.metrics (inputs, hazards, concordance, brier, calibration, risk,
bootstrap, report; docs/design.md §2, §4)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
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
    as_hazard_table,
    bootstrap_ci,
    brier_scores,
    calibration_at,
    concordance_td,
    default_horizons,
    default_ibs_grid,
    evaluate_split,
    event_free_at,
    harrell_c,
    hazard_table_from_csr,
    integrated_brier,
    jsonable,
    length_only_baseline,
    pad_hazards,
    risk_scores,
    structured_y,
    survival_curves,
    td_auc,
    to_sksurv_time,
    uno_c,
    uno_default_tau,
    valid_horizon_range,
)
from ehrsurv_dist.ragged import Ragged

# ---------------------------------------------------------------------------------------------
# Fixtures: random splits (ragged hazards, padded copy)
# ---------------------------------------------------------------------------------------------


def random_split(
    seed: int, n: int, max_t: int = 8, p_event: float = 0.4, levels: tuple[float, ...] = ()
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Ragged hazards, last_visit, event. With `levels`, hazards come from that small set, so
    survival values and last visits tie often."""
    rng = np.random.default_rng(seed)
    T = rng.integers(0, max_t + 1, size=n)
    E = rng.random(n) < p_event
    if levels:
        hz = [rng.choice(np.asarray(levels), size=t + 1) for t in T]
    else:
        hz = [rng.uniform(0.0, 0.4, size=t + 1) for t in T]
    return hz, T, E


def to_padded(hz: list[np.ndarray], fill: float = np.nan) -> np.ndarray:
    v = max(len(h) for h in hz) + 2  # extra columns: padding must be ignored
    out = np.full((len(hz), v), fill)
    for i, h in enumerate(hz):
        out[i, : len(h)] = h
    return out


def naive_td(hz: list[np.ndarray], T: np.ndarray, E: np.ndarray, tol: float) -> float:
    """Antolini's td-C by a double loop over subjects, on the documented rules."""
    log_s = as_hazard_table(hz, T).log_survival(np.arange(T.max() + 1))
    num = den = 0.0
    for i in range(len(T)):
        if not E[i]:
            continue
        for j in range(len(T)):
            if T[j] > T[i]:  # comparable: event time T_i + 0.5 < observed time of j
                den += 1
                a, b = log_s[i, T[i]], log_s[j, T[i]]
                if b > a + tol:
                    num += 1.0
                elif b >= a - tol:
                    num += 0.5
    return num / den if den else math.nan


def test_metrics_modules_import_without_torch_or_ray() -> None:
    code = (
        "import sys, ehrsurv_dist.metrics, ehrsurv_dist.metrics.plots; "
        "bad = {'torch', 'ray'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Normalisation and survival curves
# ---------------------------------------------------------------------------------------------


def test_survival_curves_hand_example_with_constant_extension() -> None:
    s = survival_curves([np.array([0.1, 0.15, 0.2])], np.array([2]), horizon=4)
    np.testing.assert_allclose(s, [[0.9, 0.765, 0.612, 0.612 * 0.8]], rtol=0, atol=1e-12)


def test_padded_and_ragged_inputs_agree_and_padding_is_ignored() -> None:
    hz, T, _ = random_split(0, 30)
    padded = to_padded(hz)  # NaN after each last visit
    a = survival_curves(hz, T, horizon=12)
    b = survival_curves(padded, T, horizon=12)
    c = survival_curves(hz, None, horizon=12)  # ragged: last_visit inferred
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # direct product formula with the last hazard held beyond T
    ext = pad_hazards(hz, T, horizon=12)
    np.testing.assert_allclose(a, np.cumprod(1 - ext, axis=1), rtol=1e-12, atol=0)
    for i in range(len(hz)):
        np.testing.assert_array_equal(ext[i, : T[i] + 1], hz[i])
        assert np.all(ext[i, T[i] :] == hz[i][-1])


def test_table_is_a_ragged_view_and_take_equals_rebuilding_the_subset() -> None:
    hz, T, _ = random_split(5, 40, levels=(0.0, 0.1, 0.5, 1.0))
    table = as_hazard_table(hz, T)
    assert isinstance(table.rows, Ragged) and table.n == 40
    np.testing.assert_array_equal(table.last_visit, T)
    np.testing.assert_array_equal(table.rows.row(3)["hazard"], hz[3])
    idx = np.array([7, 7, 0, 39, 12])
    sub = table.take(idx)
    rebuilt = as_hazard_table([hz[i] for i in idx])
    for name in ("values", "offsets", "last_visit", "log_survival_flat"):  # bit for bit
        np.testing.assert_array_equal(getattr(sub, name), getattr(rebuilt, name))
    csr = hazard_table_from_csr(table.values, table.offsets)
    np.testing.assert_array_equal(csr.log_survival_flat, table.log_survival_flat)


def test_hazard_one_gives_zero_survival_without_nan() -> None:
    s = survival_curves([np.array([0.5, 1.0]), np.array([1.0])], np.array([1, 0]), horizon=4)
    np.testing.assert_array_equal(s, [[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_event_free_at_is_survival_one_visit_earlier() -> None:
    hz = [np.array([0.1, 0.15, 0.2])]
    p = event_free_at(hz, np.array([2]), [0, 1, 3, 5])
    np.testing.assert_allclose(p, [[1.0, 0.9, 0.612, 0.612 * 0.8**2]], atol=1e-12)


@pytest.mark.parametrize(
    ("hazards", "last_visit", "match"),
    [
        ([], None, "hazards: empty"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "hazards: empty"),
        (np.full((2, 3), 0.1), None, "last_visit: required"),
        (np.full((2, 3), 0.1), np.array([1.0, 2.0]), "last_visit: expected an integer"),
        (np.full((2, 3), 0.1), np.array([1, 3]), "last_visit: max 3"),
        (np.full((2, 3), 0.1), np.array([1, 2, 0]), "last_visit: length 3"),
        (np.full((2, 3), 0.1), np.array([-1, 2]), "last_visit: visit indices"),
        (np.full(3, 0.1), np.array([2]), "hazards: a padded array must be 2-D"),
        (np.array([[0.1, 1.5]]), np.array([1]), r"hazards: values must lie in \[0, 1\]"),
        (np.array([[0.1, np.nan]]), np.array([1]), "hazards: NaN"),
        (np.array([["a", "b"]]), np.array([1]), "hazards: expected a real numeric"),
        ([np.array([0.1, 0.2]), np.array([0.3])], np.array([1, 1]), "last_visit: subject 1"),
        ([np.array([[0.1]])], None, "hazards: subject 0 has shape"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(hazards, last_visit, match) -> None:
    with pytest.raises(ValueError, match=match):
        survival_curves(hazards, last_visit)


def test_bad_event_and_horizon_raise() -> None:
    hz = [np.array([0.1]), np.array([0.2, 0.3])]
    with pytest.raises(ValueError, match="event: length"):
        concordance_td(hz, None, np.array([True]))
    with pytest.raises(ValueError, match="event: expected bool"):
        concordance_td(hz, None, np.array([0, 2]))
    with pytest.raises(ValueError, match="horizon: expected a positive int"):
        survival_curves(hz, None, horizon=0)


def test_sksurv_time_convention() -> None:
    T = np.array([0, 2, 2, 5])
    E = np.array([True, True, False, False])
    np.testing.assert_array_equal(to_sksurv_time(T, E), [0.5, 2.5, 2.0, 5.0])
    y = structured_y(T, E)
    np.testing.assert_array_equal(y["event"], E)
    np.testing.assert_array_equal(y["time"], [0.5, 2.5, 2.0, 5.0])


# ---------------------------------------------------------------------------------------------
# Concordance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tol", [0.0, 1e-8])
def test_td_concordance_matches_naive_double_loop(seed: int, tol: float) -> None:
    # few hazard levels and short histories: many tied survival values and tied last visits
    hz, T, E = random_split(seed, 60, max_t=6, levels=(0.1, 0.2, 0.3))
    got = concordance_td(hz, T, E, tied_tol=tol)
    assert got == pytest.approx(naive_td(hz, T, E, tol), abs=1e-12)
    # continuous hazards, and the padded layout
    hz, T, E = random_split(100 + seed, 60, max_t=10)
    got = concordance_td(to_padded(hz), T, E, tied_tol=tol)
    assert got == pytest.approx(naive_td(hz, T, E, tol), abs=1e-12)


def test_td_concordance_with_zero_and_one_hazards_matches_naive() -> None:
    # h = 1 gives S = 0 (log S = −inf): such survival values tie with each other, never NaN
    hz, T, E = random_split(9, 50, max_t=5, levels=(0.0, 0.5, 1.0))
    got = concordance_td(hz, T, E)
    assert got == pytest.approx(naive_td(hz, T, E, 1e-8), abs=1e-12)
    assert 0.0 < got < 1.0


def test_td_concordance_is_invariant_to_subject_order() -> None:
    hz, T, E = random_split(7, 80, levels=(0.1, 0.2))
    p = np.random.default_rng(0).permutation(80)
    a = concordance_td(hz, T, E)
    b = concordance_td([hz[i] for i in p], T[p], E[p])
    assert a == pytest.approx(b, abs=1e-15)


def test_td_concordance_without_comparable_pairs_is_nan() -> None:
    hz, T, _ = random_split(0, 20)
    assert math.isnan(concordance_td(hz, T, np.zeros(20, dtype=bool)))  # all censored
    events_at_end = T == T.max()
    assert math.isnan(concordance_td(hz, T, events_at_end))  # nobody is followed longer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_td_concordance_equals_harrell_for_time_constant_hazards(seed: int) -> None:
    # Constant h_i over time: S_i(t) < S_j(t) iff h_i > h_j at every t, and both indices compare
    # the same pairs (δ_i and T_i < T_j), so td-C equals Harrell's C of the risk h (ties 0.5).
    rng = np.random.default_rng(seed)
    n = 200
    T = rng.integers(0, 12, size=n)
    E = rng.random(n) < 0.5
    h = rng.choice(np.arange(1, 11) / 20, size=n)  # tied levels on purpose
    hz = [np.full(t + 1, hi) for t, hi in zip(T, h, strict=True)]
    td = concordance_td(hz, T, E)
    assert td == pytest.approx(harrell_c(h, T, E), abs=1e-12)
    assert td == pytest.approx(naive_td(hz, T, E, 1e-8), abs=1e-12)


def test_censored_at_same_last_visit_as_event_is_not_comparable_later_one_is() -> None:
    # A: event after visit 2; B: censored at visit 2; C: censored at visit 3.
    # (A, B) would be discordant (B has the higher hazard) but is not comparable;
    # (A, C) is comparable and concordant. Hence exactly 1.0, not 0.5.
    T = np.array([2, 2, 3])
    E = np.array([True, False, False])
    h = np.array([0.2, 0.3, 0.1])
    hz = [np.full(t + 1, hi) for t, hi in zip(T, h, strict=True)]
    assert concordance_td(hz, T, E) == 1.0
    assert harrell_c(h, T, E) == 1.0
    # The convention matters: with the event at time T (not T + 0.5), scikit-survival counts
    # a censoring tied with the event as comparable and the pair (A, B) drags the index to 0.5.
    assert concordance_index_censored(E, T.astype(float), h)[0] == 0.5


def test_harrell_and_uno_match_direct_sksurv_calls() -> None:
    hz, T, E = random_split(3, 150, max_t=9)
    hz_tr, T_tr, E_tr = random_split(4, 300, max_t=12)
    risk = risk_scores(hz, T, "mean_hazard")
    t = np.where(E, T + 0.5, T.astype(float))
    assert harrell_c(risk, T, E) == concordance_index_censored(E, t, risk)[0]
    y_tr = Surv.from_arrays(E_tr, np.where(E_tr, T_tr + 0.5, T_tr.astype(float)))
    y_te = Surv.from_arrays(E, t)
    assert uno_default_tau(T, E, T_tr, E_tr) is None  # test within train follow-up
    assert uno_c(risk, T, E, T_tr, E_tr) == concordance_index_ipcw(y_tr, y_te, risk)[0]
    assert uno_c(risk, T, E, T_tr, E_tr, tau=5.0) == pytest.approx(
        concordance_index_ipcw(y_tr, y_te, risk, tau=5.0)[0], abs=1e-15
    )


def test_uno_default_tau_truncates_test_events_beyond_train_follow_up() -> None:
    hz, T, E = random_split(5, 100, max_t=10)
    hz[0], T[0], E[0] = np.full(16, 0.1), 15, True  # a test event after the last train time
    T_tr = np.array([0, 3, 5, 8, 9])
    E_tr = np.array([True, False, True, True, False])  # last train time: censoring at 9
    risk = risk_scores(hz, T, "mean_hazard")
    y_tr = structured_y(T_tr, E_tr)
    y_te = structured_y(T, E)
    with pytest.raises(ValueError):
        concordance_index_ipcw(y_tr, y_te, risk)  # scikit-survival alone refuses
    assert uno_default_tau(T, E, T_tr, E_tr) == 9.0
    assert uno_c(risk, T, E, T_tr, E_tr) == concordance_index_ipcw(y_tr, y_te, risk, tau=9.0)[0]
    # when the last train time is an event (8.5), events tied with it stay in
    assert uno_default_tau(T, E, np.array([2, 8]), np.array([False, True])) == 8.75


def test_harrell_without_events_is_nan_and_bad_risk_raises() -> None:
    T = np.array([1, 2, 3])
    assert math.isnan(harrell_c(np.array([0.1, 0.2, 0.3]), T, np.zeros(3, dtype=bool)))
    with pytest.raises(ValueError, match="risk: NaN"):
        harrell_c(np.array([0.1, np.nan, 0.3]), T, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="risk: length"):
        harrell_c(np.array([0.1, 0.3]), T, np.ones(3, dtype=bool))


def test_length_only_baseline_is_the_auc_of_length_for_the_event() -> None:
    T = np.array([0, 1, 2, 3])
    out = length_only_baseline(T, np.array([False, False, True, True]))
    assert out == {"auc_length_event": 1.0, "auc_length_event_signed": 1.0}
    out = length_only_baseline(T, np.array([True, True, False, False]))
    assert out == {"auc_length_event": 1.0, "auc_length_event_signed": 0.0}
    # events {1, 2} vs censored {1, 3}: pairs (1,1) tie 0.5, (1,3) 0, (2,1) 1, (2,3) 0 → 0.375
    out = length_only_baseline(np.array([1, 2, 1, 3]), np.array([True, True, False, False]))
    assert out["auc_length_event_signed"] == 0.375
    assert out["auc_length_event"] == 0.625
    assert math.isnan(length_only_baseline(T, np.zeros(4, dtype=bool))["auc_length_event"])


# ---------------------------------------------------------------------------------------------
# Brier, IBS, td-AUC
# ---------------------------------------------------------------------------------------------

# Five subjects (train = test). sksurv times: 0.5 (event), 1 (cens), 1.5 (event), 2 (cens),
# 3.5 (event). Reverse Kaplan–Meier of censoring: G(1) = 3/4 (4 at risk), G(2) = 3/8 (2 at risk).
HAND_T = np.array([0, 1, 1, 2, 3])
HAND_E = np.array([True, False, True, False, True])
HAND_H = [
    np.array([0.5]),  # S(1) = 0.5 · 0.5 = 0.25 (held hazard)
    np.array([0.2, 0.2]),  # S(1) = 0.64
    np.array([0.1, 0.3]),  # S(1) = 0.63
    np.array([0.1, 0.1, 0.1]),  # S(1) = 0.81
    np.array([0.05] * 4),  # S(1) = 0.9025
]


def test_brier_at_k_hand_example() -> None:
    # At k = 2 the prediction is S(1). Cases (time ≤ 2, event): subjects 0 (w = 1/G(0.5) = 1)
    # and 2 (w = 1/G(1.5) = 4/3); control (time > 2): subject 4 (w = 1/G(2) = 8/3); subjects
    # censored at ≤ 2 weigh 0.
    expected = (0.25**2 * 1 + 0.63**2 * 4 / 3 + (1 - 0.9025) ** 2 * 8 / 3) / 5
    bs = brier_scores(HAND_H, HAND_T, HAND_E, HAND_T, HAND_E, [2])
    np.testing.assert_array_equal(bs.horizons, [2])
    assert bs.scores[0] == pytest.approx(expected, abs=1e-12)
    assert bs.as_dict() == {"2": pytest.approx(0.12341, abs=1e-12)}


def test_brier_ibs_and_td_auc_match_direct_sksurv_calls() -> None:
    hz, T, E = random_split(11, 200, max_t=10)
    hz_tr, T_tr, E_tr = random_split(12, 400, max_t=14)
    ks = np.array([2, 4, 6, 8])
    surv = event_free_at(hz, T, ks)
    # hand check of S(k − 1) with the held last hazard, one subject
    h0 = hz[0]
    ext = np.concatenate([h0, np.full(10, h0[-1])])
    np.testing.assert_allclose(surv[0], [np.prod(1 - ext[:k]) for k in ks], rtol=1e-12)
    y_tr, y_te = structured_y(T_tr, E_tr), structured_y(T, E)

    bs = brier_scores(hz, T, E, T_tr, E_tr, ks)
    np.testing.assert_allclose(bs.scores, brier_score(y_tr, y_te, surv, ks)[1], rtol=1e-12)
    ibs = integrated_brier(hz, T, E, T_tr, E_tr, np.arange(1, 9))
    direct = integrated_brier_score(
        y_tr, y_te, event_free_at(hz, T, np.arange(1, 9)), np.arange(1, 9)
    )
    assert ibs == pytest.approx(direct, rel=1e-12)
    auc = td_auc(hz, T, E, T_tr, E_tr, ks)
    np.testing.assert_allclose(
        auc.scores, cumulative_dynamic_auc(y_tr, y_te, 1 - surv, ks)[0], rtol=1e-12
    )
    assert np.all((auc.scores > 0.3) & (auc.scores < 0.7))  # random hazards: near 0.5


def test_ipcw_metrics_work_where_test_outlives_train() -> None:
    # A test subject followed longer than any train subject makes scikit-survival refuse (the
    # censoring distribution is unknown, or zero, there). The metrics cap observed times just
    # above the largest horizon, which changes no case/control label and no weight used.
    hz, T, E = random_split(13, 100, max_t=8)
    hz.append(np.full(21, 0.05))
    T, E = np.append(T, 20), np.append(E, True)
    ks = np.array([2, 5])
    surv = event_free_at(hz, T, ks)
    y_cap = Surv.from_arrays(E, np.minimum(to_sksurv_time(T, E), 5.25))
    # train ends with an event (9.5): Brier refuses test times beyond it
    T_tr, E_tr = np.array([0, 2, 4, 6, 9]), np.array([True, False, True, True, True])
    y_tr = structured_y(T_tr, E_tr)
    with pytest.raises(ValueError, match="largest observed time"):
        brier_score(y_tr, structured_y(T, E), surv, ks)
    bs = brier_scores(hz, T, E, T_tr, E_tr, ks)
    np.testing.assert_allclose(bs.scores, brier_score(y_tr, y_cap, surv, ks)[1], rtol=1e-12)
    # train ends with a censoring (9): the censoring survival is 0 there and td-AUC refuses
    E_tr = np.array([True, False, True, True, False])
    y_tr = structured_y(T_tr, E_tr)
    with pytest.raises(ValueError, match="censoring survival function is zero"):
        cumulative_dynamic_auc(y_tr, structured_y(T, E), 1 - surv, ks)
    auc = td_auc(hz, T, E, T_tr, E_tr, ks)
    np.testing.assert_allclose(
        auc.scores, cumulative_dynamic_auc(y_tr, y_cap, 1 - surv, ks)[0], rtol=1e-12
    )
    assert valid_horizon_range(T, E, T_tr, E_tr) == (1, 8)
    with pytest.raises(ValueError, match=r"horizons: \[2, 9\] outside the valid range \[1, 8\]"):
        brier_scores(hz, T, E, T_tr, E_tr, [2, 9])
    with pytest.raises(ValueError, match="horizons: must be whole"):
        brier_scores(hz, T, E, T_tr, E_tr, [2.5])


def test_default_horizons_and_ibs_grid() -> None:
    T = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
    E = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0], dtype=bool)
    # event horizons T + 1: [1, 2, 3, 4, 6, 7, 9, 10]; nearest-rank quartiles: 3, 6, 7
    np.testing.assert_array_equal(default_horizons(T, E, T, E), [3, 6, 7])
    assert valid_horizon_range(T, E, T, E) == (1, 11)
    # IBS grid: up to the nearest-rank 90th percentile of the event horizons (9)
    np.testing.assert_array_equal(default_ibs_grid(T, E, T, E), np.arange(1, 10))
    # train follow-up shorter: horizons clipped to k < max train time (5.5 → k ≤ 5)
    np.testing.assert_array_equal(default_horizons(T, E, T[:6], E[:6]), [3, 5])
    assert default_horizons(T, np.zeros(11, dtype=bool), T, E).size == 0


def test_td_auc_is_nan_before_the_first_case() -> None:
    # sksurv times: 3, 4, 5.5 (event), 6, 7.5 (event), 8; valid horizons [3, 7]
    T = np.array([3, 4, 5, 6, 7, 8])
    E = np.array([False, False, True, False, True, False])
    hz = [np.full(t + 1, 0.1 * (i + 1)) for i, t in enumerate(T)]
    auc = td_auc(hz, T, E, T, E, [3, 6])
    np.testing.assert_array_equal(auc.horizons, [3, 6])
    assert math.isnan(auc.scores[0])  # no event by k = 3
    # k = 6: case {2} (h = 0.3); controls {4, 5} (h = 0.5, 0.6; subject 3 censored at 6 is
    # neither): every control outranks the case, AUC 0.
    assert auc.scores[1] == 0.0


# ---------------------------------------------------------------------------------------------
# Calibration, risk scores, bootstrap
# ---------------------------------------------------------------------------------------------


def test_calibration_two_groups_exact() -> None:
    # Group A: h = 0.5, events after visit 0 → predicted 1 − S(0) = 0.5 at k = 1, observed 1.
    # Group B: h = 0.1, censored at visit 3 → predicted 0.1, observed 0.
    hz = [np.array([0.5])] * 4 + [np.full(4, 0.1)] * 4
    T = np.array([0] * 4 + [3] * 4)
    E = np.array([True] * 4 + [False] * 4)
    cal = calibration_at(hz, T, E, horizon=1, n_bins=2)
    np.testing.assert_allclose(cal.predicted, [0.1, 0.5], atol=1e-12)
    np.testing.assert_allclose(cal.observed, [0.0, 1.0])
    np.testing.assert_array_equal(cal.n, [4, 4])
    np.testing.assert_array_equal(cal.n_at_risk, [4, 0])
    assert cal.ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.5, abs=1e-12)
    d = cal.as_dict()
    assert d["horizon"] == 1 and d["n"] == [4, 4]


def test_calibration_observed_is_kaplan_meier_with_censoring() -> None:
    # sksurv times 0 (cens), 0.5 (event), 1.5 (event), 3 (cens); KM at k = 2:
    # 0.5: 3 at risk → 2/3; 1.5: 2 at risk → 1/3. Observed event probability 2/3.
    T = np.array([0, 0, 1, 3])
    E = np.array([False, True, True, False])
    hz = [np.full(t + 1, 0.2) for t in T]
    cal = calibration_at(hz, T, E, horizon=2, n_bins=1, strategy="uniform")
    assert cal.observed[0] == pytest.approx(2 / 3, abs=1e-12)
    times, s = kaplan_meier_estimator(E, to_sksurv_time(T, E))
    assert cal.observed[0] == pytest.approx(1 - s[np.searchsorted(times, 2, side="right") - 1])
    assert cal.predicted[0] == pytest.approx(1 - 0.8**2, abs=1e-12)  # held hazard for T = 0
    with pytest.raises(ValueError, match="horizon"):
        calibration_at(hz, T, E, horizon=0)
    with pytest.raises(ValueError, match="strategy"):
        calibration_at(hz, T, E, horizon=2, strategy="bogus")


def test_risk_scores_hand_example() -> None:
    hz = [np.array([0.1, 0.15, 0.2]), np.array([0.4])]
    T = np.array([2, 0])
    np.testing.assert_allclose(risk_scores(hz, T, "mean_hazard"), [0.15, 0.4], atol=1e-12)
    np.testing.assert_allclose(risk_scores(hz, T, "horizon", risk_k=1), [0.235, 0.4], atol=1e-12)
    np.testing.assert_allclose(risk_scores(hz, T, "horizon", risk_k=10), [0.388, 0.4], atol=1e-12)
    np.testing.assert_allclose(risk_scores(hz, T, "first_n", risk_n=2), [0.125, 0.4], atol=1e-12)
    np.testing.assert_allclose(risk_scores(hz, T, "first_n", risk_n=10), [0.15, 0.4], atol=1e-12)
    # padded input, padding ignored
    padded = np.array([[0.1, 0.15, 0.2, 0.9], [0.4, 0.9, 0.9, 0.9]])
    np.testing.assert_allclose(risk_scores(padded, T, "mean_hazard"), [0.15, 0.4], atol=1e-12)
    np.testing.assert_array_equal(
        risk_scores(hz, T, risk_score="horizon", risk_k=1), risk_scores(hz, T, "horizon", risk_k=1)
    )
    with pytest.raises(ValueError, match="risk_score"):
        risk_scores(hz, T, "sum")
    with pytest.raises(ValueError, match="risk_n: expected"):
        risk_scores(hz, T, "first_n", risk_n=0)
    with pytest.raises(ValueError, match="risk_k: expected"):
        risk_scores(hz, T, "horizon", risk_k=-1)


def test_bootstrap_is_deterministic_and_covers_the_estimate() -> None:
    hz, T, E = random_split(21, 300, max_t=10)
    padded = to_padded(hz)
    a = bootstrap_ci(concordance_td, padded, T, E, n_boot=40, seed=5)
    b = bootstrap_ci(concordance_td, padded, T, E, n_boot=40, seed=5)
    c = bootstrap_ci(concordance_td, padded, T, E, n_boot=40, seed=6)
    assert a == b
    assert a != c
    est = concordance_td(hz, T, E)
    assert a[0] < est < a[1]
    assert a[1] - a[0] < 0.2
    # ragged lists are resampled too, with the same draws
    assert bootstrap_ci(concordance_td, hz, T, E, n_boot=40, seed=5) == pytest.approx(a, abs=1e-12)
    with pytest.raises(ValueError, match="arrays: unequal"):
        bootstrap_ci(concordance_td, padded, T[:-1], E)


# ---------------------------------------------------------------------------------------------
# evaluate_split
# ---------------------------------------------------------------------------------------------

SPLIT_KEYS = {
    "c_index_td",
    "c_index_harrell",
    "c_index_uno",
    "ibs",
    "brier",
    "td_auc",
    "n_subjects",
    "n_events",
    "risk_score",
    "calibration",
    "length_only",
    "uno_tau",
    "ibs_horizons",
    "warnings",
}


def test_evaluate_split_agrees_with_the_single_metrics() -> None:
    hz, T, E = random_split(31, 250, max_t=10)
    hz_tr, T_tr, E_tr = random_split(32, 500, max_t=12)
    m = evaluate_split(hz, T, E, T_tr, E_tr, risk_score="first_n", n_boot=30, risk_n=3, seed=2)
    assert SPLIT_KEYS | {"c_index_td_ci", "c_index_harrell_ci", "c_index_uno_ci", "ibs_ci"} == set(
        m
    )
    assert m["warnings"] == []
    assert m["n_subjects"] == 250 and m["n_events"] == int(E.sum())
    assert m["risk_score"] == "first_n(n=3)"
    assert m["c_index_td"] == concordance_td(hz, T, E)
    risk = risk_scores(hz, T, "first_n", risk_n=3)
    assert m["c_index_harrell"] == harrell_c(risk, T, E)
    assert m["c_index_uno"] == uno_c(risk, T, E, T_tr, E_tr)
    ks = default_horizons(T, E, T_tr, E_tr)
    assert m["brier"] == brier_scores(hz, T, E, T_tr, E_tr, ks).as_dict()
    assert list(m["td_auc"]) == [str(k) for k in ks]
    assert m["ibs"] == integrated_brier(hz, T, E, T_tr, E_tr)
    assert m["calibration"]["horizon"] == int(ks[len(ks) // 2])
    # the weighted bootstrap inside equals resampling the subjects with the same seed
    ci = bootstrap_ci(concordance_td, hz, T, E, n_boot=30, seed=2)
    assert m["c_index_td_ci"] == pytest.approx(list(ci), abs=1e-12)
    # ... and so do the other intervals (Uno at the split's tau, the IBS on the split's grid)
    ci = bootstrap_ci(harrell_c, risk, T, E, n_boot=30, seed=2)
    assert m["c_index_harrell_ci"] == pytest.approx(list(ci), abs=1e-12)
    tau = m["uno_tau"]
    ci = bootstrap_ci(
        lambda r, t, e: uno_c(r, t, e, T_tr, E_tr, tau), risk, T, E, n_boot=30, seed=2
    )
    assert m["c_index_uno_ci"] == pytest.approx(list(ci), abs=1e-12)
    grid = np.arange(m["ibs_horizons"][0], m["ibs_horizons"][1] + 1)
    ci = bootstrap_ci(
        lambda h, t, e: integrated_brier(h, t, e, T_tr, E_tr, grid), hz, T, E, n_boot=30, seed=2
    )
    assert m["ibs_ci"] == pytest.approx(list(ci), abs=1e-12)
    for key in ("c_index_td", "c_index_harrell", "c_index_uno", "ibs"):
        lo, hi = m[f"{key}_ci"]
        assert lo < hi and lo - 0.05 < m[key] < hi + 0.05, key
    json.dumps(jsonable(m), allow_nan=False)


def test_evaluate_split_all_censored_returns_nan_with_warnings() -> None:
    hz, T, _ = random_split(41, 50)
    E = np.zeros(50, dtype=bool)
    m = evaluate_split(hz, T, E, T, np.ones(50, dtype=bool), n_boot=5)
    assert SPLIT_KEYS | {"c_index_td_ci", "c_index_harrell_ci", "c_index_uno_ci"} == set(m)
    for key in ("c_index_td", "c_index_harrell", "c_index_uno", "ibs"):
        assert math.isnan(m[key]), key
    assert m["brier"] == {} and m["td_auc"] == {} and m["calibration"] is None
    assert any("no event" in w for w in m["warnings"])
    assert all(math.isnan(x) for x in m["c_index_td_ci"] + m["c_index_harrell_ci"])
    s = json.dumps(jsonable(m), allow_nan=False)
    assert '"c_index_td": null' in s


def test_evaluate_split_single_subject_does_not_raise() -> None:
    m = evaluate_split(
        [np.array([0.1, 0.2])],
        np.array([1]),
        np.array([True]),
        np.array([0, 3]),
        np.array([True, False]),
    )
    assert math.isnan(m["c_index_td"]) and math.isnan(m["c_index_harrell"])
    assert math.isnan(m["c_index_uno"]) and math.isnan(m["ibs"])
    assert any("single subject" in w for w in m["warnings"])


def test_evaluate_split_drops_invalid_horizons_with_a_warning() -> None:
    hz, T, E = random_split(51, 120, max_t=8)
    m = evaluate_split(hz, T, E, T, E, horizons=[2, 4, 50])
    assert list(m["brier"]) == ["2", "4"]
    assert any("[50] dropped" in w for w in m["warnings"])
    with pytest.raises(ValueError, match="event: length"):
        evaluate_split(hz, T, E[:-1], T, E)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_harrell_equals_sksurv(seed: int) -> None:
    """The fast path used above HARRELL_SKSURV_MAX_N is exactly sksurv's statistic."""
    from sksurv.metrics import concordance_index_censored

    from ehrsurv_dist.metrics.concordance import _harrell_grouped

    rng = np.random.default_rng(seed)
    n = 3000
    lv = rng.integers(0, 30, n)
    ev = rng.random(n) < 0.4
    risk = np.round(rng.random(n) - 0.02 * lv, 2)  # rounded: many exact ties
    time = lv + 0.5 * ev
    expected = concordance_index_censored(ev, time, risk)[0]
    assert _harrell_grouped(risk, time, ev, 1e-8) == pytest.approx(expected, abs=1e-12)
