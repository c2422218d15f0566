"""Torch hazards, survival curves and risk scores against naive per-subject loops (float64) and
against the numpy metrics (``metrics.survival_curves`` / ``metrics.risk_scores``)."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch

from ehrsurv_dist import schema
from ehrsurv_dist.hazards import (
    RiskScore,
    hazards_from_logits,
    last_real_visit,
    log_survival,
    risk_score,
    survival_curve,
)
from ehrsurv_dist.metrics import risk_scores, survival_curves


def _logits_and_mask(seed: int = 0, B: int = 13, V: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g, dtype=torch.float64) * 2.0
    lengths = torch.randint(1, V + 1, (B,), generator=g)
    mask = torch.arange(V)[None, :] < lengths[:, None]
    mask[0, :3] = torch.tensor([True, False, True])  # a hole inside subject 0's history
    mask[1] = False  # a subject without any real visit
    return logits, mask


def _naive_curve(logits: torch.Tensor, mask: torch.Tensor, K: int) -> torch.Tensor:
    B, V = logits.shape
    out = torch.ones(B, K, dtype=torch.float64)
    for b in range(B):
        real = [t for t in range(V) if mask[b, t]]
        if not real:
            continue
        T = real[-1]
        s = 1.0
        for t in range(K):
            if t <= T:
                h = torch.sigmoid(logits[b, t]).item() if mask[b, t] else 0.0
            else:
                h = torch.sigmoid(logits[b, T]).item()
            s *= 1.0 - h
            out[b, t] = s
    return out


def test_seed_worked_example() -> None:
    h = torch.tensor([[0.10, 0.15, 0.20]], dtype=torch.float64)
    logits = torch.log(h / (1 - h))
    s = survival_curve(logits, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(s, torch.tensor([[0.9, 0.765, 0.612]], dtype=torch.float64))


@pytest.mark.parametrize("K", [None, 3, 12])
def test_survival_matches_naive_loop_holds_last_hazard(K: int | None) -> None:
    logits, mask = _logits_and_mask()
    got = survival_curve(logits, mask, K)
    want = _naive_curve(logits, mask, K or logits.shape[1])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_hazards_zero_on_padding_and_last_visit() -> None:
    logits, mask = _logits_and_mask()
    h = hazards_from_logits(logits, mask)
    assert torch.equal(h[~mask], torch.zeros_like(h[~mask]))
    torch.testing.assert_close(h[mask], torch.sigmoid(logits[mask]))
    want = [max([t for t in range(mask.shape[1]) if mask[b, t]], default=-1) for b in range(13)]
    assert last_real_visit(mask).tolist() == want


def test_log_survival_is_stable_for_extreme_logits() -> None:
    logits = torch.tensor([[-200.0, 200.0, 50.0]], dtype=torch.float32)
    ls = log_survival(logits, torch.ones(1, 3, dtype=torch.bool))
    assert torch.isfinite(ls).all()
    # log(1 - sigmoid(-200)) ~ -exp(-200) ~ 0; then log(1 - sigmoid(200)) = -200
    torch.testing.assert_close(ls, torch.tensor([[0.0, -200.0, -250.0]]), atol=1e-4, rtol=0)


def _naive_risk(logits, mask, risk_score, risk_k=None, risk_n=None):  # type: ignore[no-untyped-def]
    out = []
    for b in range(logits.shape[0]):
        real = [t for t in range(logits.shape[1]) if mask[b, t]]
        h = {t: torch.sigmoid(logits[b, t]).item() for t in real}
        if not real:
            out.append(0.0)
        elif risk_score == "mean_hazard":
            out.append(sum(h.values()) / len(real))
        elif risk_score == "first_n":
            first = real[:risk_n]
            out.append(sum(h[t] for t in first) / len(first))
        else:
            k = min(risk_k, real[-1])
            out.append(1.0 - math.prod(1.0 - h.get(t, 0.0) for t in range(k + 1)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kind", "kw"),
    [("mean_hazard", {}), ("first_n", {"risk_n": 2}), ("horizon", {"risk_k": 0}),
     ("horizon", {"risk_k": 3}), ("horizon", {"risk_k": 50})],
)  # fmt: skip
def test_risk_scores_match_naive_loop_and_metrics(kind: str, kw: dict[str, int]) -> None:
    logits, mask = _logits_and_mask(seed=1)
    got = risk_score(logits, mask, kind, **kw)  # type: ignore[arg-type]
    want = _naive_risk(logits, mask, kind, **kw)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # the numpy risk scores of the metrics, from hazards, on histories without holes
    dense, last = _contiguous(logits, mask)
    torch_side = risk_score(logits, dense, kind, **kw)  # type: ignore[arg-type]
    h = hazards_from_logits(logits, dense).numpy()
    # the same keywords on both sides (the numpy side defaults them to 10)
    numpy_side = risk_scores(h, last.numpy(), kind, **kw)
    np.testing.assert_allclose(numpy_side, torch_side.numpy(), atol=1e-12)


def _contiguous(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A visit mask without holes and with >= 1 real visit per subject (the metrics' layout)."""
    lengths = mask.sum(1).clamp(min=1)
    last = lengths - 1
    return torch.arange(logits.shape[1])[None, :] < lengths[:, None], last


def test_survival_matches_metrics_survival_curves() -> None:
    logits, mask = _logits_and_mask(seed=2)
    dense, last = _contiguous(logits, mask)
    h = hazards_from_logits(logits, dense).numpy()
    np.testing.assert_allclose(
        survival_curves(h, last.numpy(), horizon=10),
        survival_curve(logits, dense, 10).numpy(),
        atol=1e-12,
    )
    # a hazard of exactly 1 (logit +inf) gives S = 0 from there on, held beyond T
    certain = torch.tensor([[math.inf, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        survival_curve(certain, torch.ones(1, 2, dtype=torch.bool), 3),
        torch.zeros(1, 3, dtype=torch.float64),
    )


def test_risk_score_names_are_the_schema_ones() -> None:
    assert get_args(RiskScore) == schema.RISK_SCORES


def test_risk_score_errors_name_the_argument() -> None:
    logits, mask = _logits_and_mask()
    with pytest.raises(ValueError, match="risk_k must be an int >= 0 for risk_score='horizon'"):
        risk_score(logits, mask, "horizon")
    with pytest.raises(ValueError, match="risk_n must be an int >= 1 for risk_score='first_n'"):
        risk_score(logits, mask, "first_n", risk_n=0)
    with pytest.raises(ValueError, match="risk_score must be one of"):
        risk_score(logits, mask, "sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="visit_mask"):
        risk_score(logits, mask.long())
    with pytest.raises(ValueError, match="logits"):
        risk_score(logits.long(), mask)
    with pytest.raises(ValueError, match="visit_mask"):
        survival_curve(logits, mask[:, :-1])
