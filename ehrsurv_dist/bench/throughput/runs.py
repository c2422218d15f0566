"""The runs of ``bench throughput``: the product path on Ray, and the plain loop without it.

Both train with :func:`~ehrsurv_dist.train.loop.train_epoch` and are timed by the same step
hooks (:class:`~ehrsurv_dist.train.steplog.StepLog`): the Ray workers through
``train.step_log``, the plain loop directly. Ray is imported in the functions that start it
(this module's edge).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.bench.local_ray import start_local_ray
from ehrsurv_dist.bench.throughput.memory import WorkerMemory
from ehrsurv_dist.bench.throughput.settings import TrainSettings, job_spec
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.train import modeling
from ehrsurv_dist.train.engine import build_engine
from ehrsurv_dist.train.loop import synchronized, train_epoch
from ehrsurv_dist.train.steplog import EpochCounters, StepLog, read_step_log
from ehrsurv_dist.train.tasks import build_task

STEP_LOG = "step_log.jsonl"  # every run's per-step times, in its run directory


def ray_run(settings: TrainSettings, workers: int, zero_stage: int, out: str) -> dict[str, Any]:
    """One Ray Train + DeepSpeed fine-tuning run (the product path) with worker memory sampled.

    Returns:
        ``epoch_s`` / ``tokens`` / ``wait`` per epoch (from the workers' reports), ``steps``,
        ``step_s`` (rank 0's wall time of every step, per epoch, from ``train.step_log``),
        ``step_keys`` (the batch of every step: ``steplog.batch_key``),
        ``cpu_s`` (rank 0's training-thread CPU time per epoch, from the same log),
        ``counters`` (that thread's [voluntary switches, involuntary switches, page faults]
        per epoch, same log), the per-worker peak RSS (MB) and the run's wall time.
    """
    from ehrsurv_dist.train.launch import run_training  # imports Ray: the bench's edge

    step_log = os.path.join(out, STEP_LOG)
    spec = job_spec(settings, workers, zero_stage, step_log=step_log)
    t0 = time.perf_counter()
    with WorkerMemory() as mem:
        res = run_training(spec, "finetune", out)
    wall = time.perf_counter() - t0
    hist = sorted(res.history, key=lambda h: h["epoch"])
    if [h["epoch"] for h in hist] != list(range(settings.epochs)):
        raise RuntimeError(f"run {out} reported epochs {[h['epoch'] for h in hist]}")
    logged = read_step_log(step_log, rank=0)
    return {
        **_logged_epochs([logged[e] for e in range(settings.epochs)]),
        "epoch_s": [float(h["epoch_seconds"]) for h in hist],
        # tokens_per_s = tokens of all ranks / slowest rank's epoch seconds
        "tokens": [float(h["tokens_per_s"]) * float(h["epoch_seconds"]) for h in hist],
        "wait": [float(h["data_wait_fraction"]) for h in hist],
        "steps": [int(h["steps"]) for h in hist],
        "worker_peak_rss_mb": sorted(mem.peaks.values()),
        "wall_s": wall,
        "vocab_path": os.path.join(out, "vocab.json"),
    }


def _logged_epochs(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """``step_s``, ``step_keys``, ``cpu_s``, ``thread_s`` and ``counters`` per epoch from
    step-log records (or what :class:`~ehrsurv_dist.train.steplog.EpochCounters` returned).

    ``thread_s`` is the hook's own wall time, the interval its CPU time was read inside; the
    epoch's ``epoch_s`` (``train_epoch``'s clock) stops before the hook's end, so CPU ÷ epoch
    time could exceed 1 by the hook's few microseconds.
    """
    out: dict[str, list[Any]] = {
        "step_s": [], "step_keys": [], "cpu_s": [], "thread_s": [], "counters": []
    }  # fmt: skip
    for rec in records:
        out["step_s"].append(rec["step_seconds"])
        out["step_keys"].append(rec["step_keys"])
        out["cpu_s"].append(rec["cpu_seconds"])
        out["thread_s"].append(rec["seconds"])
        out["counters"].append([*rec["switches"], rec["page_faults"]])
    return out


def plain_loop(
    settings: TrainSettings,
    vocab_path: str,
    *,
    stream: bool = False,
    threads: int = 1,
    step_log: str | None = None,
) -> dict[str, Any]:
    """The plain single-process loop: same model, batches, optimizer and steps; no Ray/DeepSpeed.

    It runs the worker's own epoch function (:func:`~ehrsurv_dist.train.loop.train_epoch`,
    with :func:`~ehrsurv_dist.train.loop.synchronized` grouping) on the plain torch engine, with
    the same step hooks as the worker's ``train.step_log``: the two sides run the same steps
    and are timed by the same code.

    Args:
        settings: the shared run settings.
        vocab_path: the vocabulary the Ray run used (same token ids, same model size).
        stream: read batches from the single-process data path inside the timed epoch; False
            (default) materialises each epoch's batches before its clock starts.
        threads: torch intra-op threads during the loop (a Ray worker with 1 CPU has 1).
        step_log: also append every epoch to this step log (rank 0), as the workers do.

    Returns:
        ``epoch_s``, ``tokens``, ``wait`` (data-wait fraction), ``steps``, ``step_s`` (the wall
        time of every step), ``step_keys`` (its batch), ``cpu_s`` (the loop thread's CPU time),
        ``counters`` ([voluntary switches, involuntary switches, page faults] of the loop
        thread) per epoch and the mean training loss per epoch.
    """
    spec = job_spec(settings, 1, 0)
    pipe = IngestPipeline(
        spec.data.cohort,
        spec.data,
        layout=modeling.layout_of(spec),  # type: ignore[arg-type]
        seed=spec.seed,
        require_outcomes=True,
    )
    fit = pipe.fit(Vocabulary.load(vocab_path))
    train_subjects = fit.stats[S.TRAIN_SPLIT]["subjects"]
    bs = spec.data.batch_size
    # The worker's engine config on the plain torch engine (no DeepSpeed).
    ecfg = dataclasses.replace(spec.train.engine, engine="torch", micro_batch_size=bs)
    steps_per_epoch = max(1, math.floor(train_subjects / bs) // ecfg.grad_accum)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed)
        model = modeling.build_model(spec, fit.vocab.size, "finetune")
        modeling.prepare_finetune(model, spec)
        engine = build_engine(model, ecfg, steps_per_epoch * spec.train.epochs, torch.device("cpu"))
        task = build_task(spec, "finetune", fit.vocab.size)
        hook = _plain_hook(step_log)
        results = []
        for epoch in range(spec.train.epochs):
            torch.manual_seed((spec.seed * 1_000_003 + epoch * 1_009) % (2**63))  # as a rank 0
            batches: Iterable[Mapping[str, np.ndarray]] = pipe.iter_batches(S.TRAIN_SPLIT, epoch)
            if not stream:
                batches = list(batches)
            grouped = synchronized(batches, ecfg.grad_accum)
            results.append(
                train_epoch(engine, task, grouped, torch.device("cpu"), epoch, hooks=[hook])
            )
    finally:
        torch.set_num_threads(old_threads)
    return {
        **_logged_epochs(r.measures for r in results),
        "epoch_s": [r.seconds for r in results],
        "tokens": [float(r.tokens) for r in results],
        "wait": [r.data_wait_fraction for r in results],
        "steps": [r.steps for r in results],
        "loss": [r.loss for r in results],
    }


def _plain_hook(step_log: str | None) -> EpochCounters:
    """The worker's ``train.step_log`` hook (rank 0), or the same counters without a file."""
    return EpochCounters() if step_log is None else StepLog(step_log, rank=0)


def _start_ray(num_cpus: int) -> bool:
    """Start an in-process local Ray unless one is already initialised here; True if started."""
    import ray  # the bench's edge: only the Ray runs need it

    if ray.is_initialized():
        return False
    try:
        start_local_ray(num_cpus)
    except Exception as e:  # Ray raises a bare Exception when its node does not come up
        raise EhrsurvError(f"could not start a local Ray (machine overloaded?): {e}") from e
    return True


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """A local Ray for the block: started here and shut down after, unless one was running."""
    started = _start_ray(num_cpus)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
