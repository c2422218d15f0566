"""The flat BEHRT encoder: embeddings -> Pre-LN transformer blocks -> final LayerNorm.

Reads top to bottom: the attention mask (docs/design.md §3), attention with explicit q/k/v/o Linear
layers (so that LoRA really sits on the forward path), the feed-forward, the block, the encoder.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``D`` hidden, ``H`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.models.config import ATTENTION_MODES, BEHRTConfig
from ehrsurv_dist.models.embeddings import BEHRTEmbeddings, require_vocab_size
from ehrsurv_dist.tensors import check_codes, check_shape, check_tensor


def build_attention_mask(group_ids: Tensor, valid: Tensor, mode: str) -> Tensor:
    """Boolean mask for ``scaled_dot_product_attention`` (True = may attend).

    ``visit_causal``: query i attends to key j iff j is real and ``group_ids[j] <= group_ids[i]``
    (a token of visit t sees every token of visits <= t). ``bidirectional``: iff j is real.

    A query that is not real attends to itself only, so that no row of the mask is empty (an
    empty row makes the softmax NaN) and padding never feeds a real position. Outputs at padded
    positions are meaningless and are zeroed by the caller.

    Args:
        group_ids: int64 [B, N], the visit index of each position (tokens or visits).
        valid: bool [B, N], True = real position.
        mode: ``visit_causal`` or ``bidirectional``.

    Returns:
        bool [B, 1, N, N], broadcast over heads.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    N = valid.shape[1]
    allowed = valid[:, None, :].expand(-1, N, -1)  # [B, N(query), N(key)]
    if mode == "visit_causal":
        allowed = allowed & (group_ids[:, None, :] <= group_ids[:, :, None])
    eye = torch.eye(N, dtype=torch.bool, device=valid.device)
    real_query = valid[:, :, None]  # [B, N, 1]
    allowed = (allowed & real_query) | (eye[None, :, :] & ~real_query)
    return allowed[:, None, :, :]  # [B, 1, N, N]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with explicit ``q``, ``k``, ``v``, ``o`` projections."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Args: x [B, L, D]; mask bool [B, 1, L, L]. Returns: [B, L, D]."""
        B, L, D = x.shape
        H = self.num_heads
        # [B, L, D] -> [B, L, H, D/H] -> [B, H, L, D/H]
        q = self.q(x).view(B, L, H, D // H).transpose(1, 2)
        k = self.k(x).view(B, L, H, D // H).transpose(1, 2)
        v = self.v(x).view(B, L, H, D // H).transpose(1, 2)
        dropout_p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, L, D)  # [B, H, L, D/H] -> [B, L, D]
        return self.o(y)


class FeedForward(nn.Module):
    """``fc1 -> GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x [B, L, D]. Returns: [B, L, D]."""
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + drop(attn(ln1(x)))`` then ``x + drop(ffn(ln2(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attention_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Args: x [B, L, D]; mask bool [B, 1, L, L]. Returns: [B, L, D]."""
        x = x + self.dropout(self.attn(self.ln1(x), mask))
        return x + self.dropout(self.ffn(self.ln2(x)))


def init_weights(module: nn.Module) -> None:
    """BERT-style init: Linear/Embedding ~ N(0, 0.02), zero biases, zero padding rows."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def validate_flat_inputs(
    codes: Tensor, ages: Tensor, visit_ids: Tensor, attention_mask: Tensor, vocab_size: int
) -> None:
    """Check the flat batch contract of ``schema.FLAT_FIELDS``.

    Raises:
        ValueError: naming the argument with the wrong type, rank, dtype, shape or range.
    """
    check_tensor(codes, "codes", ndim=2, dtype=torch.int64)
    check_tensor(ages, "ages", ndim=2, floating=True)
    check_tensor(visit_ids, "visit_ids", ndim=2, dtype=torch.int64)
    check_tensor(attention_mask, "attention_mask", ndim=2, dtype=torch.bool)
    for name, t in (("ages", ages), ("visit_ids", visit_ids), ("attention_mask", attention_mask)):
        check_shape(t, name, codes.shape, "codes shape")
    check_codes(codes, vocab_size)
    if codes.numel() > 0 and int(visit_ids.min()) < 0:
        raise ValueError("visit_ids must be >= 0")


class BEHRTEncoder(nn.Module):
    """Flat BEHRT encoder (docs/models.md) with visit-causal or bidirectional attention."""

    def __init__(self, cfg: BEHRTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = require_vocab_size(cfg)
        self.attention = cfg.attention
        self.embeddings = BEHRTEmbeddings(cfg)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                cfg.hidden_dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout
            )
            for _ in range(cfg.num_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.hidden_dim)
        self.apply(init_weights)

    def forward(
        self,
        codes: Tensor,
        ages: Tensor,
        visit_ids: Tensor,
        attention_mask: Tensor,
        extra_embedding: Tensor | None = None,
    ) -> Tensor:
        """Contextual token states.

        Args:
            codes: int64 [B, L], PAD_ID on padding.
            ages: float [B, L], years.
            visit_ids: int64 [B, L], 0-based visit index; any value on padding.
            attention_mask: bool [B, L], True = real token (the only validity source).
            extra_embedding: optional [B, L, embedding_dim] added beside the age embedding
                (the calendar axis's time before the prediction); None = the visit axis.

        Returns:
            [B, L, D]; exactly 0 at padded positions.

        Raises:
            ValueError: on a malformed batch or L > max_position.
        """
        validate_flat_inputs(codes, ages, visit_ids, attention_mask, self.vocab_size)
        visit_ids = visit_ids.masked_fill(~attention_mask, 0)  # pads: visit 0, never trusted
        if extra_embedding is not None:
            check_shape(
                extra_embedding,
                "extra_embedding",
                (*codes.shape, self.cfg.embedding_dim),
                "(B, L, embedding_dim) =",
            )
        x = self.embeddings(codes, ages, visit_ids, extra_embedding)  # [B, L, D]
        mask = build_attention_mask(visit_ids, attention_mask, self.attention)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) * attention_mask[:, :, None].to(x.dtype)
