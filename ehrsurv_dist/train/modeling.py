"""Model construction from a job spec, and the consolidated export format (pure torch).

An export (``checkpoints/best/model.pt``) is one file that ``finetune --init``, ``evaluate``
and ``predict`` load: fp32 weights, the model config, the job's model section, the task and
the vocabulary hash it was trained with.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from ehrsurv_dist import atomic
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models import builders as B
from ehrsurv_dist.models.config import BEHRTConfig, HierarchicalConfig, LoRAConfig, LSTMConfig
from ehrsurv_dist.models.lora import apply_strategy
from ehrsurv_dist.task import num_bins

EXPORT_FORMAT = 1
ModelConfig = BEHRTConfig | HierarchicalConfig | LSTMConfig

# Model-config fields renamed since exports were first written: old key -> new key. An export's
# ``model_config`` is read through this map, so older exports still load (same format number).
RENAMED_CONFIG_FIELDS = {"use_sinusoidal": "sinusoidal"}


def layout_of(spec: JobSpec) -> str:
    """Batch layout the model reads: flat for BEHRT, hierarchical for the other two."""
    return "flat" if spec.model.arch == "behrt" else "hierarchical"


def model_config(spec: JobSpec, vocab_size: int) -> ModelConfig:
    """The model config of the job's ``model`` section for a vocabulary of ``vocab_size``
    (on the calendar axis, with one hazard per day bin of the job's resolved ``task.bins``)."""
    m, d = spec.model, spec.data
    k = num_bins(spec)
    cal = {"num_bins": k} if k else {}
    # model.size is one of tiny/small/medium/large (checked by the job schema), and every
    # architecture but the LSTM has a builder per size: builders.behrt_small, ...
    if m.arch == "behrt":
        return getattr(B, f"behrt_{m.size}")(  # type: ignore[no-any-return]
            vocab_size,
            d.max_seq_len,
            dropout=m.dropout,
            attention=m.attention,
            sinusoidal=m.sinusoidal,
            visit_pooling=m.visit_pooling,
            **cal,
        )
    if m.arch == "hierarchical":
        return getattr(B, f"hierarchical_{m.size}")(  # type: ignore[no-any-return]
            vocab_size,
            max_visits=d.max_visits,
            max_codes_per_visit=d.max_codes_per_visit,
            dropout=m.dropout,
            attention=m.attention,
            **cal,
        )
    lb = B.lstm_tiny if m.size == "tiny" else B.lstm_baseline
    return lb(vocab_size, **cal)


def lora_config(spec: JobSpec) -> LoRAConfig:
    f = spec.finetune
    return LoRAConfig(
        rank=f.lora_rank,
        alpha=f.lora_alpha,
        dropout=f.lora_dropout,
        target_ffn=f.lora_ffn,
        train_embeddings=f.train_embeddings,
    )


def build_model(spec: JobSpec, vocab_size: int, mode: str) -> nn.Module:
    """A fresh model for ``mode`` (``pretrain``: BEHRT + MLM/NVP heads; ``finetune``: survival)."""
    cfg = model_config(spec, vocab_size)
    if mode == "pretrain":
        if not isinstance(cfg, BEHRTConfig):
            raise EhrsurvError("pretraining needs model.arch=behrt")
        obj = spec.pretrain.objective
        return B.build_pretraining_model(
            cfg, mlm=obj in ("mlm", "joint"), nvp=obj in ("nvp", "joint")
        )
    return B.build_survival_model(cfg)


def prepare_finetune(model: nn.Module, spec: JobSpec) -> nn.Module:
    """Apply the fine-tuning strategy (frozen / LoRA / full) in place."""
    return apply_strategy(model, spec.finetune.strategy, lora_config(spec))


def load_encoder(model: nn.Module, export: dict[str, Any]) -> int:
    """Copy a pretrained export's encoder weights into ``model.encoder``; returns the count.

    Raises:
        EhrsurvError: the export has no encoder, or shapes/keys do not match (another size or
            vocabulary).
    """
    enc = {
        k[len("encoder.") :]: v for k, v in export["state_dict"].items() if k.startswith("encoder.")
    }
    target = getattr(model, "encoder", None)
    if not enc or target is None:
        raise EhrsurvError("the --init export has no BEHRT encoder to load")
    own = target.state_dict()
    missing = sorted(set(own) - set(enc))
    bad = [k for k in own if k in enc and tuple(enc[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise EhrsurvError(
            "the --init encoder does not fit this model (other size or vocabulary): "
            + (f"missing {missing[:3]} " if missing else "")
            + (f"shape mismatch {bad[:3]}" if bad else "")
        )
    target.load_state_dict({k: enc[k] for k in own}, strict=True)
    return len(own)


def save_export(
    path: str,
    state_dict: dict[str, torch.Tensor],
    cfg: ModelConfig,
    spec: JobSpec,
    mode: str,
    vocab_hash: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the consolidated export atomically."""
    payload = {
        "format": EXPORT_FORMAT,
        "mode": mode,
        "model_type": type(cfg).__name__,
        "model_config": dataclasses.asdict(cfg),
        "job_model": dataclasses.asdict(spec.model),
        "vocab_hash": vocab_hash,
        "state_dict": {k: v.detach().to("cpu", torch.float32) for k, v in state_dict.items()},
        **(extra or {}),
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_export(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise EhrsurvError(f"no model export at {path}")
    try:
        d: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise EhrsurvError(f"cannot read model export {path}: {e}") from None
    if d.get("format") != EXPORT_FORMAT:
        raise EhrsurvError(f"{path}: unknown export format {d.get('format')!r}")
    return d


def model_from_export(export: dict[str, Any]) -> nn.Module:
    """Rebuild the exported survival model with its weights (merged LoRA included)."""
    types = {
        "BEHRTConfig": BEHRTConfig,
        "HierarchicalConfig": HierarchicalConfig,
        "LSTMConfig": LSTMConfig,
    }
    cfg = types[export["model_type"]](**export_model_config(export))
    model = B.build_survival_model(cfg)
    model.load_state_dict(export["state_dict"], strict=True)
    return model.eval()


def export_model_config(export: dict[str, Any]) -> dict[str, Any]:
    """The export's ``model_config`` with the current field names (see ``RENAMED_CONFIG_FIELDS``).

    Raises:
        EhrsurvError: the export holds both a field's old and new name.
    """
    cfg = dict(export["model_config"])
    for old, new in RENAMED_CONFIG_FIELDS.items():
        if old in cfg:
            if new in cfg:
                raise EhrsurvError(f"export model_config has both {old!r} and {new!r}")
            cfg[new] = cfg.pop(old)
    return cfg


def merge_lora_state(
    state_dict: dict[str, torch.Tensor], scaling: float
) -> dict[str, torch.Tensor]:
    """Fold LoRA adapters into their base weights: ``W + scaling * B @ A``; adapters dropped.

    The result loads into the plain (adapter-free) model, so exports never depend on LoRA.
    """
    out = {k: v for k, v in state_dict.items() if not k.endswith((".lora_A", ".lora_B"))}
    for k in state_dict:
        if k.endswith(".lora_A"):
            p = k[: -len(".lora_A")]
            out[p + ".weight"] = state_dict[p + ".weight"] + scaling * (
                state_dict[p + ".lora_B"] @ state_dict[k]
            )
    return out
