"""Named sizes as builder functions over one generic builder, plus tiny example batches.

``behrt_tiny/small/medium/large/xlarge`` return a :class:`BEHRTConfig` for the seed presets
(docs/models.md; ``tiny`` is ours, for tests and CPU demos; ``xlarge`` is ours too, a BERT-base
width at 16 layers: 113M encoder parameters, foundation-model scale). They take the data's ``max_seq_len``
and make sure the position table covers it: the preset's ``max_position`` grows to
``max_seq_len``, and an explicit ``max_position`` below it is an error (the seed's silent pitfall
was a 50-row table under 512-token sequences). :func:`build_survival_model` and
:func:`build_pretraining_model` turn a config into a model.

Shape vocabulary: ``B`` batch, ``L`` tokens, ``V`` visit slots, ``C`` code slots per visit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ehrsurv_dist.models.config import BEHRTConfig, HierarchicalConfig, LoRAConfig, LSTMConfig
from ehrsurv_dist.models.heads import BEHRTPretraining
from ehrsurv_dist.models.hierarchical import HierarchicalBEHRTSurvival
from ehrsurv_dist.models.lora import apply_lora, trainable_parameters
from ehrsurv_dist.models.lstm import LSTMSurvival
from ehrsurv_dist.models.survival import BEHRTSurvival
from ehrsurv_dist.schema import (
    AGES,
    ATTENTION_MASK,
    CODE_MASK,
    CODES,
    EVENT,
    LAST_VISIT,
    NUM_SPECIAL_TOKENS,
    NUM_VISITS,
    PAD_ID,
    TIME_DELTAS,
    VISIT_IDS,
    VISIT_MASK,
)

# embedding_dim, hidden_dim, num_layers, num_heads, intermediate_dim, max_position, hazard_hidden
_BEHRT_SIZES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "tiny": (32, 32, 2, 4, 64, 64, 32),
    "small": (64, 128, 2, 4, 512, 50, 128),
    "medium": (128, 256, 4, 8, 1024, 100, 256),
    "large": (256, 512, 6, 8, 2048, 200, 512),
    "xlarge": (768, 768, 16, 12, 3072, 512, 768),
}
# hidden_dim, num_heads, num_layers, hazard_hidden_dim
_HIERARCHICAL_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (32, 4, 1, 16),
    "small": (64, 2, 1, 32),
    "medium": (128, 4, 2, 64),
    "large": (256, 8, 4, 128),
    "xlarge": (768, 12, 16, 256),
}


def behrt_config(
    vocab_size: int,
    max_seq_len: int,
    *,
    default_max_position: int | None = None,
    **fields: Any,
) -> BEHRTConfig:
    """Generic BEHRT builder: a :class:`BEHRTConfig` whose position table covers ``max_seq_len``.

    Args:
        vocab_size: number of code ids including the special tokens.
        max_seq_len: the longest flat sequence L the data will produce.
        default_max_position: the preset's position-table size, used (grown to ``max_seq_len``
            if smaller) when ``fields`` has no ``max_position``.
        **fields: any :class:`BEHRTConfig` field.

    Raises:
        ValueError: if an explicit ``max_position`` is below ``max_seq_len``, or a field is
            invalid.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if "max_position" in fields:
        if fields["max_position"] < max_seq_len:
            raise ValueError(
                f"max_position={fields['max_position']} < max_seq_len={max_seq_len}: the "
                "position table must cover every sequence (positions are never clamped)"
            )
    else:
        fields["max_position"] = max(default_max_position or max_seq_len, max_seq_len)
    return BEHRTConfig(vocab_size=vocab_size, **fields)


def _behrt_preset(
    name: str, vocab_size: int, max_seq_len: int, overrides: dict[str, Any]
) -> BEHRTConfig:
    e, h, n, heads, ffn, pos, head = _BEHRT_SIZES[name]
    fields: dict[str, Any] = {
        "embedding_dim": e,
        "hidden_dim": h,
        "num_layers": n,
        "num_heads": heads,
        "intermediate_dim": ffn,
        "hazard_hidden_dim": head,
    }
    fields.update(overrides)
    return behrt_config(vocab_size, max_seq_len, default_max_position=pos, **fields)


def behrt_tiny(vocab_size: int, max_seq_len: int, **overrides: Any) -> BEHRTConfig:
    """Tests and CPU demos: d 32, 2 layers, 4 heads, FFN 64, positions >= 64."""
    return _behrt_preset("tiny", vocab_size, max_seq_len, overrides)


def behrt_small(vocab_size: int, max_seq_len: int, **overrides: Any) -> BEHRTConfig:
    """Seed small: embedding 64, hidden 128, 2 layers, 4 heads, FFN 512, positions >= 50."""
    return _behrt_preset("small", vocab_size, max_seq_len, overrides)


def behrt_medium(vocab_size: int, max_seq_len: int, **overrides: Any) -> BEHRTConfig:
    """Seed medium: embedding 128, hidden 256, 4 layers, 8 heads, FFN 1024, positions >= 100."""
    return _behrt_preset("medium", vocab_size, max_seq_len, overrides)


def behrt_large(vocab_size: int, max_seq_len: int, **overrides: Any) -> BEHRTConfig:
    """Seed large: embedding 256, hidden 512, 6 layers, 8 heads, FFN 2048, positions >= 200."""
    return _behrt_preset("large", vocab_size, max_seq_len, overrides)


def behrt_xlarge(vocab_size: int, max_seq_len: int, **overrides: Any) -> BEHRTConfig:
    """Ours, >= 100M parameters: embedding and hidden 768, 16 layers, 12 heads, FFN 3072,
    positions >= 512, hazard MLP 768 (BERT-base's width, 16 blocks instead of 12).

    113,407,488 encoder parameters whatever the vocabulary; 115,573,249 in all for 1,000 ids
    at 512 positions (each further id adds 768). Train it with ZeRO-3 (docs/engines.md).
    """
    return _behrt_preset("xlarge", vocab_size, max_seq_len, overrides)


def _hierarchical_preset(
    name: str, vocab_size: int, overrides: dict[str, Any]
) -> HierarchicalConfig:
    d, heads, layers, head = _HIERARCHICAL_SIZES[name]
    values: dict[str, Any] = {
        "hidden_dim": d,
        "num_heads": heads,
        "num_layers": layers,
        "hazard_hidden_dim": head,
    }
    values.update(overrides)
    return HierarchicalConfig(vocab_size=vocab_size, **values)


def hierarchical_tiny(vocab_size: int, **overrides: Any) -> HierarchicalConfig:
    """Tests: d 32, 4 heads, 1 timeline layer, hazard MLP 16."""
    return _hierarchical_preset("tiny", vocab_size, overrides)


def hierarchical_small(vocab_size: int, **overrides: Any) -> HierarchicalConfig:
    """Seed small: d 64, 2 heads, 1 layer, hazard MLP 32."""
    return _hierarchical_preset("small", vocab_size, overrides)


def hierarchical_medium(vocab_size: int, **overrides: Any) -> HierarchicalConfig:
    """Seed medium: d 128, 4 heads, 2 layers, hazard MLP 64."""
    return _hierarchical_preset("medium", vocab_size, overrides)


def hierarchical_large(vocab_size: int, **overrides: Any) -> HierarchicalConfig:
    """Seed large: d 256, 8 heads, 4 layers, hazard MLP 128."""
    return _hierarchical_preset("large", vocab_size, overrides)


def hierarchical_xlarge(vocab_size: int, **overrides: Any) -> HierarchicalConfig:
    """Ours, >= 100M parameters: d 768, 12 heads, 16 timeline layers, hazard MLP 256
    (113,998,848 encoder parameters; 115,093,505 in all for 1,000 ids)."""
    return _hierarchical_preset("xlarge", vocab_size, overrides)


def lstm_tiny(vocab_size: int, **overrides: Any) -> LSTMConfig:
    """Tests: embedding 16, hidden 32, 1 layer."""
    values: dict[str, Any] = {"embedding_dim": 16, "hidden_dim": 32}
    values.update(overrides)
    return LSTMConfig(vocab_size=vocab_size, **values)


def lstm_baseline(vocab_size: int, **overrides: Any) -> LSTMConfig:
    """Seed defaults: embedding 128, hidden 256, 1 layer, dropout 0.1."""
    return LSTMConfig(vocab_size=vocab_size, **overrides)


def build_survival_model(cfg: BEHRTConfig | HierarchicalConfig | LSTMConfig) -> nn.Module:
    """The survival model for a config; all return ``SurvivalOutput`` (per-visit logits)."""
    if isinstance(cfg, BEHRTConfig):
        return BEHRTSurvival(cfg)
    if isinstance(cfg, HierarchicalConfig):
        return HierarchicalBEHRTSurvival(cfg)
    if isinstance(cfg, LSTMConfig):
        return LSTMSurvival(cfg)
    raise ValueError(f"cfg must be a BEHRT, hierarchical or LSTM config, got {type(cfg).__name__}")


def build_pretraining_model(
    cfg: BEHRTConfig, *, mlm: bool = True, nvp: bool = True
) -> BEHRTPretraining:
    """BEHRT encoder with MLM and/or NVP heads (NVP needs ``attention='visit_causal'``)."""
    return BEHRTPretraining(cfg, mlm=mlm, nvp=nvp)


# --- parameter counts (docs/models.md is generated from this) -----------------------------------


def preset_parameter_table(vocab_size: int = 1000, lora_rank: int = 16) -> str:
    """Markdown table of parameter counts of every preset's survival model.

    Models are built on the ``meta`` device (no memory, no init cost). Flat presets use
    ``max_seq_len`` = the seed's ``max_position`` (a learned position table costs
    ``embedding_dim`` parameters per extra position).
    """
    rows = [
        "| model | preset | total | embeddings | encoder | head | frozen: trainable "
        f"| LoRA r={lora_rank} (q,k,v,o): trainable |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    configs: list[tuple[str, str, BEHRTConfig | HierarchicalConfig | LSTMConfig]] = []
    for name in _BEHRT_SIZES:
        max_seq_len = _BEHRT_SIZES[name][5]
        configs.append(("BEHRT (flat)", name, _behrt_preset(name, vocab_size, max_seq_len, {})))
    for name in _HIERARCHICAL_SIZES:
        configs.append(("hierarchical BEHRT", name, _hierarchical_preset(name, vocab_size, {})))
    configs.append(("LSTM", "tiny", lstm_tiny(vocab_size)))
    configs.append(("LSTM", "baseline", lstm_baseline(vocab_size)))
    for model_name, preset, cfg in configs:
        with torch.device("meta"):
            model = build_survival_model(cfg)
        report = trainable_parameters(model)
        comp = report.components
        lora = "n/a"
        if not isinstance(cfg, LSTMConfig):
            with torch.device("meta"):
                apply_lora(model, LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank))
            lora = f"{trainable_parameters(model).trainable:,}"
        rows.append(
            f"| {model_name} | {preset} | {report.total:,} | {comp['embeddings'].total:,} "
            f"| {comp['encoder'].total:,} | {comp['head'].total:,} | {comp['head'].total:,} "
            f"| {lora} |"
        )
    return "\n".join(rows)


# --- tiny random batches for tests, benchmarks and docs -----------------------------------------


Subject = tuple[list[list[int]], list[float], list[float], bool]  # visits, ages, gaps, event


def _random_subjects(
    vocab_size: int, batch_size: int, max_visits: int, max_codes: int, seed: int
) -> list[Subject]:
    """The random subjects of both example layouts (a private generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    if vocab_size <= NUM_SPECIAL_TOKENS:
        raise ValueError(f"vocab_size must be > {NUM_SPECIAL_TOKENS}, got {vocab_size}")
    subjects = []
    for _ in range(batch_size):
        n = int(torch.randint(1, max_visits + 1, (1,), generator=g))
        visits = [
            torch.randint(
                NUM_SPECIAL_TOKENS,
                vocab_size,
                (int(torch.randint(1, max_codes + 1, (1,), generator=g)),),
                generator=g,
            ).tolist()
            for _ in range(n)
        ]
        gaps = (torch.rand(n, generator=g) * 400.0).tolist()
        gaps[0] = 0.0
        age0 = 20.0 + 60.0 * float(torch.rand(1, generator=g))
        days = torch.tensor(gaps).cumsum(0)
        ages = (age0 + days / 365.25).tolist()
        event = bool(torch.rand(1, generator=g) < 0.5)
        subjects.append((visits, ages, gaps, event))
    return subjects


def _label_fields(subjects: list[Subject]) -> dict[str, Tensor]:
    """``last_visit``, ``event`` and ``num_visits`` [B] of the example subjects."""
    num_visits = torch.tensor([len(s[0]) for s in subjects], dtype=torch.int64)
    return {
        LAST_VISIT: num_visits - 1,
        EVENT: torch.tensor([s[3] for s in subjects], dtype=torch.bool),
        NUM_VISITS: num_visits,
    }


def example_flat_batch(
    vocab_size: int,
    batch_size: int = 13,
    max_visits: int = 5,
    max_codes: int = 4,
    seq_len: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random, right-padded flat batch with the ``schema.FLAT_FIELDS`` contract.

    Every subject has 1..max_visits visits of 1..max_codes codes drawn from the non-special ids;
    ``last_visit = num_visits - 1``; ``event`` is a fair coin.

    Args:
        seq_len: L (default: the longest subject); must cover the longest subject.
        seed: seed of the private generator (the global RNG is untouched).
    """
    subjects = _random_subjects(vocab_size, batch_size, max_visits, max_codes, seed)
    lengths = [sum(len(v) for v in visits) for visits, _, _, _ in subjects]
    L = max(lengths) if seq_len is None else seq_len
    if L < max(lengths):
        raise ValueError(f"seq_len={seq_len} is shorter than the longest subject ({max(lengths)})")
    codes = torch.full((batch_size, L), PAD_ID, dtype=torch.int64)
    ages = torch.zeros(batch_size, L, dtype=torch.float32)
    visit_ids = torch.zeros(batch_size, L, dtype=torch.int64)
    mask = torch.zeros(batch_size, L, dtype=torch.bool)
    for b, (visits, visit_ages, _, _) in enumerate(subjects):
        i = 0
        for t, (visit, age) in enumerate(zip(visits, visit_ages, strict=True)):
            codes[b, i : i + len(visit)] = torch.tensor(visit)
            ages[b, i : i + len(visit)] = age
            visit_ids[b, i : i + len(visit)] = t
            mask[b, i : i + len(visit)] = True
            i += len(visit)
    return {
        CODES: codes,
        AGES: ages,
        VISIT_IDS: visit_ids,
        ATTENTION_MASK: mask,
        **_label_fields(subjects),
    }


def example_hierarchical_batch(
    vocab_size: int, batch_size: int = 13, max_visits: int = 5, max_codes: int = 4, seed: int = 0
) -> dict[str, Tensor]:
    """The same random subjects as :func:`example_flat_batch` (same seed), hierarchical layout.

    Returns the ``schema.HIERARCHICAL_FIELDS`` contract with V = max_visits, C = max_codes.
    """
    subjects = _random_subjects(vocab_size, batch_size, max_visits, max_codes, seed)
    codes = torch.full((batch_size, max_visits, max_codes), PAD_ID, dtype=torch.int64)
    ages = torch.zeros(batch_size, max_visits, dtype=torch.float32)
    deltas = torch.zeros(batch_size, max_visits, dtype=torch.float32)
    for b, (visits, visit_ages, gaps, _) in enumerate(subjects):
        n = len(visits)
        for t, visit in enumerate(visits):
            codes[b, t, : len(visit)] = torch.tensor(visit)
        ages[b, :n] = torch.tensor(visit_ages)
        deltas[b, :n] = torch.tensor(gaps)
    labels = _label_fields(subjects)
    visit_mask = torch.arange(max_visits)[None, :] < labels[NUM_VISITS][:, None]
    return {
        CODES: codes,
        AGES: ages,
        TIME_DELTAS: deltas,
        CODE_MASK: codes != PAD_ID,
        VISIT_MASK: visit_mask,
        **labels,
    }
