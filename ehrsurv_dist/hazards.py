"""Torch hazards, survival curves and scalar risk scores from per-visit logits (docs/design.md §2, §4).

Semantics: ``h_t = sigmoid(logit_t)`` is the probability of the event in the interval after visit
t, given no event so far and the history up to visit t. ``S(t) = prod_{s<=t} (1 - h_s)`` is
computed in log space, ``log(1 - h) = logsigmoid(-logit)``. Visit slots that are not real
(``visit_mask`` False) inside a subject's history contribute ``h = 0``. Beyond a subject's last real
visit T the curve holds the last hazard ``h_T`` constant (docs/design.md §2).

Neutral: the survival models (``SurvivalOutput.hazards`` / ``.survival``) and the ranking losses
(the risk score) both use these functions. The numpy side, from stored hazards, is
:mod:`ehrsurv_dist.metrics` (``survival_curves``, ``risk_scores``): the same definitions on
histories without holes.

Shape vocabulary: ``B`` batch, ``V`` visit slots, ``K`` time steps of a curve.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ehrsurv_dist.schema import RISK_SCORES
from ehrsurv_dist.tensors import check_shape, check_tensor

# The names of schema.RISK_SCORES, as a type for the ``risk_score`` arguments.
RiskScore = Literal["mean_hazard", "horizon", "first_n"]


def check_logits_mask(logits: Tensor, visit_mask: Tensor) -> None:
    """Validate per-visit ``logits`` float [B, V] and ``visit_mask`` bool [B, V] of one shape.

    Raises:
        ValueError: naming the argument with the wrong type, rank, dtype or shape.
    """
    check_tensor(logits, "logits", ndim=2, floating=True)
    check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
    check_shape(visit_mask, "visit_mask", logits.shape, "logits shape")


def last_real_visit(visit_mask: Tensor) -> Tensor:
    """Index of each subject's last real visit slot.

    Args:
        visit_mask: bool [B, V], True = real visit slot.

    Returns:
        int64 [B]; -1 for a subject without any real visit.
    """
    check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
    idx = torch.arange(visit_mask.shape[1], device=visit_mask.device)
    return torch.where(visit_mask, idx, -1).amax(dim=1)


def hazards_from_logits(logits: Tensor, visit_mask: Tensor) -> Tensor:
    """Per-visit hazards ``sigmoid(logits)``, exactly 0 on visit slots that are not real.

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].

    Returns:
        float [B, V] in [0, 1].
    """
    check_logits_mask(logits, visit_mask)
    return torch.where(visit_mask, torch.sigmoid(logits), torch.zeros_like(logits))


def log_survival(logits: Tensor, visit_mask: Tensor, num_steps: int | None = None) -> Tensor:
    """``log S(t)`` for t = 0..K-1, holding the last real hazard constant beyond it.

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].
        num_steps: K, the curve length (default V); may exceed V.

    Returns:
        float [B, K], non-increasing along K. A subject without real visits gets 0 (S = 1).
    """
    check_logits_mask(logits, visit_mask)
    K = logits.shape[1] if num_steps is None else num_steps
    if K < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    log_1m_h = torch.where(visit_mask, F.logsigmoid(-logits), torch.zeros_like(logits))  # [B, V]
    last = last_real_visit(visit_mask)  # [B]
    t = torch.arange(K, device=logits.device)  # [K]
    within = t[None, :] <= last[:, None]  # [B, K]
    # t itself up to T, then T again (T <= V - 1, so every index is in range)
    idx = torch.where(within, t[None, :], last.clamp(min=0)[:, None])  # [B, K]
    steps = log_1m_h.gather(1, idx)  # [B, K]
    steps = torch.where((last >= 0)[:, None], steps, torch.zeros_like(steps))
    return steps.cumsum(dim=1)


def survival_curve(logits: Tensor, visit_mask: Tensor, num_steps: int | None = None) -> Tensor:
    """``S(t) = prod_{s<=t} (1 - h_s)`` for t = 0..K-1 (see :func:`log_survival`).

    Returns:
        float [B, K] in [0, 1].
    """
    return log_survival(logits, visit_mask, num_steps).exp()


def risk_score(
    logits: Tensor,
    visit_mask: Tensor,
    risk_score: RiskScore = "mean_hazard",
    *,
    risk_k: int | None = None,
    risk_n: int | None = None,
) -> Tensor:
    """Scalar risk per subject (docs/design.md §4); higher = earlier expected event.

    - ``mean_hazard``: mean of h_t over the real visits (seed default).
    - ``horizon``: ``1 - S(min(k, T))`` with k = ``risk_k`` and T the last real visit.
    - ``first_n``: mean of h_t over the first ``risk_n`` real visits (seed's length-bias fix).

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].
        risk_score: one of ``schema.RISK_SCORES`` (the job's ``finetune.risk_score``).
        risk_k: k >= 0, required for ``risk_score="horizon"`` (``finetune.risk_k``).
        risk_n: n >= 1, required for ``risk_score="first_n"`` (``finetune.risk_n``).

    Returns:
        float [B]; 0 for a subject without real visits.

    Raises:
        ValueError: unknown ``risk_score`` or a missing/invalid ``risk_k`` / ``risk_n``.
    """
    check_logits_mask(logits, visit_mask)
    if risk_score == "mean_hazard":
        h = hazards_from_logits(logits, visit_mask)
        return h.sum(1) / visit_mask.sum(1).clamp(min=1).to(h.dtype)
    if risk_score == "horizon":
        if risk_k is None or risk_k < 0:
            raise ValueError(f"risk_k must be an int >= 0 for risk_score='horizon', got {risk_k}")
        last = last_real_visit(visit_mask)
        at = torch.minimum(last, torch.full_like(last, risk_k)).clamp(min=0)  # [B]
        log_s = log_survival(logits, visit_mask).gather(1, at[:, None]).squeeze(1)  # [B]
        return -torch.expm1(log_s)
    if risk_score == "first_n":
        if risk_n is None or risk_n < 1:
            raise ValueError(f"risk_n must be an int >= 1 for risk_score='first_n', got {risk_n}")
        rank = visit_mask.long().cumsum(1)  # [B, V], 1-based rank among real visits
        keep = visit_mask & (rank <= risk_n)
        h = hazards_from_logits(logits, keep)
        return h.sum(1) / keep.sum(1).clamp(min=1).to(h.dtype)
    raise ValueError(f"risk_score must be one of {RISK_SCORES}, got {risk_score!r}")
