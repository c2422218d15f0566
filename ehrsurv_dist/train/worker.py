"""The Ray Train worker: one ``train_func`` per rank (Ray imported here, at the edge).

shard → batches → loop → every rank saves its (ZeRO) shard → every rank reports with the
checkpoint. Re-launching the same run, or a replaced worker after a failure, resumes from
``ray.train.get_checkpoint()``: model, optimizer, scheduler, step counters and loop state.
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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import load_config
from ehrsurv_dist.data.collate import BatchSpec
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.metrics import survival as M
from ehrsurv_dist.train import manifest, modeling
from ehrsurv_dist.train.engine import build_engine
from ehrsurv_dist.train.loop import (
    LoopState,
    append_step_log,
    mean_loss,
    predict,
    synchronized,
    train_epoch,
)
from ehrsurv_dist.train.prefetch import prefetch
from ehrsurv_dist.train.progress import step_reporter
from ehrsurv_dist.train.tasks import PretrainTask, SurvivalTask

log = logging.getLogger(__name__)
MODEL_FILE = "model_fp32.pt"
LOOP_FILE = "loop_state.json"


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t.tolist()


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
    import pyarrow.fs as pafs

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


def train_func(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker; ``config`` is built by :func:`launch.run_training`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from ehrsurv_dist.data.pipeline import KeptShard

    spec = load_config(JobSpec, base=config["spec"])
    mode: str = config["mode"]
    bspec: BatchSpec = config["batch_spec"]
    val_spec = dataclasses.replace(bspec, mlm_vocab_size=None) if mode == "finetune" else bspec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if spec.train.use_gpu else torch.device("cpu")
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)

    model = modeling.build_model(spec, config["vocab_size"], mode)
    if config.get("init_export"):
        modeling.load_encoder(model, modeling.load_export(config["init_export"]))
    if mode == "finetune":
        modeling.prepare_finetune(model, spec)
    task: Any
    if mode == "finetune":
        f = spec.finetune
        task = SurvivalTask(
            loss=f.loss,
            lambda_rank=f.lambda_rank,
            curriculum_epochs=f.curriculum_epochs,
            margin=f.margin,
            rank_loss=f.rank_loss,
            risk=f.risk_score,
            horizon=f.risk_k,
            first_n=f.risk_n,
        )
    else:
        p = spec.pretrain
        task = PretrainTask(p.objective, config["vocab_size"], p.mlm_weight, p.nvp_weight)

    ecfg = dataclasses.replace(spec.train.engine, micro_batch_size=bspec.batch_size)
    per_rank = config["train_subjects"] / max(world, 1)
    steps_per_epoch = max(1, math.floor(per_rank / bspec.batch_size) // ecfg.grad_accum)
    engine = build_engine(model, ecfg, steps_per_epoch * spec.train.epochs, device)

    state = LoopState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with _intact_checkpoint(ckpt) as d:  # manifest-checked; falls back if corrupted
            extra = engine.load(d)
        state = LoopState.from_dict(extra["loop"])

    # Splits this rank reads whole every epoch are kept after their first complete read (not
    # one that launch.py has Ray divide between the workers anew every epoch). A lazy split
    # (data.cache false) is re-read from Parquet every epoch.
    keep = int(spec.data.worker_cache_mb * 2**20) if spec.data.cache else 0

    def shard(split: str) -> KeptShard:
        whole = split not in config["divided_splits"]
        return KeptShard(ray.train.get_dataset_shard(split), keep if whole else 0)

    train_shard = shard(S.TRAIN_SPLIT)
    val_shard = shard(S.TUNING_SPLIT)
    scaling = spec.finetune.lora_alpha / spec.finetune.lora_rank
    fault_after = config.get("fault_after_epoch") if ckpt is None else None
    progress = config.get("progress")  # the driver's progress actor (train/progress.py)

    def epoch_batches(epoch: int) -> Iterator[dict[str, np.ndarray]]:
        # With prefetching on, a thread starts reading and collating at once (Prefetch).
        return prefetch(train_shard.batches(bspec, epoch), spec.data.prefetch_batches)

    upcoming: tuple[int, Iterator[dict[str, np.ndarray]]] | None = None
    while state.epoch < spec.train.epochs and not state.should_stop(spec.train.patience):
        epoch = state.epoch
        # Dropout etc. draw from a stream keyed by (seed, epoch, rank): a resumed run replays
        # exactly what an uninterrupted one would have drawn, with no RNG state to save.
        torch.manual_seed((spec.seed * 1_000_003 + epoch * 1_009 + rank) % (2**63))
        batches = upcoming[1] if upcoming is not None and upcoming[0] == epoch else None
        res = train_epoch(
            engine,
            task,
            synchronized(batches if batches is not None else epoch_batches(epoch), ecfg.grad_accum),
            device,
            epoch,
            on_step=step_reporter(progress, epoch, world) if progress and rank == 0 else None,
        )
        if spec.train.step_log:
            append_step_log(
                spec.train.step_log,
                epoch,
                rank,
                seconds=res.seconds,
                cpu_seconds=res.cpu_seconds,
                step_seconds=res.step_seconds,
                switches=(res.voluntary_switches, res.involuntary_switches),
                page_faults=res.page_faults,
            )
        # The next epoch's first batches are read and collated while this one is validated and
        # checkpointed, instead of at the start of the next epoch (its Ray Data start-up was
        # most of the trainer's data wait). Batches depend only on (seed, epoch), so this
        # changes no number. Dropped unused if early stopping ends the run.
        upcoming = None
        if epoch + 1 < spec.train.epochs and spec.data.prefetch_batches > 0:
            upcoming = (epoch + 1, epoch_batches(epoch + 1))
        t_val = time.perf_counter()
        metrics: dict[str, Any] = {"epoch": epoch, "lr": engine.lr}
        if mode == "finetune":
            # every rank reads the whole tuning split (it is not split), so no gather
            preds = predict(engine, engine.module, val_shard.batches(val_spec, 0), device)
            td = (
                M.concordance_td(
                    M.hazard_table_from_csr(preds.values, preds.offsets),
                    preds.last_visit,
                    preds.event,
                )
                if len(preds.subject_id)
                else math.nan
            )
            metrics["val_c_index_td"] = td
            metrics["val_subjects"] = int(len(preds.subject_id))
            score = td
        else:
            vl = mean_loss(engine, engine.module, task, val_shard.batches(val_spec, 0), device)
            metrics["val_loss"] = vl
            score = -vl
        val_seconds = time.perf_counter() - t_val
        loss_sum, subj, toks, steps, secs, wait = _all_reduce(
            [
                res.loss * res.steps,
                res.subjects,
                res.tokens,
                res.steps,
                res.seconds,
                res.data_wait_seconds,
            ]
        )
        secs_max = _all_reduce([res.seconds], op="max")[0]
        metrics.update(
            train_loss=loss_sum / max(steps, 1),
            **{f"train_{k}": v for k, v in res.components.items()},
            subjects_per_s=subj / max(secs_max, 1e-9),
            tokens_per_s=toks / max(secs_max, 1e-9),
            data_wait_fraction=wait / max(secs, 1e-9),
            epoch_seconds=secs_max,
            val_seconds=val_seconds,
            steps=int(steps),
        )
        improved = state.update(score)
        metrics["val_score"] = score if not math.isnan(score) else -math.inf
        metrics["best_epoch"] = state.best_epoch
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        state.epoch = epoch + 1
        full = engine.consolidated_state_dict()  # collective under ZeRO-3 / bf16
        with tempfile.TemporaryDirectory() as d:
            engine.save(d, extra={"loop": state.to_dict()})
            if rank == 0:
                sd = modeling.merge_lora_state(full, scaling) if mode == "finetune" else full
                torch.save(
                    {"state_dict": sd, "epoch": epoch, "improved": improved},
                    os.path.join(d, MODEL_FILE),
                )
                with open(os.path.join(d, LOOP_FILE), "w") as fh:
                    json.dump(state.to_dict(), fh, default=float)
            # last: the manifest (sha256 of every file this rank wrote) marks them complete
            manifest.write_manifest(d, rank, world, meta={"epoch": epoch})
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))
        if progress is not None and rank == 0:
            progress.update.remote({**_numbers(metrics), "epoch_done": epoch})
        if fault_after is not None and epoch == fault_after and rank == world - 1:
            # fault injection for the recovery tests (EHRSURV_FAULT_AFTER_EPOCH, see launch.py)
            raise RuntimeError(f"injected fault after epoch {epoch} on rank {rank}")
    if upcoming is not None:  # early stopping: the prepared epoch never runs
        close = getattr(upcoming[1], "close", None)
        if close is not None:
            close()
