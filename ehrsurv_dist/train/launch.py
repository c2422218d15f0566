"""Launch pretraining / fine-tuning as a Ray Train ``TorchTrainer`` job (driver side).

Run directory layout (DESIGN.md §5)::

    RUN/config.yaml          resolved job config (the run's identity: resume needs the same)
    RUN/vocab.json           vocabulary with its content hash
    RUN/rejects.parquet      subjects dropped, with the reason (only if any)
    RUN/ray/                 Ray Train storage: per-epoch (ZeRO) checkpoints, kept by score
    RUN/checkpoints/best/model.pt   consolidated fp32 export of the best epoch
    RUN/metrics.json         training history (+ evaluation, for finetune)
    RUN/plots/*.png          training curves (+ evaluation plots)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import ConfigError, dump_yaml, load_config, to_dict
from ehrsurv_dist.data import io
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import EhrsurvError, OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.worker import LOOP_FILE, MODEL_FILE, train_func

log = logging.getLogger(__name__)
RAY_DIR = "ray"
DATA_CPUS = 1  # kept free for the Ray Data tasks that feed the workers
RUN_NAME = "train"
EXPORT = os.path.join("checkpoints", "best", "model.pt")


@dataclass
class RunResult:
    run_dir: str
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]]
    export: str


def prepare_run_dir(out: str, spec: JobSpec, mode: str) -> bool:
    """Create ``out`` or check that it holds this same run (then it resumes); True = resume.

    Raises:
        OutputError: ``out`` holds another run, other files, or is not writable.
    """
    cfg_path = os.path.join(out, "config.yaml")
    if os.path.exists(cfg_path):
        try:
            old = load_config(JobSpec, cfg_path)
        except ConfigError as e:
            raise OutputError(f"{out} holds a run whose config cannot be read: {e}") from None
        mode_file = os.path.join(out, "MODE")
        old_mode = open(mode_file).read().strip() if os.path.exists(mode_file) else "?"
        if old != spec or old_mode != mode:
            raise OutputError(
                f"{out} already holds another run (different config or mode); "
                "choose a new --out, or re-run with the same config to resume it"
            )
        return True
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"{out} is not empty and holds no run; choose a new --out")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None
    dump_yaml(spec, cfg_path)
    io.write_text_atomic(mode + "\n", os.path.join(out, "MODE"))
    return False


def init_ray(spec: JobSpec) -> None:
    """Connect to ``ray.address`` / ``RAY_ADDRESS``, else start an in-process local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Logical CPUs: the train workers each hold cpus_per_worker for the whole run, so the
        # Ray Data tasks that feed them need CPUs of their own or the job deadlocks.
        need = max(spec.train.num_workers, 1) * spec.train.cpus_per_worker + DATA_CPUS
        num_cpus = spec.ray.num_cpus or max(os.cpu_count() or 1, int(math.ceil(need)))
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def check_resources(spec: JobSpec) -> None:
    """Refuse a job that asks for more CPUs or GPUs than the cluster has (before any work)."""
    import ray

    res = ray.cluster_resources()
    n = max(spec.train.num_workers, 1)
    need_cpu = n * spec.train.cpus_per_worker + DATA_CPUS
    if need_cpu > res.get("CPU", 0):
        raise EhrsurvError(
            f"train.num_workers={spec.train.num_workers} x train.cpus_per_worker="
            f"{spec.train.cpus_per_worker:g} + {DATA_CPUS} CPU for Ray Data needs {need_cpu:g} "
            f"CPUs; the cluster has {res.get('CPU', 0):g}"
        )
    if spec.train.use_gpu and n > res.get("GPU", 0):
        raise EhrsurvError(
            f"train.use_gpu with {n} worker(s) needs {n} GPUs; the cluster has {res.get('GPU', 0):g}"
        )


def run_training(spec: JobSpec, mode: str, out: str) -> RunResult:
    """Fit the vocabulary, train with Ray Train, export the best model; resumable.

    Args:
        spec: the resolved job config (``data.cohort`` set).
        mode: ``pretrain`` or ``finetune``.
        out: run directory (new, or the same run to resume).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ehrsurv_dist.data.pipeline import IngestPipeline

    if mode not in ("pretrain", "finetune"):
        raise ValueError(f"mode must be pretrain or finetune, got {mode!r}")
    if not spec.data.cohort:
        raise ConfigError("data.cohort", "no cohort: pass --cohort DIR or set data.cohort")
    out = os.path.abspath(out)
    # Workers run in Ray's own working directory: hand them absolute local paths.
    spec = _absolute_paths(spec)
    init_export = None
    vocab: Vocabulary | None = None
    if mode == "finetune" and spec.finetune.init:
        init_export = os.path.join(spec.finetune.init, EXPORT)
        exp = modeling.load_export(init_export)
        vocab = Vocabulary.load(os.path.join(spec.finetune.init, "vocab.json"))
        vocab.check_hash(exp["vocab_hash"], source=init_export)
    resume = prepare_run_dir(out, spec, mode)
    init_ray(spec)
    check_resources(spec)

    layout = modeling.layout_of(spec)
    mlm = mode == "pretrain" and spec.pretrain.objective in ("mlm", "joint")
    pipe = IngestPipeline(
        spec.data.cohort,
        spec.data,
        layout=layout,  # type: ignore[arg-type]
        seed=spec.seed,
        mlm=mlm,
        require_outcomes=mode == "finetune",
    )
    vocab_path = os.path.join(out, "vocab.json")
    if resume and os.path.exists(vocab_path):
        saved = Vocabulary.load(vocab_path)
        vocab = vocab or saved
        vocab.check_hash(saved.hash, source=vocab_path)
    fit = pipe.fit(
        vocab,
        use_ray=True,
        vocab_path=vocab_path,
        rejects_path=os.path.join(out, S.REJECTS_FILE),
    )
    train_subjects = fit.stats[S.TRAIN_SPLIT]["subjects"]
    if train_subjects == 0:
        raise EhrsurvError(f"the train split of {spec.data.cohort} is empty")
    if mode == "finetune" and fit.stats[S.TUNING_SPLIT]["subjects"] == 0:
        raise EhrsurvError(
            f"the tuning split of {spec.data.cohort} is empty (needed for early stopping)"
        )
    bspec = pipe.batch_spec()
    config = {
        "spec": to_dict(spec),
        "mode": mode,
        "batch_spec": bspec,
        "vocab_size": fit.vocab.size,
        "train_subjects": train_subjects,
        "init_export": init_export,
        # Fault injection for the recovery tests: the last rank raises after reporting this
        # epoch, once (not after a resume). Unset in normal use.
        "fault_after_epoch": _env_int("EHRSURV_FAULT_AFTER_EPOCH"),
    }
    trainer = TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker={"CPU": spec.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=os.path.join(out, RAY_DIR),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.train.keep_checkpoints,
                checkpoint_score_attribute="val_score",
                checkpoint_score_order="max",
            ),
        ),
        datasets={
            S.TRAIN_SPLIT: pipe.dataset(S.TRAIN_SPLIT),
            S.TUNING_SPLIT: pipe.dataset(S.TUNING_SPLIT),
        },
        dataset_config=DataConfig(datasets_to_split=[S.TRAIN_SPLIT]),
    )
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        # Re-running the same command resumes from the last checkpoint.
        raise EhrsurvError(f"training failed (re-run the same command to resume): {e}") from e
    if result.error is not None:
        raise EhrsurvError(f"training failed (re-run the same command to resume): {result.error}")
    best = _best_checkpoint(result)
    with best.as_directory() as d:
        payload = _load_torch(os.path.join(d, MODEL_FILE))
    cfg = modeling.model_config(spec, fit.vocab.size)
    export = os.path.join(out, EXPORT)
    modeling.save_export(
        export,
        payload["state_dict"],
        cfg,
        spec,
        mode,
        fit.vocab.hash,
        extra={"epoch": payload["epoch"]},
    )
    history = _history(result)
    best_row = max(history, key=lambda r: r.get("val_score", float("-inf"))) if history else {}
    return RunResult(
        run_dir=out,
        best_epoch=int(best_row.get("epoch", payload["epoch"])),
        best_score=float(best_row.get("val_score", float("nan"))),
        history=history,
        export=export,
    )


def _absolute_paths(spec: JobSpec) -> JobSpec:
    """``data.cohort``, ``data.outcomes`` and ``finetune.init`` as absolute paths (URIs kept)."""

    def absolute(p: str | None) -> str | None:
        return p if not p or "://" in p else os.path.abspath(p)

    data = dataclasses.replace(
        spec.data, cohort=absolute(spec.data.cohort) or "", outcomes=absolute(spec.data.outcomes)
    )
    ft = dataclasses.replace(spec.finetune, init=absolute(spec.finetune.init))
    return dataclasses.replace(spec, data=data, finetune=ft)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def _best_checkpoint(result: Any) -> Any:
    if result.best_checkpoints:
        return max(result.best_checkpoints, key=lambda cm: cm[1].get("val_score", float("-inf")))[0]
    if result.checkpoint is None:
        raise EhrsurvError("training produced no checkpoint")
    return result.checkpoint


def _history(result: Any) -> list[dict[str, Any]]:
    """Per-epoch metrics from the latest checkpoint's loop state (which survives resumes)."""
    ck = result.checkpoint
    if ck is None:
        return []
    with ck.as_directory() as d:
        path = os.path.join(d, LOOP_FILE)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return list(json.load(f).get("history", []))


def _load_torch(path: str) -> dict[str, Any]:
    import torch

    if not os.path.exists(path):
        raise EhrsurvError(f"checkpoint has no {MODEL_FILE}: {path}")
    out: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return out
