"""``ehrsurv bench throughput``: training speed, data wait, memory and attention, in one run.

Every figure comes from one invocation on one cohort, so that the ratios share the machine's
load:

(a) **Training throughput.** The product path — :func:`ehrsurv_dist.train.launch.run_training`,
    i.e. Ray Train ``TorchTrainer`` workers running :func:`ehrsurv_dist.train.worker.train_func`
    with DeepSpeed, fed by Ray Data — with 1 worker and with 2 workers, against a **plain loop**:
    the same model (same seed, same strategy), the same batches (the single-process path of
    :class:`~ehrsurv_dist.data.pipeline.IngestPipeline` for the same split, batch size, seed and
    epoch, materialised in memory before the clock starts), the same optimizer (our AdamW and
    schedule), clipping and number of steps, in one process with the same number of torch
    threads as a Ray worker (Ray sets ``OMP_NUM_THREADS`` to the worker's CPUs), with no Ray and
    no DeepSpeed.

    *Time* is the **steady-state training-epoch time**: the worker's own ``epoch_seconds`` (the
    wall time of :func:`~ehrsurv_dist.train.loop.train_epoch`: waiting for batches, forward,
    backward, optimizer step) for every epoch after the first. It leaves out Ray's start-up, the
    vocabulary scan, DeepSpeed's initialisation (and any op compile), the first epoch (first
    Ray Data execution, allocator warm-up), and the per-epoch validation and checkpointing, which
    the plain loop does not do either. The plain loop runs the worker's own
    :func:`~ehrsurv_dist.train.loop.train_epoch` on the plain torch engine and is timed the same
    way (epochs after the first), step by step, by the same step hook
    (:class:`~ehrsurv_dist.train.steplog.StepLog`, ``train.step_log`` in the worker). The
    1-worker Ray run and the plain loop alternate for
    ``rounds`` rounds (the local Ray is stopped during the plain loop when the bench started
    it), so both get the same number of timed epochs and the same drift of the machine's load.

    ``train_overhead_ratio`` = Ray Train (1 worker) ÷ plain loop at equal work, each side's
    time being its **step floor**: for every batch of the steady epochs, its fastest step over
    the rounds, summed (:func:`step_floor`). Every round trains the same batches in an epoch, on
    both sides, and each step's batch is named in the step log (``step_keys``): Ray delivers
    the units in the order their tasks finish, so the order can differ between rounds, and
    steps are paired by batch, not by position. A batch's minimum over rounds is that work's
    cost with the machine's interruptions mostly left out, and a cost the Ray path adds to
    every step stays in it. On a shared machine whose speed drifts by a third within minutes
    whole epochs are poor samples; the other estimates are reported next to it:
    ``train_overhead_ratio_step_median`` (median over rounds per step, summed: includes
    interruptions), ``train_overhead_ratio_best_epoch`` (best steady epoch ÷ best steady
    epoch), ``train_overhead_ratio_median`` (median epochs), and
    ``train_overhead_ratio_round_min``/``_max`` (best epochs of each round on its own).
    Equal work is checked: the same batches in every epoch and the same tokens per epoch.
    Where the difference goes: ``train_cpu_ratio`` (the training thread's CPU time per epoch,
    ``time.thread_time``, Ray ÷ plain: the work itself) and ``*_off_cpu_fraction`` (the share
    of the epoch in which that thread was not running: GIL, other threads and processes), and
    that thread's context switches and minor page faults per epoch (``*_voluntary_switches_``
    ``per_epoch``: it blocked, e.g. on the GIL; ``*_involuntary_…``: preempted;
    ``*_page_faults_per_epoch``: memory the allocator had returned to the OS).
    ``plain_stream_*`` is the same plain loop reading its batches from the single-process
    data path inside the timed epoch (what a plain script without a data loader would pay).
(b) ``data_wait_fraction``: what the trainer itself reports (time waiting for the next batch ÷
    epoch time, summed over ranks) in the steady epochs of the 1-worker run.
(c) **Memory per ZeRO stage** (2 workers, CPU): the peak resident set (``VmHWM``) of each Ray
    Train worker process, sampled from ``/proc`` by the bench; ``peak_rss_mb_zero{s}`` is the
    larger of the two workers. ``model_state_mb_per_rank_zero{s}`` is the analytic size of
    weights + gradients + AdamW state per rank (16 bytes per parameter in fp32, of which ZeRO-1
    shards the 8 of AdamW and ZeRO-2 also the 4 of the gradients), to read the RSS against.
(d) **Attention** (:mod:`ehrsurv_dist.bench.attention`): SDPA vs a naive softmax attention at
    L = 512 with the preset's batch, heads and head width; flat vs hierarchical BEHRT at V = 50,
    C = 30 (analytic ratio of attention score entries, and the measured time of the two models).

Keys in ``bench.json`` are flat and numeric; ``SUMMARY.md`` has the tables.

Modules: ``settings`` (the runs' job), ``runs`` (the Ray runs and the plain loop), ``memory``,
``reduce`` (steady epochs, step floors, the keys), ``report`` (``SUMMARY.md``), ``bench``
(:func:`run_throughput_bench`).
"""

from __future__ import annotations

from ehrsurv_dist.bench.throughput.bench import run_throughput_bench
from ehrsurv_dist.bench.throughput.memory import (
    RssRise,
    WorkerMemory,
    model_state_bytes_per_rank,
)
from ehrsurv_dist.bench.throughput.reduce import (
    counters_per_epoch,
    keyed_steps,
    off_cpu_fraction,
    pooled,
    steady,
    step_floor,
)
from ehrsurv_dist.bench.throughput.report import REQUIRED_KEYS, summary
from ehrsurv_dist.bench.throughput.runs import plain_loop, ray_run
from ehrsurv_dist.bench.throughput.settings import TrainSettings

__all__ = [
    "REQUIRED_KEYS",
    "RssRise",
    "TrainSettings",
    "WorkerMemory",
    "counters_per_epoch",
    "keyed_steps",
    "model_state_bytes_per_rank",
    "off_cpu_fraction",
    "plain_loop",
    "pooled",
    "ray_run",
    "run_throughput_bench",
    "steady",
    "step_floor",
    "summary",
]
