"""Hierarchical BEHRT (docs/models.md): codes -> visit vectors -> visit timeline -> hazards.

Stage A (within a visit): ``e_vk = LayerNorm(E_code[c_vk] + E_pos[k])``, then attention pooling
``s_k = q . tanh(W e_k)``, softmax over the visit's real codes (all-pad visits give 0, no NaN), or
a masked mean. Stage B (across visits): ``x_v = LayerNorm(u_v + E_vpos[v] + E_age[bin(a_v)] +
E_dt[bin(dt_v)])``, then the same Pre-LN blocks as the flat encoder over visits, with visit v
attending to visits <= v (``visit_causal``) or to every real visit (``bidirectional``). The hazard
head and the :class:`~ehrsurv_dist.models.survival.SurvivalOutput` contract are shared.

Shape vocabulary: ``B`` batch, ``V`` visit slots, ``C`` code slots per visit, ``D`` hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ehrsurv_dist.models.behrt import TransformerBlock, build_attention_mask, init_weights
from ehrsurv_dist.models.calendar import (
    CalendarHead,
    TimeBeforePrediction,
    attach_calendar_head,
    calendar_output,
    check_prediction_age,
    days_before_prediction,
    last_visit_state,
)
from ehrsurv_dist.models.config import HierarchicalConfig
from ehrsurv_dist.models.embeddings import BinnedEmbedding, require_vocab_size
from ehrsurv_dist.models.heads import HazardHead
from ehrsurv_dist.outputs import SurvivalOutput
from ehrsurv_dist.schema import (
    AGES,
    CODE_MASK,
    CODES,
    PAD_ID,
    TIME_DELTAS,
    VISIT_MASK,
)
from ehrsurv_dist.tensors import check_codes, check_shape, check_tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim -2 of ``x`` [..., C, D] restricted to ``mask`` [..., C]; 0 when empty."""
    m = mask.to(x.dtype)[..., None]  # [..., C, 1]
    return (x * m).sum(-2) / m.sum(-2).clamp(min=1.0)


class MaskedAttentionPooling(nn.Module):
    """``u = sum_k alpha_k e_k`` with ``alpha = softmax_k(q . tanh(W e_k))`` over real codes.

    NaN guard: a group whose codes are all padding gets scores 0 before the softmax and its
    weights are then multiplied by the mask, so it pools to an exact 0 vector.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Args: x [..., C, D]; mask bool [..., C]. Returns: [..., D]."""
        scores = torch.tanh(self.proj(x)) @ self.query  # [..., C]
        scores = scores.masked_fill(~mask, float("-inf"))
        scores = scores.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # all-pad guard
        alpha = torch.softmax(scores, dim=-1) * mask.to(x.dtype)  # [..., C]
        return (alpha[..., None] * x).sum(-2)


class CodeEmbeddings(nn.Module):
    """``LayerNorm(E_code[c] + E_pos[k]) -> Dropout`` for codes [B, V, C]."""

    def __init__(self, vocab_size: int, dim: int, max_codes_per_visit: int, dropout: float):
        super().__init__()
        self.max_codes_per_visit = max_codes_per_visit
        self.code_embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position_embedding = nn.Embedding(max_codes_per_visit, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, codes: Tensor) -> Tensor:
        """Args: codes int64 [B, V, C]. Returns: [B, V, C, D]."""
        C = codes.shape[-1]
        pos = self.position_embedding(torch.arange(C, device=codes.device))  # [C, D]
        return self.dropout(self.norm(self.code_embedding(codes) + pos))


class VisitTimeEmbeddings(nn.Module):
    """``LayerNorm(u_v + E_vpos[v] + E_age[bin(a_v)] + E_dt[bin(dt_v)]) -> Dropout``."""

    def __init__(self, cfg: HierarchicalConfig) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.position_embedding = nn.Embedding(cfg.max_visits, d)
        self.age_embedding = BinnedEmbedding(cfg.max_age, cfg.age_bin_size, d)
        self.time_embedding = BinnedEmbedding(cfg.max_time_delta, cfg.time_bin_size, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, visits: Tensor, ages: Tensor, time_deltas: Tensor, extra: Tensor | None = None
    ) -> Tensor:
        """Args: visits [B, V, D]; ages [B, V] years; time_deltas [B, V] days; extra optional
        [B, V, D] added before the LayerNorm (the calendar axis's time before the prediction).
        Returns: [B, V, D]."""
        V = visits.shape[1]
        pos = self.position_embedding(torch.arange(V, device=visits.device))  # [V, D]
        x = visits + pos + self.age_embedding(ages) + self.time_embedding(time_deltas)
        if extra is not None:
            x = x + extra
        return self.dropout(self.norm(x))


def validate_hierarchical_inputs(
    codes: Tensor,
    ages: Tensor,
    time_deltas: Tensor,
    code_mask: Tensor,
    visit_mask: Tensor,
    *,
    vocab_size: int,
    max_visits: int,
    max_codes_per_visit: int,
) -> None:
    """Check the hierarchical batch contract of ``schema.HIERARCHICAL_FIELDS``.

    Raises:
        ValueError: naming the argument with the wrong type, rank, dtype, shape or range.
    """
    check_tensor(codes, "codes", ndim=3, dtype=torch.int64)
    check_tensor(ages, "ages", ndim=2, floating=True)
    check_tensor(time_deltas, "time_deltas", ndim=2, floating=True)
    check_tensor(code_mask, "code_mask", ndim=3, dtype=torch.bool)
    check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
    _, V, C = codes.shape
    check_shape(code_mask, "code_mask", codes.shape, "codes shape")
    for name, t in (("ages", ages), ("time_deltas", time_deltas), ("visit_mask", visit_mask)):
        check_shape(t, name, codes.shape[:2], "(B, V) =")
    if V > max_visits:
        raise ValueError(f"codes has V={V} visit slots > max_visits={max_visits}")
    if C > max_codes_per_visit:
        raise ValueError(f"codes has C={C} code slots > max_codes_per_visit={max_codes_per_visit}")
    check_codes(codes, vocab_size)


class HierarchicalEncoder(nn.Module):
    """Codes [B, V, C] -> contextual visit states [B, V, D] (0 on padded visits)."""

    def __init__(self, cfg: HierarchicalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = require_vocab_size(cfg)
        d = cfg.hidden_dim
        self.code_embeddings = CodeEmbeddings(
            self.vocab_size, d, cfg.max_codes_per_visit, cfg.dropout
        )
        self.visit_pooling: MaskedAttentionPooling | None = (
            MaskedAttentionPooling(d) if cfg.visit_pooling == "attention" else None
        )
        self.visit_embeddings = VisitTimeEmbeddings(cfg)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout)
            for _ in range(cfg.num_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.apply(init_weights)

    def forward(
        self,
        codes: Tensor,
        ages: Tensor,
        time_deltas: Tensor,
        code_mask: Tensor,
        visit_mask: Tensor,
        extra_embedding: Tensor | None = None,
    ) -> Tensor:
        """Contextual visit states.

        Args:
            codes: int64 [B, V, C], PAD_ID on padding.
            ages: float [B, V], years.
            time_deltas: float [B, V], days since the previous visit (0 for the first).
            code_mask: bool [B, V, C], True = real code.
            visit_mask: bool [B, V], True = real visit slot (the visit validity source).
            extra_embedding: optional [B, V, D] added beside the age embedding (the calendar
                axis's time before the prediction); None = the visit axis.

        Returns:
            [B, V, D], exactly 0 on padded visit slots.

        Raises:
            ValueError: on a malformed batch (see :func:`validate_hierarchical_inputs`).
        """
        validate_hierarchical_inputs(
            codes,
            ages,
            time_deltas,
            code_mask,
            visit_mask,
            vocab_size=self.vocab_size,
            max_visits=self.cfg.max_visits,
            max_codes_per_visit=self.cfg.max_codes_per_visit,
        )
        B, V, _ = codes.shape
        code_mask = code_mask & visit_mask[:, :, None]  # a code counts only in a real visit
        e = self.code_embeddings(codes)  # [B, V, C, D]
        if self.visit_pooling is not None:
            u = self.visit_pooling(e, code_mask)  # [B, V, D]
        else:
            u = masked_mean(e, code_mask)  # [B, V, D]
        if extra_embedding is not None:
            check_shape(
                extra_embedding,
                "extra_embedding",
                (B, V, self.cfg.hidden_dim),
                "(B, V, hidden_dim) =",
            )
        x = self.visit_embeddings(u, ages, time_deltas, extra_embedding)  # [B, V, D]
        order = torch.arange(V, device=codes.device).expand(B, V)  # [B, V]
        mask = build_attention_mask(order, visit_mask, self.cfg.attention)  # [B, 1, V, V]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) * visit_mask[:, :, None].to(x.dtype)


class HierarchicalBEHRTSurvival(nn.Module):
    """Hierarchical BEHRT with the per-visit hazard head; returns :class:`SurvivalOutput`.

    With ``cfg.num_bins = K > 0`` (the calendar axis, ``models/calendar.py``): ``prediction_age``
    is an input, each visit's days before the prediction time are embedded beside its age
    embedding (``before_prediction``), and ``calendar_head`` maps the timeline state of the last
    real visit to K bin logits; there is then no per-visit ``head``.
    """

    # calendar axis only (``attach_calendar_head``): typed here for the type checker
    before_prediction: TimeBeforePrediction
    calendar_head: CalendarHead

    input_fields: tuple[str, ...] = (CODES, AGES, TIME_DELTAS, CODE_MASK, VISIT_MASK)

    def __init__(self, cfg: HierarchicalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = HierarchicalEncoder(cfg)
        if cfg.num_bins == 0:
            self.head = HazardHead(cfg.hidden_dim, cfg.hazard_hidden_dim, cfg.head_dropout)
            self.head.apply(init_weights)
        else:
            attach_calendar_head(
                self,
                time_dim=cfg.hidden_dim,
                in_dim=cfg.hidden_dim,
                head_dim=cfg.hazard_hidden_dim,
                num_bins=cfg.num_bins,
                dropout=cfg.head_dropout,
            )

    def forward(
        self,
        *,
        return_visit_embeddings: bool = False,
        prediction_age: Tensor | None = None,
        **inputs: Tensor,
    ) -> SurvivalOutput:
        """Per-visit hazard logits (visit axis) or K bin logits (calendar axis).

        Args:
            return_visit_embeddings: also return the [B, V, D] timeline states.
            prediction_age: float [B], years at the prediction time; required exactly when
                ``num_bins > 0``.
            **inputs: the other ``input_fields`` by name, as :meth:`HierarchicalEncoder.forward`
                reads them (the encoder is the one place that spells them out).

        Returns:
            :class:`SurvivalOutput` with logits [B, V] and the input visit_mask; with
            ``num_bins = K > 0``, logits [B, K] and an all-True visit_mask [B, K].
        """
        visit_mask = inputs[VISIT_MASK]
        if self.cfg.num_bins > 0:
            B = visit_mask.shape[0]
            prediction_age = check_prediction_age(prediction_age, B, self.cfg.num_bins)
            days = days_before_prediction(prediction_age, inputs[AGES], visit_mask)  # [B, V]
            extra = self.before_prediction(days, visit_mask)  # [B, V, D]
            z = self.encoder(**inputs, extra_embedding=extra)  # [B, V, D]
            logits = self.calendar_head(last_visit_state(z, visit_mask))  # [B, K]
            return calendar_output(logits, z if return_visit_embeddings else None)
        if prediction_age is not None:
            check_prediction_age(prediction_age, visit_mask.shape[0], 0)
        z = self.encoder(**inputs)  # [B, V, D]
        return SurvivalOutput(
            logits=self.head(z, visit_mask),
            visit_mask=visit_mask,
            visit_embeddings=z if return_visit_embeddings else None,
        )
