"""The engine interface: forward, backward, step, save, load (see :mod:`ehrsurv_dist.train.engine`
for the two engines and the checkpoint layout)."""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from ehrsurv_dist import atomic
from ehrsurv_dist.train.distributed import barrier, rank_and_world
from ehrsurv_dist.train.engine_config import EngineConfig, EngineKind
from ehrsurv_dist.train.optim import build_optimizer, build_scheduler, warmup_steps_for

META_FILE = "engine.json"
STATE_DIR = "engine"  # the engine's files; also the DeepSpeed checkpoint tag
FORMAT_VERSION = 1


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
        self.rank, self.world_size = rank_and_world()
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
        barrier()

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


def cpu_fp32(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies; floating tensors in fp32, others (int buffers) as they are."""
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
        for k, v in state.items()
    }


def parameter_names(module: nn.Module) -> Iterator[tuple[nn.Parameter, list[str]]]:
    """Each distinct Parameter with every state-dict name it has (LoRA shares base weights)."""
    names: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), (p, []))[1].append(name)
    yield from names.values()
