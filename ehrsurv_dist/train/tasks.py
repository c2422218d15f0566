"""What a training step computes: the loss of one batch for survival or pretraining (pure torch).

A task turns a batch of tensors into ``(loss, components)``; the loop stays the same for every
model, loss and engine. ``forward`` is the engine (or a bare module): it runs the wrapped model
(DDP / DeepSpeed) so that gradients synchronise; ``module`` is the unwrapped model, used only to
pick the batch fields it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

from ehrsurv_dist import schema as S
from ehrsurv_dist.models.survival import select_inputs
from ehrsurv_dist.objectives import cox
from ehrsurv_dist.objectives import pretraining as P
from ehrsurv_dist.objectives import survival as L
from ehrsurv_dist.outputs import SurvivalOutput

if TYPE_CHECKING:  # the job schema only types the builders below
    from ehrsurv_dist.jobspec import JobSpec

SurvivalLoss = Literal["nll", "rank", "hybrid", "cox"]
PretrainObjective = Literal["mlm", "nvp", "joint"]
Forward = Callable[..., Any]


@dataclass
class SurvivalTask:
    """Discrete-time survival fine-tuning.

    Attributes:
        loss: ``nll`` (the likelihood), ``rank`` (pairwise ranking only), ``hybrid``
            (``nll + lambda_rank * rank``) or ``cox`` (partial likelihood on the mean logit).
        lambda_rank: ranking weight for ``hybrid`` (the maximum when ``curriculum_epochs`` > 0).
        curriculum_epochs: ramp ``lambda_rank`` linearly over this many epochs (0 = constant).
        margin: ranking margin.
        rank_loss: ``hinge`` (the seed's) or ``logistic`` (smooth).
        risk_score: scalar risk score the ranking uses (``mean_hazard``, ``horizon``,
            ``first_n``; the job's ``finetune.risk_score``).
        risk_k: k for ``risk_score = horizon`` (the job's ``finetune.risk_k``).
        risk_n: n for ``risk_score = first_n`` (the job's ``finetune.risk_n``).
        time_field: the batch field holding each row's time index: ``last_visit`` (visit
            axis: hazards per visit) or ``bin`` (calendar axis: hazards per day bin, the model's
            mask all true, so the same likelihood is the calendar one, ``calendar_nll``).
    """

    loss: SurvivalLoss = "nll"
    lambda_rank: float = 0.1
    curriculum_epochs: int = 0
    margin: float = 0.1
    rank_loss: Literal["hinge", "logistic"] = "hinge"
    risk_score: Literal["mean_hazard", "horizon", "first_n"] = "mean_hazard"
    risk_k: int | None = None
    risk_n: int | None = None
    time_field: str = S.LAST_VISIT

    def lambda_at(self, epoch: int) -> float:
        if self.curriculum_epochs > 0:
            return L.curriculum_lambda_rank(epoch, self.lambda_rank, self.curriculum_epochs)
        return self.lambda_rank

    def __call__(
        self, forward: Forward, module: nn.Module, batch: Mapping[str, Tensor], epoch: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        out: SurvivalOutput = forward(**select_inputs(module, batch))
        lv, ev = batch[self.time_field], batch[S.EVENT]
        if self.loss == "nll":
            if self.time_field == S.BIN:
                loss = L.calendar_nll(out.logits, lv, ev)
            else:
                loss = L.discrete_time_nll(out.logits, lv, ev, out.visit_mask)
            return loss, {"nll": float(loss.detach())}
        if self.loss == "cox":
            loss = cox.cox_partial_likelihood(cox.cox_log_risk(out.logits, out.visit_mask), lv, ev)
            return loss, {"cox": float(loss.detach())}
        lam = self.lambda_at(epoch) if self.loss == "hybrid" else 1.0
        total, parts = L.hybrid_survival_loss(
            out.logits,
            lv,
            ev,
            out.visit_mask,
            lambda_nll=1.0 if self.loss == "hybrid" else 0.0,
            lambda_rank=lam,
            rank_loss=self.rank_loss,
            margin=self.margin,
            risk_score=self.risk_score,
            risk_k=self.risk_k,
            risk_n=self.risk_n,
        )
        comps = {k: float(v.detach()) for k, v in parts.items() if k != "total"}
        if self.loss == "hybrid":
            comps["lambda_rank"] = lam
        return total, comps


@dataclass
class PretrainTask:
    """MLM and/or next-visit prediction on a flat batch that carries ``mlm_labels``.

    The NVP targets are built from the *unmasked* codes (masked positions restored from the MLM
    labels), so the MLM corruption never leaks into the NVP targets.
    """

    objective: PretrainObjective = "joint"
    vocab_size: int = 0
    mlm_weight: float = 1.0
    nvp_weight: float = 1.0

    def __call__(
        self, forward: Forward, module: nn.Module, batch: Mapping[str, Tensor], epoch: int = 0
    ) -> tuple[Tensor, dict[str, float]]:
        del epoch
        out = forward(**select_inputs(module, batch))
        mlm = nvp = None
        if self.objective in ("mlm", "joint"):
            mlm = P.mlm_loss(out.mlm_logits, batch[S.MLM_LABELS])
        if self.objective in ("nvp", "joint"):
            labels = batch.get(S.MLM_LABELS)
            codes = batch[S.CODES]
            if labels is not None:
                codes = codes.where(labels == S.IGNORE_INDEX, labels)
            targets, valid = P.build_nvp_targets(
                codes,
                batch[S.VISIT_IDS],
                batch[S.ATTENTION_MASK],
                self.vocab_size,
                num_visit_slots=out.nvp_logits.shape[1],
            )
            nvp = P.nvp_loss(out.nvp_logits, targets, valid)
        total, parts = P.joint_pretraining_loss(mlm, nvp, self.mlm_weight, self.nvp_weight)
        return total, {k: float(v.detach()) for k, v in parts.items() if k != "total"}


def build_task(spec: JobSpec, mode: str, vocab_size: int) -> SurvivalTask | PretrainTask:
    """The task a ``mode`` (``finetune`` or ``pretrain``) run of ``spec`` trains (the Ray worker
    and the throughput bench's plain loop build it here, so both train the same loss)."""
    if mode == "finetune":
        f = spec.finetune
        return SurvivalTask(
            loss=f.loss,
            lambda_rank=f.lambda_rank,
            curriculum_epochs=f.curriculum_epochs,
            margin=f.margin,
            rank_loss=f.rank_loss,
            risk_score=f.risk_score,
            risk_k=f.risk_k,
            risk_n=f.risk_n,
            time_field=S.BIN if spec.task.axis == "calendar" else S.LAST_VISIT,
        )
    p = spec.pretrain
    return PretrainTask(p.objective, vocab_size, p.mlm_weight, p.nvp_weight)
