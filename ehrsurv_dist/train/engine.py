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

import abc
import contextlib
import json
import math
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR

from ehrsurv_dist import atomic
from ehrsurv_dist.config import ConfigError, option, require
from ehrsurv_dist.train.optim import (
    SCHEDULES,
    Schedule,
    build_optimizer,
    build_scheduler,
    warmup_steps_for,
)

__all__ = [
    "DeepSpeedEngine",
    "Engine",
    "EngineConfig",
    "TorchEngine",
    "build_engine",
    "deepspeed_config",
    "ensure_process_group",
    "resolve_precision",
]

EngineKind = Literal["deepspeed", "torch"]
Precision = Literal["auto", "fp32", "bf16"]

META_FILE = "engine.json"
STATE_DIR = "engine"  # the engine's files; also the DeepSpeed checkpoint tag
FORMAT_VERSION = 1

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


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class EngineConfig:
    """How the model is optimised and distributed (the same fields for both engines)."""

    engine: EngineKind = option(
        "deepspeed", "'deepspeed' (ZeRO stages, bf16) or 'torch' (plain DistributedDataParallel)."
    )
    zero_stage: int = option(
        1,
        "DeepSpeed ZeRO stage 0-3 (1: shard optimizer state, 2: + gradients, 3: + parameters; "
        "3 needs a GPU). Ignored by the torch engine.",
    )
    precision: Precision = option(
        "auto",
        "'auto' (bf16 on a CUDA GPU that supports it, else fp32), 'fp32' or 'bf16' (GPU only). "
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
    """The precision a worker on ``device`` trains in; checks what needs a GPU.

    Raises:
        ConfigError: (a ``ValueError``) naming ``precision`` for bf16 without a CUDA device, or
            ``zero_stage`` for ZeRO-3 without one (both are GPU features here).
    """
    cuda = device.type == "cuda"
    if cfg.engine == "deepspeed" and cfg.zero_stage == 3 and not cuda:
        raise ConfigError(
            "zero_stage", f"ZeRO stage 3 needs a CUDA device, but this worker runs on {device}"
        )
    if cfg.precision == "bf16":
        if not cuda:
            raise ConfigError(
                "precision",
                f"bf16 needs a CUDA device, but this worker runs on {device}; use 'auto' or 'fp32'",
            )
        return "bf16"
    if cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported():
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


# --------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------


def ensure_process_group(backend: str = "gloo") -> bool:
    """Initialise a world-size-1 process group if none exists (DeepSpeed needs one).

    Sets ``MASTER_ADDR`` (127.0.0.1), ``MASTER_PORT`` (a free port), ``RANK``, ``LOCAL_RANK`` and
    ``WORLD_SIZE`` in ``os.environ`` where unset, as DeepSpeed also reads them.

    Returns:
        True if this call created the group (the caller may ``destroy_process_group`` it).

    Raises:
        RuntimeError: if ``WORLD_SIZE`` says several processes but none initialised a group: a
            world-size-1 group would silently train each rank alone.
    """
    if dist.is_initialized():
        return False
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise RuntimeError(
            f"WORLD_SIZE={world} but no process group is initialised; the launcher (Ray Train, "
            "torchrun) must initialise it before the engine is built"
        )
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key in ("RANK", "LOCAL_RANK"):
        os.environ.setdefault(key, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend, rank=0, world_size=1)
    return True


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


class Engine(abc.ABC):
    """One interface over plain torch and DeepSpeed: forward, backward, step, save, load.

    Attributes:
        cfg: The engine config.
        device: The device this rank's model lives on.
        precision: The resolved precision, ``"fp32"`` or ``"bf16"``.
        rank, world_size: From ``torch.distributed`` (0 and 1 without a process group).
    """

    kind: ClassVar[EngineKind]

    def __init__(
        self,
        model: nn.Module,
        cfg: EngineConfig,
        total_steps: int,
        device: torch.device,
        precision: Literal["fp32", "bf16"],
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self._prepare_device()
        model.to(device)
        self._optimizer, self._scheduler = optimizer_and_scheduler(model, cfg, total_steps)
        self.rank, self.world_size = _rank_and_world()
        self._micro_step = 0
        self._global_step = 0
        self._wrap(model)

    def _prepare_device(self) -> None:  # noqa: B027 - optional hook
        """What must happen before the model moves to the device (DeepSpeed: the process
        group and the current CUDA device)."""

    @abc.abstractmethod
    def _wrap(self, model: nn.Module) -> None:
        """Wrap ``model`` (on its device, with ``self._optimizer`` built) for training."""

    # ---- the loop's interface -----------------------------------------------------------

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The unwrapped model (for evaluation and export; its weights are this rank's view)."""

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Forward through the wrapper (DDP / DeepSpeed), which the backward pass relies on."""

    @abc.abstractmethod
    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss / grad_accum`` (pass the micro-batch's unscaled mean loss)."""

    def step(self) -> bool:
        """End a micro-step; at every ``grad_accum``-th call clip, step optimizer and schedule.

        Call it once after every :meth:`backward`.

        Returns:
            True when an optimizer step happened (``global_step`` advanced).
        """
        stepped = self._step()
        self._micro_step += 1
        self._global_step += int(stepped)
        return stepped

    def train(self, mode: bool = True) -> Engine:
        """Put the model in training mode (or evaluation mode with ``mode=False``)."""
        self.module.train(mode)
        return self

    def eval(self) -> Engine:
        """Put the model in evaluation mode."""
        return self.train(False)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self._optimizer.param_groups[0]["lr"])

    @property
    def global_step(self) -> int:
        """Optimizer steps taken."""
        return self._global_step

    @property
    def micro_step(self) -> int:
        """Calls of :meth:`step` (micro-batches) taken."""
        return self._micro_step

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch AdamW, for inspection. Under ZeRO >= 1 its groups hold DeepSpeed's flat
        fp32 partitions rather than the model's parameters."""
        return self._optimizer

    def is_accumulation_boundary(self) -> bool:
        """Whether the next :meth:`step` will step the optimizer."""
        return (self._micro_step + 1) % self.cfg.grad_accum == 0

    # ---- checkpoints ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> None:
        """Write a checkpoint of model, optimizer, schedule and step counters into ``path``.

        Collective: every rank calls it, with its own local directory or a shared one; rank 0
        writes the model and metadata, DeepSpeed ranks write their ZeRO shards. Returns after a
        barrier, when every rank's files are written.

        Args:
            path: Directory (created if missing).
            extra: Picklable loop state (epoch, early-stopping state, ...) from rank 0, which
                :meth:`load` returns. Per-rank state (RNG streams) is the caller's to store.

        Raises:
            RuntimeError: in the middle of a gradient accumulation: partial gradients are not
                checkpointed, so a resume from there could not be exact.
        """
        if self._micro_step % self.cfg.grad_accum != 0:
            raise RuntimeError(
                f"save() at micro-step {self._micro_step}, inside an accumulation of "
                f"{self.cfg.grad_accum} micro-batches; save at an optimizer-step boundary"
            )
        os.makedirs(os.path.join(path, STATE_DIR), exist_ok=True)
        self._save_state(str(path), dict(extra or {}))
        if self.rank == 0:
            meta = {
                "format": FORMAT_VERSION,
                "engine": self.kind,
                "zero_stage": self.cfg.zero_stage if self.kind == "deepspeed" else None,
                "precision": self.precision,
                "world_size": self.world_size,
                "grad_accum": self.cfg.grad_accum,
                "global_step": self._global_step,
                "micro_step": self._micro_step,
            }
            atomic.write_json(meta, os.path.join(path, META_FILE), sort_keys=True)
        _barrier()

    def load(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore model, optimizer, schedule and step counters saved by :meth:`save`.

        Collective. Build this engine from the same model and config as the saved one.

        Returns:
            The ``extra`` mapping given to :meth:`save` (empty if none).

        Raises:
            FileNotFoundError: if ``path`` holds no engine checkpoint.
            ValueError: if the checkpoint was written by another engine kind, ZeRO stage,
                precision, gradient accumulation, or (DeepSpeed ZeRO >= 1) world size.
        """
        meta_path = os.path.join(path, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path}: no engine checkpoint here")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        self._check_compatible(meta, str(path))
        extra = self._load_state(str(path))
        # The schedule's step count is the source of truth for the learning rate.
        for group, lr in zip(
            self._optimizer.param_groups, self._scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = lr
        self._micro_step = int(meta["micro_step"])
        self._global_step = int(meta["global_step"])
        self._after_load()
        return extra

    def _check_compatible(self, meta: Mapping[str, Any], path: str) -> None:
        expected: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "engine": self.kind,
            "precision": self.precision,
            "grad_accum": self.cfg.grad_accum,
        }
        if self.kind == "deepspeed":
            expected["zero_stage"] = self.cfg.zero_stage
            if self.cfg.zero_stage >= 1:  # each rank's ZeRO shard is a 1/world_size slice
                expected["world_size"] = self.world_size
        for key, want in expected.items():
            if meta.get(key) != want:
                raise ValueError(
                    f"{path}: checkpoint has {key}={meta.get(key)!r}, this engine has {want!r}"
                )

    @abc.abstractmethod
    def consolidated_state_dict(self) -> dict[str, Tensor]:
        """The full model weights, floating tensors in fp32, on CPU, with ``module``'s keys.

        Collective for DeepSpeed with bf16 or ZeRO-3 (gathers shards): call it on every rank.
        Every rank returns the full dict; write it from rank 0 only.
        """

    # ---- implementation hooks -------------------------------------------------------------

    @abc.abstractmethod
    def _step(self) -> bool: ...

    @abc.abstractmethod
    def _save_state(self, path: str, extra: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def _load_state(self, path: str) -> dict[str, Any]: ...

    def _after_load(self) -> None:  # noqa: B027 - optional hook
        pass


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
        # weights_only=False: `extra` may hold any picklable loop state; checkpoints are ours.
        state = torch.load(
            os.path.join(path, STATE_DIR, "state.pt"), map_location=self.device, weights_only=False
        )
        self._module.load_state_dict(state["model"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        return dict(state["extra"])

    def consolidated_state_dict(self) -> dict[str, Tensor]:
        return _cpu_fp32(self._module.state_dict())


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
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.module
        if self.cfg.zero_stage == 3:  # parameters are shards outside this context
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = _cpu_fp32(module.state_dict())
        else:
            state = _cpu_fp32(module.state_dict())
        if self.precision == "bf16":
            # The module holds bf16 copies; the fp32 masters live in the optimizer's partitions.
            # Gathering them is collective, so every rank walks the parameters in the same order.
            for param, names in _parameter_names(module):
                if not param.requires_grad:
                    continue
                full = safe_get_full_fp32_param(param)
                if full is not None:
                    value = full.detach().to("cpu", torch.float32).clone()
                    for name in names:
                        state[name] = value
        return state


def optimizer_and_scheduler(
    model: nn.Module, cfg: EngineConfig, total_steps: int
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW over the trainable parameters and its warm-up + decay schedule, from ``cfg``
    (the one recipe every engine, and the plain-loop baseline of ``bench throughput``, uses)."""
    optimizer = build_optimizer(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(cfg.warmup_ratio, total_steps),
        schedule=cfg.schedule,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    return optimizer, scheduler


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
        ConfigError: (a ``ValueError``) for bf16 or ZeRO-3 without a CUDA device.
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


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _cpu_fp32(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies; floating tensors in fp32, others (int buffers) as they are."""
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
        for k, v in state.items()
    }


def _parameter_names(module: nn.Module) -> Iterator[tuple[nn.Parameter, list[str]]]:
    """Each distinct Parameter with every state-dict name it has (LoRA shares base weights)."""
    names: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (p, []))[1].append(name)
    yield from names.values()


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
