"""Training engines: plain torch (DDP) and DeepSpeed (ZeRO 0-3) behind one small interface.

The training loop is plain code and cannot tell the engines apart::

    engine = build_engine(model, cfg, total_steps=epochs * steps_per_epoch)
    for batch in batches:
        loss = loss_fn(engine(**inputs), targets)   # forward through DDP / DeepSpeed
        engine.backward(loss)                         # scaled by 1 / grad_accum inside
        if engine.step():                             # True at an accumulation boundary
            log(loss, engine.lr, engine.global_step)
    engine.save(ckpt_dir)                             # collective: every rank calls it

Distributed state comes from ``torch.distributed`` only (this module imports no Ray): Ray Train's
``TorchTrainer`` initialises the process group on each worker; without one, the torch engine runs
locally and the DeepSpeed engine makes a world-size-1 group (:func:`ensure_process_group`).

Both engines do the same arithmetic in fp32: the loss of each micro-batch is divided by
``grad_accum`` and back-propagated, gradients accumulate, and at every ``grad_accum``-th
:meth:`Engine.step` the global gradient norm is clipped to ``grad_clip``, torch's AdamW steps, the
``LambdaLR`` schedule of :mod:`ehrsurv_dist.train.optim` steps and gradients are cleared. The unit
tests pin the two engines (ZeRO 0, 1, 2) and a hand-written AdamW loop to the same losses.

Checkpoint layout (``save(path)``; every rank passes its own or a shared directory)::

    path/engine.json        rank 0: kind, ZeRO stage, precision, world size, step counters
    path/engine/            torch: state.pt (rank 0: model, optimizer, scheduler, extra)
                            deepspeed: mp_rank_00_model_states.pt (rank 0: model, scheduler,
                            extra, step) and zero_pp_rank_{r}_mp_rank_00_optim_states.pt
                            (rank r's ZeRO shard, stages 1-3)

``load(path)`` needs the union of what all ranks wrote (Ray Train's checkpoint directory is that
union) and, for DeepSpeed with ZeRO >= 1, the same world size.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ehrsurv_dist import atomic
from ehrsurv_dist.train.distributed import ensure_process_group
from ehrsurv_dist.train.engine_base import (
    STATE_DIR,
    Engine,
    cpu_fp32,
    optimizer_and_scheduler,
    parameter_names,
)
from ehrsurv_dist.train.engine_config import (
    EngineConfig,
    deepspeed_config,
    resolve_precision,
)

__all__ = [
    "DeepSpeedEngine",
    "Engine",
    "EngineConfig",
    "TorchEngine",
    "build_engine",
    "deepspeed_config",
    "ensure_process_group",
    "optimizer_and_scheduler",
    "resolve_precision",
]


class TorchEngine(Engine):
    """Plain torch: DistributedDataParallel when ``world_size > 1``, the bare model otherwise.

    bf16 (GPU) runs the forward under ``torch.autocast``: weights, gradients and optimizer state
    stay fp32.
    """

    kind = "torch"

    def _wrap(self, model: nn.Module) -> None:
        self._module = model
        self._params = [p for g in self._optimizer.param_groups for p in g["params"]]
        self._wrapped: nn.Module = model
        if self.world_size > 1:
            self._wrapped = DistributedDataParallel(
                model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters,
            )

    @property
    def module(self) -> nn.Module:
        return self._module

    def train(self, mode: bool = True) -> Engine:
        self._wrapped.train(mode)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self._wrapped, DistributedDataParallel):
            # What DDP's no_sync() context does, but per call: all-reduce gradients only in the
            # backward of the micro-batch that ends an accumulation.
            self._wrapped.require_backward_grad_sync = self.is_accumulation_boundary()
        with self._autocast():
            return self._wrapped(*args, **kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def _step(self) -> bool:
        if not self.is_accumulation_boundary():
            return False
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip)
        self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)
        return True

    def _save_state(self, path: str, extra: dict[str, Any]) -> None:
        if self.rank != 0:  # every rank holds the same state
            return
        state = {
            "model": self._module.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "scheduler": self._scheduler.state_dict(),
            "extra": extra,
        }
        atomic.write_torch(state, os.path.join(path, STATE_DIR, "state.pt"))

    def _load_state(self, path: str) -> dict[str, Any]:
        # Weights-only: model, optimizer and scheduler state dicts and `extra` (the loop state's
        # JSON-able dict) are tensors and plain values, all the safe unpickler builds.
        state = torch.load(
            os.path.join(path, STATE_DIR, "state.pt"), map_location=self.device, weights_only=True
        )
        self._module.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        return dict(state["extra"])

    def consolidated_state_dict(self) -> dict[str, Tensor]:
        return cpu_fp32(self._module.state_dict())


class DeepSpeedEngine(Engine):
    """DeepSpeed with ZeRO stage 0-3, our torch AdamW and ``LambdaLR`` handed to it.

    DeepSpeed scales the loss by ``1 / grad_accum``, clips (``gradient_clipping``), steps the
    optimizer and the schedule at the accumulation boundary, and with bf16 keeps bf16 weights
    with fp32 master copies in the optimizer. Float model inputs are not cast: the models cast
    them to their weights' dtype where they meet them.
    """

    kind = "deepspeed"

    def _prepare_device(self) -> None:
        # Imported here: importing deepspeed takes ~0.5 s and logs accelerator detection, which
        # a torch-engine run or a config check should not pay for.
        import deepspeed  # noqa: F401  (first, as before the process group)

        ensure_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # DeepSpeed places the model on the current device

    def _wrap(self, model: nn.Module) -> None:
        import deepspeed  # already imported by _prepare_device

        cfg, precision = self.cfg, self.precision
        ds_config = deepspeed_config(cfg, precision)
        # fp32 without ZeRO: DeepSpeed clips with a Python loop of one norm per parameter plus
        # an all-reduce of the (already identical) norm: 8% of a CPU step of the small model
        # (profile in docs/benchmarks.md). Its gradients are all-reduced in backward at the
        # boundary (managed accumulation, owned here), so torch's clip in _step sees the same
        # gradients and computes the same norm; ZeRO and bf16 keep DeepSpeed's own clipping.
        self._own_clip: float | None = (
            cfg.grad_clip if cfg.zero_stage == 0 and precision == "fp32" else None
        )
        if self._own_clip is not None:
            ds_config["gradient_clipping"] = 0.0
        self._ds, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=self._optimizer,
            lr_scheduler=self._scheduler,
            config=ds_config,
        )
        # Read after deepspeed.initialize, which may rewrite the optimizer's parameter groups.
        self._params = [p for g in self._optimizer.param_groups for p in g["params"]]
        if cfg.zero_stage == 0 and precision == "fp32" and self.world_size == 1:
            # All-reducing one rank's gradients flattens, copies and unflattens every one of
            # them for nothing (7% of a CPU step). With ZeRO the "all-reduce" also moves the
            # gradients into the optimizer's partitions, and bf16 into fp32 buffers: kept.
            self._ds.enable_backward_allreduce = False

    @property
    def module(self) -> nn.Module:
        return self._ds.module  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ds(*args, **kwargs)

    def train(self, mode: bool = True) -> Engine:
        self._ds.train(mode)
        return self

    def backward(self, loss: Tensor) -> None:
        self._ds.backward(loss)

    def _step(self) -> bool:
        boundary = bool(self._ds.is_gradient_accumulation_boundary())
        if boundary and self._own_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self._own_clip)
        self._ds.step()
        return boundary

    def _save_state(self, path: str, extra: dict[str, Any]) -> None:
        self._ds.save_checkpoint(
            path, tag=STATE_DIR, client_state={"ehrsurv_extra": extra}, save_latest=False
        )

    def _load_state(self, path: str) -> dict[str, Any]:
        load_path, client_state = self._ds.load_checkpoint(
            path, tag=STATE_DIR, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"{path}: DeepSpeed found no checkpoint '{STATE_DIR}'")
        return dict(client_state.get("ehrsurv_extra", {}))

    def _after_load(self) -> None:
        # DeepSpeed restores global_steps but not micro_steps, which decides its boundaries.
        self._ds.micro_steps = self._micro_step
        if int(self._ds.global_steps) != self._global_step:
            raise RuntimeError(
                f"DeepSpeed restored global step {self._ds.global_steps}, engine.json says "
                f"{self._global_step}"
            )

    def consolidated_state_dict(self) -> dict[str, Tensor]:
        import deepspeed
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.module
        state = cpu_fp32(module.state_dict())  # ZeRO-3: parameters are empty shards here
        if self.cfg.zero_stage == 3:
            # A forward outside training (validation) can leave prefetched parameters in
            # flight, and gathering one then fails with DeepSpeed's "Cannot partition a param
            # in flight" (seen with stage3_max_reuse_distance 0): wait for them, release all.
            self._ds.empty_partition_cache()
            # One parameter at a time: gathering them all at once would hold the full model
            # twice on every rank (gathered, then copied), 2 x 0.46 GB for model.size xlarge.
            # Collective: every rank walks the parameters in the same order.
            for param, names in parameter_names(module):
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    value = param.detach().to("cpu", torch.float32).clone()
                for name in names:
                    state[name] = value
        if self.precision == "bf16":
            # The module holds bf16 copies; the fp32 masters live in the optimizer's partitions.
            # Gathering them is collective, so every rank walks the parameters in the same order.
            # ZeRO-0 wraps our AdamW in DeepSpeed's FP16_UnfusedOptimizer, whose masters are
            # plain per-parameter tensors that safe_get_full_fp32_param does not know (None).
            opt = self._ds.optimizer
            unfused = (
                {
                    id(lp): hp
                    for lps, hps in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                    for lp, hp in zip(lps, hps, strict=True)
                }
                if isinstance(opt, FP16_UnfusedOptimizer)
                else {}
            )
            for param, names in parameter_names(module):
                if not param.requires_grad:
                    continue
                full = safe_get_full_fp32_param(param)
                if full is None:
                    full = unfused.get(id(param))
                if full is not None:
                    value = full.detach().to("cpu", torch.float32).clone()
                    for name in names:
                        state[name] = value
        return state


def build_engine(
    model: nn.Module,
    cfg: EngineConfig,
    total_steps: int,
    device: torch.device | None = None,
) -> Engine:
    """Move ``model`` to ``device`` and wrap it in the engine ``cfg.engine`` names.

    Only parameters with ``requires_grad`` reach the optimizer (frozen / LoRA strategies): set
    those flags before calling. The engine draws no random numbers.

    Args:
        model: The model; it is moved to ``device`` in place (and cast to bf16 by DeepSpeed with
            bf16).
        cfg: The engine config.
        total_steps: Optimizer steps the schedule spans (micro-batches / ``grad_accum``).
        device: This rank's device (``ray.train.torch.get_device()`` in a Ray worker); default:
            the current CUDA device if there is one, else CPU.

    Raises:
        ValueError: for ``total_steps < 1`` or a model with no trainable parameter.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if device is None:
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    precision = resolve_precision(cfg, device)
    if cfg.engine == "torch":
        return TorchEngine(model, cfg, total_steps, device, precision)
    return DeepSpeedEngine(model, cfg, total_steps, device, precision)
