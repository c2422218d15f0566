"""Launch pretraining / fine-tuning as a Ray Train ``TorchTrainer`` job (driver side).

The run directory's layout (``config.yaml``, ``vocab.json``, ``ray/``, the export, ...) is named
in :mod:`ehrsurv_dist.rundir` (docs/design.md §5); ``config.yaml`` is the run's identity (resume
needs the same), ``ray/`` holds Ray Train's per-epoch (ZeRO) checkpoints, kept by score.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist import task as T
from ehrsurv_dist.config import ConfigError, dump_yaml, load_config, to_dict
from ehrsurv_dist.data.cache_plan import decide_cache
from ehrsurv_dist.data.pipeline import IngestPipeline, materialized_in_order, shuffled_blocks
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models.calendar import base_hazard_logit
from ehrsurv_dist.rundir import CONFIG, EXPORT, RAY_DIR, RUN_NAME, TIME_AXIS, VOCAB
from ehrsurv_dist.train import manifest, modeling, tracking
from ehrsurv_dist.train.console import (
    job_log_level,
    quiet_ray_data_console,
    ray_train_log_level,
)
from ehrsurv_dist.train.outdir import (
    check_resume_checkpoints,
    discard_new_run,
    prepare_run_dir,
)
from ehrsurv_dist.train.progress import DriverProgress
from ehrsurv_dist.train.worker import LOOP_FILE, MODEL_FILE, train_func

__all__ = [
    "DATA_CPUS",
    "RunResult",
    "absolute_paths",
    "check_init",
    "check_resources",
    "init_ray",
    "quiet_ray_data_console",
    "resolve_use_gpu",
    "run_training",
]

log = logging.getLogger(__name__)
DATA_CPUS = 1  # kept free for the Ray Data tasks that feed the workers


@dataclass
class RunResult:
    run_dir: str
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]]
    export: str


def init_ray(spec: JobSpec) -> None:
    """Connect to ``ray.address`` / ``RAY_ADDRESS``, else start an in-process local Ray.

    The workers' stdout and stderr are forwarded to this driver (``log_to_driver``), so their
    warnings, errors and per-epoch lines reach its console and ``ray job logs``; what they
    write is kept short by :func:`~ehrsurv_dist.train.console.worker_logging`, and Ray Data's
    INFO chatter stays off the console here too (:func:`quiet_ray_data_console`).
    """
    import ray

    quiet_ray_data_console()
    if ray.is_initialized():
        return
    address = spec.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Logical CPUs: the train workers each hold cpus_per_worker for the whole run, so the
        # Ray Data tasks that feed them need CPUs of their own or the job deadlocks.
        need = max(spec.train.num_workers, 1) * spec.train.cpus_per_worker + DATA_CPUS
        num_cpus = spec.ray.num_cpus or max(os.cpu_count() or 1, int(math.ceil(need)))
        store = spec.ray.object_store_mb
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=None if store is None else store * 2**20,
            include_dashboard=False,
            log_to_driver=True,
        )


def resolve_use_gpu(spec: JobSpec, cluster: Mapping[str, float], *, say: bool = True) -> JobSpec:
    """``train.use_gpu=auto`` decided for ``cluster`` (``ray.cluster_resources()``): true when
    it has a GPU (one per worker: :func:`check_resources` then refuses too few), else false;
    said in one INFO line. A job with true or false is returned as it is."""
    if spec.train.use_gpu != "auto":
        return spec
    gpus = float(cluster.get("GPU", 0))
    use = spec.train.gpu_on(cluster)
    if say:
        log.info(
            "train.use_gpu=auto: the cluster has %g GPU(s), so use_gpu=%s (%s)",
            gpus,
            "true" if use else "false",
            f"one GPU for each of the {spec.train.num_workers} worker(s)" if use else "CPU workers",
        )
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, use_gpu=use))


def _resumed_gpu_choice(spec: JobSpec, out: str) -> JobSpec:
    """``train.use_gpu=auto`` of a run being resumed: what the run resolved it to when it
    started (its ``config.yaml`` holds that), so the same command resumes the same run."""
    path = os.path.join(out, CONFIG)
    if spec.train.use_gpu != "auto" or not os.path.isfile(path):
        return spec
    try:
        old = load_config(JobSpec, path)
    except ConfigError:
        return spec  # prepare_run_dir says what is wrong with it
    if isinstance(old.train.use_gpu, bool):
        return dataclasses.replace(
            spec, train=dataclasses.replace(spec.train, use_gpu=old.train.use_gpu)
        )
    return spec


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
    if spec.train.gpu and n > res.get("GPU", 0):
        raise EhrsurvError(
            f"train.use_gpu with {n} worker(s) needs {n} GPUs; the cluster has {res.get('GPU', 0):g}"
        )


def _preflight(
    spec: JobSpec, mode: str, out: str, resume: bool, vocab: Vocabulary | None
) -> tuple[Any, Any, JobSpec]:
    """Everything before training, cheapest first: checkpoints (resume), the cohort (validated
    before Ray starts), resources, then the vocabulary fit, the split checks and (calendar
    axis) the day bins. Returns the job with its bins resolved."""
    if resume:
        check_resume_checkpoints(out)
    layout = modeling.layout_of(spec)
    mlm = mode == "pretrain" and spec.pretrain.objective in ("mlm", "joint")
    pipe = IngestPipeline(
        spec.data.cohort,
        spec.data,
        layout=layout,  # type: ignore[arg-type]
        seed=spec.seed,
        mlm=mlm,
        require_outcomes=mode == "finetune",
        pad_multiple=spec.data.resolved_pad_multiple(spec.train.use_gpu is True),
        task=T.task_spec(spec) if mode == "finetune" else None,
    )
    init_ray(spec)
    if spec.train.use_gpu == "auto":
        import ray

        spec = resolve_use_gpu(spec, ray.cluster_resources())
        dump_yaml(spec, os.path.join(out, CONFIG))  # the run records what auto became
        pipe.pad_multiple = spec.data.resolved_pad_multiple(spec.train.use_gpu is True)
    check_resources(spec)
    vocab_path = os.path.join(out, VOCAB)
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
    if mode == "finetune" and T.is_calendar(spec):
        spec = _resolve_bins(spec, out, resume, fit)
        pipe.bin_edges = tuple(T.edges_of(spec) or ())
    train_subjects = fit.stats[S.TRAIN_SPLIT]["subjects"]
    if train_subjects == 0:
        raise EhrsurvError(f"the train split of {spec.data.cohort} is empty")
    if fit.stats[S.TUNING_SPLIT]["subjects"] == 0:
        raise EhrsurvError(
            f"the tuning split of {spec.data.cohort} is empty (needed for validation and "
            "early stopping)"
        )
    if mode == "finetune":
        for split in (S.TRAIN_SPLIT, S.TUNING_SPLIT):
            if fit.stats[split]["events"] == 0:  # all censored: nothing to learn or rank
                raise EhrsurvError(
                    f"the {split} split of {spec.data.cohort} has no events (all "
                    f"{fit.stats[split]['subjects']} subjects censored): the likelihood has "
                    "nothing to learn and the validation C-index is undefined"
                )
    return fit, pipe, spec


def _resolve_bins(spec: JobSpec, out: str, resume: bool, fit: Any) -> JobSpec:
    """The calendar axis's day bins: the run's own on resume, else given or fitted on the
    train split's event times; saved as ``RUN/time_axis.json``."""
    if resume and os.path.exists(os.path.join(out, TIME_AXIS)):
        return T.with_run_edges(spec, out)
    edges = T.resolve_edges(spec, fit.event_days.get(S.TRAIN_SPLIT))
    spec = T.with_edges(spec, edges)
    T.save_time_axis(spec, os.path.join(out, TIME_AXIS))
    log.info("calendar axis: %d day bins, edges %s", len(edges) - 1, edges)
    return spec


def run_training(
    spec: JobSpec,
    mode: str,
    out: str,
    *,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    tracking_within: tracking.Target | None = None,
) -> RunResult:
    """Fit the vocabulary, train with Ray Train, export the best model; resumable.

    Args:
        spec: the resolved job config (``data.cohort`` set).
        mode: ``pretrain`` or ``finetune``.
        out: run directory (new, or the same run to resume).
        progress: draw a progress bar on the driver (``train/progress.py``).
        callbacks: Ray Train callbacks for the run's ``RunConfig``, e.g. Tune's
            ``TuneReportCallback`` when a Tune trial drives this run (``ehrsurv_dist/tune/run.py``).
        tracking_within: a sweep's tracking target: this run is one of its trials
            (``train/tracking.py``).
    """
    if mode not in ("pretrain", "finetune"):
        raise ValueError(f"mode must be pretrain or finetune, got {mode!r}")
    if not spec.data.cohort:
        raise ConfigError("data.cohort", "no cohort: pass --cohort DIR or set data.cohort")
    tracking.check_installed(spec.train.tracking)  # a missing package: before Ray starts
    out = os.path.abspath(out)
    # Workers run in Ray's own working directory: hand them absolute local paths.
    spec = absolute_paths(spec)
    init_export, vocab = _init_export(spec, mode)
    warn_random_encoder(spec, mode)
    created = not os.path.exists(out)
    spec = _resumed_gpu_choice(spec, out)
    resume = prepare_run_dir(out, spec, mode)
    try:  # pre-flight: a failure before training leaves no half-made new run behind
        fit, pipe, spec = _preflight(spec, mode, out, resume, vocab)
    except BaseException:
        if not resume:
            discard_new_run(out, created)
        raise
    config = _worker_config(spec, mode, fit, pipe, init_export)
    target = tracking.open_run(spec, out, mode, within=tracking_within)
    if target is not None:
        from ehrsurv_dist.train.tracking_callback import TrackingCallback

        # first: a Tune trial's TuneReportCallback hands the epoch to Tune, whose scheduler
        # may end the trial (and this run) at once, before any later callback has run
        callbacks = [TrackingCallback(target), *callbacks]
    try:
        result = _fit(spec, out, config, pipe, epoch_subjects(spec, fit), progress, callbacks)
        res = _export_best(spec, mode, out, fit, result)
    except BaseException as e:
        tracking.end_run(target, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    tracking.end_run(target, "FINISHED")
    return res


def epoch_subjects(spec: JobSpec, fit: Any) -> int:
    """Train subjects (calendar axis: samples) an epoch reads at most, over all workers."""
    n = int(fit.stats[S.TRAIN_SPLIT]["subjects"])
    bound = spec.train.max_steps_per_epoch
    if bound is None:
        return n
    per_step = spec.data.batch_size * spec.train.engine.grad_accum * spec.train.num_workers
    return min(n, bound * per_step)


def _init_export(spec: JobSpec, mode: str) -> tuple[str | None, Vocabulary | None]:
    """The export a fine-tuning run starts from (``finetune.init``) and its vocabulary
    (hash-checked against the export), or (None, None).

    Raises:
        EhrsurvError: the export is unreadable, its vocabulary is not the one it was trained
            with, or its encoder does not fit this job's model (another architecture, size or
            sequence length): refused here, before Ray starts, in one line.
    """
    if not (mode == "finetune" and spec.finetune.init):
        return None, None
    return check_init([spec])[spec.finetune.init]


def check_init(specs: Sequence[JobSpec]) -> dict[str, tuple[str, Vocabulary]]:
    """Check every ``finetune.init`` of ``specs`` (each export read once): readable, its
    vocabulary the one it was trained with, its encoder fitting each job's model. Returns
    init -> (export path, vocabulary).

    Raises:
        EhrsurvError: one line naming the --init run and what does not fit.
    """
    found: dict[str, tuple[str, Vocabulary]] = {}
    exports: dict[str, dict[str, Any]] = {}
    for spec in specs:
        init = spec.finetune.init
        if not init:
            continue
        if init not in found:
            path = modeling.export_path(init)  # RUN/model/ (safetensors)
            exports[init] = modeling.load_export(path)
            vocab = Vocabulary.load(modeling.export_vocab_path(init))
            vocab.check_hash(exports[init]["vocab_hash"], source=path)
            found[init] = (path, vocab)
        why = modeling.init_mismatch(exports[init], spec, found[init][1].size)
        if why:
            raise EhrsurvError(f"--init {init}: {why}")
    return found


def warn_random_encoder(spec: JobSpec, mode: str) -> bool:
    """Warn in one line when fine-tuning keeps a random encoder frozen (``finetune.strategy``
    frozen or lora without ``--init``): only the head (and the adapters) learn. True if it
    warned. The default strategy stays lora, the strategy for a pretrained encoder
    (docs/training.md)."""
    f = spec.finetune
    if mode != "finetune" or f.init or f.strategy == "full":
        return False
    learns = (
        "the head"
        if f.strategy == "frozen"
        else "the adapters, the embeddings and the head"
        if f.train_embeddings
        else "the adapters and the head"
    )
    log.warning(
        "finetune.strategy=%s without --init: the encoder keeps its random initial weights "
        "(training updates only %s); pass --init of a pretraining run, or set "
        "finetune.strategy=full to train every weight from scratch",
        f.strategy,
        learns,
    )
    return True


def _divided_splits(spec: JobSpec) -> list[str]:
    """Splits Ray Train divides between the workers (anew every epoch).

    One worker reads the whole train split: Ray's split coordinator actor (and its per-epoch
    start-up barrier) would only hand every block to that one worker.
    """
    return [S.TRAIN_SPLIT] if spec.train.num_workers > 1 else []


def _worker_config(
    spec: JobSpec, mode: str, fit: Any, pipe: Any, init_export: str | None
) -> dict[str, Any]:
    """``train_loop_config`` of every worker (:func:`worker.train_func`)."""
    return {
        "spec": to_dict(spec),
        "mode": mode,
        "batch_spec": pipe.batch_spec(),
        "vocab_size": fit.vocab.size,
        "train_subjects": fit.stats[S.TRAIN_SPLIT]["subjects"],
        # calendar axis: the head starts at the train split's average hazard per bin
        "hazard_bias": (
            base_hazard_logit(
                fit.stats[S.TRAIN_SPLIT]["subjects"],
                fit.stats[S.TRAIN_SPLIT]["events"],
                T.num_bins(spec),
            )
            if mode == "finetune" and T.is_calendar(spec)
            else None
        ),
        "init_export": init_export,
        # the workers log the package at the driver's level (train/console.py)
        "log_level": job_log_level(),
        # Splits Ray Train divides between the workers (anew every epoch); the others every
        # worker reads whole, so it may keep their blocks (worker.py).
        "divided_splits": _divided_splits(spec),
        # data.cache as decided on the connected cluster (auto: by the splits' size)
        "cache": cache_choice(spec, fit),
        # Fault injection for the recovery tests: the last rank raises after reporting this
        # epoch, once (not after a resume). Unset in normal use.
        "fault_after_epoch": _env_int("EHRSURV_FAULT_AFTER_EPOCH"),
    }


def _trainer(
    spec: JobSpec, out: str, config: dict[str, Any], pipe: Any, callbacks: Sequence[Any]
) -> Any:
    """The ``TorchTrainer`` of the run: workers, storage, failures, kept checkpoints, data."""
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.gpu,
            resources_per_worker={"CPU": spec.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=os.path.join(out, RAY_DIR),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            # Train V2's RunConfig (the one Ray 2.60 runs); mypy sees the V1 stub without it
            logging_config=LoggingConfig(  # type: ignore[call-arg]
                log_level=ray_train_log_level(config["log_level"])
            ),
            callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(
                num_to_keep=spec.train.keep_checkpoints,
                checkpoint_score_attribute="val_score",
                checkpoint_score_order="max",
            ),
        ),
        datasets=split_datasets(spec, pipe, config["cache"]),
        dataset_config=DataConfig(datasets_to_split=config["divided_splits"]),
    )


def _fit(
    spec: JobSpec,
    out: str,
    config: dict[str, Any],
    pipe: Any,
    train_subjects: int,
    progress: bool,
    callbacks: Sequence[Any],
) -> Any:
    """Train under the driver's progress bar; Ray Train's ``Result``.

    Raises:
        EhrsurvError: training failed (re-running the same command resumes).
    """
    import ray.train

    try:
        with DriverProgress(spec.train.epochs, train_subjects, enabled=progress) as bar:
            config["progress"] = bar.sink  # before the trainer is built: it ships the config
            result = _trainer(spec, out, config, pipe, callbacks).fit()
    except ray.train.TrainingFailedError as e:
        # Re-running the same command resumes from the last checkpoint.
        raise EhrsurvError(f"training failed (re-run the same command to resume): {e}") from e
    if result.error is not None:
        raise EhrsurvError(f"training failed (re-run the same command to resume): {result.error}")
    return result


def _export_best(spec: JobSpec, mode: str, out: str, fit: Any, result: Any) -> RunResult:
    """Export the best intact checkpoint's model to the folder ``RUN/model/``."""
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
        vocab_path=os.path.join(out, VOCAB),
        epoch=payload["epoch"],
        adapters=payload.get("adapters"),
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


def absolute_paths(spec: JobSpec) -> JobSpec:
    """``data.cohort``, ``data.outcomes``, ``finetune.init`` and ``train.step_log`` as absolute
    paths (URIs kept)."""

    def absolute(p: str | None) -> str | None:
        return p if not p or "://" in p else os.path.abspath(p)

    data = dataclasses.replace(
        spec.data, cohort=absolute(spec.data.cohort) or "", outcomes=absolute(spec.data.outcomes)
    )
    ft = dataclasses.replace(spec.finetune, init=absolute(spec.finetune.init))
    tr = dataclasses.replace(spec.train, step_log=absolute(spec.train.step_log))
    return dataclasses.replace(spec, data=data, finetune=ft, train=tr)


def split_datasets(spec: JobSpec, pipe: Any, cache: bool) -> dict[str, Any]:
    """The train and tuning splits' Ray Datasets; with ``cache`` (``data.cache`` as decided
    by :func:`cache_choice`), each executed once into the object store.

    A lazy dataset is re-read and re-encoded from Parquet every epoch, which on a small or busy
    machine is most of an epoch's time (the trainer waits on it). The encoded split is compact
    (one row per subject, ~12 bytes per token), so caching it is cheap; epochs then only
    re-bucket, pad and mask it on the workers (fresh every epoch, as before). With
    ``train.max_steps_per_epoch`` the train split's blocks come in a new random order every
    epoch (cached: the kept blocks are reordered; streamed: the units are read in a new order),
    so bounded epochs do not all read the same first units. A cached split is kept in the plan's
    unit order (:func:`~ehrsurv_dist.data.pipeline.materialized_in_order`), so a 1-worker run
    trains the same batches in the same order every time it runs with the same seed.
    """
    bounded = spec.train.max_steps_per_epoch is not None
    out = {}
    for split in (S.TRAIN_SPLIT, S.TUNING_SPLIT):
        seed = spec.seed if bounded and split == S.TRAIN_SPLIT else None
        if cache:
            ds = materialized_in_order(pipe.dataset(split))
            out[split] = ds if seed is None else shuffled_blocks(ds, seed)
        else:
            out[split] = pipe.dataset(split, block_order_seed=seed)
    return out


def cache_choice(spec: JobSpec, fit: Any) -> bool:
    """``data.cache`` decided for this run on the connected cluster (``auto``: by size), said
    in one line; ``true`` on splits larger than the object store is refused.

    Raises:
        ConfigError: ``data.cache=true`` and the splits cannot fit.
    """
    import ray

    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    choice = decide_cache(spec.data.cache, fit.stats, modeling.layout_of(spec), store)
    log.info("%s", choice.reason)
    return choice.cache


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def _best_checkpoint(result: Any) -> Any:
    """The best-scoring checkpoint whose manifest verifies (a corrupted one is passed over)."""
    ranked = sorted(  # stable: among equal scores the earliest first, as max() did
        result.best_checkpoints or [], key=lambda cm: -cm[1].get("val_score", float("-inf"))
    )
    cands = [c for c, _ in ranked] or ([result.checkpoint] if result.checkpoint is not None else [])
    if not cands:
        raise EhrsurvError("training produced no checkpoint")
    for c in cands:
        with c.as_directory() as d:
            problems = manifest.verify_checkpoint(d)
        if not problems:
            return c
        log.warning("checkpoint %s is corrupted (%s); not exported", c.path, problems[0])
    raise manifest.CheckpointError("every kept checkpoint is corrupted; nothing to export")


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
    if not os.path.exists(path):
        raise EhrsurvError(f"checkpoint has no {MODEL_FILE}: {path}")
    # Tensors and plain values only (worker.report_epoch): the weights-only loader suffices.
    out: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return out
