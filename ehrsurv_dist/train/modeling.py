"""Model construction from a job spec, and the model files a run exports (pure torch).

The export is the folder ``RUN/model/`` (``rundir.EXPORT``) that ``finetune --init``,
``evaluate`` and ``predict`` load. Nothing in it is a pickle, so loading someone else's model
cannot run code::

    model.safetensors     fp32 weights of the best epoch (LoRA adapters merged in)
    adapters.safetensors  LoRA runs only: the unmerged adapters (``*.lora_A`` / ``*.lora_B``)
    config.json           format, model type and config, the job's model and task sections,
                          the time axis (``task.time_axis``), vocabulary hash, mode, epoch
    vocab.json            a copy of the run's vocabulary

A run written before the folder has ``checkpoints/best/model.pt`` (``rundir.LEGACY_EXPORT``), a
torch pickle: it is read with ``torch.load(weights_only=True)``, whose unpickler builds only
tensors and plain containers; anything else (a class whose unpickling would run code) is
refused before it is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
from torch import nn

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist import task as T
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models import builders as B
from ehrsurv_dist.models.config import BEHRTConfig, HierarchicalConfig, LoRAConfig, LSTMConfig
from ehrsurv_dist.models.lora import apply_strategy

EXPORT_FORMAT = 1  # the fields of the export (same in config.json and in a legacy model.pt)
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
    k = T.num_bins(spec)
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


# Model-config fields that do not shape the encoder's weights (dropout, attention mask, the
# survival head and its pooling): an --init encoder fits whatever they are.
NOT_ENCODER_FIELDS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "head_dropout",
        "attention",
        "visit_pooling",
        "hazard_hidden_dim",
        "num_bins",
    }
)
# The job key that sets a model-config field (the others follow model.size / model.arch).
FIELD_JOB_KEYS = {
    "vocab_size": "vocabulary",
    "max_position": "data.max_seq_len",
    "max_visits": "data.max_visits",
    "max_codes_per_visit": "data.max_codes_per_visit",
    "sinusoidal": "model.sinusoidal",
}


def init_mismatch(export: dict[str, Any], spec: JobSpec, vocab_size: int) -> str | None:
    """Why the encoder of ``export`` (an export's config.json fields) cannot initialise the
    model of ``spec`` with a vocabulary of ``vocab_size``, in one line; None when it fits.

    Compares the export's model type and every model-config field that shapes the encoder's
    weights with the model this job would build, and names the job keys to change.
    """
    mine = model_config(spec, vocab_size)
    there = export.get("job_model") or {}
    theirs_type = export.get("model_type")
    if theirs_type != type(mine).__name__:
        return (
            f"its model is model.arch={there.get('arch', theirs_type)}, this job's is "
            f"model.arch={spec.model.arch}: --init needs a run of the same architecture"
        )
    ours = dataclasses.asdict(mine)
    theirs = export_model_config(export)
    diff = [k for k in ours if k not in NOT_ENCODER_FIELDS and k in theirs and theirs[k] != ours[k]]
    if not diff:
        return None
    fields = ", ".join(f"{k} {theirs[k]} there vs {ours[k]} here" for k in diff)
    fixes: list[str] = []
    for k in diff:
        key = FIELD_JOB_KEYS.get(k, "model.size")
        if key == "model.size":
            fix = f"model.size={there.get('size', '?')} (this job has {spec.model.size})"
        elif key == "data.max_seq_len":
            fix = f"data.max_seq_len={theirs[k]}"
        elif key.startswith(("data.", "model.")):
            fix = f"{key}={str(theirs[k]).lower()}"
        else:
            fix = "the same vocabulary"
        if fix not in fixes:
            fixes.append(fix)
    return (
        f"its encoder does not fit this job's model ({fields}): set {' and '.join(fixes)} "
        "as the pretraining run had, or --init a run made with this job's model settings"
    )


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
    *,
    vocab_path: str,
    epoch: int | None = None,
    adapters: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the model folder ``path`` (see the module doc) whole, atomically.

    Args:
        state_dict: the weights (LoRA merged); stored fp32.
        vocab_path: the run's ``vocab.json``, copied into the folder.
        adapters: a LoRA run's unmerged adapter tensors, or None.
    """
    config = {
        "format": EXPORT_FORMAT,
        "mode": mode,
        "model_type": type(cfg).__name__,
        "model_config": dataclasses.asdict(cfg),
        "job_model": dataclasses.asdict(spec.model),
        "job_task": dataclasses.asdict(spec.task),
        "time_axis": T.time_axis(spec),
        "vocab_hash": vocab_hash,
        "epoch": epoch,
    }
    if adapters:
        config["lora"] = {
            "rank": spec.finetune.lora_rank,
            "alpha": spec.finetune.lora_alpha,
            "scaling": spec.finetune.lora_alpha / spec.finetune.lora_rank,
        }
    with atomic.atomic_dir(path) as tmp:
        _save_tensors(state_dict, os.path.join(tmp, rundir.MODEL_WEIGHTS))
        if adapters:
            _save_tensors(adapters, os.path.join(tmp, rundir.MODEL_ADAPTERS))
        atomic.write_json(config, os.path.join(tmp, rundir.MODEL_CONFIG))
        with open(vocab_path, "rb") as f:
            atomic.write_bytes(f.read(), os.path.join(tmp, rundir.MODEL_VOCAB))


def _save_tensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    from safetensors.torch import save_file

    # Own contiguous fp32 copies: safetensors refuses tensors sharing storage (tied weights).
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()},
        path,
        metadata={"format": "pt"},
    )


def export_path(run_dir: str) -> str:
    """The export of a run directory: ``RUN/model/``, or an older run's ``model.pt``.

    ``run_dir`` may also be a model folder itself (one holding ``config.json``). Returns the
    model folder's path when neither exists (the loader's error names it).
    """
    if os.path.isfile(os.path.join(run_dir, rundir.MODEL_CONFIG)):
        return run_dir
    folder = os.path.join(run_dir, rundir.EXPORT)
    legacy = os.path.join(run_dir, rundir.LEGACY_EXPORT)
    return legacy if not os.path.exists(folder) and os.path.isfile(legacy) else folder


def export_vocab_path(run_dir: str) -> str:
    """The vocabulary a run's export was trained with (the model folder's copy, else the run's)."""
    exp = export_path(run_dir)
    inside = os.path.join(exp, rundir.MODEL_VOCAB)
    return inside if os.path.isfile(inside) else os.path.join(run_dir, rundir.VOCAB)


def load_export(path: str) -> dict[str, Any]:
    """Read an export: a model folder (safetensors + JSON) or a legacy ``model.pt``.

    Returns config.json's fields with ``state_dict`` (and ``adapters`` when saved) added.

    Raises:
        EhrsurvError: missing, unreadable, of an unknown format, or a pickle that is not plain
            weights (refused before anything in it is built or run).
    """
    if os.path.isdir(path):
        d = _load_folder(path)
    elif os.path.isfile(path):
        d = _load_legacy(path)
    else:
        raise EhrsurvError(f"no model export at {path}")
    if d.get("format") != EXPORT_FORMAT:
        raise EhrsurvError(f"{path}: unknown export format {d.get('format')!r}")
    return d


def _load_folder(path: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = os.path.join(path, rundir.MODEL_CONFIG)
    weights = os.path.join(path, rundir.MODEL_WEIGHTS)
    try:
        with open(cfg_path) as f:
            d: dict[str, Any] = json.load(f)
        if not isinstance(d, dict):
            raise ValueError("config.json is not a JSON object")
        d["state_dict"] = load_file(weights, device="cpu")
        adapters = os.path.join(path, rundir.MODEL_ADAPTERS)
        if os.path.exists(adapters):
            d["adapters"] = load_file(adapters, device="cpu")
    except (OSError, ValueError, SafetensorError) as e:
        raise EhrsurvError(f"cannot read model export {path}: {e}") from None
    return d


def _load_legacy(path: str) -> dict[str, Any]:
    """An older run's ``model.pt`` through torch's weights-only unpickler (nothing else)."""
    import pickle

    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise EhrsurvError(
            f"refusing {path}: not a plain weights file, so it is not unpickled "
            f"({_unpickler_reason(e)}); "
            "a model is read from a run's model/ folder (safetensors): re-export or retrain "
            "the run with this version"
        ) from None
    except Exception as e:
        raise EhrsurvError(f"cannot read model export {path}: {e}") from None
    if not isinstance(d, dict):
        raise EhrsurvError(f"{path}: not a model export")
    return d


def _unpickler_reason(e: Exception) -> str:
    """The one line of torch's weights-only error that says what was refused (its message is
    several lines and suggests loading with ``weights_only=False``, which this package never
    does)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error:" in ln:
            reason = ln.split("WeightsUnpickler error:", 1)[1].strip()
            return reason.split(". ", 1)[0].rstrip(".")
    return lines[0] if lines else type(e).__name__


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
