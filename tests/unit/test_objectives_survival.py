"""Survival losses against naive per-subject Python loops (float64, 1e-6)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from ehrsurv_dist.hazards import risk_score
from ehrsurv_dist.objectives import (
    CoxLoss,
    DiscreteTimeNLLLoss,
    HybridSurvivalLoss,
    PairwiseRankingLoss,
    cox_log_risk,
    cox_partial_likelihood,
    curriculum_lambda_rank,
    discrete_time_nll,
    hybrid_survival_loss,
    logistic_ranking_loss,
    pairwise_ranking_loss,
)

B, V = 13, 7


Labels = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _labels(seed: int, *, all_censored: bool = False, all_t0: bool = False) -> Labels:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g, dtype=torch.float64) * 2.0).requires_grad_()
    lengths = torch.randint(1, V + 1, (B,), generator=g)
    if all_t0:
        lengths = torch.ones(B, dtype=torch.int64)
    mask = torch.arange(V)[None, :] < lengths[:, None]
    if lengths[2] >= 3:
        mask[2, 1] = False  # a hole before T: contributes nothing
    last = lengths - 1
    event = torch.rand(B, generator=g) < 0.5
    if all_censored:
        event = torch.zeros(B, dtype=torch.bool)
    return logits, last, event, mask


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _naive_nll(logits, last, event, mask) -> list[float]:  # type: ignore[no-untyped-def]
    logits = logits.detach()
    out = []
    for b in range(logits.shape[0]):
        T = int(last[b])
        ll = sum(math.log(1.0 - _sig(float(logits[b, t]))) for t in range(T) if mask[b, t])
        if event[b]:
            ll += math.log(_sig(float(logits[b, T])))
        out.append(-ll)
    return out


@pytest.mark.parametrize(
    "kw", [{}, {"all_censored": True}, {"all_t0": True}, {"all_t0": True, "all_censored": True}]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_nll_matches_naive_loop(kw: dict[str, bool], seed: int) -> None:
    logits, last, event, mask = _labels(seed, **kw)
    want = torch.tensor(_naive_nll(logits, last, event, mask), dtype=torch.float64)
    got = discrete_time_nll(logits, last, event, mask, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(discrete_time_nll(logits, last, event, mask), want.mean())
    torch.testing.assert_close(discrete_time_nll(logits, last, event, mask, "sum"), want.sum())
    torch.testing.assert_close(DiscreteTimeNLLLoss()(logits, last, event, mask), want.mean())
    if kw.get("all_t0") and kw.get("all_censored"):
        assert float(got.detach().abs().max()) == 0.0  # nothing observed: no likelihood term at all


def test_nll_gradient_is_the_analytic_one() -> None:
    # d(-ll)/d logit_t = h_t for t < T (real), -(1 - h_T) at T for events, 0 elsewhere.
    logits, last, event, mask = _labels(3)
    discrete_time_nll(logits, last, event, mask, "sum").backward()
    assert logits.grad is not None
    h = torch.sigmoid(logits.detach())
    t = torch.arange(V)[None, :]
    want = torch.where((t < last[:, None]) & mask, h, 0.0)
    want = want + torch.where((t == last[:, None]) & event[:, None], -(1 - h), 0.0)
    torch.testing.assert_close(logits.grad, want)


def test_nll_is_finite_for_extreme_and_masked_logits() -> None:
    logits = torch.tensor([[-300.0, 300.0, float("inf")], [80.0, float("-inf"), 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    last = torch.tensor([1, 0])
    event = torch.tensor([True, True])
    got = discrete_time_nll(logits, last, event, mask, "none")
    # subject 0: -log(1 - sigmoid(-300)) - log(sigmoid(300)) ~ 0; subject 1: -log sigmoid(80) ~ 0
    torch.testing.assert_close(got, torch.zeros(2), atol=1e-6, rtol=0)
    logits2 = torch.tensor([[300.0, -300.0]])
    got2 = discrete_time_nll(
        logits2, torch.tensor([1]), torch.tensor([True]), torch.ones(1, 2, dtype=torch.bool)
    )
    torch.testing.assert_close(got2, torch.tensor(600.0))  # log(eps) hacks would cap this at ~32


def test_nll_validation_names_the_argument() -> None:
    logits, last, event, mask = _labels(0)
    cases = [
        ((logits.float().long(), last, event, mask), "logits"),
        ((logits, last.int(), event, mask), "last_visit"),
        ((logits, last, event.float(), mask), "event"),
        ((logits, last, event, mask.long()), "visit_mask"),
        ((logits, last, event, mask[:, :-1]), "visit_mask"),
        ((logits, last[:-1], event, mask), "last_visit"),
        ((logits, last, event[:-1], mask), "event"),
        ((logits, torch.full_like(last, V), event, mask), "last_visit"),
        ((logits, torch.full_like(last, -1), event, mask), "last_visit"),
        ((logits, last, event, torch.zeros_like(mask)), "last_visit"),
    ]
    for args, name in cases:
        with pytest.raises(ValueError, match=name):
            discrete_time_nll(*args)
    with pytest.raises(ValueError, match="reduction"):
        discrete_time_nll(logits, last, event, mask, "avg")  # type: ignore[arg-type]


# --- ranking ------------------------------------------------------------------------------------


def _naive_rank(  # type: ignore[no-untyped-def]
    r, last, event, margin, sigma=None, ties=True
) -> float:
    total, n = 0.0, 0
    for i in range(len(r)):
        for j in range(len(r)):
            if i == j or not event[i]:
                continue
            if (last[i] <= last[j]) if ties else (last[i] < last[j]):
                gap = float(r[j] - r[i] + margin)
                total += (
                    max(0.0, gap) if sigma is None else sigma * math.log1p(math.exp(gap / sigma))
                )
                n += 1
    return total / n if n else 0.0


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_losses_match_naive_loop(seed: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(B, generator=g, dtype=torch.float64)
    last = torch.randint(0, 4, (B,), generator=g)  # many tied times
    event = torch.rand(B, generator=g) < 0.5
    got = pairwise_ranking_loss(r, last, event, margin=0.1, include_ties=ties)
    assert abs(float(got) - _naive_rank(r, last, event, 0.1, ties=ties)) < 1e-6
    got = logistic_ranking_loss(r, last, event, margin=0.05, sigma=0.3, include_ties=ties)
    assert abs(float(got) - _naive_rank(r, last, event, 0.05, 0.3, ties)) < 1e-6
    mod = PairwiseRankingLoss(margin=0.2, kind="logistic", sigma=1.0, include_ties=ties)
    assert abs(float(mod(r, last, event)) - _naive_rank(r, last, event, 0.2, 1.0, ties)) < 1e-6


def test_logistic_tends_to_hinge_as_sigma_shrinks() -> None:
    g = torch.Generator().manual_seed(5)
    r, last = (
        torch.rand(B, generator=g, dtype=torch.float64),
        torch.randint(0, 5, (B,), generator=g),
    )
    event = torch.ones(B, dtype=torch.bool)
    hinge = pairwise_ranking_loss(r, last, event)
    smooth = logistic_ranking_loss(r, last, event, sigma=1e-4)
    assert abs(float(hinge - smooth)) < 1e-4


@pytest.mark.parametrize("fn", [pairwise_ranking_loss, logistic_ranking_loss])
def test_ranking_without_comparable_pairs_is_zero_with_graph(
    fn: Callable[..., torch.Tensor],
) -> None:
    r = torch.rand(B, dtype=torch.float64, requires_grad=True)
    last = torch.arange(B)
    for event in (torch.zeros(B, dtype=torch.bool), torch.arange(B) == B - 1):
        # all censored, or the only event is the latest subject: no (i event, T_i <= T_j, j != i)
        loss = fn(r, last, event)
        assert loss.item() == 0.0
        loss.backward()
        assert r.grad is not None and float(r.grad.abs().sum()) == 0.0


# --- hybrid, curriculum -------------------------------------------------------------------------


@pytest.mark.parametrize("rank", ["hinge", "logistic"])
def test_hybrid_is_the_weighted_sum_of_its_parts(rank: str) -> None:
    logits, last, event, mask = _labels(4)
    total, parts = hybrid_survival_loss(
        logits,
        last,
        event,
        mask,
        lambda_nll=0.7,
        lambda_rank=0.3,
        rank_loss=rank,  # type: ignore[arg-type]
        risk_score="first_n",
        risk_n=2,
        margin=0.1,
        sigma=0.2,
    )
    nll = sum(_naive_nll(logits, last, event, mask)) / B
    r = risk_score(logits.detach(), mask, "first_n", risk_n=2)
    rk = _naive_rank(r, last, event, 0.1, 0.2 if rank == "logistic" else None)
    assert abs(float(parts["nll"]) - nll) < 1e-6
    assert abs(float(parts["rank"]) - rk) < 1e-6
    assert abs(total.item() - (0.7 * nll + 0.3 * rk)) < 1e-6
    assert parts["total"].item() == total.item() and not parts["total"].requires_grad
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_curriculum_schedule_and_module() -> None:
    assert [curriculum_lambda_rank(e, 0.5, 20) for e in (0, 10, 20, 40)] == [0.0, 0.25, 0.5, 0.5]
    assert curriculum_lambda_rank(0, 0.3, 0) == 0.3
    with pytest.raises(ValueError, match="epoch"):
        curriculum_lambda_rank(-1)
    loss = HybridSurvivalLoss(lambda_rank_max=0.4, rank_warmup_epochs=4)
    assert loss.lambda_rank == 0.0
    logits, last, event, mask = _labels(6)
    total0, parts0 = loss(logits, last, event, mask)
    assert total0.item() == parts0["nll"].item()  # epoch 0: no ranking weight
    loss.set_epoch(2)
    total2, parts2 = loss(logits, last, event, mask)
    assert loss.lambda_rank == pytest.approx(0.2)
    assert total2.item() == pytest.approx((parts2["nll"] + 0.2 * parts2["rank"]).item())
    # the ranking keywords reach hybrid_survival_loss unchanged
    opts = {
        "rank_loss": "logistic",
        "margin": 0.05,
        "sigma": 0.2,
        "risk_score": "first_n",
        "risk_n": 2,
    }
    module = HybridSurvivalLoss(0.7, 0.3, **opts)  # type: ignore[arg-type]
    want, _ = hybrid_survival_loss(
        logits,
        last,
        event,
        mask,
        lambda_nll=0.7,
        lambda_rank=0.3,
        **opts,  # type: ignore[arg-type]
    )
    assert module(logits, last, event, mask)[0].item() == want.item()
    with pytest.raises(ValueError, match="rank_loss"):
        HybridSurvivalLoss(rank_loss="square")  # type: ignore[arg-type]


# --- Cox ----------------------------------------------------------------------------------------


def _naive_cox(r, last, event) -> list[float]:  # type: ignore[no-untyped-def]
    # time = T + 0.5 for events, T for censorings (docs/design.md §4); Breslow ties.
    time = [float(last[i]) + (0.5 if event[i] else 0.0) for i in range(len(r))]
    out = []
    for i in range(len(r)):
        if not event[i]:
            out.append(0.0)
            continue
        denom = sum(math.exp(float(r[j])) for j in range(len(r)) if time[j] >= time[i])
        out.append(math.log(denom) - float(r[i]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cox_matches_naive_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, generator=g, dtype=torch.float64) * 3
    last = torch.randint(0, 3, (B,), generator=g)  # heavy ties, events and censorings mixed
    event = torch.rand(B, generator=g) < 0.6
    want = torch.tensor(_naive_cox(r, last, event), dtype=torch.float64)
    torch.testing.assert_close(
        cox_partial_likelihood(r, last, event, "none"), want, atol=1e-6, rtol=0
    )
    mean = float(want.sum()) / max(int(event.sum()), 1)
    assert abs(float(cox_partial_likelihood(r, last, event)) - mean) < 1e-6


def test_cox_censored_at_same_visit_is_not_at_risk() -> None:
    r = torch.tensor([0.0, 5.0], dtype=torch.float64)
    last = torch.tensor([2, 2])
    # censored subject 1 at T=2 is not in the risk set of the event at T=2 (interval after visit 2)
    assert float(cox_partial_likelihood(r, last, torch.tensor([True, False]))) == 0.0
    # a tied event is (Breslow): -log(e^0 / (e^0 + e^5)) for subject 0
    both = cox_partial_likelihood(r, last, torch.tensor([True, True]), "none")
    assert float(both[0]) == pytest.approx(math.log(1 + math.exp(5.0)))


def test_cox_without_events_is_zero_with_graph_and_log_risk() -> None:
    r = torch.randn(B, dtype=torch.float64, requires_grad=True)
    loss = cox_partial_likelihood(r, torch.arange(B), torch.zeros(B, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    logits, last, event, mask = _labels(7)
    lr = cox_log_risk(logits.detach(), mask, first_n=3)
    x = logits.detach()
    for b in range(B):
        real = [t for t in range(V) if mask[b, t]][:3]
        assert abs(float(lr[b]) - sum(float(x[b, t]) for t in real) / len(real)) < 1e-9
    want = sum(_naive_cox(cox_log_risk(x, mask), last, event)) / max(int(event.sum()), 1)
    assert abs(CoxLoss()(logits, last, event, mask).item() - want) < 1e-6
    with pytest.raises(ValueError, match="log_risk"):
        cox_partial_likelihood(r.detach()[:, None], last, event)


def test_half_precision_inputs_are_upcast() -> None:
    logits, last, event, mask = _labels(8)
    low = logits.detach().bfloat16()
    got = discrete_time_nll(low, last, event, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, discrete_time_nll(low.float(), last, event, mask))
    r = low[:, 0]
    assert pairwise_ranking_loss(r, last, event).dtype == torch.float32
    assert cox_partial_likelihood(r, last, event).dtype == torch.float32
