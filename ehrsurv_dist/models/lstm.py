"""LSTM baseline (docs/models.md): visit = masked mean of code embeddings, unidirectional LSTM.

Past-only by construction (the LSTM runs forward in visit order), so trailing padded visits cannot
change earlier hazards and no packing is needed. Uses the same hazard head and
:class:`~ehrsurv_dist.models.survival.SurvivalOutput` as the transformers (the seed's LSTM head was
``Linear -> ReLU -> Dropout -> Linear``; the shared head keeps the comparison about the encoder).

Shape vocabulary: ``B`` batch, ``V`` visit slots, ``C`` code slots per visit, ``D`` hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrsurv_dist.models.behrt import init_weights
from ehrsurv_dist.models.calendar import (
    CalendarHead,
    TimeBeforePrediction,
    attach_calendar_head,
    calendar_output,
    check_prediction_age,
    days_before_prediction,
    last_visit_state,
)
from ehrsurv_dist.models.config import LSTMConfig
from ehrsurv_dist.models.embeddings import require_vocab_size
from ehrsurv_dist.models.heads import HazardHead
from ehrsurv_dist.models.hierarchical import masked_mean
from ehrsurv_dist.outputs import SurvivalOutput
from ehrsurv_dist.schema import AGES, CODE_MASK, CODES, PAD_ID, PREDICTION_AGE, VISIT_MASK
from ehrsurv_dist.tensors import check_codes, check_shape, check_tensor


class LSTMSurvival(nn.Module):
    """Embedding -> masked mean per visit -> LSTM -> dropout -> hazard head (logits).

    With ``cfg.num_bins = K > 0`` (the calendar axis, ``models/calendar.py``): ``ages`` [B, V] and
    ``prediction_age`` are inputs, each visit's days before the prediction time are embedded and
    added to its code mean before the LSTM (``before_prediction``; the LSTM has no age
    embedding), and ``calendar_head`` maps the LSTM state of the last real visit to K bin logits;
    there is then no per-visit ``head``.
    """

    # calendar axis only (``attach_calendar_head``): typed here for the type checker
    before_prediction: TimeBeforePrediction
    calendar_head: CalendarHead

    input_fields: tuple[str, ...] = (CODES, CODE_MASK, VISIT_MASK)

    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = require_vocab_size(cfg)
        self.code_embedding = nn.Embedding(self.vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        self.encoder = nn.LSTM(
            cfg.embedding_dim,
            cfg.hidden_dim,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.num_bins == 0:
            self.head = HazardHead(cfg.hidden_dim, cfg.head_dim, cfg.head_dropout)
        init_weights(self.code_embedding)
        if cfg.num_bins == 0:
            self.head.apply(init_weights)
        else:
            attach_calendar_head(
                self,
                time_dim=cfg.embedding_dim,
                in_dim=cfg.hidden_dim,
                head_dim=cfg.head_dim,
                num_bins=cfg.num_bins,
                dropout=cfg.head_dropout,
                fields=(AGES, PREDICTION_AGE),
            )

    def forward(
        self,
        codes: Tensor,
        code_mask: Tensor,
        visit_mask: Tensor,
        return_visit_embeddings: bool = False,
        ages: Tensor | None = None,
        prediction_age: Tensor | None = None,
    ) -> SurvivalOutput:
        """Per-visit hazard logits (visit axis) or K bin logits (calendar axis).

        Args:
            codes: int64 [B, V, C].
            code_mask: bool [B, V, C].
            visit_mask: bool [B, V].
            return_visit_embeddings: also return the [B, V, D] LSTM states.
            ages: float [B, V], years at each visit; read only when ``num_bins > 0``.
            prediction_age: float [B], years at the prediction time; required exactly when
                ``num_bins > 0``.

        Returns:
            :class:`SurvivalOutput` with logits [B, V] and the input visit_mask; with
            ``num_bins = K > 0``, logits [B, K] and an all-True visit_mask [B, K].

        Raises:
            ValueError: naming the argument with the wrong type, rank, dtype, shape or range.
        """
        check_tensor(codes, "codes", ndim=3, dtype=torch.int64)
        check_tensor(code_mask, "code_mask", ndim=3, dtype=torch.bool)
        check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
        check_shape(code_mask, "code_mask", codes.shape, "codes shape")
        check_shape(visit_mask, "visit_mask", codes.shape[:2], "(B, V) =")
        check_codes(codes, self.vocab_size)
        code_mask = code_mask & visit_mask[:, :, None]
        u = masked_mean(self.code_embedding(codes), code_mask)  # [B, V, E]
        if self.cfg.num_bins > 0:
            B = codes.shape[0]
            prediction_age = check_prediction_age(prediction_age, B, self.cfg.num_bins)
            if ages is None:
                raise ValueError(f"ages is required with num_bins={self.cfg.num_bins} > 0")
            check_tensor(ages, "ages", ndim=2, floating=True)
            check_shape(ages, "ages", codes.shape[:2], "(B, V) =")
            days = days_before_prediction(prediction_age, ages, visit_mask)  # [B, V]
            u = u + self.before_prediction(days, visit_mask)  # [B, V, E]
        elif prediction_age is not None:
            check_prediction_age(prediction_age, codes.shape[0], 0)
        z, _ = self.encoder(u)  # [B, V, D]
        z = self.dropout(z) * visit_mask[:, :, None].to(z.dtype)
        if self.cfg.num_bins > 0:
            logits = self.calendar_head(last_visit_state(z, visit_mask))  # [B, K]
            return calendar_output(logits, z if return_visit_embeddings else None)
        return SurvivalOutput(
            logits=self.head(z, visit_mask),
            visit_mask=visit_mask,
            visit_embeddings=z if return_visit_embeddings else None,
        )
