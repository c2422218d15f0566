"""Flat BEHRT survival model, and :func:`select_inputs` that feeds every model its batch fields.

``BEHRTSurvival``: encoder (B, L, D) -> per-visit aggregation (B, V, D) -> hazard head -> per-visit
logits (B, V). The hierarchical BEHRT and the LSTM baseline return the same
:class:`~ehrsurv_dist.outputs.SurvivalOutput`, and each
model names the batch fields it reads in ``input_fields``, so that one training and evaluation
path serves all three (:func:`select_inputs`).

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots, ``D`` hidden.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ehrsurv_dist.models.behrt import BEHRTEncoder, init_weights
from ehrsurv_dist.models.calendar import (
    CalendarHead,
    TimeBeforePrediction,
    attach_calendar_head,
    calendar_output,
    check_prediction_age,
    days_before_prediction,
    last_visit_state,
)
from ehrsurv_dist.models.config import BEHRTConfig
from ehrsurv_dist.models.heads import AttentionVisitPooling, HazardHead, aggregate_visits
from ehrsurv_dist.outputs import SurvivalOutput
from ehrsurv_dist.schema import AGES, ATTENTION_MASK, CODES, VISIT_IDS


def select_inputs(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch fields a survival model reads (``model.input_fields``), as keyword arguments.

    Unwraps ``.module`` (DistributedDataParallel, DeepSpeed engines).

    Raises:
        ValueError: if the model has no ``input_fields`` or the batch lacks one of them.
    """
    inner = getattr(model, "module", model)
    fields: tuple[str, ...] | None = getattr(inner, "input_fields", None)
    if fields is None:
        raise ValueError(f"model {type(inner).__name__} has no input_fields")
    missing = [f for f in fields if f not in batch]
    if missing:
        raise ValueError(f"batch is missing fields {missing} needed by {type(inner).__name__}")
    return {f: batch[f] for f in fields}


class BEHRTSurvival(nn.Module):
    """Flat BEHRT + visit aggregation + hazard head (docs/survival.md), logits out.

    With ``cfg.num_bins = K > 0`` (the calendar axis, ``models/calendar.py``): ``prediction_age``
    is an input, the days before the prediction time of every token are embedded beside the age
    embedding (``before_prediction``), and ``calendar_head`` maps the state of the last real
    visit to K bin logits; there is then no per-visit ``head``.
    """

    # calendar axis only (``attach_calendar_head``): typed here for the type checker
    before_prediction: TimeBeforePrediction
    calendar_head: CalendarHead

    input_fields: tuple[str, ...] = (CODES, AGES, VISIT_IDS, ATTENTION_MASK)

    def __init__(self, cfg: BEHRTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = BEHRTEncoder(cfg)
        self.pooling: AttentionVisitPooling | None = (
            AttentionVisitPooling(cfg.hidden_dim) if cfg.visit_pooling == "attention" else None
        )
        if cfg.num_bins == 0:
            self.head = HazardHead(cfg.hidden_dim, cfg.head_dim, cfg.head_dropout)
            self.head.apply(init_weights)
        if self.pooling is not None:
            init_weights(self.pooling.proj)
        if cfg.num_bins > 0:
            attach_calendar_head(
                self,
                time_dim=cfg.embedding_dim,
                in_dim=cfg.hidden_dim,
                head_dim=cfg.head_dim,
                num_bins=cfg.num_bins,
                dropout=cfg.head_dropout,
            )

    def forward(
        self,
        codes: Tensor,
        ages: Tensor,
        visit_ids: Tensor,
        attention_mask: Tensor,
        num_visit_slots: int | None = None,
        return_visit_embeddings: bool = False,
        prediction_age: Tensor | None = None,
    ) -> SurvivalOutput:
        """Per-visit hazard logits (visit axis) or K bin logits (calendar axis).

        Args:
            codes: int64 [B, L].
            ages: float [B, L].
            visit_ids: int64 [B, L].
            attention_mask: bool [B, L], True = real token.
            num_visit_slots: fixed V; default ``max real visit id + 1`` over the batch.
            return_visit_embeddings: also return the [B, V, D] visit states.
            prediction_age: float [B], years at the prediction time; required exactly when
                ``num_bins > 0``.

        Returns:
            :class:`SurvivalOutput` with logits [B, V] and visit_mask [B, V]; with
            ``num_bins = K > 0``, logits [B, K] and an all-True visit_mask [B, K].
        """
        extra = None
        if self.cfg.num_bins > 0:
            prediction_age = check_prediction_age(prediction_age, codes.shape[0], self.cfg.num_bins)
            days = days_before_prediction(prediction_age, ages, attention_mask)  # [B, L]
            extra = self.before_prediction(days, attention_mask)  # [B, L, E]
        elif prediction_age is not None:
            check_prediction_age(prediction_age, codes.shape[0], 0)
        hidden = self.encoder(codes, ages, visit_ids, attention_mask, extra)  # [B, L, D]
        if self.pooling is None:
            visits, visit_mask = aggregate_visits(
                hidden, visit_ids, attention_mask, num_visit_slots
            )
        else:
            visits, visit_mask = self.pooling(hidden, visit_ids, attention_mask, num_visit_slots)
        if self.cfg.num_bins > 0:
            logits = self.calendar_head(last_visit_state(visits, visit_mask))  # [B, K]
            return calendar_output(logits, visits if return_visit_embeddings else None)
        logits = self.head(visits, visit_mask)  # [B, V]
        return SurvivalOutput(
            logits=logits,
            visit_mask=visit_mask,
            visit_embeddings=visits if return_visit_embeddings else None,
        )
