"""Small task heads and the visit aggregation they sit on.

- :func:`aggregate_visits`: vectorised ``scatter_add`` masked mean of token states per visit
  (docs/survival.md); padding never reaches visit 0 because pad tokens are masked before the sum.
- :class:`AttentionVisitPooling`: learned attention pooling per visit (a segment softmax).
- :class:`HazardHead`: per-visit hazard logit MLP (docs/survival.md), logits not probabilities.
- :class:`MLMHead` / :class:`NVPHead`: ``Linear -> GELU -> LayerNorm -> Linear(|V|)``.
- :class:`BEHRTPretraining`: encoder + MLM and next-visit heads, returns
  :class:`~ehrsurv_dist.outputs.PretrainingOutput`.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots, ``D`` hidden, ``|V|`` vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.models.behrt import BEHRTEncoder, init_weights
from ehrsurv_dist.models.config import BEHRTConfig
from ehrsurv_dist.models.embeddings import require_vocab_size
from ehrsurv_dist.outputs import PretrainingOutput
from ehrsurv_dist.schema import AGES, ATTENTION_MASK, CODES, VISIT_IDS
from ehrsurv_dist.tensors import visit_slots


def aggregate_visits(
    hidden: Tensor,
    visit_ids: Tensor,
    attention_mask: Tensor,
    num_visit_slots: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Masked mean of token states per visit with ``scatter_add`` (O(B L D), no loops).

    ``visits[b, t] = sum_i 1[v_bi = t] m_bi H_bi / sum_i 1[v_bi = t] m_bi``.

    Args:
        hidden: float [B, L, D].
        visit_ids: int64 [B, L].
        attention_mask: bool [B, L].
        num_visit_slots: fixed V (default: dynamic, see :func:`~ehrsurv_dist.tensors.visit_slots`).

    Returns:
        ``(visits, visit_mask)``: float [B, V, D] (0 on empty slots) and bool [B, V].
    """
    B, L, D = hidden.shape
    index, V = visit_slots(visit_ids, attention_mask, num_visit_slots)
    m = attention_mask.to(hidden.dtype)  # [B, L]
    masked = hidden * m[:, :, None]  # pads contribute exactly 0 (pad visit id is 0)
    sums = hidden.new_zeros(B, V, D).scatter_add_(1, index[:, :, None].expand(-1, -1, D), masked)
    counts = hidden.new_zeros(B, V).scatter_add_(1, index, m)  # [B, V]
    visits = sums / counts.clamp(min=1.0)[:, :, None]
    return visits, counts > 0


class AttentionVisitPooling(nn.Module):
    """Attention pooling of token states per visit: ``s_i = q . tanh(W h_i)``, softmax per visit.

    A single learned query ``q``; the softmax runs over the real tokens of each visit only
    (a segment softmax built with ``scatter_reduce``/``scatter_add``). Empty visit slots give 0.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(
        self,
        hidden: Tensor,
        visit_ids: Tensor,
        attention_mask: Tensor,
        num_visit_slots: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Args/returns as :func:`aggregate_visits`."""
        B, L, D = hidden.shape
        index, V = visit_slots(visit_ids, attention_mask, num_visit_slots)
        # in hidden's dtype: under autocast the projection is half precision, the sums are not
        scores = (torch.tanh(self.proj(hidden)) @ self.query).to(hidden.dtype)  # [B, L]
        scores = scores.masked_fill(~attention_mask, float("-inf"))
        # Per-visit max for a stable softmax; -inf for empty slots is replaced by 0 so that
        # "-inf - max" never becomes NaN. The max is a constant shift: no gradient needed.
        vmax = torch.full((B, V), float("-inf"), dtype=scores.dtype, device=scores.device)
        vmax = vmax.scatter_reduce(1, index, scores.detach(), reduce="amax")  # [B, V]
        vmax = torch.where(torch.isfinite(vmax), vmax, torch.zeros_like(vmax))
        e = torch.exp(scores - vmax.gather(1, index))  # [B, L], exactly 0 on padding
        denom = hidden.new_zeros(B, V).scatter_add_(1, index, e)  # [B, V]
        alpha = e / denom.gather(1, index).clamp(min=torch.finfo(e.dtype).tiny)  # [B, L]
        weighted = hidden * alpha[:, :, None]  # [B, L, D]
        visits = hidden.new_zeros(B, V, D).scatter_add_(
            1, index[:, :, None].expand(-1, -1, D), weighted
        )
        counts = hidden.new_zeros(B, V).scatter_add_(1, index, attention_mask.to(hidden.dtype))
        return visits, counts > 0


class HazardHead(nn.Module):
    """Per-visit hazard logit: ``Linear -> LayerNorm -> GELU -> Dropout -> Linear(1)``.

    Returns logits; ``h = sigmoid(logit)``. Logits on slots that are not real visits are set to 0
    and must be ignored (use the visit mask).
    """

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, 1)

    def forward(self, visits: Tensor, visit_mask: Tensor) -> Tensor:
        """Args: visits [B, V, D]; visit_mask bool [B, V]. Returns: logits [B, V], at least
        float32 (under autocast the last Linear runs in half precision; curves and losses need
        float32 cumulative sums)."""
        x = self.dropout(F.gelu(self.norm(self.fc1(visits))))
        logits = self.fc2(x).squeeze(-1)  # [B, V, 1] -> [B, V]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits.masked_fill(~visit_mask, 0.0)


def pool_patient(hidden: Tensor, attention_mask: Tensor, mode: str = "mean") -> Tensor:
    """One vector per patient (docs/models.md): ``first`` token, masked ``mean`` or masked ``max``.

    Args:
        hidden: [B, L, D].
        attention_mask: bool [B, L].
        mode: ``first`` (the seed's "cls": the first real token, there is no CLS token),
            ``mean`` or ``max``.

    Returns:
        [B, D]; 0 for a patient without real tokens.
    """
    m = attention_mask[:, :, None]  # [B, L, 1]
    if mode == "first":
        return hidden[:, 0] * attention_mask[:, :1].to(hidden.dtype)
    if mode == "mean":
        total = (hidden * m.to(hidden.dtype)).sum(1)
        return total / m.sum(1).clamp(min=1).to(hidden.dtype)
    if mode == "max":
        out = hidden.masked_fill(~m, float("-inf")).amax(1)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))
    raise ValueError(f"mode must be 'first', 'mean' or 'max', got {mode!r}")


class MLMHead(nn.Module):
    """``Linear(D, D) -> GELU -> LayerNorm -> Linear(D, |V|)``, optionally tied to the codes.

    With ``tied_embedding`` the output matrix *is* the code embedding weight (shared Parameter);
    the head keeps its own output bias.
    """

    def __init__(
        self, hidden_dim: int, vocab_size: int, tied_embedding: nn.Embedding | None = None
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        if tied_embedding is not None:
            if tuple(tied_embedding.weight.shape) != (vocab_size, hidden_dim):
                raise ValueError(
                    "tied_embedding must have shape (vocab_size, hidden_dim) = "
                    f"{(vocab_size, hidden_dim)}, got {tuple(tied_embedding.weight.shape)}"
                )
            self.decoder.weight = tied_embedding.weight

    def forward(self, hidden: Tensor) -> Tensor:
        """Args: hidden [..., D]. Returns: logits [..., |V|]."""
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


class NVPHead(MLMHead):
    """Next-visit head: same structure as the MLM head, applied to visit states [B, V, D]."""


class BEHRTPretraining(nn.Module):
    """BEHRT encoder with an MLM head and a next-visit-prediction head (docs/models.md).

    NVP is trained at every visit in one pass (docs/design.md §3): the masked-mean state of visit t,
    which under ``visit_causal`` attention has seen visits <= t only, predicts the multi-hot codes
    of visit t + 1. With ``bidirectional`` attention visit t would see visit t + 1, so NVP is
    refused in that mode.
    """

    input_fields: ClassVar[tuple[str, ...]] = (CODES, AGES, VISIT_IDS, ATTENTION_MASK)

    def __init__(self, cfg: BEHRTConfig, *, mlm: bool = True, nvp: bool = True) -> None:
        super().__init__()
        vocab_size = require_vocab_size(cfg)
        if not (mlm or nvp):
            raise ValueError("at least one of mlm and nvp must be True")
        if nvp and cfg.attention != "visit_causal":
            raise ValueError(
                "nvp=True needs attention='visit_causal': with bidirectional attention the state "
                "of visit t sees visit t + 1, the target"
            )
        self.encoder = BEHRTEncoder(cfg)
        tied = self.encoder.embeddings.code_embedding if cfg.tie_mlm_weights else None
        self.mlm_head: MLMHead | None = MLMHead(cfg.hidden_dim, vocab_size, tied) if mlm else None
        self.nvp_head: NVPHead | None = NVPHead(cfg.hidden_dim, vocab_size) if nvp else None
        if self.mlm_head is not None:
            init_weights(self.mlm_head.dense)
            if tied is None:
                init_weights(self.mlm_head.decoder)
            else:  # the weight is the (already initialised) code embedding
                nn.init.zeros_(self.mlm_head.decoder.bias)
        if self.nvp_head is not None:
            self.nvp_head.apply(init_weights)

    def forward(self, *, num_visit_slots: int | None = None, **inputs: Tensor) -> PretrainingOutput:
        """MLM logits per token and next-visit logits per visit.

        Args:
            num_visit_slots: fixed V (default: dynamic, see :func:`aggregate_visits`).
            **inputs: the ``input_fields`` by name, as
                :meth:`~ehrsurv_dist.models.behrt.BEHRTEncoder.forward` reads them (the encoder
                is the one place that spells them out); ``codes`` already MLM-masked.

        Returns:
            :class:`~ehrsurv_dist.outputs.PretrainingOutput`.
        """
        hidden = self.encoder(**inputs)  # [B, L, D]
        visit_ids, attention_mask = inputs[VISIT_IDS], inputs[ATTENTION_MASK]
        visits, visit_mask = aggregate_visits(hidden, visit_ids, attention_mask, num_visit_slots)
        return PretrainingOutput(
            hidden_states=hidden,
            mlm_logits=self.mlm_head(hidden) if self.mlm_head is not None else None,
            nvp_logits=self.nvp_head(visits) if self.nvp_head is not None else None,
            visit_mask=visit_mask,
        )
