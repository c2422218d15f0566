"""Survival losses: discrete-time NLL, pairwise ranking, hybrid, curriculum (Cox: ``cox.py``).

Each loss is a pure typed function that validates its arguments (``ValueError`` naming the
argument), followed by a thin ``nn.Module`` wrapper. Labels follow ``schema``: ``last_visit`` =
T (int64 [B], index of the last input visit), ``event`` (bool [B], True = event in the interval
after visit T). Hazards are never formed explicitly: ``log h = logsigmoid(logit)`` and
``log(1 - h) = logsigmoid(-logit)``, so there is no clamping and no ``log(0)``.

Shape vocabulary: ``B`` batch, ``V`` visit slots.
"""

from __future__ import annotations

from typing import Literal, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist import hazards
from ehrsurv_dist.hazards import RiskScore, check_logits_mask
from ehrsurv_dist.objectives.common import (
    Reduction,
    check_labels,
    check_reduction,
    reduce_per_subject,
    upcast,
)
from ehrsurv_dist.tensors import check_tensor

RankLoss = Literal["hinge", "logistic"]
RANK_LOSSES: tuple[str, ...] = ("hinge", "logistic")


# --- discrete-time negative log-likelihood (docs/design.md §2) ---------------------------------------


def discrete_time_nll(
    logits: Tensor,
    last_visit: Tensor,
    event: Tensor,
    visit_mask: Tensor,
    reduction: Reduction = "mean",
) -> Tensor:
    """Negative log-likelihood of the discrete-time hazard model.

    Per subject with last visit T: event ``log h_T + sum_{t<T} log(1 - h_t)``; censored
    ``sum_{t<T} log(1 - h_t)``, sums over real visit slots (``visit_mask``) only.

    Args:
        logits: float [B, V], ``h_t = sigmoid(logits[:, t])``.
        last_visit: int64 [B], T < V.
        event: bool [B].
        visit_mask: bool [B, V]; ``visit_mask[b, last_visit[b]]`` must be True.
        reduction: ``mean`` (over subjects), ``sum`` or ``none`` (float [B]).

    Returns:
        The loss (a scalar, or [B] with ``reduction="none"``).

    Raises:
        ValueError: naming the argument with the wrong rank, dtype or shape, a ``last_visit``
            outside [0, V) or on a slot that is not a real visit, or an unknown ``reduction``.
    """
    check_logits_mask(logits, visit_mask)
    B, V = logits.shape
    check_labels(last_visit, event, B)
    check_reduction(reduction)
    if B > 0:
        if int(last_visit.max()) >= V:
            raise ValueError(f"last_visit must be < V={V}, got max {int(last_visit.max())}")
        if not bool(visit_mask.gather(1, last_visit[:, None]).all()):
            raise ValueError("last_visit must point at a real visit (visit_mask[b, T_b] is False)")
    logits = upcast(logits)
    t = torch.arange(V, device=logits.device)
    before = (t[None, :] < last_visit[:, None]) & visit_mask  # [B, V]
    at_event = (t[None, :] == last_visit[:, None]) & event[:, None]  # [B, V]
    zero = torch.zeros_like(logits)
    # torch.where, not a product: a masked-out logit must not turn 0 * inf into NaN.
    log_lik = torch.where(before, F.logsigmoid(-logits), zero).sum(1) + torch.where(
        at_event, F.logsigmoid(logits), zero
    ).sum(1)
    return reduce_per_subject(-log_lik, reduction)


class DiscreteTimeNLLLoss(nn.Module):
    """Module wrapper of :func:`discrete_time_nll`."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction: Reduction = reduction

    def forward(
        self, logits: Tensor, last_visit: Tensor, event: Tensor, visit_mask: Tensor
    ) -> Tensor:
        return discrete_time_nll(logits, last_visit, event, visit_mask, self.reduction)


# --- calendar-axis negative log-likelihood (the calendar-axis contract, docs/design.md) --------


def calendar_nll(
    logits: Tensor, bin_index: Tensor, event: Tensor, reduction: Reduction = "mean"
) -> Tensor:
    """Negative log-likelihood over K day bins (pycox's ``LogisticHazard`` convention).

    Event with index j: ``log h_j + sum_{l<j} log(1 - h_l)``; censored with index j:
    ``sum_{l<j} log(1 - h_l)`` (the bins survived whole), ``h_l = sigmoid(logits[:, l])``. This is
    :func:`discrete_time_nll` on the logits with one constant column appended and an all-True
    mask, so that a censoring at the horizon (index K, every bin survived) has a slot; the
    appended column never enters the sum. Indices come from :func:`ehrsurv_dist.bins.bin_index`.

    Args:
        logits: float [B, K].
        bin_index: int64 [B]; events in [0, K), censorings in [0, K].
        event: bool [B].
        reduction: ``mean`` (over samples), ``sum`` or ``none`` (float [B]).

    Returns:
        The loss (a scalar, or [B] with ``reduction="none"``).

    Raises:
        ValueError: naming the argument with the wrong rank, dtype or shape, a negative
            ``bin_index``, an event with index >= K or a censoring with index > K, or an unknown
            ``reduction``.
    """
    check_tensor(logits, "logits", ndim=2, floating=True)
    B, K = logits.shape
    check_tensor(bin_index, "bin_index", ndim=1, dtype=torch.int64)
    check_tensor(event, "event", ndim=1, dtype=torch.bool)
    for name, t in (("bin_index", bin_index), ("event", event)):
        if t.shape[0] != B:
            raise ValueError(f"{name} has {t.shape[0]} entries, expected B={B}")
    check_reduction(reduction)
    if B > 0:
        if int(bin_index.min()) < 0:
            raise ValueError(f"bin_index must be >= 0, got min {int(bin_index.min())}")
        top_event = bin_index.masked_fill(~event, -1).max()
        if int(top_event) >= K:
            raise ValueError(f"bin_index of an event must be < K={K}, got {int(top_event)}")
        if int(bin_index.max()) > K:
            raise ValueError(
                f"bin_index of a censoring must be <= K={K}, got {int(bin_index.max())}"
            )
    padded = F.pad(logits, (0, 1))  # [B, K + 1]; column K is a slot for "survived every bin"
    mask = torch.ones(padded.shape, dtype=torch.bool, device=logits.device)
    return discrete_time_nll(padded, bin_index, event, mask, reduction)


# --- pairwise ranking ---------------------------------------------------------------------------


def comparable_pairs(last_visit: Tensor, event: Tensor, include_ties: bool = True) -> Tensor:
    """Pairs (i, j) where i should rank above j.

    ``include_ties=True`` (seed): ``event_i and T_i <= T_j and i != j``. ``False``: ``T_i < T_j``,
    which is the comparability of the evaluation (docs/design.md §4: events at T + 0.5, censorings at
    T; a subject censored at T_i, or an event at T_i, is not known to outlive i).

    Returns:
        bool [B, B], entry [i, j].
    """
    check_tensor(last_visit, "last_visit", ndim=1)
    check_labels(last_visit, event, last_visit.shape[0])
    Ti, Tj = last_visit[:, None], last_visit[None, :]
    later = Ti <= Tj if include_ties else Ti < Tj
    eye = torch.eye(last_visit.shape[0], dtype=torch.bool, device=last_visit.device)
    return event[:, None] & later & ~eye


def _pairwise(
    risk: Tensor,
    last_visit: Tensor,
    event: Tensor,
    margin: float,
    include_ties: bool,
    sigma: float | None,
) -> Tensor:
    check_tensor(risk, "risk", ndim=1, floating=True)
    check_labels(last_visit, event, risk.shape[0])
    risk = upcast(risk)
    comp = comparable_pairs(last_visit, event, include_ties)  # [B, B]
    gap = risk[None, :] - risk[:, None] + margin  # [i, j]: r_j - r_i + margin
    if sigma is None:
        per_pair = F.relu(gap)
    else:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        per_pair = sigma * F.softplus(gap / sigma)
    n_pairs = comp.sum()
    # No comparable pair: 0, still attached to the graph (so backward() works and gives 0).
    total = torch.where(comp, per_pair, torch.zeros_like(per_pair)).sum()
    return total / n_pairs.clamp(min=1).to(risk.dtype)


def pairwise_ranking_loss(
    risk: Tensor,
    last_visit: Tensor,
    event: Tensor,
    margin: float = 0.1,
    include_ties: bool = True,
) -> Tensor:
    """Seed hinge: mean over comparable pairs of ``max(0, r_j - r_i + margin)``.

    Args:
        risk: float [B], higher = earlier event (e.g.
            :func:`~ehrsurv_dist.hazards.risk_score`).
        last_visit: int64 [B].
        event: bool [B].
        margin: hinge margin.
        include_ties: see :func:`comparable_pairs`.

    Returns:
        Scalar; 0 (with the graph intact) when there is no comparable pair.
    """
    return _pairwise(risk, last_visit, event, margin, include_ties, sigma=None)


def logistic_ranking_loss(
    risk: Tensor,
    last_visit: Tensor,
    event: Tensor,
    margin: float = 0.1,
    sigma: float = 0.1,
    include_ties: bool = True,
) -> Tensor:
    """Smooth hinge: mean over comparable pairs of ``sigma*softplus((r_j - r_i + margin)/sigma)``.

    ``sigma`` sets the smoothness: as sigma -> 0 this tends to the hinge of
    :func:`pairwise_ranking_loss`; with margin 0 and sigma 1 it is the RankNet/logistic loss
    ``log(1 + exp(r_j - r_i))``. Unlike the hinge, pairs that are already ranked by more than the
    margin still give a (small) gradient.

    Returns:
        Scalar; 0 (with the graph intact) when there is no comparable pair.

    Raises:
        ValueError: if ``sigma <= 0`` or an argument is malformed.
    """
    return _pairwise(risk, last_visit, event, margin, include_ties, sigma=sigma)


class PairwiseRankingLoss(nn.Module):
    """Module wrapper of :func:`pairwise_ranking_loss` / :func:`logistic_ranking_loss`."""

    def __init__(
        self,
        margin: float = 0.1,
        kind: RankLoss = "hinge",
        sigma: float = 0.1,
        include_ties: bool = True,
    ) -> None:
        super().__init__()
        if kind not in RANK_LOSSES:
            raise ValueError(f"kind must be one of {RANK_LOSSES}, got {kind!r}")
        self.margin, self.kind, self.sigma, self.include_ties = margin, kind, sigma, include_ties

    def forward(self, risk: Tensor, last_visit: Tensor, event: Tensor) -> Tensor:
        sigma = self.sigma if self.kind == "logistic" else None
        return _pairwise(risk, last_visit, event, self.margin, self.include_ties, sigma)


# --- hybrid and curriculum ----------------------------------------------------------------------


def curriculum_lambda_rank(epoch: int, lambda_max: float = 0.5, warmup_epochs: int = 20) -> float:
    """``min(lambda_max * epoch / warmup_epochs, lambda_max)``; ``lambda_max`` if no warm-up.

    A pure function of the epoch, so a resumed run continues the same schedule.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if warmup_epochs <= 0:
        return lambda_max
    return min(lambda_max * epoch / warmup_epochs, lambda_max)


def hybrid_survival_loss(
    logits: Tensor,
    last_visit: Tensor,
    event: Tensor,
    visit_mask: Tensor,
    *,
    lambda_nll: float = 1.0,
    lambda_rank: float = 0.1,
    rank_loss: RankLoss = "hinge",
    margin: float = 0.1,
    sigma: float = 0.1,
    include_ties: bool = True,
    risk_score: RiskScore = "mean_hazard",
    risk_k: int | None = None,
    risk_n: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``lambda_nll * NLL + lambda_rank * ranking`` with the ranking on a scalar risk score.

    Args:
        logits, last_visit, event, visit_mask: as :func:`discrete_time_nll`.
        lambda_nll, lambda_rank: weights.
        rank_loss: ``hinge`` or ``logistic``; margin, sigma, include_ties as the ranking losses.
        risk_score, risk_k, risk_n: the risk score for ranking
            (:func:`~ehrsurv_dist.hazards.risk_score`).

    Returns:
        ``(total, {"nll", "rank", "total"})``; the dict holds detached scalars for logging.
    """
    if rank_loss not in RANK_LOSSES:
        raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {rank_loss!r}")
    nll = discrete_time_nll(logits, last_visit, event, visit_mask)
    r = hazards.risk_score(upcast(logits), visit_mask, risk_score, risk_k=risk_k, risk_n=risk_n)
    rank = _pairwise(
        r, last_visit, event, margin, include_ties, sigma if rank_loss == "logistic" else None
    )
    total = lambda_nll * nll + lambda_rank * rank
    return total, {"nll": nll.detach(), "rank": rank.detach(), "total": total.detach()}


class RankingOptions(TypedDict, total=False):
    """The ranking keywords of :func:`hybrid_survival_loss`, whose signature holds the defaults."""

    rank_loss: RankLoss
    margin: float
    sigma: float
    include_ties: bool
    risk_score: RiskScore
    risk_k: int | None
    risk_n: int | None


class HybridSurvivalLoss(nn.Module):
    """Module wrapper of :func:`hybrid_survival_loss` with an optional λ_rank curriculum.

    With ``rank_warmup_epochs > 0``, call :meth:`set_epoch` at the start of every epoch:
    ``lambda_rank`` then follows :func:`curriculum_lambda_rank` up to ``lambda_rank_max``.
    ``**ranking`` (:class:`RankingOptions`) is passed on to :func:`hybrid_survival_loss`.
    """

    def __init__(
        self,
        lambda_nll: float = 1.0,
        lambda_rank_max: float = 0.1,
        *,
        rank_warmup_epochs: int = 0,
        **ranking: Unpack[RankingOptions],
    ) -> None:
        super().__init__()
        rank_loss = ranking.get("rank_loss", "hinge")
        if rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {RANK_LOSSES}, got {rank_loss!r}")
        self.lambda_nll = lambda_nll
        self.lambda_rank_max = lambda_rank_max
        self.rank_warmup_epochs = rank_warmup_epochs
        self.lambda_rank = curriculum_lambda_rank(0, lambda_rank_max, rank_warmup_epochs)
        self.ranking = ranking

    def set_epoch(self, epoch: int) -> None:
        """Set ``lambda_rank`` for ``epoch`` (0-based) from the curriculum."""
        self.lambda_rank = curriculum_lambda_rank(
            epoch, self.lambda_rank_max, self.rank_warmup_epochs
        )

    def forward(
        self, logits: Tensor, last_visit: Tensor, event: Tensor, visit_mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return hybrid_survival_loss(
            logits,
            last_visit,
            event,
            visit_mask,
            lambda_nll=self.lambda_nll,
            lambda_rank=self.lambda_rank,
            **self.ranking,
        )
