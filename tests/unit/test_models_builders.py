"""Presets, builders, example batches, configs, and the parameter table in docs/models.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ehrsurv_dist.models import (
    BEHRTSurvival,
    HierarchicalBEHRTSurvival,
    HierarchicalConfig,
    LSTMConfig,
    LSTMSurvival,
    behrt_large,
    behrt_medium,
    behrt_small,
    behrt_tiny,
    build_survival_model,
    example_flat_batch,
    example_hierarchical_batch,
    hierarchical_large,
    hierarchical_medium,
    hierarchical_small,
    lstm_baseline,
    preset_parameter_table,
)
from ehrsurv_dist.schema import FLAT_FIELDS, HIERARCHICAL_FIELDS, NUM_SPECIAL_TOKENS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_behrt_presets_match_the_seed_table() -> None:
    rows = {
        # embedding, hidden, layers, heads, ffn, max_position (docs/models.md)
        behrt_small: (64, 128, 2, 4, 512, 50),
        behrt_medium: (128, 256, 4, 8, 1024, 100),
        behrt_large: (256, 512, 6, 8, 2048, 200),
    }
    for builder, want in rows.items():
        c = builder(1000, 10)
        got = (c.embedding_dim, c.hidden_dim, c.num_layers, c.num_heads, c.ffn_dim, c.max_position)
        assert got == want, builder.__name__
        assert c.dropout == 0.1 and c.attention == "visit_causal"
    assert (behrt_small(1000, 10).head_dim, behrt_large(1000, 10).head_dim) == (128, 512)
    hs = [(c.hidden_dim, c.num_heads, c.num_layers, c.hazard_hidden_dim) for c in (
        hierarchical_small(9), hierarchical_medium(9), hierarchical_large(9))]  # fmt: skip
    assert hs == [(64, 2, 1, 32), (128, 4, 2, 64), (256, 8, 4, 128)]
    lstm = lstm_baseline(9)
    assert (lstm.embedding_dim, lstm.hidden_dim, lstm.num_layers) == (128, 256, 1)


def test_position_table_covers_the_sequence_length() -> None:
    assert behrt_small(1000, 512).max_position == 512  # grown, not left at the seed's 50
    assert behrt_small(1000, 30).max_position == 50
    assert behrt_small(1000, 512, max_position=600).max_position == 600
    with pytest.raises(ValueError, match="max_position"):
        behrt_small(1000, 512, max_position=50)
    with pytest.raises(ValueError, match="max_seq_len"):
        behrt_tiny(1000, 0)
    assert behrt_tiny(1000, 64, hidden_dim=48, num_heads=3).hidden_dim == 48  # overrides win


def test_build_survival_model_dispatch() -> None:
    assert isinstance(build_survival_model(behrt_tiny(50, 16)), BEHRTSurvival)
    assert isinstance(
        build_survival_model(HierarchicalConfig(vocab_size=50, hidden_dim=16, num_heads=2)),
        HierarchicalBEHRTSurvival,
    )
    assert isinstance(
        build_survival_model(LSTMConfig(vocab_size=50, embedding_dim=8, hidden_dim=8)), LSTMSurvival
    )
    with pytest.raises(ValueError, match="cfg"):
        build_survival_model(object())  # type: ignore[arg-type]


def test_example_batches_follow_the_schema_contract() -> None:
    flat = example_flat_batch(97, seed=5)
    hier = example_hierarchical_batch(97, seed=5)
    for spec in FLAT_FIELDS:
        if spec.name in flat:
            assert flat[spec.name].numpy().dtype == spec.dtype, spec.name
    for spec in HIERARCHICAL_FIELDS:
        if spec.name in hier:
            assert hier[spec.name].numpy().dtype == spec.dtype, spec.name
    m = flat["attention_mask"]
    assert (flat["codes"][m] >= NUM_SPECIAL_TOKENS).all() and (flat["codes"][~m] == 0).all()
    assert (flat["visit_ids"][~m] == 0).all() and (flat["ages"][~m] == 0).all()
    assert (m.long().diff(dim=1) <= 0).all()  # right padding
    assert (flat["visit_ids"].diff(dim=1)[m[:, 1:]] >= 0).all()  # monotone on real tokens
    assert torch.equal(flat["last_visit"], flat["num_visits"] - 1)
    # the same subjects in both layouts
    assert torch.equal(hier["num_visits"], flat["num_visits"])
    assert torch.equal(hier["event"], flat["event"])
    for b in range(13):
        assert flat["codes"][b][m[b]].tolist() == hier["codes"][b][hier["code_mask"][b]].tolist()
    assert (hier["time_deltas"][:, 0] == 0).all()


def test_config_errors_name_the_field() -> None:
    for cls, kw, name in [
        (HierarchicalConfig, {"hidden_dim": 30, "num_heads": 4}, "num_heads"),
        (HierarchicalConfig, {"time_bin_size": 0}, "time_bin_size"),
        (HierarchicalConfig, {"visit_pooling": "max"}, "visit_pooling"),
        (HierarchicalConfig, {"attention": "full"}, "attention"),
        (LSTMConfig, {"num_layers": 0}, "num_layers"),
        (LSTMConfig, {"dropout": -0.1}, "dropout"),
        (LSTMConfig, {"vocab_size": 3}, "vocab_size"),
    ]:
        with pytest.raises(ValueError, match=name):
            cls(**kw)  # type: ignore[arg-type]


def test_docs_parameter_table_is_computed_by_code() -> None:
    table = preset_parameter_table(vocab_size=1000, lora_rank=16)
    assert table in DOCS.read_text(), "regenerate the table in docs/models.md"
    small = next(line for line in table.splitlines() if "| BEHRT (flat) | small |" in line)
    model = BEHRTSurvival(behrt_small(1000, 50))
    assert f"| {sum(p.numel() for p in model.parameters()):,} |" in small
