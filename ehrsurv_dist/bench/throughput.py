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
    the plain loop does not do either. The plain loop is timed the same way (epochs after the
    first), step by step as :func:`~ehrsurv_dist.train.loop.train_epoch` times the worker's
    steps (``train.step_log``). The 1-worker Ray run and the plain loop alternate for
    ``rounds`` rounds (the local Ray is stopped during the plain loop when the bench started
    it), so both get the same number of timed epochs and the same drift of the machine's load.

    ``train_overhead_ratio`` = Ray Train (1 worker) ÷ plain loop at equal work, each side's
    time being its **step floor**: for every (epoch, step) of the steady epochs, the fastest of
    the rounds, summed (:func:`step_floor`). Every round trains the same batch through the same
    weights at a given (epoch, step), on both sides, so a step's minimum over rounds is that
    work's cost with the machine's interruptions mostly left out, and a cost the Ray path adds
    to every step stays in it. On a shared machine whose speed drifts by a third within minutes
    whole epochs are poor samples; the other estimates are reported next to it:
    ``train_overhead_ratio_step_median`` (median over rounds per step, summed: includes
    interruptions), ``train_overhead_ratio_best_epoch`` (best steady epoch ÷ best steady
    epoch), ``train_overhead_ratio_median`` (median epochs), and
    ``train_overhead_ratio_round_min``/``_max`` (best epochs of each round on its own).
    Equal work is checked: the same steps in every epoch and the same tokens per epoch.
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import EhrsurvError, OutputError

REQUIRED_KEYS = (
    "train_overhead_ratio",
    "data_wait_fraction",
    "ray_1w_tokens_per_s",
    "ray_2w_tokens_per_s",
    "plain_tokens_per_s",
    "attn_sdpa_ms",
    "attn_naive_ms",
    "attn_speedup",
    "flat_hier_attention_ops_ratio_seed",
    "flat_hier_time_ratio",
)
WORKER_MARKER = "RayTrainWorker"  # Ray's process title of a Ray Train worker actor


# --------------------------------------------------------------------------------------------
# Small pure helpers (unit-tested)
# --------------------------------------------------------------------------------------------


def steady(values: Sequence[float], skip: int = 1) -> list[float]:
    """The values after the first ``skip`` (warm-up) epochs; all of them if there are no more."""
    return list(values[skip:]) if len(values) > skip else list(values)


def model_state_bytes_per_rank(params: int, stage: int, world: int) -> float:
    """fp32 weights + gradients + AdamW moments held by one rank under ZeRO ``stage``.

    4 bytes of weights, 4 of gradients and 8 of AdamW state (two moments) per parameter; ZeRO-1
    shards the optimizer state over ``world`` ranks, ZeRO-2 also the gradients (ZeRO-3, GPU
    only, also the weights).
    """
    if stage not in (0, 1, 2, 3) or world < 1:
        raise ValueError(f"stage must be 0-3 and world >= 1, got {stage}, {world}")
    weights = 4.0 / (world if stage >= 3 else 1)
    grads = 4.0 / (world if stage >= 2 else 1)
    adam = 8.0 / (world if stage >= 1 else 1)
    return params * (weights + grads + adam)


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set (``VmHWM``) of a process in MB, None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _vm_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssRise:
    """Rise of this process's resident memory over a ``with`` block (sampled every 5 ms)."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.start = self.peak = 0.0
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    @property
    def rise(self) -> float:
        return self.peak - self.start

    def __enter__(self) -> RssRise:
        self.start = self.peak = _vm_rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _vm_rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()
        self.peak = max(self.peak, _vm_rss_mb())


class WorkerMemory:
    """Peak resident memory of the Ray Train worker processes started below this process.

    A thread walks this process's descendants every ``every_s`` seconds (the local Ray's raylet
    is our child and its workers are its children, so other users' Ray clusters on the same
    machine are never counted) and keeps, per worker process, the largest ``VmHWM`` seen (the
    kernel's own high-water mark, so short peaks between samples are not missed).
    """

    def __init__(self, marker: str = WORKER_MARKER, every_s: float = 0.2) -> None:
        self.marker = marker
        self.every_s = every_s
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except (psutil.Error, OSError):
                continue
            if self.marker in cmd:
                hwm = _vm_hwm_mb(p.pid)
                if hwm is not None:
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0.0), hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> WorkerMemory:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()


# --------------------------------------------------------------------------------------------
# (a)-(c): Ray Train runs and the plain loop
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSettings:
    """What every training run of the bench shares (the job overrides they all get)."""

    cohort: str
    size: str = "small"
    batch_size: int = 32
    max_seq_len: int = 128
    epochs: int = 3
    lr: float = 1e-3
    seed: int = 0
    cpus_per_worker: int = 1

    def overrides(self, workers: int, zero_stage: int) -> list[Any]:
        return [
            f"model.size={self.size}",
            f"data.batch_size={self.batch_size}",
            f"data.max_seq_len={self.max_seq_len}",
            f"train.num_workers={workers}",
            f"train.cpus_per_worker={self.cpus_per_worker}",
            f"train.epochs={self.epochs}",
            "train.patience=0",  # never stop early: every run trains every epoch
            "train.keep_checkpoints=1",
            "train.engine.engine=deepspeed",
            f"train.engine.zero_stage={zero_stage}",
            f"train.engine.lr={self.lr}",
            "finetune.strategy=full",  # from scratch: everything trains
            "eval.n_boot=0",
            f"seed={self.seed}",
            ("data.cohort", self.cohort),
        ]


def _spec(
    settings: TrainSettings, workers: int, zero_stage: int, step_log: str | None = None
) -> Any:
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.jobspec import JobSpec

    extra = [("train.step_log", step_log)] if step_log else []
    return load_config(JobSpec, None, settings.overrides(workers, zero_stage) + extra)


def ray_run(settings: TrainSettings, workers: int, zero_stage: int, out: str) -> dict[str, Any]:
    """One Ray Train + DeepSpeed fine-tuning run (the product path) with worker memory sampled.

    Returns:
        ``epoch_s`` / ``tokens`` / ``wait`` per epoch (from the workers' reports), ``steps``,
        ``step_s`` (rank 0's wall time of every step, per epoch, from ``train.step_log``),
        ``cpu_s`` (rank 0's training-thread CPU time per epoch, from the same log),
        ``counters`` (that thread's [voluntary switches, involuntary switches, page faults]
        per epoch, same log), the per-worker peak RSS (MB) and the run's wall time.
    """
    from ehrsurv_dist.train.launch import run_training
    from ehrsurv_dist.train.loop import read_step_log

    step_log = os.path.join(out, "step_log.jsonl")
    spec = _spec(settings, workers, zero_stage, step_log=step_log)
    t0 = time.perf_counter()
    with WorkerMemory() as mem:
        res = run_training(spec, "finetune", out)
    wall = time.perf_counter() - t0
    hist = sorted(res.history, key=lambda h: h["epoch"])
    if [h["epoch"] for h in hist] != list(range(settings.epochs)):
        raise RuntimeError(f"run {out} reported epochs {[h['epoch'] for h in hist]}")
    by_epoch = read_step_log(step_log, rank=0)
    return {
        "step_s": [by_epoch[e]["step_seconds"] for e in range(settings.epochs)],
        "cpu_s": [by_epoch[e]["cpu_seconds"] for e in range(settings.epochs)],
        "counters": [
            [*by_epoch[e]["switches"], by_epoch[e]["page_faults"]] for e in range(settings.epochs)
        ],
        "epoch_s": [float(h["epoch_seconds"]) for h in hist],
        # tokens_per_s = tokens of all ranks / slowest rank's epoch seconds
        "tokens": [float(h["tokens_per_s"]) * float(h["epoch_seconds"]) for h in hist],
        "wait": [float(h["data_wait_fraction"]) for h in hist],
        "steps": [int(h["steps"]) for h in hist],
        "worker_peak_rss_mb": sorted(mem.peaks.values()),
        "wall_s": wall,
        "vocab_path": os.path.join(out, "vocab.json"),
    }


def _survival_task(spec: Any) -> Any:
    """The worker's fine-tuning task for ``spec`` (as :func:`worker.train_func` builds it)."""
    from ehrsurv_dist.train.tasks import SurvivalTask

    f = spec.finetune
    return SurvivalTask(
        loss=f.loss,
        lambda_rank=f.lambda_rank,
        curriculum_epochs=f.curriculum_epochs,
        margin=f.margin,
        rank_loss=f.rank_loss,
        risk=f.risk_score,
        horizon=f.risk_k,
        first_n=f.risk_n,
    )


def plain_loop(
    settings: TrainSettings, vocab_path: str, *, stream: bool = False, threads: int = 1
) -> dict[str, Any]:
    """The plain single-process loop: same model, batches, optimizer and steps; no Ray/DeepSpeed.

    Args:
        settings: the shared run settings.
        vocab_path: the vocabulary the Ray run used (same token ids, same model size).
        stream: read batches from the single-process data path inside the timed epoch; False
            (default) materialises each epoch's batches before its clock starts.
        threads: torch intra-op threads during the loop (a Ray worker with 1 CPU has 1).

    Returns:
        ``epoch_s``, ``tokens``, ``wait`` (data-wait fraction), ``steps``, ``step_s`` (the wall
        time of every step, timed as :func:`~ehrsurv_dist.train.loop.train_epoch` does),
        ``cpu_s`` (the loop thread's CPU time), ``counters`` ([voluntary switches, involuntary
        switches, page faults] of the loop thread) per epoch and the mean training loss per
        epoch.
    """
    import torch

    from ehrsurv_dist.data.pipeline import IngestPipeline
    from ehrsurv_dist.data.vocab import Vocabulary
    from ehrsurv_dist.train import modeling
    from ehrsurv_dist.train.engine import optimizer_and_scheduler
    from ehrsurv_dist.train.loop import thread_counters, to_tensors

    spec = _spec(settings, 1, 0)
    vocab = Vocabulary.load(vocab_path)
    pipe = IngestPipeline(
        spec.data.cohort,
        spec.data,
        layout=modeling.layout_of(spec),  # type: ignore[arg-type]
        seed=spec.seed,
        require_outcomes=True,
    )
    fit = pipe.fit(vocab)
    train_subjects = fit.stats[S.TRAIN_SPLIT]["subjects"]
    ecfg = spec.train.engine
    bs = spec.data.batch_size
    steps_per_epoch = max(1, math.floor(train_subjects / bs) // ecfg.grad_accum)
    total_steps = steps_per_epoch * spec.train.epochs

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed)
        model = modeling.build_model(spec, fit.vocab.size, "finetune")
        modeling.prepare_finetune(model, spec)
        opt, sched = optimizer_and_scheduler(model, ecfg, total_steps)
        params = [p for g in opt.param_groups for p in g["params"]]
        task = _survival_task(spec)
        cpu = torch.device("cpu")
        out: dict[str, list[Any]] = {
            "epoch_s": [],
            "tokens": [],
            "wait": [],
            "steps": [],
            "step_s": [],
            "cpu_s": [],
            "counters": [],
            "loss": [],
        }
        for epoch in range(spec.train.epochs):
            torch.manual_seed((spec.seed * 1_000_003 + epoch * 1_009) % (2**63))  # as a rank 0
            batches: Iterable[Mapping[str, np.ndarray]] = pipe.iter_batches(S.TRAIN_SPLIT, epoch)
            if not stream:
                batches = list(batches)
            model.train()
            wait = total = 0.0
            steps = tokens = 0
            step_s: list[float] = []
            t_start = time.perf_counter()
            cpu_start = time.thread_time()
            counters_start = thread_counters()
            it = iter(batches)
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                wait += time.perf_counter() - t0
                if batch is None:
                    break
                tb = to_tensors(batch, cpu)
                loss, _ = task(model, model, tb, epoch)
                loss.backward()
                if ecfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, ecfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach())
                steps += 1
                tokens += int(np.asarray(batch[S.ATTENTION_MASK]).sum())
                step_s.append(time.perf_counter() - t0)
            out["counters"].append(
                [b - a for a, b in zip(counters_start, thread_counters(), strict=True)]
            )
            out["cpu_s"].append(time.thread_time() - cpu_start)  # CPU interval inside the wall one
            secs = time.perf_counter() - t_start
            out["epoch_s"].append(secs)
            out["tokens"].append(float(tokens))
            out["wait"].append(wait / secs if secs > 0 else 0.0)
            out["steps"].append(steps)
            out["step_s"].append(step_s)
            out["loss"].append(total / max(steps, 1))
    finally:
        torch.set_num_threads(old_threads)
    return out


def pooled(runs: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """The steady epochs (each run's first left out) of several runs, in one list per key."""
    keys = ("epoch_s", "tokens", "wait", "steps")
    return {k: [v for run in runs for v in steady(run[k])] for k in keys}


def _per_step(
    rounds: Sequence[Sequence[Sequence[float]]], stat: Callable[..., Any], skip: int
) -> list[float]:
    """Per epoch after the first ``skip``: Σ over its steps of ``stat`` over the rounds.

    Raises:
        ValueError: no rounds, or rounds that differ in epochs or in steps within an epoch.
    """
    if not rounds:
        raise ValueError("no rounds")
    n_epochs = len(rounds[0])
    if any(len(r) != n_epochs for r in rounds):
        raise ValueError(f"rounds differ in epochs: {[len(r) for r in rounds]}")
    totals = []
    for e in range(skip, n_epochs):
        lengths = {len(r[e]) for r in rounds}
        if len(lengths) != 1:
            raise ValueError(f"epoch {e}: rounds differ in steps: {sorted(lengths)}")
        totals.append(float(stat(np.asarray([r[e] for r in rounds], dtype=float), axis=0).sum()))
    return totals


def step_floor(rounds: Sequence[Sequence[Sequence[float]]], skip: int = 1) -> list[float]:
    """Per epoch after the first ``skip``: the sum over its steps of each step's fastest time.

    ``rounds[r][e][s]`` is the wall time of step ``s`` of epoch ``e`` in round ``r``. Every
    round runs the same work at a given (epoch, step): the same batch (batches depend only on
    seed and epoch) through the same weights (each round starts from the same seed). A step's
    time is then that work's cost plus whatever the machine took away during it; the minimum
    over rounds keeps the first and drops most of the second, as ``timeit`` does. A cost that
    the path itself adds to every step stays in the minimum.

    Raises:
        ValueError: no rounds, or rounds that differ in epochs or in steps within an epoch.
    """
    return _per_step(rounds, np.min, skip)


def off_cpu_fraction(runs: Sequence[Mapping[str, Sequence[float]]], skip: int = 1) -> float:
    """Share of the steady epochs' wall time in which the training thread was not running:
    1 − Σ thread CPU time ÷ Σ wall time (``cpu_s`` and ``epoch_s`` of every run, each run's
    first ``skip`` epochs left out). A loop that never waits is close to 0."""
    cpu = sum(sum(steady(run["cpu_s"], skip)) for run in runs)
    wall = sum(sum(steady(run["epoch_s"], skip)) for run in runs)
    return 1.0 - cpu / wall if wall > 0 else math.nan


def _write_step_log(path: str, run: Mapping[str, Any]) -> None:
    """The plain loop's per-step times, in the format of ``train.step_log`` (rank 0)."""
    from ehrsurv_dist.train.loop import append_step_log

    for epoch, (times, secs, cpu, (vol, invol, faults)) in enumerate(
        zip(run["step_s"], run["epoch_s"], run["cpu_s"], run["counters"], strict=True)
    ):
        append_step_log(
            path,
            epoch,
            0,
            seconds=secs,
            cpu_seconds=cpu,
            step_seconds=times,
            switches=(vol, invol),
            page_faults=faults,
        )


def counters_per_epoch(
    runs: Sequence[Mapping[str, Any]], skip: int = 1
) -> tuple[float, float, float]:
    """Median over the steady epochs of every run of the training thread's (voluntary
    switches, involuntary switches, page faults) per epoch (``counters`` of each run)."""
    rows = [c for run in runs for c in steady(run["counters"], skip)]
    if not rows:
        raise ValueError("no epochs")
    med = np.median(np.asarray(rows, dtype=float), axis=0)
    return float(med[0]), float(med[1]), float(med[2])


def _rates(run: Mapping[str, Any], skip: int = 1) -> dict[str, float]:
    """Best and median epoch time and tokens/s of one run's epochs after the first ``skip``."""
    secs = steady(run["epoch_s"], skip)
    toks = steady(run["tokens"], skip)
    best = int(np.argmin(secs))
    return {
        "epoch_s": secs[best],
        "epoch_median_s": statistics.median(secs),
        "tokens_per_s": toks[best] / secs[best],
        "tokens_per_s_median": statistics.median(t / s for t, s in zip(toks, secs, strict=True)),
        "tokens_per_epoch": statistics.median(toks),
        "data_wait_fraction": statistics.mean(steady(run["wait"], skip)),
        "steps_per_epoch": statistics.median(steady(run["steps"], skip)),
    }


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def _start_ray(num_cpus: int) -> bool:
    """Start an in-process local Ray unless one is already initialised here; True if started."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as e:  # Ray raises a bare Exception when its node does not come up
        raise EhrsurvError(f"could not start a local Ray (machine overloaded?): {e}") from e
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return True


@contextlib.contextmanager
def _ray_session(num_cpus: int) -> Iterator[None]:
    """A local Ray for the block: started here and shut down after, unless one was running."""
    started = _start_ray(num_cpus)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _prepare_out(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    runs = os.path.join(out, "runs")
    if os.path.exists(runs):
        # Each run directory would otherwise resume (and train nothing): start them afresh.
        shutil.rmtree(runs)
    probe = os.path.join(out, ".write-probe")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None


def run_throughput_bench(
    out: str,
    cohort: str | None = None,
    *,
    subjects: int = 1000,
    size: str = "small",
    batch_size: int = 32,
    max_seq_len: int = 128,
    epochs: int = 5,
    rounds: int = 3,
    zero_stages: Sequence[int] = (0, 1, 2),
    one_worker_stage: int = 0,
    threads: int = 1,
    attention_len: int = 512,
    attention_repeats: int = 3,
    visits: int = 50,
    codes: int = 30,
    hier_batch: int = 2,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure training throughput, data wait, memory per ZeRO stage and attention costs.

    Args:
        out: output directory (created): ``bench.json``, ``SUMMARY.md``, and ``runs/`` with the
            Ray runs and every run's per-step times, ``step_log.jsonl`` (the plain loops' in
            ``runs/plain_r{round}/``); ``cohort/`` too when the bench synthesises it.
        cohort: MEDS cohort; None synthesises ``subjects`` subjects (``synth --signal 3``).
        subjects: size of the synthesised cohort.
        size: model preset of the training runs (``tiny``, ``small``, ...).
        batch_size, max_seq_len: data settings of the training runs.
        epochs: epochs per training run (>= 2: the first is the warm-up, left out).
        rounds: 1-worker Ray runs, each followed by a plain loop (same epochs), with the local
            Ray stopped in between (when the bench started it): the two paths alternate, so
            a drift of the machine's load reaches both, and both get the same number of timed
            epochs, ``rounds * (epochs - 1)``.
        zero_stages: ZeRO stages of the 2-worker runs (memory and 2-worker throughput); the
            2-worker throughput keys come from the first.
        one_worker_stage: ZeRO stage of the 1-worker run (0: nothing to shard on one rank).
        threads: torch threads of the plain loop (= the CPUs of one Ray worker).
        attention_len: L of the SDPA-vs-naive comparison.
        attention_repeats: timed calls per attention variant and per model.
        visits, codes: V and C of the flat-vs-hierarchical comparison.
        hier_batch: subjects per forward of that comparison.
        seed: job seed of the training runs.
        progress: called with the name of each phase as it starts.

    Returns:
        The ``bench.json`` content (flat keys, numbers; see the module doc).

    Raises:
        EhrsurvError: ``epochs`` < 2, no ZeRO stage, or a stage outside 0-2 (ZeRO-3 needs a GPU).
        OutputError: ``out`` cannot be written.
        RuntimeError: the Ray run and the plain loop did not do equal work.
    """
    import torch

    from ehrsurv_dist.bench import attention as A
    from ehrsurv_dist.models import builders as B

    if epochs < 2:
        raise EhrsurvError(f"--epochs must be >= 2 (the first epoch is the warm-up), got {epochs}")
    if rounds < 1:
        raise EhrsurvError(f"--rounds must be >= 1, got {rounds}")
    stages = list(dict.fromkeys(int(s) for s in zero_stages))
    if not stages or any(s not in (0, 1, 2) for s in stages + [one_worker_stage]):
        raise EhrsurvError(
            f"ZeRO stages must be 0, 1 or 2 on CPU (3 needs a GPU), got {list(zero_stages)} "
            f"and {one_worker_stage} for one worker"
        )
    note = progress or (lambda _msg: None)
    _prepare_out(out)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t_bench = time.perf_counter()
    if cohort is None:
        from ehrsurv_dist.data.synthetic import synthesize

        note(f"synthesising a {subjects}-subject cohort")
        cohort = os.path.join(out, "cohort")
        if os.path.exists(cohort):
            shutil.rmtree(cohort)
        synthesize(cohort, "local", subjects=subjects, seed=42, signal=3.0)
    settings = TrainSettings(
        cohort=os.path.abspath(cohort) if "://" not in cohort else cohort,
        size=size,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        epochs=epochs,
        seed=seed,
        cpus_per_worker=threads,
    )
    runs_dir = os.path.join(out, "runs")
    # 2 workers x their CPUs + 1 CPU for Ray Data (as the launcher reserves)
    num_cpus = max(os.cpu_count() or 1, 2 * threads + 1)
    ray1: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for r in range(rounds):
        with _ray_session(num_cpus):
            note(f"Ray Train, 1 worker, ZeRO-{one_worker_stage} (round {r + 1}/{rounds})")
            ray1.append(
                ray_run(
                    settings,
                    1,
                    one_worker_stage,
                    os.path.join(runs_dir, f"w1_zero{one_worker_stage}_r{r}"),
                )
            )
        note(f"plain loop (round {r + 1}/{rounds})")
        plain.append(plain_loop(settings, ray1[0]["vocab_path"], threads=threads))
        _write_step_log(os.path.join(runs_dir, f"plain_r{r}", "step_log.jsonl"), plain[-1])
    vocab_path = ray1[0]["vocab_path"]
    ray_runs: dict[str, dict[str, Any]] = {}
    with _ray_session(num_cpus):
        for s in stages:
            note(f"Ray Train, 2 workers, ZeRO-{s}")
            ray_runs[f"2w_zero{s}"] = ray_run(settings, 2, s, os.path.join(runs_dir, f"w2_zero{s}"))
    note("plain loop, streamed")
    stream = plain_loop(settings, vocab_path, stream=True, threads=threads)

    # Steady epochs of every round pooled: as many for the Ray runs as for the plain loops.
    r1 = _rates(pooled(ray1), skip=0)
    r2 = _rates(ray_runs[f"2w_zero{stages[0]}"])
    rp = _rates(pooled(plain), skip=0)
    rs = _rates(stream)
    # Equal work: the same tokens per epoch, and the same steps in every epoch (the step
    # floors compare step by step; step_floor checks the rounds of each side among themselves).
    ray_steps = [len(x) for x in ray1[0]["step_s"]]
    plain_steps = [len(x) for x in plain[0]["step_s"]]
    if abs(r1["tokens_per_epoch"] - rp["tokens_per_epoch"]) > 0.5 or ray_steps != plain_steps:
        raise RuntimeError(
            "unequal work: the Ray run trained "
            f"{r1['tokens_per_epoch']:.0f} tokens per epoch in {ray_steps} steps per epoch, "
            f"the plain loop {rp['tokens_per_epoch']:.0f} in {plain_steps}"
        )
    # The training thread's CPU time (its work) per epoch: per epoch the median over rounds.
    ray_cpu = sum(np.median([steady(r["cpu_s"]) for r in ray1], axis=0))
    plain_cpu = sum(np.median([steady(r["cpu_s"]) for r in plain], axis=0))
    ray_floor = step_floor([run["step_s"] for run in ray1])
    plain_floor = step_floor([run["step_s"] for run in plain])
    ray_step_median = sum(_per_step([run["step_s"] for run in ray1], np.median, 1))
    plain_step_median = sum(_per_step([run["step_s"] for run in plain], np.median, 1))
    ray_counters = counters_per_epoch(ray1)
    plain_counters = counters_per_epoch(plain)
    # Each round's own ratio (its Ray run against the plain loop right after it).
    round_ratios = [
        min(steady(a["epoch_s"])) / min(steady(b["epoch_s"]))
        for a, b in zip(ray1, plain, strict=True)
    ]

    note("attention kernels")
    if size not in ("tiny", "small", "medium", "large"):
        raise EhrsurvError(f"unknown model size {size!r}")
    cfg = getattr(B, f"behrt_{size}")(100, max_seq_len)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        attn = A.bench_attention_kernels(
            batch_size,
            cfg.num_heads,
            attention_len,
            cfg.hidden_dim // cfg.num_heads,
            repeats=attention_repeats,
            rss=RssRise,
            seed=seed,
        )
        note("flat vs hierarchical")
        fh = A.bench_flat_vs_hierarchical(
            size,
            visits=visits,
            codes=codes,
            batch=hier_batch,
            repeats=attention_repeats,
            seed=seed,
        )
    finally:
        torch.set_num_threads(old_threads)

    n_params = _trainable_parameters(settings, vocab_path)
    res: dict[str, Any] = {
        "train_overhead_ratio": sum(ray_floor) / sum(plain_floor),
        "train_overhead_ratio_best_epoch": r1["epoch_s"] / rp["epoch_s"],
        "train_overhead_ratio_step_median": ray_step_median / plain_step_median,
        "ray_1w_step_floor_epoch_s": statistics.mean(ray_floor),
        "train_cpu_ratio": ray_cpu / plain_cpu,
        "ray_1w_off_cpu_fraction": off_cpu_fraction(ray1),
        "plain_off_cpu_fraction": off_cpu_fraction(plain),
        "ray_1w_voluntary_switches_per_epoch": ray_counters[0],
        "ray_1w_involuntary_switches_per_epoch": ray_counters[1],
        "ray_1w_page_faults_per_epoch": ray_counters[2],
        "plain_voluntary_switches_per_epoch": plain_counters[0],
        "plain_involuntary_switches_per_epoch": plain_counters[1],
        "plain_page_faults_per_epoch": plain_counters[2],
        "plain_step_floor_epoch_s": statistics.mean(plain_floor),
        "data_wait_fraction": r1["data_wait_fraction"],
        "ray_1w_tokens_per_s": r1["tokens_per_s"],
        "ray_2w_tokens_per_s": r2["tokens_per_s"],
        "plain_tokens_per_s": rp["tokens_per_s"],
        "plain_stream_tokens_per_s": rs["tokens_per_s"],
        "train_overhead_ratio_median": r1["epoch_median_s"] / rp["epoch_median_s"],
        "train_overhead_ratio_vs_stream": r1["epoch_s"] / rs["epoch_s"],
        "ray_2w_speedup_vs_1w": r2["tokens_per_s"] / r1["tokens_per_s"],
        "ray_2w_speedup_vs_plain": r2["tokens_per_s"] / rp["tokens_per_s"],
        "ray_1w_epoch_s": r1["epoch_s"],
        "ray_1w_epoch_median_s": r1["epoch_median_s"],
        "ray_2w_epoch_s": r2["epoch_s"],
        "plain_epoch_s": rp["epoch_s"],
        "plain_epoch_median_s": rp["epoch_median_s"],
        "plain_stream_epoch_s": rs["epoch_s"],
        "ray_1w_tokens_per_s_median": r1["tokens_per_s_median"],
        "plain_tokens_per_s_median": rp["tokens_per_s_median"],
        "ray_2w_data_wait_fraction": r2["data_wait_fraction"],
        "plain_stream_data_wait_fraction": rs["data_wait_fraction"],
        "ray_1w_compute_s": r1["epoch_s"] * (1 - r1["data_wait_fraction"]),
        "ray_1w_run_wall_s": statistics.median(run["wall_s"] for run in ray1),
        "ray_1w_first_epoch_s": statistics.median(run["epoch_s"][0] for run in ray1),
        "train_overhead_ratio_round_min": min(round_ratios),
        "train_overhead_ratio_round_max": max(round_ratios),
        "tokens_per_epoch": r1["tokens_per_epoch"],
        "steps_per_epoch": r1["steps_per_epoch"],
        "plain_loss_epoch_last": plain[-1]["loss"][-1],
    }
    for s in stages:
        run = ray_runs[f"2w_zero{s}"]
        peaks = run["worker_peak_rss_mb"]
        if not peaks:
            raise RuntimeError(f"no Ray Train worker process was seen during the ZeRO-{s} run")
        rs2 = _rates(run)
        res[f"peak_rss_mb_zero{s}"] = max(peaks)
        res[f"peak_rss_mb_zero{s}_mean"] = statistics.mean(peaks)
        res[f"ray_2w_zero{s}_tokens_per_s"] = rs2["tokens_per_s"]
        res[f"ray_2w_zero{s}_data_wait_fraction"] = rs2["data_wait_fraction"]
        res[f"model_state_mb_per_rank_zero{s}"] = model_state_bytes_per_rank(n_params, s, 2) / 2**20
        res[f"ray_2w_zero{s}_run_wall_s"] = run["wall_s"]
    res.update(attn)
    res.update(fh)
    res.update(
        {
            "trainable_parameters": n_params,
            "batch_size": batch_size,
            "max_seq_len": max_seq_len,
            "epochs": epochs,
            "rounds": rounds,
            "steady_epochs_ray": rounds * (epochs - 1),
            "steady_epochs_plain": rounds * (epochs - 1),
            "one_worker_zero_stage": one_worker_stage,
            "two_worker_zero_stage": stages[0],
            "torch_threads": threads,
            "cpu_count": os.cpu_count() or 0,
            "load_avg_1m_at_start": load0,
            "load_avg_1m_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
            "bench_wall_s": time.perf_counter() - t_bench,
        }
    )
    atomic.write_json(res, os.path.join(out, "bench.json"))
    atomic.write_text(summary(res, cohort, size, stages), os.path.join(out, "SUMMARY.md"))
    return res


def _trainable_parameters(settings: TrainSettings, vocab_path: str) -> int:
    from ehrsurv_dist.data.vocab import Vocabulary
    from ehrsurv_dist.train import modeling

    spec = _spec(settings, 1, 0)
    model = modeling.build_model(spec, Vocabulary.load(vocab_path).size, "finetune")
    modeling.prepare_finetune(model, spec)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summary(r: Mapping[str, Any], cohort: str, size: str, stages: Sequence[int]) -> str:
    """``SUMMARY.md``: the tables of :func:`run_throughput_bench` and what they mean."""

    def f0(x: float) -> str:
        return f"{x:,.0f}"

    lines = [
        "# Throughput benchmark",
        "",
        f"Cohort `{cohort}`; BEHRT `{size}` ({r['trainable_parameters']:,} trainable parameters, "
        f"full fine-tuning, NLL), batch {r['batch_size']}, max_seq_len {r['max_seq_len']}, "
        f"{r['epochs']} epochs per run ({r['steps_per_epoch']:.0f} steps, "
        f"{r['tokens_per_epoch']:,.0f} real tokens per epoch); {r['cpu_count']} CPU(s), "
        f"{platform.machine()} {platform.system()}, torch threads per worker and in the plain "
        f"loop: {r['torch_threads']}; load average {r['load_avg_1m_at_start']:.1f} at start, "
        f"{r['load_avg_1m_at_end']:.1f} at end.",
        "",
        "**Time** = steady-state training-epoch time: the wall time of the training loop over "
        "one epoch (waiting for batches + forward + backward + optimizer step), for every epoch "
        "after the first. Ray start-up, the vocabulary scan, DeepSpeed initialisation and op "
        "compile, the first epoch, validation and checkpointing are left out. The 1-worker Ray "
        "run and the plain loop alternate "
        f"for {r['rounds']} round(s), {r['steady_epochs_ray']} timed epochs each in all. "
        "*Step floor*: every step of a steady epoch at its fastest over the rounds (each round "
        "trains the same batch through the same weights at that step, on both sides), summed "
        "and averaged over the epochs: the work's cost with the machine's interruptions mostly "
        "left out. *Best (median)*: the fastest (median) whole steady epoch.",
        "",
        "## Training throughput",
        "",
        "| path | step floor s | epoch s, best (median) | tokens/s (best epoch) | data wait "
        "| vs plain (best epoch) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| plain torch loop, batches in memory | {r['plain_step_floor_epoch_s']:.3f} | "
        f"{r['plain_epoch_s']:.3f} ({r['plain_epoch_median_s']:.3f}) | "
        f"{f0(r['plain_tokens_per_s'])} | – | 1.00 |",
        f"| plain torch loop, single-process data path | – | {r['plain_stream_epoch_s']:.3f} | "
        f"{f0(r['plain_stream_tokens_per_s'])} | {r['plain_stream_data_wait_fraction']:.2f} | "
        f"{r['plain_stream_epoch_s'] / r['plain_epoch_s']:.2f} |",
        f"| Ray Train + DeepSpeed ZeRO-{r['one_worker_zero_stage']}, 1 worker | "
        f"{r['ray_1w_step_floor_epoch_s']:.3f} | "
        f"{r['ray_1w_epoch_s']:.3f} ({r['ray_1w_epoch_median_s']:.3f}) | "
        f"{f0(r['ray_1w_tokens_per_s'])} | {r['data_wait_fraction']:.2f} | "
        f"{r['train_overhead_ratio_best_epoch']:.2f} |",
        f"| Ray Train + DeepSpeed ZeRO-{r['two_worker_zero_stage']}, 2 workers | – | "
        f"{r['ray_2w_epoch_s']:.3f} | {f0(r['ray_2w_tokens_per_s'])} | "
        f"{r['ray_2w_data_wait_fraction']:.2f} | "
        f"{r['ray_2w_epoch_s'] / r['plain_epoch_s']:.2f} |",
        "",
        f"- `train_overhead_ratio` (Ray Train 1 worker ÷ plain, equal work, step floors): "
        f"**{r['train_overhead_ratio']:.2f}** (target ≤ 1.10); the same with each step's "
        f"median over the rounds: {r['train_overhead_ratio_step_median']:.2f}; best epochs: "
        f"{r['train_overhead_ratio_best_epoch']:.2f}; median epochs: "
        f"{r['train_overhead_ratio_median']:.2f}; best epochs of single rounds: "
        f"{r['train_overhead_ratio_round_min']:.2f} to "
        f"{r['train_overhead_ratio_round_max']:.2f}",
        f"- where the Ray path's time goes: the training thread's CPU time per epoch, Ray ÷ "
        f"plain, **{r['train_cpu_ratio']:.2f}** (the work itself: DeepSpeed's engine against "
        f"plain torch, and what else that thread does); the share of the epoch in which the "
        f"thread was not running, **{r['ray_1w_off_cpu_fraction']:.3f}** (Ray) against "
        f"{r['plain_off_cpu_fraction']:.3f} (plain): waiting for the GIL while the worker's "
        "batch-preparing and Ray threads hold it, for a CPU taken by Ray's other processes, or "
        "for a batch",
        f"- the training thread's context switches per epoch, voluntary / involuntary: "
        f"{r['ray_1w_voluntary_switches_per_epoch']:.0f} / "
        f"{r['ray_1w_involuntary_switches_per_epoch']:.0f} (Ray) against "
        f"{r['plain_voluntary_switches_per_epoch']:.0f} / "
        f"{r['plain_involuntary_switches_per_epoch']:.0f} (plain); its page faults per epoch: "
        f"{r['ray_1w_page_faults_per_epoch']:.0f} (Ray) against "
        f"{r['plain_page_faults_per_epoch']:.0f} (plain)",
        f"- the first (warm-up) epoch of a 1-worker run: {r['ray_1w_first_epoch_s']:.2f} s "
        "(median of the rounds; Ray Data's first execution and allocator warm-up)",
        f"- `data_wait_fraction` (1 worker, as the trainer reports it): "
        f"**{r['data_wait_fraction']:.3f}** (target < 0.10); the 1-worker epoch without its "
        f"data wait: {r['ray_1w_compute_s']:.3f} s",
        f"- 2 workers vs 1: ×{r['ray_2w_speedup_vs_1w']:.2f} tokens/s",
        "",
        "## Peak memory per ZeRO stage (2 workers, CPU, per worker process)",
        "",
        "| ZeRO stage | peak RSS MB (max of workers) | mean of workers | model state MB per rank "
        "(analytic) | tokens/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in stages:
        lines.append(
            f"| {s} | {r[f'peak_rss_mb_zero{s}']:.0f} | {r[f'peak_rss_mb_zero{s}_mean']:.0f} | "
            f"{r[f'model_state_mb_per_rank_zero{s}']:.2f} | "
            f"{f0(r[f'ray_2w_zero{s}_tokens_per_s'])} |"
        )
    lines += [
        "",
        "The resident set of a worker is mostly the Python, torch, Ray and DeepSpeed runtime; "
        "the model state that ZeRO shards is the last column.",
        "",
        "## Attention",
        "",
        f"Forward + backward, B={r['attn_batch']}, H={r['attn_heads']}, L={r['attn_len']}, "
        f"head width {r['attn_head_dim']}, visit-causal mask, fp32, {r['torch_threads']} "
        "thread(s):",
        "",
        "| kernel | ms (median) | saved for backward MB | RSS rise MB | with dropout 0.1, ms |",
        "|---|---:|---:|---:|---:|",
        f"| scaled_dot_product_attention | {r['attn_sdpa_ms']:.1f} "
        f"({r['attn_sdpa_median_ms']:.1f}) | {r['attn_sdpa_saved_mb']:.1f} | "
        f"{r.get('attn_sdpa_rss_rise_mb', math.nan):.0f} | {r['attn_sdpa_dropout_ms']:.1f} |",
        f"| naive softmax attention | {r['attn_naive_ms']:.1f} ({r['attn_naive_median_ms']:.1f}) "
        f"| {r['attn_naive_saved_mb']:.1f} | {r.get('attn_naive_rss_rise_mb', math.nan):.0f} | "
        f"{r['attn_naive_dropout_ms']:.1f} |",
        "",
        f"SDPA is ×{r['attn_speedup']:.2f} faster and keeps ×{r['attn_saved_memory_ratio']:.1f} "
        f"less for the backward pass (max |difference| {r['attn_max_abs_diff']:.1e}). With "
        f"attention dropout SDPA runs ×{r['attn_dropout_slowdown_sdpa']:.2f} slower (on CPU it "
        "then takes the unfused math path).",
        "",
        f"Flat vs hierarchical BEHRT (`{size}`), V={r['flat_hier_visits']}, "
        f"C={r['flat_hier_codes']}, batch {r['flat_hier_batch']}:",
        "",
        f"- attention score entries, the seed's formula (V·C)² / (V·C² + V²): "
        f"**×{r['flat_hier_attention_ops_ratio_seed']:.1f}**",
        f"- attention score entries of our two models (layers × heads, attention pooling): "
        f"×{r['flat_hier_attention_ops_ratio_models']:.0f}",
        f"- measured forward + backward: flat {r['flat_fwd_bwd_ms']:.0f} ms, hierarchical "
        f"{r['hier_fwd_bwd_ms']:.1f} ms: **×{r['flat_hier_time_ratio']:.1f}**",
        "",
        "```json",
        json.dumps(dict(r), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "REQUIRED_KEYS",
    "RssRise",
    "TrainSettings",
    "WorkerMemory",
    "counters_per_epoch",
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
