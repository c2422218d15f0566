"""Engines: torch and DeepSpeed (ZeRO 0-2, fp32 CPU) do the same arithmetic as a hand-written loop.

Single process, world size 1 (gloo), no Ray. One process group serves the whole module, as
DeepSpeed keeps module-level communication state across engines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.config import ConfigError, describe
from ehrsurv_dist.train.engine import (
    Engine,
    EngineConfig,
    build_engine,
    deepspeed_config,
    ensure_process_group,
    resolve_precision,
)
from ehrsurv_dist.train.optim import (
    build_scheduler,
    lr_factor,
    param_groups,
    warmup_steps_for,
)

CPU = torch.device("cpu")
ENGINES = [("torch", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2)]
ENGINE_IDS = ["torch", "ds-zero0", "ds-zero1", "ds-zero2"]

# A learning rate and clip large enough that schedule, weight decay and clipping all move the
# numbers within a few steps (the reference asserts that clipping actually happens).
LR, WD, CLIP, MIN_LR = 3e-2, 0.1, 0.5, 0.1
GOLDEN_LOSSES = [1.867419, 0.924324, 1.243561, 0.586287, 1.35129]


@pytest.fixture(scope="module", autouse=True)
def process_group() -> Iterator[None]:
    env = dict(os.environ)
    created = ensure_process_group("gloo")
    yield
    if created:
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(env)


class TinyMLP(nn.Module):
    """Odd sizes so that a swapped dimension cannot pass; LayerNorm and biases for no-decay."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.norm = nn.LayerNorm(7)
        self.fc2 = nn.Linear(7, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.fc1.weight.dtype)  # bf16 weights meet bf16 inputs, as in the models
        return self.out(torch.tanh(self.fc2(self.norm(torch.tanh(self.fc1(x))))))


def make_model(seed: int = 0) -> TinyMLP:
    torch.manual_seed(seed)
    return TinyMLP()


def make_batches(n: int, size: int = 8, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 5, generator=g), torch.randn(size, 1, generator=g)) for _ in range(n)
    ]


def make_cfg(engine: str, zero_stage: int, **kw: object) -> EngineConfig:
    base: dict[str, object] = dict(
        engine=engine,
        zero_stage=zero_stage,
        precision="fp32",
        micro_batch_size=8,
        lr=LR,
        weight_decay=WD,
        grad_clip=CLIP,
        warmup_ratio=0.4,
        schedule="cosine",
        min_lr_ratio=MIN_LR,
    )
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def train(engine: Engine, batches: list[tuple[Tensor, Tensor]], micro: int = 1) -> list[float]:
    """One optimizer step per batch, each batch split into ``micro`` micro-batches."""
    losses = []
    engine.train()
    for x, y in batches:
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=True):
            loss = F.mse_loss(engine(xs).float(), ys)
            engine.backward(loss)
            stepped = engine.step()
            losses.append(loss.item())
        assert stepped
    return losses


def params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close(a: dict[str, Tensor], b: dict[str, Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def reference_loop(
    batches: list[tuple[Tensor, Tensor]], total_steps: int
) -> tuple[list[float], dict[str, Tensor]]:
    """Plain torch AdamW with hand-written groups, clipping and warm-up + cosine schedule."""
    model = make_model()
    decay = [model.fc1.weight, model.fc2.weight, model.out.weight]
    no_decay = [model.fc1.bias, model.norm.weight, model.norm.bias, model.fc2.bias, model.out.bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    warmup = 2  # ceil(0.4 * 5)
    clipped = 0
    losses = []
    for step, (x, y) in enumerate(batches):
        if step < warmup:
            factor = (step + 1) / warmup
        else:
            p = (step - warmup) / (total_steps - warmup)
            factor = MIN_LR + (1 - MIN_LR) * 0.5 * (1 + math.cos(math.pi * p))
        for group in opt.param_groups:
            group["lr"] = LR * factor
        loss = F.mse_loss(model(x), y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        clipped += int(norm > CLIP)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert clipped > 0, "the test should exercise clipping"
    return losses, params(model)


# ---- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "stage"), ENGINES, ids=ENGINE_IDS)
def test_engine_matches_hand_written_adamw_loop(kind: str, stage: int) -> None:
    batches = make_batches(5)
    ref_losses, ref_params = reference_loop(batches, total_steps=5)
    engine = build_engine(make_model(), make_cfg(kind, stage), total_steps=5, device=CPU)
    losses = train(engine, batches)
    assert engine.global_step == 5 and engine.micro_step == 5
    # every engine agrees with the reference, hence with each other, to 1e-6
    assert losses == pytest.approx(ref_losses, abs=1e-6, rel=0)
    assert_close(params(engine.module), ref_params, atol=1e-6)
    # golden values pin the arithmetic itself (fixed init and data; torch 2.13 CPU)
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=1e-5, rel=0)


@pytest.mark.parametrize(("kind", "stage"), ENGINES, ids=ENGINE_IDS)
def test_grad_accum_equals_large_batch(kind: str, stage: int) -> None:
    batches = make_batches(3, size=8)
    big = build_engine(make_model(), make_cfg(kind, stage), total_steps=3, device=CPU)
    train(big, batches, micro=1)
    accum = build_engine(
        make_model(), make_cfg(kind, stage, grad_accum=2, micro_batch_size=4), 3, device=CPU
    )
    losses = train(accum, batches, micro=2)
    assert len(losses) == 6
    assert (accum.global_step, accum.micro_step) == (3, 6)
    assert_close(params(accum.module), params(big.module), atol=1e-6)


def test_step_reports_accumulation_boundaries() -> None:
    engine = build_engine(make_model(), make_cfg("torch", 0, grad_accum=3), 2, device=CPU)
    ((x, y),) = make_batches(1)
    flags = []
    for _ in range(6):
        engine.backward(F.mse_loss(engine(x), y))
        flags.append(engine.step())
    assert flags == [False, False, True, False, False, True]


# ---- schedule ---------------------------------------------------------------------------------


def test_lr_factor_closed_form() -> None:
    kw = dict(total_steps=10, warmup_steps=3, min_lr_ratio=0.2)
    for schedule in ("cosine", "linear", "constant"):
        # warm-up: (s + 1) / W, never 0, reaches 1 at s = W - 1
        assert [lr_factor(s, schedule=schedule, **kw) for s in range(3)] == pytest.approx(  # type: ignore[arg-type]
            [1 / 3, 2 / 3, 1.0]
        )
    cos = [lr_factor(s, schedule="cosine", **kw) for s in (3, 6, 10, 12)]  # type: ignore[arg-type]
    assert cos == pytest.approx(
        [1.0, 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 3 / 7)), 0.2, 0.2], abs=1e-12
    )
    lin = [lr_factor(s, schedule="linear", **kw) for s in (3, 6, 10, 12)]  # type: ignore[arg-type]
    assert lin == pytest.approx([1.0, 0.2 + 0.8 * 4 / 7, 0.2, 0.2], abs=1e-12)
    assert lr_factor(7, schedule="constant", **kw) == 1.0  # type: ignore[arg-type]
    # no warm-up: the first step is already at the peak
    assert lr_factor(0, total_steps=4, warmup_steps=0, schedule="cosine", min_lr_ratio=0) == 1.0
    assert warmup_steps_for(0.25, 10) == 3 and warmup_steps_for(0.0, 10) == 0


def test_scheduler_drives_optimizer_lr() -> None:
    opt = torch.optim.AdamW(make_model().parameters(), lr=2.0)
    sched = build_scheduler(opt, total_steps=8, warmup_steps=2, schedule="linear", min_lr_ratio=0)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [
        2.0 * lr_factor(s, total_steps=8, warmup_steps=2, schedule="linear", min_lr_ratio=0)
        for s in range(9)
    ]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[:3] == pytest.approx([1.0, 2.0, 2.0]) and seen[8] == 0.0


@pytest.mark.parametrize(
    ("kind", "stage"), [("torch", 0), ("deepspeed", 1)], ids=["torch", "ds-zero1"]
)
def test_engine_lr_follows_schedule(kind: str, stage: int) -> None:
    cfg = make_cfg(kind, stage, warmup_ratio=0.3, schedule="linear", min_lr_ratio=0.0)
    engine = build_engine(make_model(), cfg, total_steps=6, device=CPU)
    seen = []
    for x, y in make_batches(6):
        seen.append(engine.lr)
        engine.backward(F.mse_loss(engine(x), y))
        engine.step()
    seen.append(engine.lr)
    expected = [
        LR * lr_factor(s, total_steps=6, warmup_steps=2, schedule="linear", min_lr_ratio=0)
        for s in range(7)
    ]
    assert seen == pytest.approx(expected, abs=1e-12)


# ---- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "stage"),
    [("torch", 0), ("deepspeed", 1), ("deepspeed", 2)],
    ids=ENGINE_IDS[:1] + ENGINE_IDS[2:],
)
def test_resume_continues_exactly(kind: str, stage: int, tmp_path: Path) -> None:
    cfg = make_cfg(kind, stage, grad_accum=2, micro_batch_size=4)
    first, second = make_batches(3, seed=1), make_batches(3, seed=2)

    a = build_engine(make_model(0), cfg, total_steps=6, device=CPU)
    train(a, first, micro=2)
    a.save(tmp_path / "ckpt", extra={"epoch": 1, "best": 0.5})
    lr_at_save = a.lr
    losses_a = train(a, second, micro=2)

    b = build_engine(
        make_model(seed=7), cfg, total_steps=6, device=CPU
    )  # other init: load must win
    extra = b.load(tmp_path / "ckpt")
    assert extra == {"epoch": 1, "best": 0.5}
    assert (b.global_step, b.micro_step, b.lr) == (3, 6, lr_at_save)
    losses_b = train(b, second, micro=2)

    assert losses_b == losses_a  # bit-identical continuation
    assert_close(params(b.module), params(a.module), atol=0)
    assert (b.global_step, b.lr) == (a.global_step, a.lr)


def test_save_inside_accumulation_is_refused(tmp_path: Path) -> None:
    engine = build_engine(make_model(), make_cfg("torch", 0, grad_accum=2), 2, device=CPU)
    ((x, y),) = make_batches(1)
    engine.backward(F.mse_loss(engine(x), y))
    engine.step()
    with pytest.raises(RuntimeError, match="accumulation"):
        engine.save(tmp_path)


def test_load_refuses_another_engine_kind(tmp_path: Path) -> None:
    torch_engine = build_engine(make_model(), make_cfg("torch", 0), 2, device=CPU)
    torch_engine.save(tmp_path)
    ds = build_engine(make_model(), make_cfg("deepspeed", 0), 2, device=CPU)
    with pytest.raises(ValueError, match="engine='torch'"):
        ds.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        ds.load(tmp_path / "missing")


# ---- frozen parameters, export, determinism ---------------------------------------------------


@pytest.mark.parametrize(("kind", "stage"), ENGINES, ids=ENGINE_IDS)
def test_frozen_parameters_stay_bit_identical(kind: str, stage: int) -> None:
    model = make_model()
    for p in model.fc1.parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.fc1.state_dict().items()}
    trainable_before = model.out.weight.detach().clone()
    engine = build_engine(model, make_cfg(kind, stage), total_steps=3, device=CPU)
    if stage == 0:  # ZeRO >= 1 replaces the groups' params by its flat partitions
        in_optimizer = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
        assert not in_optimizer & {id(p) for p in model.fc1.parameters()}
        assert len(in_optimizer) == 6
    train(engine, make_batches(3))
    trained = engine.module
    assert isinstance(trained, TinyMLP)
    for k, v in trained.fc1.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not torch.equal(trained.out.weight, trainable_before)


def test_param_groups_split_by_ndim_and_skip_frozen() -> None:
    model = make_model()
    model.out.weight.requires_grad_(False)
    model.alias = model.fc2  # a shared module: its parameters must appear once
    decay, no_decay = param_groups(model, 0.3)
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model.fc1.weight), id(model.fc2.weight)]
    names = [model.fc1.bias, model.norm.weight, model.norm.bias, model.fc2.bias, model.out.bias]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in names]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 0.1)


@pytest.mark.parametrize(("kind", "stage"), ENGINES, ids=ENGINE_IDS)
def test_consolidated_state_dict_is_full_fp32_cpu(kind: str, stage: int) -> None:
    engine = build_engine(make_model(), make_cfg(kind, stage), total_steps=2, device=CPU)
    train(engine, make_batches(2))
    full = engine.consolidated_state_dict()
    expected = engine.module.state_dict()
    assert full.keys() == expected.keys()
    for k, v in full.items():
        assert v.dtype == torch.float32 and v.device == CPU
        assert torch.equal(v, expected[k]), k
    # a copy, not a view: the export must not change when training continues
    train(engine, make_batches(1, seed=3))
    assert not torch.equal(full["fc1.weight"], engine.module.state_dict()["fc1.weight"])


@pytest.mark.parametrize(
    ("kind", "stage"), [("torch", 0), ("deepspeed", 1)], ids=["torch", "ds-zero1"]
)
def test_engine_draws_no_random_numbers(kind: str, stage: int, tmp_path: Path) -> None:
    model = make_model()
    batches = make_batches(2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    engine = build_engine(model, make_cfg(kind, stage), total_steps=2, device=CPU)
    train(engine, batches)
    engine.save(tmp_path)
    engine.load(tmp_path)
    engine.consolidated_state_dict()
    assert torch.equal(torch.get_rng_state(), state)


# ---- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"zero_stage": 4}, "zero_stage"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"min_lr_ratio": -0.1}, "min_lr_ratio"),
        ({"schedule": "step"}, "schedule"),
        ({"precision": "fp16"}, "precision"),
        ({"engine": "fsdp"}, "engine"),
        ({"deepspeed_config": {"gradient_accumulation_steps": 4}}, "deepspeed_config"),
        ({"deepspeed_config": {"zero_optimization": {"stage": 3}}}, "deepspeed_config"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError) as info:
        EngineConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError) and info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_bf16_and_zero3_resolve_on_cpu() -> None:
    # bf16 and ZeRO-3 run on CPU (the tests below); 'auto' stays fp32 there
    assert resolve_precision(EngineConfig(precision="bf16"), CPU) == "bf16"
    assert resolve_precision(EngineConfig(engine="torch", precision="bf16"), CPU) == "bf16"
    assert resolve_precision(EngineConfig(zero_stage=3), CPU) == "fp32"
    with pytest.raises(ValueError, match="total_steps"):
        build_engine(make_model(), EngineConfig(), 0, device=CPU)


def test_deepspeed_config_and_overrides() -> None:
    cfg = EngineConfig(
        zero_stage=2,
        grad_accum=4,
        micro_batch_size=16,
        grad_clip=None,
        deepspeed_config={"zero_optimization": {"overlap_comm": True}, "steps_per_print": 10},
    )
    ds = deepspeed_config(cfg, "bf16")
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["gradient_clipping"] == 0.0 and ds["bf16"] == {"enabled": True}
    assert ds["steps_per_print"] == 10


def test_every_config_field_is_documented() -> None:
    rows = describe(EngineConfig)
    assert [r[0] for r in rows][:3] == ["engine", "zero_stage", "precision"]
    assert all(r[3] for r in rows)


# ---- ZeRO-3 and bf16 on CPU -------------------------------------------------------------------
# World size 1 here; tests/integration/test_zero3_ray.py runs them with 2 Ray workers.


def test_zero3_matches_hand_written_adamw_loop() -> None:
    # ZeRO-3 partitions the parameters: module.state_dict() holds empty shards outside a
    # gather, so the weights are read through consolidated_state_dict (the export's path).
    batches = make_batches(5)
    ref_losses, ref_params = reference_loop(batches, total_steps=5)
    engine = build_engine(make_model(), make_cfg("deepspeed", 3), total_steps=5, device=CPU)
    assert engine.module.fc1.weight.numel() == 0  # partitioned: the shard lives in ZeRO
    losses = train(engine, batches)
    assert losses == pytest.approx(ref_losses, abs=1e-6, rel=0)
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=1e-5, rel=0)
    full = engine.consolidated_state_dict()
    assert all(v.dtype == torch.float32 and v.device == CPU for v in full.values())
    assert_close(full, ref_params, atol=1e-6)


def test_zero3_resume_continues_exactly(tmp_path: Path) -> None:
    cfg = make_cfg("deepspeed", 3, grad_accum=2, micro_batch_size=4)
    first, second = make_batches(3, seed=1), make_batches(3, seed=2)
    a = build_engine(make_model(0), cfg, total_steps=6, device=CPU)
    train(a, first, micro=2)
    a.save(tmp_path / "ckpt", extra={"epoch": 1})
    losses_a = train(a, second, micro=2)
    b = build_engine(make_model(seed=7), cfg, total_steps=6, device=CPU)
    assert b.load(tmp_path / "ckpt") == {"epoch": 1}
    assert (b.global_step, b.micro_step) == (3, 6)
    assert train(b, second, micro=2) == losses_a
    assert_close(b.consolidated_state_dict(), a.consolidated_state_dict(), atol=0)


def test_zero3_keeps_frozen_parameters() -> None:
    model = make_model()
    for p in model.fc1.parameters():
        p.requires_grad_(False)
    frozen = {f"fc1.{k}": v.clone() for k, v in model.fc1.state_dict().items()}
    engine = build_engine(model, make_cfg("deepspeed", 3), total_steps=3, device=CPU)
    before = engine.consolidated_state_dict()
    train(engine, make_batches(3))
    after = engine.consolidated_state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k
    assert not torch.equal(after["out.weight"], before["out.weight"])


# bf16 rounds what the forward sees (weights, activations) to 8 significant bits (relative step
# 2**-8 = 0.4%). Over 5 steps at lr 3e-2 the losses of torch autocast and DeepSpeed ZeRO 1-3 stay
# within 0.3% of fp32's (max seen: 2.6e-3) and the weights within 2.3e-3: bounds 1e-2 and 5e-3.
# DeepSpeed ZeRO-0 bf16 wraps a client optimizer in its FP16_UnfusedOptimizer, which keeps and
# all-reduces the gradients in bf16 (ZeRO 1-3 accumulate them in fp32): 2.65e-2 and 1.7e-2
# seen, bounds 5e-2 both. The first loss (weights not yet updated) is within 2e-4 everywhere.
BF16_BOUNDS = {"torch": (1e-2, 5e-3), "ds-zero0": (5e-2, 5e-2), "ds-zero3": (1e-2, 5e-3)}


@pytest.mark.parametrize(
    ("kind", "stage"),
    [("torch", 0), ("deepspeed", 0), ("deepspeed", 3)],
    ids=["torch", "ds-zero0", "ds-zero3"],
)
def test_bf16_on_cpu_tracks_fp32(kind: str, stage: int, request: pytest.FixtureRequest) -> None:
    loss_rtol, weight_atol = BF16_BOUNDS[request.node.callspec.id]
    batches = make_batches(5)
    engine = build_engine(
        make_model(), make_cfg(kind, stage, precision="bf16"), total_steps=5, device=CPU
    )
    assert engine.precision == "bf16"
    losses = train(engine, batches)
    assert losses[0] == pytest.approx(GOLDEN_LOSSES[0], rel=2e-4)
    assert losses == pytest.approx(GOLDEN_LOSSES, rel=loss_rtol)
    assert losses != pytest.approx(GOLDEN_LOSSES, rel=1e-6)  # bf16 really ran
    # the export holds the fp32 master weights (DeepSpeed) or the fp32 weights (torch)
    full = engine.consolidated_state_dict()
    assert all(v.dtype == torch.float32 for v in full.values())
    # not bf16 values (16 zero low bits in float32) cast up: the fp32 masters
    assert all((v.view(torch.int32) & 0xFFFF).any() for v in full.values())
    _, ref_params = reference_loop(batches, total_steps=5)
    assert_close(full, ref_params, atol=weight_atol)
