"""Cox partial likelihood on per-visit logits (a subject-level alternative to the NLL).

Labels and time convention as :mod:`ehrsurv_dist.objectives.survival` (docs/design.md §4: an event
at visit T happens at T + 0.5, a censoring at T).

Shape vocabulary: ``B`` batch, ``V`` visit slots.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrsurv_dist.hazards import check_logits_mask
from ehrsurv_dist.objectives import common
from ehrsurv_dist.objectives.common import Reduction
from ehrsurv_dist.tensors import check_tensor


def cox_log_risk(logits: Tensor, visit_mask: Tensor, first_n: int | None = None) -> Tensor:
    """Scalar log-risk for Cox from per-visit logits: the mean logit over real visits.

    With ``first_n`` only the first n real visits count (a fixed window, free of the length bias
    of a whole-history mean). The logit is the log-odds of the per-visit hazard, so under a
    proportional-odds reading a subject-level shift of all logits is exactly this log-risk.

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].
        first_n: window size, or None for all real visits.

    Returns:
        float [B]; 0 for a subject without real visits.
    """
    check_logits_mask(logits, visit_mask)
    logits = common.upcast(logits)
    keep = visit_mask
    if first_n is not None:
        if first_n < 1:
            raise ValueError(f"first_n must be >= 1, got {first_n}")
        keep = keep & (visit_mask.long().cumsum(1) <= first_n)
    total = torch.where(keep, logits, torch.zeros_like(logits)).sum(1)
    return total / keep.sum(1).clamp(min=1).to(logits.dtype)


def cox_partial_likelihood(
    log_risk: Tensor,
    last_visit: Tensor,
    event: Tensor,
    reduction: Reduction = "mean",
) -> Tensor:
    """Negative Cox partial log-likelihood with Breslow ties.

    ``-sum_{i: event_i} [r_i - log sum_{j in R(i)} exp(r_j)]``, normalised by the number of events
    (``mean``). Times follow docs/design.md §4: an event at visit T happens at T + 0.5 and a censoring
    at T, so the risk set of an event at T_i is every event with T_j >= T_i (Breslow: tied events
    share their risk sets) and every censoring with T_j > T_i. (The seed also counted subjects
    censored at T_i; they are not known to be event-free in the interval after visit T_i.)
    Computed with a [B, B] risk-set mask and ``logsumexp``, O(B^2), exact for ties.

    Args:
        log_risk: float [B], unbounded (e.g. :func:`cox_log_risk`).
        last_visit: int64 [B].
        event: bool [B].
        reduction: ``mean`` (over events), ``sum`` or ``none`` (float [B], 0 for censored).

    Returns:
        The loss; 0 (graph intact) without events.
    """
    check_tensor(log_risk, "log_risk", ndim=1, floating=True)
    common.check_labels(last_visit, event, log_risk.shape[0])
    common.check_reduction(reduction)
    log_risk = common.upcast(log_risk)
    time = last_visit.to(log_risk.dtype) + 0.5 * event.to(log_risk.dtype)  # [B]
    at_risk = time[None, :] >= time[:, None]  # [i, j]: j in R(i)
    scores = log_risk[None, :].expand_as(at_risk).masked_fill(~at_risk, float("-inf"))
    log_denominator = torch.logsumexp(scores, dim=1)  # [B]; R(i) contains i, so finite
    per_subject = torch.where(event, log_denominator - log_risk, torch.zeros_like(log_risk))
    if reduction == "mean":
        return per_subject.sum() / event.sum().clamp(min=1).to(log_risk.dtype)
    return common.reduce_per_subject(per_subject, reduction)


class CoxLoss(nn.Module):
    """Cox partial likelihood on :func:`cox_log_risk` of per-visit logits."""

    def __init__(self, first_n: int | None = None, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.first_n = first_n
        self.reduction: Reduction = reduction

    def forward(
        self, logits: Tensor, last_visit: Tensor, event: Tensor, visit_mask: Tensor
    ) -> Tensor:
        r = cox_log_risk(logits, visit_mask, self.first_n)
        return cox_partial_likelihood(r, last_visit, event, self.reduction)
