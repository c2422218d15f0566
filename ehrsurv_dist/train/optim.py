"""Optimizer and learning-rate schedule builders, shared by both engines.

Weight decay (decoupled, AdamW) applies to parameters with ``ndim >= 2`` -- the weight matrices of
``nn.Linear``, embedding tables and LoRA ``A``/``B`` -- and not to parameters with ``ndim < 2``:
biases, LayerNorm scales and shifts, scalar gates. The rule goes by shape, never by a name pattern
that could silently match nothing (nanoGPT's rule; BERT's "no decay on bias and LayerNorm" is
the same set here, plus embeddings, which nanoGPT and we decay). Only parameters with
``requires_grad`` are handed to the optimizer, so the frozen and LoRA strategies need nothing else.

The schedule is a multiplicative factor on the base learning rate, a function of the number of
optimizer steps already taken ``s`` (``LambdaLR``'s ``last_epoch``), with ``W`` warm-up steps,
``T`` total optimizer steps and ``m = min_lr_ratio``::

    s < W:   (s + 1) / W                             linear warm-up; the first step is never at 0
    s >= W:  p = min(1, (s - W) / max(1, T - W))
             cosine:   m + (1 - m) * (1 + cos(pi * p)) / 2
             linear:   m + (1 - m) * (1 - p)
             constant: 1

so the ``(s + 1)``-th optimizer step uses ``lr * factor(s)``, and the factor reaches ``m`` at
``s = T`` and stays there if training runs past ``T``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "SCHEDULES",
    "Schedule",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "warmup_steps_for",
]

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` in two AdamW groups: decayed and not decayed.

    A parameter shared by several modules (LoRA shares its base layer's weight) appears once.
    Empty groups are left out, so a model with no bias has a single group.

    Args:
        model: The model; parameters with ``requires_grad=False`` are skipped.
        weight_decay: Decoupled weight decay for the ``ndim >= 2`` group.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``
        in ``model.named_parameters()`` order.

    Raises:
        ValueError: if the model has no trainable parameter.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():  # de-duplicates shared Parameters
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """True when torch's fused AdamW kernel takes these parameters: all floating point, all on
    one CPU or CUDA device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
    )


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) over the trainable parameters of ``model``.

    Build it after the model is on its device: ``Module.to`` keeps the Parameter objects, but
    optimizer state created later would otherwise land on the old device.

    Args:
        fused: use torch's fused AdamW kernel (one kernel for every parameter instead of a
            Python loop over them); None = whenever the parameters allow it (floating point, one
            CPU or CUDA device). On CPU torch's default is the per-parameter loop, which took
            7 ms of a 45 ms step of the tiny BEHRT (46 parameter tensors); fused took 2.5 ms
            (``docs/benchmarks.md``). Same update up to float rounding.
    """
    groups = param_groups(model, weight_decay)
    use_fused = _fusable(groups) if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=use_fused)


def warmup_steps_for(warmup_ratio: float, total_steps: int) -> int:
    """Warm-up length in optimizer steps: ``ceil(warmup_ratio * total_steps)``.

    Rounded up so that any positive ratio warms up for at least one step.
    """
    return math.ceil(warmup_ratio * total_steps)


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule,
    min_lr_ratio: float,
) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps (closed form in the module doc).

    Raises:
        ValueError: for an unknown ``schedule``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule,
    min_lr_ratio: float,
) -> LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`, stepped once per optimizer step.

    The factor is a ``functools.partial`` of a module-level function: it pickles, and its (empty)
    ``__dict__`` means ``LambdaLR.state_dict`` stores no schedule parameters, so a resumed run
    takes its schedule from its config and only the step count from the checkpoint.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    factor = functools.partial(
        lr_factor,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)
