"""Typed configuration dataclasses for the models (one per concern).

Each field has a docstring; ``__post_init__`` raises a
:class:`~ehrsurv_dist.errors.ConfigError` (a ``ValueError``) keyed by the offending field, as
the job config's dataclasses do. These configs are built from a job's ``model`` and
``finetune`` sections by ``train/modeling.py`` (``model.dropout`` → ``dropout``,
``model.sinusoidal`` → ``sinusoidal``, ``finetune.lora_rank`` → ``LoRAConfig.rank``, ...),
where the job spec has already checked the values it sets. ``vocab_size`` may be left ``None`` in YAML: it is only known once the vocabulary is built,
and is filled in with ``dataclasses.replace(cfg, vocab_size=n)`` (or by the builders in
``models/builders.py``) before a model is constructed. The models refuse a config whose
``vocab_size`` is still ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ehrsurv_dist.errors import require
from ehrsurv_dist.schema import NUM_SPECIAL_TOKENS

AttentionMode = Literal["visit_causal", "bidirectional"]
VisitPooling = Literal["mean", "attention"]

ATTENTION_MODES: tuple[str, ...] = ("visit_causal", "bidirectional")
VISIT_POOLINGS: tuple[str, ...] = ("mean", "attention")


def _positive(name: str, value: float) -> None:
    require(value > 0, name, f"must be > 0, got {value!r}")


def _probability(name: str, value: float) -> None:
    require(0.0 <= value < 1.0, name, f"must be in [0, 1), got {value!r}")


def _vocab(value: int | None) -> None:
    require(
        value is None or value > NUM_SPECIAL_TOKENS,
        "vocab_size",
        f"must be > NUM_SPECIAL_TOKENS ({NUM_SPECIAL_TOKENS}) or None, got {value!r}",
    )


def _num_bins(value: int) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "num_bins",
        f"must be an integer >= 0 (0 = visit axis), got {value!r}",
    )


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, name, f"must be one of {choices}, got {value!r}")


def _check_encoder(
    cfg: BEHRTConfig | HierarchicalConfig, positive: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    """The checks both transformer configs share: sizes, heads, dropouts, attention, pooling.

    ``positive`` fields must be > 0; ``optional`` ones too unless None (checked in that order).
    """
    _vocab(cfg.vocab_size)
    for name in positive:
        _positive(name, getattr(cfg, name))
    for name in optional:
        if getattr(cfg, name) is not None:
            _positive(name, getattr(cfg, name))
    require(
        cfg.hidden_dim % cfg.num_heads == 0,
        "hidden_dim",
        f"must be divisible by num_heads ({cfg.num_heads}), got {cfg.hidden_dim}",
    )
    for name in ("dropout", "attention_dropout", "head_dropout"):
        _probability(name, getattr(cfg, name))
    _choice("attention", cfg.attention, ATTENTION_MODES)
    _choice("visit_pooling", cfg.visit_pooling, VISIT_POOLINGS)
    _num_bins(cfg.num_bins)


@dataclass
class BEHRTConfig:
    """Flat BEHRT encoder (docs/models.md) plus the sizes of its task heads."""

    vocab_size: int | None = None
    """Number of code ids including the special tokens (PAD=0, MASK=1, UNK=2); None = set later."""
    embedding_dim: int = 128
    """Width of the additive token embedding (code + age + visit + position)."""
    hidden_dim: int = 256
    """Width of the transformer; a Linear projection is inserted when it differs from
    ``embedding_dim``."""
    num_layers: int = 4
    """Number of Pre-LN transformer blocks."""
    num_heads: int = 8
    """Attention heads; must divide ``hidden_dim``."""
    intermediate_dim: int | None = None
    """Width of the feed-forward layer; None = 4 * hidden_dim."""
    max_position: int = 512
    """Rows of the position table: the longest flat sequence L the model accepts (never clamped)."""
    max_age: float = 100.0
    """Ages are clamped to [0, max_age] years before binning."""
    age_bin_size: float = 5.0
    """Width of an age bin in years (5 gives the seed's 22 bins)."""
    max_visits: int = 512
    """Rows of the visit-id table; larger visit ids share the last row (seed behaviour)."""
    dropout: float = 0.1
    """Dropout after the embeddings, the attention output and the feed-forward output."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities (``dropout_p`` of scaled_dot_product_attention)."""
    sinusoidal: bool = False
    """Fixed sinusoidal positions instead of a learned position table (the job's
    ``model.sinusoidal``; exports written before the field's rename carry ``use_sinusoidal``,
    which ``train.modeling.model_from_export`` still reads)."""
    attention: AttentionMode = "visit_causal"
    """``visit_causal``: a token of visit t attends to visits <= t (docs/design.md §3, default);
    ``bidirectional``: every real token (seed parity; leaks the sequence end)."""
    visit_pooling: VisitPooling = "mean"
    """How token states become a visit state for the survival head: masked ``mean`` (seed) or
    learned ``attention`` pooling."""
    hazard_hidden_dim: int | None = None
    """Hidden width of the hazard MLP; None = hidden_dim."""
    head_dropout: float = 0.1
    """Dropout inside the hazard MLP."""
    tie_mlm_weights: bool = False
    """Tie the MLM output matrix to the code embedding (needs embedding_dim == hidden_dim)."""
    num_bins: int = 0
    """0 = the visit axis (one hazard per visit, unchanged); K > 0 = the calendar axis: K hazards,
    one per day bin, from the state of the last real visit, with ``prediction_age`` as an input
    (``models/calendar.py``)."""

    def __post_init__(self) -> None:
        _check_encoder(
            self,
            (
                "embedding_dim",
                "hidden_dim",
                "num_layers",
                "num_heads",
                "max_position",
                "max_visits",
                "max_age",
                "age_bin_size",
            ),
            ("intermediate_dim", "hazard_hidden_dim"),
        )
        require(
            not self.tie_mlm_weights or self.embedding_dim == self.hidden_dim,
            "tie_mlm_weights",
            f"requires embedding_dim == hidden_dim, got {self.embedding_dim} != {self.hidden_dim}",
        )

    @property
    def ffn_dim(self) -> int:
        """Resolved feed-forward width."""
        return self.intermediate_dim if self.intermediate_dim is not None else 4 * self.hidden_dim

    @property
    def head_dim(self) -> int:
        """Resolved hazard MLP width."""
        return self.hazard_hidden_dim if self.hazard_hidden_dim is not None else self.hidden_dim


@dataclass
class HierarchicalConfig:
    """Hierarchical BEHRT (docs/models.md): codes pooled within visits, then a visit timeline."""

    vocab_size: int | None = None
    """Number of code ids including the special tokens; None = set later."""
    hidden_dim: int = 128
    """Width of code, visit and timeline representations."""
    num_heads: int = 4
    """Attention heads of the timeline transformer; must divide ``hidden_dim``."""
    num_layers: int = 2
    """Pre-LN transformer blocks over the visit timeline."""
    intermediate_dim: int | None = None
    """Feed-forward width of the timeline blocks; None = 4 * hidden_dim."""
    max_visits: int = 50
    """Rows of the visit-position table: the most visit slots V accepted (never clamped)."""
    max_codes_per_visit: int = 30
    """Rows of the within-visit code-position table: the most code slots C accepted."""
    max_age: float = 100.0
    """Ages are clamped to [0, max_age] years before binning."""
    age_bin_size: float = 5.0
    """Width of an age bin in years."""
    max_time_delta: float = 1825.0
    """Days since the previous visit are clamped to [0, max_time_delta] before binning."""
    time_bin_size: float = 30.0
    """Width of a time-delta bin in days (1825 / 30 gives the seed's 62 bins)."""
    dropout: float = 0.1
    """Dropout after the embeddings and inside the blocks."""
    attention_dropout: float = 0.1
    """Dropout on the timeline attention probabilities."""
    attention: AttentionMode = "visit_causal"
    """``visit_causal``: visit v attends to visits <= v (default); ``bidirectional``: all visits."""
    visit_pooling: VisitPooling = "attention"
    """Within-visit pooling of code embeddings: ``attention`` (recommended) or ``mean``."""
    hazard_hidden_dim: int = 64
    """Hidden width of the hazard MLP."""
    head_dropout: float = 0.1
    """Dropout inside the hazard MLP."""
    num_bins: int = 0
    """0 = the visit axis (one hazard per visit, unchanged); K > 0 = the calendar axis: K hazards,
    one per day bin, from the state of the last real visit, with ``prediction_age`` as an input
    (``models/calendar.py``)."""

    def __post_init__(self) -> None:
        _check_encoder(
            self,
            (
                "hidden_dim",
                "num_heads",
                "num_layers",
                "max_visits",
                "max_codes_per_visit",
                "max_age",
                "age_bin_size",
                "max_time_delta",
                "time_bin_size",
            ),
            ("hazard_hidden_dim", "intermediate_dim"),
        )

    @property
    def ffn_dim(self) -> int:
        """Resolved feed-forward width."""
        return self.intermediate_dim if self.intermediate_dim is not None else 4 * self.hidden_dim


@dataclass
class LSTMConfig:
    """LSTM baseline (docs/models.md): mean of code embeddings per visit, unidirectional LSTM."""

    vocab_size: int | None = None
    """Number of code ids including the special tokens; None = set later."""
    embedding_dim: int = 128
    """Width of the code embedding."""
    hidden_dim: int = 256
    """Hidden width of the LSTM."""
    num_layers: int = 1
    """Stacked LSTM layers."""
    dropout: float = 0.1
    """Dropout between LSTM layers (only used with num_layers > 1) and before the head."""
    hazard_hidden_dim: int | None = None
    """Hidden width of the hazard MLP; None = hidden_dim."""
    head_dropout: float = 0.1
    """Dropout inside the hazard MLP."""
    num_bins: int = 0
    """0 = the visit axis (one hazard per visit, unchanged); K > 0 = the calendar axis: K hazards,
    one per day bin, from the state of the last real visit, with ``prediction_age`` as an input
    (``models/calendar.py``)."""

    def __post_init__(self) -> None:
        _vocab(self.vocab_size)
        for name in ("embedding_dim", "hidden_dim", "num_layers"):
            _positive(name, getattr(self, name))
        if self.hazard_hidden_dim is not None:
            _positive("hazard_hidden_dim", self.hazard_hidden_dim)
        _probability("dropout", self.dropout)
        _probability("head_dropout", self.head_dropout)
        _num_bins(self.num_bins)

    @property
    def head_dim(self) -> int:
        """Resolved hazard MLP width."""
        return self.hazard_hidden_dim if self.hazard_hidden_dim is not None else self.hidden_dim


@dataclass
class LoRAConfig:
    """Low-rank adapters on the attention (and optionally feed-forward) projections (docs/models.md)."""

    rank: int = 16
    """Rank r of the update B @ A."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter input (the base path never sees it)."""
    target_attention: bool = True
    """Wrap the q, k, v and o projections of every attention block."""
    target_ffn: bool = False
    """Also wrap the two feed-forward projections (fc1, fc2) of every block."""
    train_embeddings: bool = False
    """Keep the embeddings trainable (True when training from scratch; False when adapting a
    pretrained encoder)."""
    train_head: bool = True
    """Keep the task head(s) trainable."""

    def __post_init__(self) -> None:
        _positive("rank", self.rank)
        _positive("alpha", self.alpha)
        _probability("dropout", self.dropout)
        require(
            self.target_attention or self.target_ffn,
            "target_ffn",
            "target_attention and target_ffn cannot both be False",
        )
