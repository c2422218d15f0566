"""The engine config (the job's ``train.engine`` section) and what it resolves to: the
precision on a device and the DeepSpeed config dict (no torch.distributed, no DeepSpeed import)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ehrsurv_dist.config import option, require
from ehrsurv_dist.train.optim import SCHEDULES, Schedule

EngineKind = Literal["deepspeed", "torch"]
Precision = Literal["auto", "fp32", "bf16"]

# DeepSpeed keys that EngineConfig owns; `deepspeed_config` may not set them.
_OWNED_DS_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "managed_gradient_accumulation",  # our clipping relies on backward-time all-reduce
    "bf16",
    "fp16",
    "optimizer",
    "scheduler",
)


@dataclass(kw_only=True)
class EngineConfig:
    """How the model is optimised and distributed (the same fields for both engines)."""

    engine: EngineKind = option(
        "deepspeed", "'deepspeed' (ZeRO stages, bf16) or 'torch' (plain DistributedDataParallel)."
    )
    zero_stage: int = option(
        1,
        "DeepSpeed ZeRO stage 0-3 (1: shard optimizer state, 2: + gradients, 3: + parameters), "
        "on GPU or CPU. Ignored by the torch engine.",
    )
    precision: Precision = option(
        "auto",
        "'auto' (bf16 on a CUDA GPU that supports it, else fp32), 'fp32' or 'bf16' (also on CPU). "
        "DeepSpeed keeps bf16 weights with fp32 master copies; torch uses bf16 autocast.",
    )
    micro_batch_size: int = option(
        32, "Per-rank batch size of one forward/backward; DeepSpeed's train_micro_batch_size."
    )
    grad_accum: int = option(
        1,
        "Micro-batches per optimizer step. Global batch = micro_batch_size * grad_accum * ranks.",
    )
    lr: float = option(1e-4, "Peak learning rate (after warm-up).")
    weight_decay: float = option(
        0.01, "AdamW decoupled weight decay for weights with ndim >= 2 (none on biases/norms)."
    )
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW (beta1, beta2).")
    eps: float = option(1e-8, "AdamW epsilon.")
    grad_clip: float | None = option(
        1.0, "Clip the global gradient L2 norm to this value before each step; null: no clipping."
    )
    warmup_ratio: float = option(
        0.0,
        "Fraction of the total optimizer steps spent in linear warm-up, in [0, 1] "
        "(ceil(ratio * total)); a ratio keeps one YAML valid for any cohort size or worker count.",
    )
    schedule: Schedule = option(
        "cosine", "Decay after warm-up to min_lr_ratio * lr: 'cosine', 'linear' or 'constant'."
    )
    min_lr_ratio: float = option(0.0, "Final learning rate as a fraction of lr, in [0, 1].")
    find_unused_parameters: bool = option(
        False,
        "torch engine with several ranks: let DDP tolerate parameters that get no gradient "
        "(e.g. heads unused by an objective). Costs an extra graph traversal per step.",
    )
    deepspeed_config: dict[str, Any] = option(
        {},
        "Extra DeepSpeed config merged over the generated one (e.g. {zero_optimization: "
        "{overlap_comm: true}}); batch size, accumulation, clipping, precision, optimizer and "
        "scheduler keys are owned by this section and refused here.",
    )

    def __post_init__(self) -> None:
        require(
            self.engine in ("deepspeed", "torch"),
            "engine",
            f"must be 'deepspeed' or 'torch', got {self.engine!r}",
        )
        require(
            self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0-3, got {self.zero_stage}"
        )
        require(
            self.precision in ("auto", "fp32", "bf16"),
            "precision",
            f"must be 'auto', 'fp32' or 'bf16', got {self.precision!r}",
        )
        require(
            self.micro_batch_size >= 1,
            "micro_batch_size",
            f"must be >= 1, got {self.micro_batch_size}",
        )
        require(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(
            math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a number > 0, got {self.lr}"
        )
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas}",
        )
        require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        require(
            self.grad_clip is None or self.grad_clip > 0,
            "grad_clip",
            f"must be > 0 or null, got {self.grad_clip}",
        )
        require(
            0 <= self.warmup_ratio <= 1,
            "warmup_ratio",
            f"must be in [0, 1], got {self.warmup_ratio}",
        )
        require(
            self.schedule in SCHEDULES,
            "schedule",
            f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        require(
            0 <= self.min_lr_ratio <= 1,
            "min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        owned = [k for k in _OWNED_DS_KEYS if k in self.deepspeed_config]
        stage = self.deepspeed_config.get("zero_optimization", {})
        if isinstance(stage, Mapping) and "stage" in stage:
            owned.append("zero_optimization.stage")
        require(
            not owned,
            "deepspeed_config",
            f"sets {', '.join(owned)}, which this section owns; set them with its own fields",
        )


def resolve_precision(cfg: EngineConfig, device: torch.device) -> Literal["fp32", "bf16"]:
    """The precision a worker on ``device`` trains in.

    ``bf16`` is what it says on any device: torch's CPU autocast and DeepSpeed's bf16 (ZeRO 0-3,
    CPU accelerator and gloo) both run on CPU, and a 2-worker ZeRO-3 run on CPU matches ZeRO-0
    (docs/engines.md). ``auto`` picks bf16 only on a CUDA GPU that supports it: on CPU bf16 is a
    way to exercise the GPU code path, not a speed-up.
    """
    if cfg.precision == "bf16":
        return "bf16"
    if cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def deepspeed_config(cfg: EngineConfig, precision: Literal["fp32", "bf16"]) -> dict[str, Any]:
    """The DeepSpeed config dict for ``cfg`` (``cfg.deepspeed_config`` merged over it)."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip is not None else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # The optimizer is torch's AdamW, built by us (DeepSpeed's own Adams are compiled ops
        # that take minutes to build on CPU); ZeRO shards its state like any other. DeepSpeed
        # calls every optimizer but its own "untested" and refuses it without this flag.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # the loop logs, not DeepSpeed
        "wall_clock_breakdown": False,
    }
    return _merge(config, cfg.deepspeed_config)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
