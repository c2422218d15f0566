"""``ehrsurv bench scale``: the long preset at N and 10·N subjects, measured in one run.

For each size a cohort is synthesised (``ehrsurv synth --preset long``, seed ``seed``) and then
measured in a **fresh spawned driver process** with its own local Ray (``address="local"``,
object store ``object_store_mb``), so that the driver's and the workers' peaks belong to that
size alone. In that process, one stage after another:

- ``validate``: :func:`~ehrsurv_dist.data.validation_cache.validate_cached` with
  ``refresh=True`` (always a full scan; the shards checked as the pipeline does: one after
  another in the driver below ``validate.PARALLEL_MIN_BYTES`` of Parquet, as Ray tasks above),
  the report stored in a bench-private cache so that the training run below reuses it;
  events = the cohort's rows (``report.n_rows``).
- ``vocab``: ``IngestPipeline(...).fit(use_ray=True)``, the vocabulary and statistics scan of
  every unit as Ray Data tasks; events = the cohort's rows.
- ``ingest``: the train split's Ray Dataset (``pipe.dataset("train")``, encoded Arrow blocks)
  iterated block by block in the driver; events = the train split's **input tokens** from the
  vocabulary scan (``fit.stats["train"]["tokens"]``: one per data row of a train subject that
  the layout turns into a token, before truncation).
- ``train``: a pretraining run (:func:`~ehrsurv_dist.train.launch.run_training`, Ray Train +
  DeepSpeed, 1 CPU worker, tiny BEHRT, fp32, ZeRO 0) of one epoch bounded to ``steps``
  optimizer steps (``train.max_steps_per_epoch``), so that its cost does not grow with the
  cohort; ``train_tokens_per_s`` / ``train_subjects_per_s`` / ``train_epoch_s`` are the run's
  own history. The run still fits the vocabulary again (its pre-flight) and validates on the
  whole tuning split (15% of the subjects) after the epoch: those are in ``train_wall_s``,
  not in the rates. The first three stages run ``repeats`` rounds back to back and the rates use
each stage's best round (``*_median_s``: the medians). ``train_cached`` is ``data.cache``'s decision for the run (1: the train
  and tuning splits were materialised in the object store before the epoch).

Memory: ``driver_peak_rss_mb`` is the size process's ``ru_maxrss`` (its lifetime peak: every
stage, the train run's driver side included; ``driver_peak_rss_after_<stage>_mb`` the same
after each of the first three stages, to see which one set it); ``worker_peak_rss_mb`` the largest peak resident
set (``VmHWM``) of any Ray worker process below it (Ray Data tasks, Ray Train workers; command
line ``ray::…``), sampled from ``/proc`` every 0.2 s (:class:`WorkerMemory`). Pages of the
object store a process touched count in its resident set. ``object_store_spilled_mb`` /
``_restored_mb``: the raylet's totals (``store_stats.spilled_bytes_total``) read before Ray
stops. Growth figures and the goals: :mod:`ehrsurv_dist.bench.scale_summary`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.bench.local_ray import start_local_ray
from ehrsurv_dist.bench.scale_summary import STAGES, scale_keys, scale_summary
from ehrsurv_dist.bench.throughput.memory import WorkerMemory
from ehrsurv_dist.errors import EhrsurvError

Note = Callable[[str], None]
RAY_WORKER_MARKER = "ray::"  # every Ray worker process's title (tasks, actors, idle workers)
SIZE_TIMEOUT_S = 3600.0
WARMUP_SUBJECTS = 20
RAY_START_TRIES = 3


def _quiet(_: str) -> None:
    pass


def bench_overrides(cohort: str, opts: Mapping[str, Any]) -> list[Any]:
    """The pretraining job of the train stage (the same at both sizes)."""
    return [
        ("data.cohort", cohort),
        "model.size=tiny",
        "train.num_workers=1",
        "train.use_gpu=false",
        "train.engine.zero_stage=0",
        "train.engine.precision=fp32",
        "train.epochs=1",
        "train.patience=0",
        "train.keep_checkpoints=1",
        "train.min_free_gb=0",
        f"train.max_steps_per_epoch={opts['steps']}",
        f"data.max_seq_len={opts['max_seq_len']}",
        f"data.batch_size={opts['batch_size']}",
        f"data.cache={opts['cache']}",
        f"ray.object_store_mb={opts['object_store_mb']}",
        f"seed={opts['seed']}",
    ]


def spilled_mb() -> tuple[float, float]:
    """(spilled, restored) MiB of the connected Ray's object store since it started: the
    raylet's ``store_stats`` (what ``ray memory --stats-only`` prints as "Spilled N MiB")."""
    import ray  # the Ray edge
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    st = reply.store_stats
    return st.spilled_bytes_total / 2**20, st.restored_bytes_total / 2**20


def _maxrss_mb() -> float:
    """This process's peak resident set so far (``ru_maxrss``), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def measure_size(cohort: str, work: str, opts: Mapping[str, Any], note: Note = _quiet) -> dict:
    """The four stages on ``cohort`` in this process (a fresh one: see the module doc).

    Args:
        cohort: a long-preset cohort.
        work: a scratch folder (validation cache, the training run).
        opts: ``steps``, ``batch_size``, ``max_seq_len``, ``cache``, ``object_store_mb``,
            ``seed``, ``num_cpus``.
        note: progress lines.
    """
    import ray  # the Ray edge: this process starts and stops its own local Ray

    from ehrsurv_dist.config import DataConfig, load_config
    from ehrsurv_dist.data.cache_plan import decide_cache
    from ehrsurv_dist.jobspec import JobSpec
    from ehrsurv_dist.train.launch import run_training

    def cfg_of(c: str) -> DataConfig:
        return DataConfig(cohort=c, max_seq_len=opts["max_seq_len"], batch_size=opts["batch_size"])

    t_all = time.perf_counter()
    cache_dir = os.path.join(work, "validation")
    os.environ["EHRSURV_VALIDATION_CACHE"] = cache_dir  # the train run reuses the report
    _start_ray(int(opts["num_cpus"]), int(opts["object_store_mb"]), note)
    res: dict[str, Any] = {}
    try:
        with WorkerMemory(marker=RAY_WORKER_MARKER) as mem:
            if opts.get("warmup"):
                note("warm-up on a small cohort (Ray workers started, modules imported)")
                res["warmup_s"] = _timed(lambda: _warm_up(opts["warmup"], cfg_of(opts["warmup"])))[
                    0
                ]
            stage_res, fit = _stage_rounds(cohort, cfg_of(cohort), cache_dir, opts, note)
            res.update(stage_res)
            store = float(ray.cluster_resources().get("object_store_memory", 0.0))
            setting = {"true": True, "false": False}.get(str(opts["cache"]), "auto")
            choice = decide_cache(setting, fit.stats, "flat", store)
            res.update(
                train_cached=int(choice.cache),
                train_cache_estimate_mb=choice.estimate_bytes / 2**20,
                object_store_mb=store / 2**20,
            )
            note(f"training ({choice.reason})")
            spec = load_config(JobSpec, None, bench_overrides(cohort, opts))
            dt, run = _timed(
                lambda: run_training(spec, "pretrain", os.path.join(work, "run"), progress=False)
            )
            h = run.history[-1]
            res.update(
                train_tokens_per_s=float(h["tokens_per_s"]),
                train_subjects_per_s=float(h["subjects_per_s"]),
                train_epoch_s=float(h["epoch_seconds"]),
                train_steps=int(h["steps"]),
                train_wall_s=dt,
            )
            note(f"trained {h['steps']} steps at {h['tokens_per_s']:,.0f} tokens/s")
        res["object_store_spilled_mb"], res["object_store_restored_mb"] = spilled_mb()
    finally:
        ray.shutdown()
    for s in ("validate", "vocab", "ingest"):
        res[f"{s}_events_per_s"] = res[f"{s}_events"] / res[f"{s}_s"]
    res["driver_peak_rss_mb"] = _maxrss_mb()
    res.update(worker_memory(mem))
    res["size_wall_s"] = time.perf_counter() - t_all
    return res


def _start_ray(
    num_cpus: int, object_store_mb: int, note: Note, tries: int = RAY_START_TRIES
) -> None:
    """A fresh local Ray, tried again when its node does not come up: Ray gives its raylet a
    fixed 30 s to register, which a loaded shared machine can exceed (measured at load
    average 25: "The current node timed out during startup").

    Raises:
        EhrsurvError: the last try failed too.
    """
    import ray

    for attempt in range(1, tries + 1):
        try:
            start_local_ray(num_cpus, object_store_mb)
            return
        except Exception as e:  # Ray raises a bare Exception when its node does not come up
            ray.shutdown()
            if attempt == tries:
                raise EhrsurvError(f"could not start a local Ray in {tries} tries: {e}") from e
            note(f"local Ray did not start ({e}); trying again")


def _stage_rounds(
    cohort: str, cfg: Any, cache_dir: str, opts: Mapping[str, Any], note: Note
) -> tuple[dict[str, Any], Any]:
    """validate, vocab and ingest back to back, ``opts["repeats"]`` rounds: their best and
    median seconds, their events, and the driver's peak after each stage's first round.

    Returns:
        (the keys, the vocabulary scan's ``IngestFit``)
    """
    from ehrsurv_dist.data.pipeline import IngestPipeline, ray_validation_mapper
    from ehrsurv_dist.data.validation_cache import validate_cached

    times: dict[str, list[float]] = {s: [] for s in STAGES}
    res: dict[str, Any] = {}
    for rnd in range(int(opts.get("repeats", 1))):
        dt, report = _timed(
            lambda: validate_cached(
                cohort, parallel=ray_validation_mapper(), cache=cache_dir, refresh=True
            )
        )
        times["validate"].append(dt)
        res.setdefault("driver_peak_rss_after_validate_mb", _maxrss_mb())
        # caches off: every round scans (the scan cache would answer rounds 2 and later)
        pipe = IngestPipeline(
            cohort, cfg, report=report, require_outcomes=False, validation_cache="none"
        )
        dt, fit = _timed(pipe.fit, use_ray=True)
        times["vocab"].append(dt)
        res.setdefault("driver_peak_rss_after_vocab_mb", _maxrss_mb())
        dt, subjects = _timed(_consume_blocks, pipe.dataset(S.TRAIN_SPLIT))
        times["ingest"].append(dt)
        res.setdefault("driver_peak_rss_after_ingest_mb", _maxrss_mb())
        secs = ", ".join(f"{s} {times[s][-1]:.1f} s" for s in STAGES)
        note(f"round {rnd + 1}: {secs} ({report.n_rows:,} rows, {subjects:,} train subjects)")
    res.update({f"{s}_s": min(v) for s, v in times.items()})
    res.update({f"{s}_median_s": statistics.median(v) for s, v in times.items()})
    rows = report.n_rows
    res.update(validate_events=rows, vocab_events=rows, events=rows, ingest_subjects=subjects)
    res["ingest_events"] = int(fit.stats[S.TRAIN_SPLIT]["tokens"])
    return res, fit


def worker_memory(mem: WorkerMemory) -> dict[str, float]:
    """Peaks of the sampled Ray workers: every worker, the Ray Train workers, the others
    (Ray Data tasks and idle workers), as ``VmHWM`` and as private resident memory (MB)."""

    def top(peaks: Mapping[int, float], train: bool | None) -> float:
        pids = [p for p in peaks if train is None or ("RayTrainWorker" in mem.titles[p]) == train]
        return max((peaks[p] for p in pids), default=0.0)

    return {
        "worker_peak_rss_mb": top(mem.peaks, None),
        "worker_peak_private_mb": top(mem.private_peaks, None),
        "train_worker_peak_rss_mb": top(mem.peaks, True),
        "data_worker_peak_rss_mb": top(mem.peaks, False),
        "train_worker_peak_private_mb": top(mem.private_peaks, True),
        "data_worker_peak_private_mb": top(mem.private_peaks, False),
        "workers_sampled": len(mem.peaks),
    }


def _warm_up(cohort: str, cfg: Any) -> None:
    """Validation, vocabulary scan and train-split encoding of a small cohort, untimed: the
    Ray workers are started and have imported what the stages run before the clock starts."""
    from ehrsurv_dist.data.pipeline import IngestPipeline, ray_validation_mapper
    from ehrsurv_dist.data.validation_cache import validate_cached

    report = validate_cached(cohort, parallel=ray_validation_mapper(), cache="none")
    pipe = IngestPipeline(
        cohort, cfg, report=report, require_outcomes=False, validation_cache="none"
    )
    pipe.fit(use_ray=True)
    _consume_blocks(pipe.dataset(S.TRAIN_SPLIT))


def _consume_blocks(ds: Any) -> int:
    """Rows (subjects) of a Ray Dataset read block by block as Arrow tables."""
    n = 0
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        n += block.num_rows
    return n


def _size_child(cohort: str, work: str, opts: dict[str, Any], out: Any, quiet: bool) -> None:
    def note(msg: str) -> None:
        if not quiet:
            print(f"bench scale: {os.path.basename(cohort)}: {msg}", file=sys.stderr, flush=True)

    try:
        out.put(("ok", measure_size(cohort, work, opts, note)))
    except BaseException as e:  # the parent raises it
        out.put(("error", f"{type(e).__name__}: {e}"))
        raise


def run_size(cohort: str, work: str, opts: dict[str, Any], quiet: bool = False) -> dict:
    """:func:`measure_size` in a fresh spawned process (its own peaks, its own Ray).

    Raises:
        EhrsurvError: the process failed or gave no result.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_size_child, args=(cohort, work, opts, q, quiet))
    proc.start()
    try:
        status, value = q.get(timeout=SIZE_TIMEOUT_S)
    except queue.Empty:
        status, value = "error", f"no result in {SIZE_TIMEOUT_S:.0f} s"
    finally:
        proc.join(timeout=120)
    if status != "ok":
        raise EhrsurvError(f"bench scale on {cohort} failed: {value}")
    return dict(value)


def run_scale_bench(
    out: str,
    subjects: int = 1000,
    *,
    seed: int = 42,
    steps: int = 30,
    batch_size: int = 16,
    max_seq_len: int = 512,
    cache: str = "auto",
    object_store_mb: int = 1024,
    num_cpus: int | None = None,
    repeats: int = 3,
    shard_subjects: int = 500,
    keep: bool = False,
    warmup: bool = True,
    quiet: bool = False,
    progress: Note = _quiet,
) -> dict[str, Any]:
    """Measure the long preset at ``subjects`` and 10 × ``subjects``; write ``OUT/bench.json``
    and ``OUT/SUMMARY.md``.

    Args:
        out: output directory (the cohorts go to ``OUT/cohort_<subjects>``, removed after each
            size's measurement unless ``keep``; the runs to ``OUT/work_<subjects>``, removed).
        subjects: N; the second size is 10·N.
        seed: the cohorts' and the runs' seed.
        steps: optimizer steps of the bounded training epoch.
        batch_size, max_seq_len: ``data.batch_size`` and ``data.max_seq_len`` of every stage.
        cache: ``data.cache`` of the training run (``auto``, ``true``, ``false``).
        object_store_mb: object store of each size's local Ray.
        num_cpus: CPUs of each size's local Ray (default: the machine's, at least 2).
        repeats: rounds of validate, vocab and ingest per size; the rates use each stage's
            best round (``*_median_s`` keep the medians), as the other benches do.
        shard_subjects: subjects per Parquet shard of the cohorts (N and 10·N get the same
            shard size, 10× the shards, as an extract that grows by more files: validation
            reads one whole shard at a time, in the driver below 256 MB of Parquet, so the
            driver's peak follows the shard size); 0: the
            generator's default (one shard per 5,000 subjects, at least 2).
        keep: keep the cohorts.
        warmup: before the timed stages of each size, run them once untimed on a
            :data:`WARMUP_SUBJECTS`-subject cohort (Ray workers started, modules imported), so
            that the rates are per-event costs and not the fixed start-up of a fresh Ray.
        quiet: no progress lines from the size processes.
        progress: progress lines of this process.

    Returns:
        The ``bench.json`` content (flat keys: :mod:`ehrsurv_dist.bench.scale_summary`).
    """
    from ehrsurv_dist.data.synth_long import synthesize_long

    if subjects < 10:
        raise EhrsurvError(f"--subjects must be >= 10 (each split needs subjects), got {subjects}")
    os.makedirs(out, exist_ok=True)
    cpus = int(num_cpus or max(2, os.cpu_count() or 1))
    opts: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "max_seq_len": max_seq_len,
        "cache": cache,
        "object_store_mb": object_store_mb,
        "seed": seed,
        "num_cpus": cpus,
        "repeats": repeats,
    }
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    if warmup:
        opts["warmup"] = os.path.join(out, "cohort_warmup")
        shutil.rmtree(opts["warmup"], ignore_errors=True)
        synthesize_long(opts["warmup"], subjects=WARMUP_SUBJECTS, seed=seed)
    measured = []
    for n in (subjects, 10 * subjects):
        cohort = os.path.join(out, f"cohort_{n}")
        work = os.path.join(out, f"work_{n}")
        for d in (cohort, work):
            shutil.rmtree(d, ignore_errors=True)
        progress(f"synthesising {n:,} subjects (long preset) into {cohort}")
        shards = None if not shard_subjects else max(1, -(-n // shard_subjects))
        syn = synthesize_long(cohort, subjects=n, seed=seed, shards=shards)
        progress(f"{syn.rows:,} rows in {syn.seconds:.1f} s; measuring in a fresh process")
        m = run_size(cohort, work, opts, quiet=quiet)
        m.update(subjects=n, synth_s=syn.seconds, shards=syn.shards)
        measured.append(m)
        shutil.rmtree(work, ignore_errors=True)
        if not keep:
            shutil.rmtree(cohort, ignore_errors=True)
    if warmup:
        shutil.rmtree(opts["warmup"], ignore_errors=True)
    res = scale_keys(measured[0], measured[1])
    res.update(
        {
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "max_seq_len": max_seq_len,
            "num_cpus": cpus,
            "repeats": repeats,
            "load_avg_1m_at_start": load0,
            "load_avg_1m_at_end": os.getloadavg()[0],
            "wall_s": time.perf_counter() - t0,
        }
    )
    atomic.write_json(res, os.path.join(out, "bench.json"))
    atomic.write_text(scale_summary(res), os.path.join(out, "SUMMARY.md"))
    return res
