"""Day bins (``ehrsurv_dist.bins``) and the calendar-axis likelihood, pinned against pycox."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycox.models.loss import nll_logistic_hazard
from pycox.preprocessing.label_transforms import LabTransDiscreteTime

from ehrsurv_dist.bins import bin_index, check_edges, fit_quantile_edges
from ehrsurv_dist.objectives import calendar_nll, discrete_time_nll

EDGES = np.array([0.0, 30.0, 90.0, 180.0, 365.0])


def _pycox_transform(
    time_days: np.ndarray, event: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """pycox's (idx, event); one event row is appended and dropped, because pycox fails on a
    batch without events (a max over an empty array)."""
    t = np.append(time_days, edges[1])
    d = np.append(event, True).astype(np.float32)
    idx, ev = LabTransDiscreteTime(cuts=edges).transform(t, d)
    return idx[:-1], ev[:-1]


def _pycox_index(time_days: np.ndarray, event: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return _pycox_transform(time_days, event, edges)[0]


def _random_times(n: int, seed: int, edges: np.ndarray = EDGES) -> tuple[np.ndarray, np.ndarray]:
    """Continuous times in (0, 1.2 horizon] with a third of them exactly on an edge."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.01, edges[-1] * 1.2, n)
    on_edge = rng.random(n) < 0.33
    t[on_edge] = rng.choice(edges[1:], on_edge.sum())
    return t, rng.random(n) < 0.5


# --- check_edges ---------------------------------------------------------------------------------


def test_check_edges_accepts_and_returns_float64() -> None:
    e = check_edges([0, 10, 20], 20)
    assert e.dtype == np.float64 and e.tolist() == [0.0, 10.0, 20.0]


@pytest.mark.parametrize(
    ("edges", "horizon", "match"),
    [
        ([1.0, 10.0, 20.0], 20.0, "start at 0"),
        ([0.0, 10.0, 10.0, 20.0], 20.0, "strictly increasing"),
        ([0.0, 15.0, 10.0, 20.0], 20.0, "strictly increasing"),
        ([0.0, 10.0, 19.0], 20.0, "end at horizon"),
        ([0.0, 10.0], 0.0, "horizon_days"),
        ([0.0, 10.0], -5.0, "horizon_days"),
        ([0.0], 10.0, ">= 2"),
        ([0.0, float("nan"), 10.0], 10.0, "finite"),
    ],
)
def test_check_edges_refuses(edges: list[float], horizon: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_edges(edges, horizon)


# --- fit_quantile_edges ----------------------------------------------------------------------------


def test_quantile_edges_are_event_time_quantiles() -> None:
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0, 50.0])
    d = np.array([True] * 8 + [False, True])
    e = fit_quantile_edges(t, d, 4, 60.0)
    ev = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 50.0])  # censorings are not used
    assert e.tolist() == [0.0, *np.quantile(ev, [0.25, 0.5, 0.75]).tolist(), 60.0]


def test_quantile_edges_drop_duplicates_and_events_past_horizon() -> None:
    t = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 9.0, 400.0])
    d = np.ones(7, dtype=bool)
    e = fit_quantile_edges(t, d, 4, 10.0)  # events <= 10: five at 5, one at 9
    assert e.tolist() == [0.0, 5.0, 10.0]
    assert (np.diff(e) > 0).all()


def test_quantile_edges_without_events_are_even() -> None:
    e = fit_quantile_edges(np.array([3.0, 4.0]), np.array([False, False]), 4, 100.0)
    assert e.tolist() == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_quantile_edges_refuse_bad_k() -> None:
    with pytest.raises(ValueError, match="k"):
        fit_quantile_edges(np.array([1.0]), np.array([True]), 0, 10.0)


# --- bin_index ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bin_index_agrees_with_pycox(seed: int) -> None:
    t, d = _random_times(500, seed)
    p = _pycox_index(t, d, EDGES)
    d_eff = d & (t <= EDGES[-1])  # pycox censors everything past the last cut
    expected = np.where(d_eff, p - 1, p)
    got = bin_index(t, d, EDGES)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_bin_index_edges_and_zero_spelled_out() -> None:
    t = np.array([30.0, 30.0, 30.000001, 29.99, 365.0, 365.0, 400.0, 400.0, 0.0, 0.0, 5.0])
    d = np.array([True, False, True, False, True, False, True, False, True, False, False])
    got = bin_index(t, d, EDGES).tolist()
    # event at an edge: the bin it closes; censoring at an edge: survived that bin
    assert got == [0, 1, 1, 0, 3, 4, 4, 4, 0, 0, 0]


def test_bin_index_refuses_negative_time() -> None:
    with pytest.raises(ValueError, match="time_days must be >= 0"):
        bin_index(np.array([1.0, -1.0]), np.array([True, True]), EDGES)
    with pytest.raises(ValueError, match="start at 0"):
        bin_index(np.array([1.0]), np.array([True]), [1.0, 2.0])


# --- calendar_nll vs pycox ------------------------------------------------------------------------


def _pycox_loss(logits: torch.Tensor, t: np.ndarray, d: np.ndarray, reduction: str) -> torch.Tensor:
    """pycox's loss with its cut-0 column set very negative (it contributes ~0)."""
    phi = torch.cat([torch.full((logits.shape[0], 1), -60.0, dtype=logits.dtype), logits], 1)
    idx, ev = _pycox_transform(t, d, EDGES)
    ev_t = torch.from_numpy(ev).to(logits.dtype)
    return nll_logistic_hazard(phi, torch.from_numpy(idx), ev_t, reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["mixed", "all_censored", "all_events"])
def test_calendar_nll_equals_pycox(reduction: str, case: str) -> None:
    t, d = _random_times(300, 7)
    if case == "all_censored":
        d[:] = False
    elif case == "all_events":
        d[:] = True
        t = np.minimum(t, EDGES[-1])  # past the horizon pycox would censor them
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(t.size, EDGES.size - 1, generator=g, dtype=torch.float64) * 2.0
    ours = calendar_nll(
        logits,
        torch.from_numpy(bin_index(t, d, EDGES)),
        torch.from_numpy(d & (t <= EDGES[-1])),
        reduction,  # type: ignore[arg-type]
    )
    ref = _pycox_loss(logits, t, d, reduction)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_calendar_nll_slow_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 2, 1, 0, 3, 2])
    ev = torch.tensor([True, True, False, False, False, True])
    h = torch.sigmoid(logits)
    want = []
    for b in range(6):
        j = int(idx[b])
        ll = sum(float(torch.log1p(-h[b, k])) for k in range(j))
        if ev[b]:
            ll += float(torch.log(h[b, j]))
        want.append(-ll)
    got = calendar_nll(logits, idx, ev, "none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_calendar_nll_is_discrete_time_nll_below_k() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g)
    idx = torch.tensor([0, 3, 2, 1, 3])
    ev = torch.tensor([True, False, True, False, True])
    mask = torch.ones(5, 4, dtype=torch.bool)
    torch.testing.assert_close(
        calendar_nll(logits, idx, ev, "none"), discrete_time_nll(logits, idx, ev, mask, "none")
    )


def test_calendar_nll_gradient_and_extremes() -> None:
    logits = torch.tensor([[80.0, -80.0], [-80.0, 80.0]], requires_grad=True)
    loss = calendar_nll(logits, torch.tensor([0, 2]), torch.tensor([True, False]), "sum")
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("idx", "ev", "match"),
    [
        ([0, 3], [False, True], "event must be < K=3"),
        ([0, 4], [False, False], "censoring must be <= K=3"),
        ([0, -1], [False, False], ">= 0"),
    ],
)
def test_calendar_nll_refuses_bad_index(idx: list[int], ev: list[bool], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calendar_nll(torch.zeros(2, 3), torch.tensor(idx), torch.tensor(ev))


def test_calendar_nll_names_its_arguments() -> None:
    with pytest.raises(ValueError, match="bin_index"):
        calendar_nll(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="event has 1"):
        calendar_nll(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([True]))
    with pytest.raises(ValueError, match="reduction"):
        calendar_nll(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([True]), "max")  # type: ignore[arg-type]
