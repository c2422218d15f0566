"""Fine-tuning strategies: frozen (head only), LoRA, full (docs/models.md).

LoRA wraps a Linear ``W`` as ``y = W x + b + (alpha / r) * B (A dropout(x))`` with ``A`` [r, in]
Kaiming-uniform (a = sqrt(5)) and ``B`` [out, r] zeros, so that an adapter starts as an exact
no-op. The wrapper *shares* the base ``weight``/``bias`` Parameters and keeps their names, so the
state-dict keys of the base model are unchanged (``...attn.q.weight``) and a plain checkpoint loads
into a LoRA model. Targets are found by type (:class:`MultiHeadAttention` -> ``q, k, v, o``,
:class:`FeedForward` -> ``fc1, fc2``), never by a name pattern that could silently match nothing.

Parameters are grouped into components by name (:func:`parameter_component`): ``adapters`` (LoRA
A/B), ``embeddings`` (any module path segment containing "embedding"; in the flat encoder this
includes the embedding_dim -> hidden_dim projection), ``encoder`` (the rest of ``encoder.*``)
and ``head`` (everything outside the encoder: hazard head, visit attention pooling, MLM/NVP
heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist.atomic import write_torch
from ehrsurv_dist.models.behrt import FeedForward, MultiHeadAttention
from ehrsurv_dist.models.config import LoRAConfig

Strategy = Literal["frozen", "lora", "full"]
STRATEGIES: tuple[str, ...] = ("frozen", "lora", "full")
COMPONENTS: tuple[str, ...] = ("embeddings", "encoder", "adapters", "head")


class LoRALinear(nn.Module):
    """A Linear layer plus a low-rank adapter; shares the base layer's Parameters."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias: nn.Parameter | None
        self.register_parameter("bias", base.bias)
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        """Args: x [..., in]. Returns: [..., out]."""
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return y + self.scaling * update

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``scaling * B @ A`` into the base weight (inference speed; idempotent)."""
        if not self.merged:
            self.weight += self.scaling * (self.lora_B @ self.lora_A)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding)."""
        if self.merged:
            self.weight -= self.scaling * (self.lora_B @ self.lora_A)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}, merged={self.merged}"
        )


def parameter_component(name: str) -> str:
    """Component of a parameter name: ``adapters``, ``embeddings``, ``encoder`` or ``head``."""
    parts = name.split(".")
    if parts[-1] in ("lora_A", "lora_B"):
        return "adapters"
    if any("embedding" in p for p in parts[:-1]):
        return "embeddings"
    if parts[0] == "encoder":
        return "encoder"
    return "head"


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap the target Linear layers with :class:`LoRALinear` and set ``requires_grad``.

    Everything is frozen, then the adapters are made trainable, then the embeddings (if
    ``cfg.train_embeddings``) and the head (if ``cfg.train_head``).

    Args:
        model: a model containing :class:`MultiHeadAttention` / :class:`FeedForward` blocks.
        cfg: LoRA settings.

    Returns:
        The qualified names of the wrapped layers.

    Raises:
        ValueError: if the model has no target layer (e.g. the LSTM baseline) or already has
            adapters.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model already has LoRA adapters")
    targets: list[tuple[nn.Module, str, str]] = []
    for name, module in model.named_modules():
        if cfg.target_attention and isinstance(module, MultiHeadAttention):
            targets += [(module, attr, f"{name}.{attr}") for attr in ("q", "k", "v", "o")]
        if cfg.target_ffn and isinstance(module, FeedForward):
            targets += [(module, attr, f"{name}.{attr}") for attr in ("fc1", "fc2")]
    if not targets:
        raise ValueError(f"no LoRA target layers found in {type(model).__name__}")
    for parent, attr, _ in targets:
        base = getattr(parent, attr)
        setattr(parent, attr, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout))
    _set_trainable(
        model,
        {"adapters"}
        | ({"embeddings"} if cfg.train_embeddings else set())
        | ({"head"} if cfg.train_head else set()),
    )
    return [qualified for _, _, qualified in targets]


def _set_trainable(model: nn.Module, components: set[str]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(parameter_component(name) in components)


def apply_strategy(
    model: nn.Module, strategy: Strategy, lora_cfg: LoRAConfig | None = None
) -> nn.Module:
    """Set up a model for fine-tuning, in place.

    - ``frozen``: only the ``head`` component trains.
    - ``lora``: :func:`apply_lora` with ``lora_cfg`` (default :class:`LoRAConfig`).
    - ``full``: every parameter trains.

    Returns:
        ``model`` (for chaining).

    Raises:
        ValueError: unknown ``strategy``.
    """
    if strategy == "frozen":
        _set_trainable(model, {"head"})
    elif strategy == "lora":
        apply_lora(model, lora_cfg if lora_cfg is not None else LoRAConfig())
    elif strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return model


@dataclass
class ComponentCount:
    """Parameter counts of one component."""

    total: int = 0
    trainable: int = 0


@dataclass
class ParameterReport:
    """Trainable-parameter report by component (verify the footprint before every run)."""

    components: dict[str, ComponentCount] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.components.values())

    @property
    def trainable(self) -> int:
        return sum(c.trainable for c in self.components.values())

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def trainable_percentage(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, float]:
        """Flat numbers for logs and ``metrics.json``."""
        out: dict[str, float] = {
            "total": self.total,
            "trainable": self.trainable,
            "frozen": self.frozen,
            "trainable_percentage": self.trainable_percentage,
        }
        for name, c in self.components.items():
            out[f"{name}_total"] = c.total
            out[f"{name}_trainable"] = c.trainable
        return out

    def __str__(self) -> str:
        rows = [f"{'component':<12}{'total':>12}{'trainable':>12}"]
        for name, c in self.components.items():
            rows.append(f"{name:<12}{c.total:>12,}{c.trainable:>12,}")
        rows.append(f"{'all':<12}{self.total:>12,}{self.trainable:>12,}")
        rows.append(f"trainable: {self.trainable_percentage:.2f}%")
        return "\n".join(rows)


def trainable_parameters(model: nn.Module) -> ParameterReport:
    """Count parameters (shared ones once) per component: embeddings, encoder, adapters, head."""
    report = ParameterReport({c: ComponentCount() for c in COMPONENTS})
    for name, p in model.named_parameters():
        c = report.components[parameter_component(name)]
        c.total += p.numel()
        if p.requires_grad:
            c.trainable += p.numel()
    return report


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters, shared ones counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- merge and adapter-only checkpoints ---------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its base weight (see :meth:`LoRALinear.merge`)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors (``*.lora_A``, ``*.lora_B``), detached copies on CPU."""
    return {
        n: p.detach().cpu().clone()
        for n, p in model.named_parameters()
        if parameter_component(n) == "adapters"
    }


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Write :func:`lora_state_dict` to ``path`` with ``torch.save``, atomically (a reader never
    sees half a file: :func:`ehrsurv_dist.atomic.write_torch`)."""
    state = lora_state_dict(model)
    if not state:
        raise ValueError("model has no LoRA adapters to save")
    write_torch(state, path)


def load_lora(model: nn.Module, source: str | Path | dict[str, Tensor]) -> None:
    """Load adapter tensors saved by :func:`save_lora` into a model with the same adapters.

    Raises:
        ValueError: if the keys or shapes differ from the model's adapters, or if adapters are
            merged (unmerge first, or the merged weight would be stale).
    """
    state = (
        torch.load(Path(source), map_location="cpu", weights_only=True)
        if not isinstance(source, dict)
        else source
    )
    layers = lora_layers(model)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("cannot load adapters into merged LoRA layers: call unmerge_lora first")
    params = {n: p for n, p in model.named_parameters() if parameter_component(n) == "adapters"}
    if set(state) != set(params):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"adapter keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for n, p in params.items():
            if state[n].shape != p.shape:
                raise ValueError(f"{n}: shape {tuple(state[n].shape)} != {tuple(p.shape)}")
            p.copy_(state[n])
