"""The Ray Train worker: one ``train_func`` per rank (Ray imported in functions: the edge).

shard → batches → loop → every rank saves its (ZeRO) shard → every rank reports with the
checkpoint. Re-launching the same run, or a replaced worker after a failure, resumes from
``ray.train.get_checkpoint()``: model, optimizer, scheduler, step counters and loop state.

``train_func`` only wires the steps together; each step is a function of its own: the rank's
context (:func:`rank_context`), model and engine (:func:`build_rank_engine`), resume
(:func:`resume_state`), the shards (:func:`rank_shards`), one epoch (:func:`run_epoch`),
validation (:func:`validate`), the epoch's metrics (:func:`epoch_metrics`) and the checkpoint
with the report (:func:`report_epoch`).

What a worker says reaches the driver's console and ``ray job logs`` (``train/console.py``):
warnings (an epoch without a training step, a corrupted checkpoint passed over) and, at INFO,
one line per epoch and rank with its loss, steps and seconds; never a subject's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from ehrsurv_dist import atomic
from ehrsurv_dist import metrics as M
from ehrsurv_dist import schema as S
from ehrsurv_dist.calendar_eval import survival_at_edges
from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.collate import BatchSpec
from ehrsurv_dist.data.shards import KeptShard
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models.calendar import init_hazard_bias
from ehrsurv_dist.train import manifest, modeling
from ehrsurv_dist.train.console import worker_logging
from ehrsurv_dist.train.distributed import all_reduce
from ehrsurv_dist.train.engine import Engine, build_engine
from ehrsurv_dist.train.loop import (
    EpochResult,
    LoopState,
    StepHooks,
    TaskFn,
    mean_loss,
    predict,
    synchronized,
    train_epoch,
)
from ehrsurv_dist.train.prefetch import close_source, prefetch
from ehrsurv_dist.train.progress import StepReporter
from ehrsurv_dist.train.steplog import StepLog
from ehrsurv_dist.train.tasks import build_task

log = logging.getLogger(__name__)
MODEL_FILE = "model_fp32.pt"
LOOP_FILE = "loop_state.json"


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


@contextlib.contextmanager
def _intact_checkpoint(ckpt: Any) -> Iterator[str]:
    """A local directory of the latest intact checkpoint (see ``train/manifest.py``).

    On local storage a corrupted latest checkpoint is skipped, with a warning, for the newest
    intact older sibling; on remote storage it is only verified (no fallback).

    Raises:
        manifest.CheckpointError: no intact checkpoint.
    """
    if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
        choice = manifest.choose_checkpoint(manifest.local_candidates(ckpt.path))
        if choice.skipped:
            log.warning("%s", choice.warning())
        yield choice.path
        return
    with ckpt.as_directory() as d:
        problems = manifest.verify_checkpoint(d)
        if problems:
            raise manifest.CheckpointError(f"checkpoint {ckpt.path} is corrupted: {problems[0]}")
        yield d


@dataclass
class RankContext:
    """What every step of one rank's run shares."""

    spec: JobSpec
    mode: str  # pretrain | finetune
    bspec: BatchSpec  # training batches
    val_spec: BatchSpec  # validation batches (no MLM masking when fine-tuning)
    rank: int
    world: int
    device: torch.device
    config: dict[str, Any]  # train_func's config (launch.run_training)

    @property
    def progress(self) -> Any:
        """The driver's progress actor (train/progress.py), or None."""
        return self.config.get("progress")


def rank_context(config: dict[str, Any]) -> RankContext:
    """This rank's context from ``train_func``'s config; seeds torch and numpy."""
    import ray.train
    import ray.train.torch

    spec = load_config(JobSpec, base=config["spec"])
    mode: str = config["mode"]
    bspec: BatchSpec = config["batch_spec"]
    val_spec = dataclasses.replace(bspec, mlm_vocab_size=None) if mode == "finetune" else bspec
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device() if spec.train.gpu else torch.device("cpu")
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    return RankContext(
        spec, mode, bspec, val_spec, ctx.get_world_rank(), ctx.get_world_size(), device, config
    )


def build_rank_engine(rc: RankContext) -> Engine:
    """The model (initialised from ``init_export`` if set, prepared for fine-tuning) in its
    engine, with a schedule over every epoch's steps."""
    spec, config = rc.spec, rc.config
    model = modeling.build_model(spec, config["vocab_size"], rc.mode)
    if config.get("hazard_bias") is not None:
        init_hazard_bias(model, config["hazard_bias"])
    if config.get("init_export"):
        modeling.load_encoder(model, modeling.load_export(config["init_export"]))
    if rc.mode == "finetune":
        modeling.prepare_finetune(model, spec)
    ecfg = dataclasses.replace(spec.train.engine, micro_batch_size=rc.bspec.batch_size)
    per_rank = config["train_subjects"] / max(rc.world, 1)
    steps_per_epoch = max(1, math.floor(per_rank / rc.bspec.batch_size) // ecfg.grad_accum)
    if spec.train.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, spec.train.max_steps_per_epoch)
    return build_engine(model, ecfg, steps_per_epoch * spec.train.epochs, rc.device)


def resume_state(engine: Engine, ckpt: Any) -> LoopState:
    """The loop state to start from: fresh without a checkpoint, else the engine (model,
    optimizer, scheduler, step counters) and loop state restored from it."""
    if ckpt is None:
        return LoopState()
    with _intact_checkpoint(ckpt) as d:  # manifest-checked; falls back if corrupted
        extra = engine.load(d)
    return LoopState.from_dict(extra["loop"])


def rank_shards(rc: RankContext) -> tuple[KeptShard, KeptShard]:
    """This rank's (train, tuning) shards.

    Splits this rank reads whole every epoch are kept after their first complete read (not
    one that launch.py has Ray divide between the workers anew every epoch). A lazy split
    (data.cache false) is re-read from Parquet every epoch.
    """
    import ray.train

    spec = rc.spec
    # data.cache as the driver decided it (auto resolved by the splits' size: launch.py)
    keep = int(spec.data.worker_cache_mb * 2**20) if rc.config["cache"] else 0

    def shard(split: str) -> KeptShard:
        whole = split not in rc.config["divided_splits"]
        return KeptShard(ray.train.get_dataset_shard(split), keep if whole else 0)

    return shard(S.TRAIN_SPLIT), shard(S.TUNING_SPLIT)


def epoch_hooks(rc: RankContext) -> list[StepHooks]:
    """Rank 0's progress reports to the driver, and the step log when ``train.step_log``
    is set (:mod:`ehrsurv_dist.train.steplog`; the throughput bench reads it)."""
    hooks: list[StepHooks] = []
    if rc.progress is not None and rc.rank == 0:
        hooks.append(StepReporter(rc.progress, rc.world))
    if rc.spec.train.step_log:
        hooks.append(StepLog(rc.spec.train.step_log, rc.rank))
    return hooks


def seed_epoch(rc: RankContext, epoch: int) -> None:
    """Seed torch for ``epoch`` of this rank.

    Dropout etc. draw from a stream keyed by (seed, epoch, rank): a resumed run replays
    exactly what an uninterrupted one would have drawn, with no RNG state to save.
    """
    torch.manual_seed((rc.spec.seed * 1_000_003 + epoch * 1_009 + rc.rank) % (2**63))


def run_epoch(
    rc: RankContext,
    engine: Engine,
    task: TaskFn,
    batches: Iterator[dict[str, np.ndarray]],
    epoch: int,
    hooks: list[StepHooks],
) -> EpochResult:
    """Train one epoch on ``batches`` (whole accumulation groups every rank has, at most
    ``train.max_steps_per_epoch`` of them); ``batches`` is closed at the end (a bounded epoch
    leaves the rest of the split unread: its reader stops now, not when collected)."""
    read = _Counted(batches)
    grouped = synchronized(read, engine.cfg.grad_accum, rc.spec.train.max_steps_per_epoch)
    try:
        res = train_epoch(engine, task, grouped, rc.device, epoch, hooks=hooks)
    finally:
        close_source(batches)
    if res.steps == 0:
        log.warning(
            "epoch %d, rank %d: no training step (this rank read %d train batch(es) of "
            "data.batch_size=%d; a step takes train.engine.grad_accum=%d on every rank), so "
            "the weights did not change this epoch: lower train.engine.grad_accum, "
            "data.batch_size or train.num_workers, or use a larger cohort",
            epoch,
            rc.rank,
            read.count,
            rc.bspec.batch_size,
            engine.cfg.grad_accum,
        )
    log.info(
        "epoch %d, rank %d/%d: train loss %.4f, %d steps, %.1f s (%.0f%% waiting for data)",
        epoch,
        rc.rank,
        rc.world,
        res.loss,
        res.steps,
        res.seconds,
        100 * res.data_wait_fraction,
    )
    return res


class _Counted:
    """An iterator that counts what was taken from it."""

    def __init__(self, it: Iterator[dict[str, np.ndarray]]) -> None:
        self.it = it
        self.count = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = next(self.it)
        self.count += 1
        return item


def validate(
    rc: RankContext, engine: Engine, task: TaskFn, val_shard: KeptShard
) -> tuple[dict[str, Any], float]:
    """Validation metrics and the selection score (higher is better): the time-dependent
    C-index when fine-tuning, minus the mean loss when pretraining."""
    if rc.mode == "finetune":
        # every rank reads the whole tuning split (it is not split), so no gather
        preds = predict(engine, engine.module, val_shard.batches(rc.val_spec, 0), rc.device)
        if rc.val_spec.bin_edges is not None:  # calendar axis: td-C on the day scale
            td = (
                M.concordance_td_days(
                    survival_at_edges(preds),
                    np.asarray(rc.val_spec.bin_edges),
                    preds.extra[S.TIME_DAYS],
                    preds.event,
                )
                if len(preds.subject_id)
                else math.nan
            )
            return {"val_c_index_td": td, "val_samples": int(len(preds.subject_id))}, td
        td = (
            M.concordance_td(
                M.hazard_table_from_csr(preds.values, preds.offsets),
                preds.last_visit,
                preds.event,
            )
            if len(preds.subject_id)
            else math.nan
        )
        return {"val_c_index_td": td, "val_subjects": int(len(preds.subject_id))}, td
    vl = mean_loss(engine, engine.module, task, val_shard.batches(rc.val_spec, 0), rc.device)
    return {"val_loss": vl}, -vl


def epoch_metrics(res: EpochResult) -> dict[str, Any]:
    """The epoch's training metrics over all ranks (sums; times of the slowest rank)."""
    loss_sum, subj, toks, steps, secs, wait = all_reduce(
        [
            res.loss * res.steps,
            res.subjects,
            res.tokens,
            res.steps,
            res.seconds,
            res.data_wait_seconds,
        ]
    )
    secs_max = all_reduce([res.seconds], op="max")[0]
    return dict(
        train_loss=loss_sum / max(steps, 1),
        **{f"train_{k}": v for k, v in res.components.items()},
        subjects_per_s=subj / max(secs_max, 1e-9),
        tokens_per_s=toks / max(secs_max, 1e-9),
        data_wait_fraction=wait / max(secs, 1e-9),
        epoch_seconds=secs_max,
        steps=int(steps),
    )


def validated_metrics(
    rc: RankContext,
    engine: Engine,
    task: TaskFn,
    val_shard: KeptShard,
    res: EpochResult,
    epoch: int,
) -> tuple[dict[str, Any], float]:
    """Validate, then the epoch's metrics (validation's, training's over all ranks, timings)
    and the selection score."""
    t_val = time.perf_counter()
    metrics: dict[str, Any] = {"epoch": epoch, "lr": engine.lr}
    val_metrics, score = validate(rc, engine, task, val_shard)
    metrics.update(val_metrics)
    val_seconds = time.perf_counter() - t_val
    train_metrics = epoch_metrics(res)
    steps = train_metrics.pop("steps")
    # the keys in their historical order (metrics.json and the history keep it)
    metrics.update(train_metrics, val_seconds=val_seconds, steps=steps)
    return metrics, score


def record_epoch(state: LoopState, metrics: dict[str, Any], score: float) -> bool:
    """Update the early-stopping state with the epoch's ``score``, add the selection fields to
    ``metrics``, append the epoch to the history and move to the next epoch; True when this
    epoch is the best so far."""
    improved = state.update(score)
    metrics["val_score"] = score if not math.isnan(score) else -math.inf
    metrics["best_epoch"] = state.best_epoch
    state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    state.epoch += 1
    return improved


def report_epoch(
    rc: RankContext,
    engine: Engine,
    state: LoopState,
    metrics: dict[str, Any],
    epoch: int,
    improved: bool,
) -> None:
    """Save every rank's checkpoint shard (rank 0 also the fp32 model and the loop state),
    seal it with this rank's manifest and report it with ``metrics`` to Ray Train."""
    import ray.train
    from ray.train import Checkpoint

    full = engine.consolidated_state_dict()  # collective under ZeRO-3 / bf16
    with tempfile.TemporaryDirectory() as d:
        engine.save(d, extra={"loop": state.to_dict()})
        if rc.rank == 0:
            scaling = rc.spec.finetune.lora_alpha / rc.spec.finetune.lora_rank
            sd = modeling.merge_lora_state(full, scaling) if rc.mode == "finetune" else full
            model = {"state_dict": sd, "epoch": epoch, "improved": improved}
            adapters = {k: v for k, v in full.items() if k.endswith((".lora_A", ".lora_B"))}
            if rc.mode == "finetune" and adapters:  # exported unmerged too (model/adapters)
                model["adapters"] = adapters
            atomic.write_torch(model, os.path.join(d, MODEL_FILE))
            atomic.write_text(
                json.dumps(state.to_dict(), default=float), os.path.join(d, LOOP_FILE)
            )
        # last: the manifest (sha256 of every file this rank wrote) marks them complete
        manifest.write_manifest(d, rc.rank, rc.world, meta={"epoch": epoch})
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))


def train_func(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker; ``config`` is built by :func:`launch.run_training`."""
    import ray.train

    worker_logging(config.get("log_level", logging.WARNING))  # reaches the driver's console
    rc = rank_context(config)
    spec = rc.spec
    task = build_task(spec, rc.mode, config["vocab_size"])
    engine = build_rank_engine(rc)
    ckpt = ray.train.get_checkpoint()
    state = resume_state(engine, ckpt)
    train_shard, val_shard = rank_shards(rc)
    fault_after = config.get("fault_after_epoch") if ckpt is None else None
    hooks = epoch_hooks(rc)

    def epoch_batches(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        # With prefetching on, a thread starts reading and collating at once (Prefetch).
        return prefetch(train_shard.batches(rc.bspec, epoch), spec.data.prefetch_batches)

    upcoming: tuple[int, Iterator[dict[str, np.ndarray]]] | None = None
    while state.epoch < spec.train.epochs and not state.should_stop(spec.train.patience):
        epoch = state.epoch
        seed_epoch(rc, epoch)
        batches = upcoming[1] if upcoming is not None and upcoming[0] == epoch else None
        res = run_epoch(
            rc, engine, task, batches if batches is not None else epoch_batches(epoch), epoch, hooks
        )
        # The next epoch's first batches are read and collated while this one is validated and
        # checkpointed, instead of at the start of the next epoch (its Ray Data start-up was
        # most of the trainer's data wait). Batches depend only on (seed, epoch), so this
        # changes no number. Dropped unused if early stopping ends the run.
        upcoming = None
        if epoch + 1 < spec.train.epochs and spec.data.prefetch_batches > 0:
            upcoming = (epoch + 1, epoch_batches(epoch + 1))
        metrics, score = validated_metrics(rc, engine, task, val_shard, res, epoch)
        improved = record_epoch(state, metrics, score)
        report_epoch(rc, engine, state, metrics, epoch, improved)
        if rc.progress is not None and rc.rank == 0:
            rc.progress.update.remote({**_numbers(metrics), "epoch_done": epoch})
        if fault_after is not None and epoch == fault_after and rc.rank == rc.world - 1:
            # fault injection for the recovery tests (EHRSURV_FAULT_AFTER_EPOCH, see launch.py)
            raise RuntimeError(f"injected fault after epoch {epoch} on rank {rc.rank}")
    if upcoming is not None:  # early stopping: the prepared epoch never runs
        close_source(upcoming[1])
