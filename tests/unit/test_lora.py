"""LoRA and the fine-tuning strategies: on the forward path, trainable, mergeable, saveable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ehrsurv_dist.models import (
    BEHRTSurvival,
    HierarchicalBEHRTSurvival,
    LoRAConfig,
    LoRALinear,
    LSTMSurvival,
    apply_lora,
    apply_strategy,
    behrt_tiny,
    example_flat_batch,
    example_hierarchical_batch,
    hierarchical_tiny,
    load_lora,
    lora_state_dict,
    lstm_tiny,
    merge_lora,
    save_lora,
    select_inputs,
    trainable_parameters,
    unmerge_lora,
)
from ehrsurv_dist.models.lora import lora_layers, parameter_component
from ehrsurv_dist.objectives import discrete_time_nll

VOCAB = 97


def _model(seed: int = 0) -> BEHRTSurvival:
    torch.manual_seed(seed)
    cfg = behrt_tiny(VOCAB, 64, embedding_dim=24, hidden_dim=32, intermediate_dim=37)
    return BEHRTSurvival(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    return example_flat_batch(VOCAB, batch_size=13, max_visits=5, max_codes=4, seed=0)


def _loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**select_inputs(model, b))
    return discrete_time_nll(out.logits, b["last_visit"], b["event"], out.visit_mask)


def _perturb_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)


def test_lora_linear_init_and_formula() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(7, 5)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    assert layer.weight is base.weight and layer.bias is base.bias  # shared, not copied
    assert layer.lora_A.shape == (3, 7) and layer.lora_B.shape == (5, 3)
    assert layer.lora_B.abs().sum().item() == 0.0 and layer.scaling == 2.0
    bound = 1.0 / math.sqrt(7)  # kaiming_uniform(a=sqrt(5)) on fan_in 7
    assert layer.lora_A.abs().max().item() <= bound and layer.lora_A.std().item() > 0
    x = torch.randn(4, 7)
    with torch.no_grad():
        layer.lora_B.normal_()
        want = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
        torch.testing.assert_close(layer(x), want)


@torch.no_grad()
def test_lora_is_an_exact_noop_at_init_and_wraps_qkvo() -> None:
    model, b = _model(), _batch()
    before = model(**select_inputs(model, b)).logits
    names = apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    assert sorted(names) == sorted(
        f"encoder.blocks.{i}.attn.{p}" for i in range(2) for p in ("q", "k", "v", "o")
    )
    assert torch.equal(model(**select_inputs(model, b)).logits, before)


def test_adapters_are_on_the_forward_path_and_get_gradients() -> None:
    model, b = _model(), _batch()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, target_ffn=True))
    layers = lora_layers(model)
    assert len(layers) == 2 * 6
    _loss(model, b).backward()
    for name, layer in layers.items():
        assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0, name
        assert layer.weight.grad is None, name  # base frozen
    # with B != 0 the A matrices get gradients too, and changing B changes the output
    model.zero_grad()
    before = model(**select_inputs(model, b)).logits.detach()
    _perturb_adapters(model)
    _loss(model, b).backward()
    for name, layer in layers.items():
        assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0, name
    with torch.no_grad():
        assert not torch.allclose(model(**select_inputs(model, b)).logits, before)


def test_lora_trainable_set_and_report() -> None:
    model = _model()
    total_before = sum(p.numel() for p in model.parameters())
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, train_embeddings=False, train_head=True))
    report = trainable_parameters(model)
    comp = report.components
    adapters = 2 * 4 * (4 * (32 + 32))  # layers * {q,k,v,o} * r * (in + out)
    assert comp["adapters"].total == adapters == comp["adapters"].trainable
    assert report.total == total_before + adapters
    assert comp["embeddings"].trainable == 0 and comp["encoder"].trainable == 0
    assert comp["head"].trainable == comp["head"].total > 0
    assert report.trainable == adapters + comp["head"].total
    assert report.as_dict()["trainable"] == report.trainable and "adapters" in str(report)
    for name, p in model.named_parameters():
        assert p.requires_grad == (parameter_component(name) in ("adapters", "head")), name
    model2 = _model()
    apply_lora(model2, LoRAConfig(train_embeddings=True, train_head=False))
    comp2 = trainable_parameters(model2).components
    assert comp2["embeddings"].trainable == comp2["embeddings"].total > 0
    assert comp2["head"].trainable == 0
    with pytest.raises(ValueError, match="already"):
        apply_lora(model2, LoRAConfig())


def test_component_names() -> None:
    assert parameter_component("encoder.embeddings.projection.weight") == "embeddings"
    assert parameter_component("encoder.code_embeddings.norm.bias") == "embeddings"
    assert parameter_component("encoder.blocks.0.attn.q.weight") == "encoder"
    assert parameter_component("encoder.blocks.0.attn.q.lora_A") == "adapters"
    assert parameter_component("head.fc1.weight") == "head"
    assert parameter_component("mlm_head.decoder.bias") == "head"
    assert parameter_component("code_embedding.weight") == "embeddings"


def test_merge_gives_the_same_outputs_and_unmerge_restores() -> None:
    model, b = _model(), _batch()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, target_ffn=True))
    _perturb_adapters(model)
    weights = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
    with torch.no_grad():
        before = model(**select_inputs(model, b)).logits
        merge_lora(model)
        merged = model(**select_inputs(model, b)).logits
        assert all(m.merged for m in lora_layers(model).values())
        assert not torch.equal(
            lora_layers(model)["encoder.blocks.0.attn.q"].weight, weights["encoder.blocks.0.attn.q"]
        )
        torch.testing.assert_close(merged, before, atol=1e-6, rtol=0)
        unmerge_lora(model)
        torch.testing.assert_close(
            model(**select_inputs(model, b)).logits, before, atol=1e-6, rtol=0
        )
    for n, m in lora_layers(model).items():
        torch.testing.assert_close(m.weight, weights[n], atol=1e-7, rtol=0)


def test_adapter_only_save_load_round_trip(tmp_path: Path) -> None:
    model, b = _model(seed=0), _batch()
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0))
    _perturb_adapters(model, seed=3)
    state = lora_state_dict(model)
    assert state and all(k.endswith(("lora_A", "lora_B")) for k in state)
    path = tmp_path / "adapters.pt"
    save_lora(model, path)
    fresh = _model(seed=0)  # same base weights, fresh (zero-B) adapters
    apply_lora(fresh, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        assert not torch.allclose(
            fresh(**select_inputs(fresh, b)).logits, model(**select_inputs(model, b)).logits
        )
        load_lora(fresh, path)
        torch.testing.assert_close(
            fresh(**select_inputs(fresh, b)).logits,
            model(**select_inputs(model, b)).logits,
            atol=0,
            rtol=0,
        )
    # a plain (non-LoRA) checkpoint still loads: base keys are unchanged by wrapping
    missing, unexpected = fresh.load_state_dict(_model(seed=0).state_dict(), strict=False)
    assert unexpected == [] and set(missing) == set(state)
    with pytest.raises(ValueError, match="keys"):
        load_lora(fresh, {k: v for k, v in list(state.items())[1:]})
    with pytest.raises(ValueError, match="shape"):
        load_lora(fresh, {k: v[:1] for k, v in state.items()})
    merge_lora(fresh)
    with pytest.raises(ValueError, match="merged"):
        load_lora(fresh, path)


def test_frozen_mode_keeps_encoder_bit_identical() -> None:
    model, b = _model(), _batch()
    model.train()
    apply_strategy(model, "frozen")
    encoder = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    head = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    # all parameters handed to the optimiser, with weight decay: frozen ones must not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        _loss(model, b).backward()
        opt.step()
    for n, p in model.encoder.named_parameters():
        assert not p.requires_grad and torch.equal(p, encoder[n]), n
    assert all(not torch.equal(p, head[n]) for n, p in model.head.named_parameters())
    report = trainable_parameters(model)
    assert report.trainable == report.components["head"].total


def test_full_mode_and_unknown_strategy() -> None:
    model = _model()
    apply_strategy(model, "frozen")
    apply_strategy(model, "full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="strategy"):
        apply_strategy(model, "adapters")  # type: ignore[arg-type]
    apply_strategy(model, "lora", LoRAConfig(rank=2, alpha=2.0))
    assert len(lora_layers(model)) == 8


def test_lora_on_hierarchical_and_refused_on_lstm() -> None:
    torch.manual_seed(0)
    model = HierarchicalBEHRTSurvival(hierarchical_tiny(VOCAB)).eval()
    b = example_hierarchical_batch(VOCAB, seed=0)
    with torch.no_grad():
        before = model(**select_inputs(model, b)).logits
    apply_lora(model, LoRAConfig(rank=2, alpha=4.0))
    with torch.no_grad():
        assert torch.equal(model(**select_inputs(model, b)).logits, before)
    assert len(lora_layers(model)) == 4
    with pytest.raises(ValueError, match="no LoRA target"):
        apply_lora(LSTMSurvival(lstm_tiny(VOCAB)), LoRAConfig())


def test_lora_config_errors_name_the_field() -> None:
    for kw, name in [
        ({"rank": 0}, "rank"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"target_attention": False, "target_ffn": False}, "target_attention"),
    ]:
        with pytest.raises(ValueError, match=name):
            LoRAConfig(**kw)  # type: ignore[arg-type]
