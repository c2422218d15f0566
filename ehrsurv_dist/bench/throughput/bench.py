"""``run_throughput_bench``: the rounds of runs, the attention figures, ``bench.json`` and
``SUMMARY.md`` (what each figure means: the module doc of ``ehrsurv_dist.bench.throughput``)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ehrsurv_dist import atomic
from ehrsurv_dist.bench import attention as A
from ehrsurv_dist.bench.throughput.memory import RssRise
from ehrsurv_dist.bench.throughput.reduce import memory_keys, training_keys
from ehrsurv_dist.bench.throughput.report import summary
from ehrsurv_dist.bench.throughput.runs import STEP_LOG, plain_loop, ray_run, ray_session
from ehrsurv_dist.bench.throughput.settings import TrainSettings, trainable_parameters
from ehrsurv_dist.errors import EhrsurvError, OutputError
from ehrsurv_dist.models import builders as B

Note = Callable[[str], None]


def check_stages(
    epochs: int, rounds: int, zero_stages: Sequence[int], one_worker: int
) -> list[int]:
    """The distinct ZeRO stages of the 2-worker runs, in order, after checking the arguments.

    Raises:
        EhrsurvError: ``epochs`` < 2, ``rounds`` < 1, no stage, or a stage outside 0-3.
    """
    if epochs < 2:
        raise EhrsurvError(f"--epochs must be >= 2 (the first epoch is the warm-up), got {epochs}")
    if rounds < 1:
        raise EhrsurvError(f"--rounds must be >= 1, got {rounds}")
    stages = list(dict.fromkeys(int(s) for s in zero_stages))
    if not stages or any(s not in (0, 1, 2, 3) for s in stages + [one_worker]):
        raise EhrsurvError(
            f"ZeRO stages must be 0, 1, 2 or 3, got {list(zero_stages)} "
            f"and {one_worker} for one worker"
        )
    return stages


def prepare_out(out: str) -> None:
    """Create ``out``, drop the ``runs/`` of an earlier bench and check that it is writable.

    Raises:
        OutputError: ``out`` cannot be written.
    """
    os.makedirs(out, exist_ok=True)
    runs = os.path.join(out, "runs")
    if os.path.exists(runs):
        # Each run directory would otherwise resume (and train nothing): start them afresh.
        shutil.rmtree(runs)
    try:
        with tempfile.TemporaryFile(dir=out):  # a write probe, gone when closed
            pass
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None


def bench_cohort(out: str, cohort: str | None, subjects: int, note: Note) -> str:
    """``cohort``, or a ``subjects``-subject cohort synthesised into ``out/cohort``."""
    if cohort is not None:
        return cohort
    from ehrsurv_dist.data.synthetic import synthesize  # only when the bench makes the cohort

    note(f"synthesising a {subjects}-subject cohort")
    cohort = os.path.join(out, "cohort")
    if os.path.exists(cohort):
        shutil.rmtree(cohort)
    synthesize(cohort, "local", subjects=subjects, seed=42, signal=3.0)
    return cohort


def alternate_rounds(
    settings: TrainSettings,
    rounds: int,
    stage: int,
    runs_dir: str,
    num_cpus: int,
    threads: int,
    note: Note,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``rounds`` × (a 1-worker Ray run, then the plain loop with the local Ray stopped when
    the bench started it): (the Ray runs, the plain loops)."""
    ray1: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for r in range(rounds):
        with ray_session(num_cpus):
            note(f"Ray Train, 1 worker, ZeRO-{stage} (round {r + 1}/{rounds})")
            ray1.append(ray_run(settings, 1, stage, os.path.join(runs_dir, f"w1_zero{stage}_r{r}")))
        note(f"plain loop (round {r + 1}/{rounds})")
        step_log = os.path.join(runs_dir, f"plain_r{r}", STEP_LOG)
        plain.append(
            plain_loop(settings, ray1[0]["vocab_path"], threads=threads, step_log=step_log)
        )
    return ray1, plain


def attention_keys(
    size: str,
    batch_size: int,
    max_seq_len: int,
    *,
    threads: int,
    attention_len: int,
    repeats: int,
    visits: int,
    codes: int,
    hier_batch: int,
    seed: int,
    note: Note,
) -> dict[str, Any]:
    """(d) of the module doc: SDPA vs naive attention, and flat vs hierarchical BEHRT."""
    note("attention kernels")
    if size not in ("tiny", "small", "medium", "large"):
        raise EhrsurvError(f"unknown model size {size!r}")
    cfg = getattr(B, f"behrt_{size}")(100, max_seq_len)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        head_dim = cfg.hidden_dim // cfg.num_heads
        attn = A.bench_attention_kernels(
            batch_size,
            cfg.num_heads,
            attention_len,
            head_dim,
            repeats=repeats,
            rss=RssRise,
            seed=seed,
        )
        note("flat vs hierarchical")
        fh = A.bench_flat_vs_hierarchical(
            size, visits=visits, codes=codes, batch=hier_batch, repeats=repeats, seed=seed
        )
    finally:
        torch.set_num_threads(old_threads)
    return {**attn, **fh}


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
        EhrsurvError: ``epochs`` < 2, no ZeRO stage, or a stage outside 0-3.
        OutputError: ``out`` cannot be written.
        RuntimeError: the Ray run and the plain loop did not do equal work.
    """
    stages = check_stages(epochs, rounds, zero_stages, one_worker_stage)
    note = progress or (lambda _msg: None)
    prepare_out(out)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t_bench = time.perf_counter()
    cohort = bench_cohort(out, cohort, subjects, note)
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
    ray1, plain = alternate_rounds(
        settings, rounds, one_worker_stage, runs_dir, num_cpus, threads, note
    )
    vocab_path = ray1[0]["vocab_path"]
    ray_runs: dict[str, dict[str, Any]] = {}
    with ray_session(num_cpus):
        for s in stages:
            note(f"Ray Train, 2 workers, ZeRO-{s}")
            ray_runs[f"2w_zero{s}"] = ray_run(settings, 2, s, os.path.join(runs_dir, f"w2_zero{s}"))
    note("plain loop, streamed")
    stream = plain_loop(settings, vocab_path, stream=True, threads=threads)
    res: dict[str, Any] = training_keys(ray1, plain, ray_runs[f"2w_zero{stages[0]}"], stream)
    attn = attention_keys(
        size,
        batch_size,
        max_seq_len,
        threads=threads,
        attention_len=attention_len,
        repeats=attention_repeats,
        visits=visits,
        codes=codes,
        hier_batch=hier_batch,
        seed=seed,
        note=note,
    )
    n_params = trainable_parameters(settings, vocab_path)
    res.update(memory_keys(ray_runs, stages, n_params))
    res.update(attn)
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
