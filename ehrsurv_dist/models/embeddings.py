"""Input embeddings (docs/models.md): code, binned age, visit id, position, binned time delta.

The flat BEHRT token embedding is additive (BERT-style):
``x_i = E_code[c_i] + E_age[bin(a_i)] + E_visit[v_i] + E_pos[i]``, then LayerNorm, dropout and an
optional Linear projection from ``embedding_dim`` to ``hidden_dim``.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``D`` width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ehrsurv_dist.models.config import BEHRTConfig, HierarchicalConfig, LSTMConfig
from ehrsurv_dist.schema import PAD_ID


def num_bins(max_value: float, bin_size: float) -> int:
    """Bins for values clamped to [0, max_value]: ``max_value // bin_size + 2`` (22 for age)."""
    return int(max_value // bin_size) + 2


class BinnedEmbedding(nn.Module):
    """Embedding of a non-negative real value by fixed-width bins (age in years, Δt in days).

    ``bin = floor(clamp(x, 0, max_value) / bin_size)``; e.g. age 67 with 5-year bins -> 13.
    """

    def __init__(self, max_value: float, bin_size: float, dim: int) -> None:
        super().__init__()
        self.max_value = float(max_value)
        self.bin_size = float(bin_size)
        self.embedding = nn.Embedding(num_bins(max_value, bin_size), dim)

    def bucket(self, x: Tensor) -> Tensor:
        """Bin indices (int64, same shape as ``x``)."""
        x = x.to(torch.float32).clamp(0.0, self.max_value)
        return torch.floor(x / self.bin_size).long()

    def forward(self, x: Tensor) -> Tensor:
        """Args: x float [...]. Returns: [..., D]."""
        return self.embedding(self.bucket(x))


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """Fixed sinusoidal table: ``PE[p, 2i] = sin(p w_i)``, ``PE[p, 2i+1] = cos(p w_i)``.

    ``w_i = 10000^(-2i/dim)``; an odd ``dim`` keeps one more sine column than cosine columns.

    Returns:
        float32 [num_positions, dim].
    """
    pos = torch.arange(num_positions, dtype=torch.float32)[:, None]  # [P, 1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)  # [P, ceil(dim/2)]
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])  # [P, floor(dim/2)]
    return table


def require_vocab_size(cfg: BEHRTConfig | HierarchicalConfig | LSTMConfig) -> int:
    """``cfg.vocab_size``, which the data sets after the vocabulary is fitted.

    Raises:
        ValueError: if it is still None.
    """
    if cfg.vocab_size is None:
        raise ValueError("vocab_size must be set before building a model")
    return cfg.vocab_size


class BEHRTEmbeddings(nn.Module):
    """Code + binned age + visit id + position, LayerNorm, dropout, optional projection.

    Positions are ``arange(L)``; a sequence longer than ``max_position`` is an error (never
    clamped). Visit ids above ``max_visits - 1`` share the last visit row (seed behaviour).
    """

    def __init__(self, cfg: BEHRTConfig) -> None:
        super().__init__()
        vocab_size = require_vocab_size(cfg)
        d = cfg.embedding_dim
        self.max_position = cfg.max_position
        self.max_visits = cfg.max_visits
        self.code_embedding = nn.Embedding(vocab_size, d, padding_idx=PAD_ID)
        self.age_embedding = BinnedEmbedding(cfg.max_age, cfg.age_bin_size, d)
        self.visit_embedding = nn.Embedding(cfg.max_visits, d)
        self.position_embedding: nn.Embedding | None
        if cfg.sinusoidal:
            self.position_embedding = None
            self.register_buffer(
                "position_table", sinusoidal_table(cfg.max_position, d), persistent=False
            )
        else:
            self.position_embedding = nn.Embedding(cfg.max_position, d)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.projection: nn.Module = (
            nn.Linear(d, cfg.hidden_dim) if d != cfg.hidden_dim else nn.Identity()
        )

    def forward(
        self, codes: Tensor, ages: Tensor, visit_ids: Tensor, extra: Tensor | None = None
    ) -> Tensor:
        """Args:
            codes: int64 [B, L].
            ages: float [B, L], years.
            visit_ids: int64 [B, L], >= 0.
            extra: optional [B, L, embedding_dim] added to the sum before the LayerNorm (the
                calendar axis's time before the prediction, ``models/calendar.py``).

        Returns:
            [B, L, hidden_dim].

        Raises:
            ValueError: if L > max_position.
        """
        L = codes.shape[1]
        if L > self.max_position:
            raise ValueError(
                f"sequence length L={L} exceeds max_position={self.max_position}: build the "
                "model with max_position >= the data's max_seq_len (positions are never clamped)"
            )
        pos_ids = torch.arange(L, device=codes.device)
        if self.position_embedding is not None:
            pos = self.position_embedding(pos_ids)  # [L, D]
        else:
            pos = self.get_buffer("position_table")[:L]  # [L, D]
        x = (
            self.code_embedding(codes)
            + self.age_embedding(ages)
            + self.visit_embedding(visit_ids.clamp(max=self.max_visits - 1))
            + pos[None, :, :].to(self.code_embedding.weight.dtype)
        )
        if extra is not None:
            x = x + extra
        return self.projection(self.dropout(self.norm(x)))
