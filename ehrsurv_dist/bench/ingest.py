"""``ehrsurv bench ingest``: the ingest paths measured side by side in one run.

Same cohort, files, columns and batch size for every path. After a warm-up pass of each (page
cache warm, Ray workers started, per-process outcome caches filled), ``repeats`` rounds run the
paths back to back, so that they share the machine's load; rates use each path's best round and
the ``*_median_s`` keys keep the medians.

- ``pyarrow_read_subjects_per_s``: a plain ``pyarrow.parquet.read_table(file, columns=[subject_id,
  time, code])`` of every shard (the I/O ceiling). ``pyarrow_read_dict_subjects_per_s`` is the same
  read with the code column dictionary-encoded, which is what the pipeline reads.
- ``single_subjects_per_s``: the single-process reference path, every subject of the cohort
  through read → visits → vocabulary → flatten → bucket → pad → fixed-shape batches.
- ``ray_subjects_per_s`` / ``ray_1cpu_subjects_per_s``: the path training takes, on a local Ray
  started with all CPUs / one CPU: Ray Data map tasks emit Arrow blocks (one row per subject),
  and the consumer (here the driver, in training a Ray Train worker) buckets, pads and masks
  them (``collate.batches_from_blocks``). Both paths must give the same batches (the bench
  checks their subject and real-token counts and fails otherwise).
- ``speedup`` = ray ÷ single; ``io_fraction`` = single ÷ plain pyarrow read.
- ``real_token_fraction``: real tokens ÷ token slots of the batches (flat layout), with the
  configured ``pad_multiple`` (``data.pad_multiple``; its CPU default is 1);
  ``real_token_fraction_pad_multiple_1`` / ``_8`` the same batches padded to a multiple of 1 / 8
  (8 is the GPU default, for tensor-core tiles).
- ``driver_peak_rss_mb``: the peak private resident memory (anonymous + file-backed pages,
  sampled every 10 ms) of a *fresh* driver process that only streams the Ray path (as a training
  driver would), over several epochs; ``driver_rss_growth_mb`` its largest rise during one epoch.
  The shared object-store pages a driver maps are left out: they belong to the object store
  (bounded by its capacity) and grow with how much of its segment has been touched.
  ``bench_process_*`` are the same figures in the bench process itself, which also validated the
  cohort and ran the other paths (so its allocator holds more); ``process_peak_rss_mb`` is the
  bench process's lifetime peak.

- ``asof_overhead``: the calendar axis's as-of cut measured side by side with the same cohort
  without labels, on the single-process path (the same per-unit function the Ray tasks run):
  a MEDS label file with one prediction time per subject at its last record (so the cut keeps
  every input row and both paths build the same visits and tokens) is written to
  ``OUT/asof_labels.parquet``; ``asof_single_s`` is that path's best round, and
  ``asof_overhead`` = ``asof_single_s`` ÷ ``single_s`` − 1 (the cost of finding the prediction
  times, cutting and deriving the outcomes from event codes). ``asof_samples`` is the number of
  samples (the visit path's ``subjects`` differ only where the outcome table cut an event's
  last visit or rejected a subject).

- ``validate_*``: validation of the cohort, the serial scan, the parallel scan (process pool)
  and the cached report side by side (:mod:`ehrsurv_dist.bench.validation`); ``validate_s`` is
  the scan the first pipeline build ran (the cache off).

Subjects/s counts the subjects that reach a batch (the pyarrow read counts the cohort's subjects).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.bench.ingest_summary import ingest_summary
from ehrsurv_dist.bench.local_ray import start_local_ray
from ehrsurv_dist.bench.validation import validation_timings
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data.collate import BatchStats, batches_from_blocks
from ehrsurv_dist.data.meds import data_files
from ehrsurv_dist.data.pipeline import READ_COLUMNS, IngestPipeline
from ehrsurv_dist.data.samples import TaskSpec

_SID_TIME = pa.schema([(S.SUBJECT_ID, pa.int64()), (S.TIME, pa.timestamp("us"))])

ASOF_EVENT_CODE = "EHRSURV_BENCH//NO_EVENT"

REQUIRED_KEYS = (
    "ray_subjects_per_s",
    "ray_1cpu_subjects_per_s",
    "single_subjects_per_s",
    "pyarrow_read_subjects_per_s",
    "speedup",
    "io_fraction",
    "real_token_fraction",
    "driver_peak_rss_mb",
)


def _rss_mb(private: bool = True) -> float:
    """Resident memory of this process in MB.

    ``private``: anonymous + file-backed pages only, i.e. without the shared pages of Ray's
    object store that the driver maps while reading blocks (those belong to the object store,
    which is bounded by its own capacity, and grow as more of its segment gets touched).
    """
    fields = ("RssAnon:", "RssFile:") if private else ("VmRSS:",)
    try:
        total = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(fields):
                    total += int(line.split()[1])
        if total:
            return total / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _RssSampler:
    """Peak resident memory of this process over a ``with`` block, sampled by a thread."""

    def __init__(self, every_s: float = 0.01, private: bool = True) -> None:
        self.every_s = every_s
        self.private = private
        self.start = 0.0
        self.peak = 0.0
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def __enter__(self) -> _RssSampler:
        self.start = self.peak = _rss_mb(self.private)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _rss_mb(self.private))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()
        self.peak = max(self.peak, _rss_mb(self.private))


def _consume(batches: Iterator[dict[str, np.ndarray]]) -> int:
    n = 0
    for b in batches:
        n += len(b["subject_id"])
    return n


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _read_all(cohort: str, dictionary: bool) -> int:
    fs, files, _ = data_files(cohort)
    rows = 0
    for path in files:
        with fs.open_input_file(path) as f:
            t = pq.read_table(
                f, columns=list(READ_COLUMNS), read_dictionary=["code"] if dictionary else None
            )
        rows += t.num_rows
    return rows


def _ray_session(
    num_cpus: int,
    repeats: int,
    passes: dict[str, Callable[[], Any]],
    sample_rss: str | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any], dict[str, float]]:
    """Start a local Ray with ``num_cpus``, warm every pass up once, then run the passes
    interleaved ``repeats`` times (so they see the same machine load).

    Returns:
        (seconds per pass name, last result per pass, driver memory during ``sample_rss``:
        ``peak`` and ``growth`` (largest peak − start of a pass) private RSS, ``peak_total``
        RSS with shared object-store pages).
    """
    import ray  # the Ray edge: the bench starts and stops its own local Ray

    start_local_ray(num_cpus)
    times: dict[str, list[float]] = {k: [] for k in passes}
    last: dict[str, Any] = {}
    mem = {"peak": 0.0, "growth": 0.0, "peak_total": 0.0}
    try:
        for fn in passes.values():
            fn()  # warm-up: workers started, caches filled
        for _ in range(repeats):
            for name, fn in passes.items():
                if name == sample_rss:
                    # Hand memory cached by earlier passes back to the OS first, so that the
                    # sample shows what the Ray path itself holds.
                    gc.collect()
                    pa.default_memory_pool().release_unused()
                    with _RssSampler() as rss, _RssSampler(private=False) as total:
                        dt, last[name] = _timed(fn)
                    mem["peak"] = max(mem["peak"], rss.peak)
                    mem["growth"] = max(mem["growth"], rss.peak - rss.start)
                    mem["peak_total"] = max(mem["peak_total"], total.peak)
                else:
                    dt, last[name] = _timed(fn)
                times[name].append(dt)
    finally:
        ray.shutdown()
    return times, last, mem


def _driver_memory_child(
    cohort: str,
    cfg: DataConfig,
    kw: dict[str, Any],
    report: Any,
    vocab: Any,
    num_cpus: int,
    repeats: int,
    batch_size: int,
    split: str | None,
    out: Any,
) -> None:
    """In a fresh process (a training driver that only consumes batches): start a local Ray,
    stream the Ray path ``repeats`` times and report the private-RSS peak and growth."""
    import ray  # the Ray edge: a fresh process with its own local Ray

    start_local_ray(num_cpus)
    try:
        pipe = IngestPipeline(cohort, cfg, report=report, vocab=vocab, **kw)
        before = _rss_mb()
        _consume(pipe.iter_ray_batches(split, 0, batch_size=batch_size))  # warm-up
        peak = growth = 0.0
        for epoch in range(repeats):
            with _RssSampler() as rss:
                _consume(pipe.iter_ray_batches(split, epoch, batch_size=batch_size))
            peak, growth = max(peak, rss.peak), max(growth, rss.peak - rss.start)
        out.put({"peak": peak, "growth": growth, "before": before})
    finally:
        ray.shutdown()


def _driver_memory(*args: Any) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_driver_memory_child, args=(*args, q))
    proc.start()
    try:
        res: dict[str, float] = q.get(timeout=1800)
    finally:
        proc.join(timeout=120)
    return res


def run_ingest_bench(
    cohort: str,
    out: str,
    batch_size: int = 32,
    *,
    repeats: int = 5,
    num_cpus: int | None = None,
    split: str | None = None,
    rows_per_unit: int | None = None,
    pad_multiple: int | None = None,
    window_batches: int | None = None,
    data: DataConfig | None = None,
) -> dict[str, Any]:
    """Measure the ingest paths on ``cohort`` and write ``OUT/bench.json`` and ``OUT/SUMMARY.md``.

    Args:
        cohort: MEDS cohort directory or URI (e.g. from ``ehrsurv synth``).
        out: output directory (created).
        batch_size: subjects per batch.
        repeats: timed rounds; each round runs the plain read, the single-process path and the
            Ray path back to back. Rates use the best round of each; ``*_median_s`` keep the
            medians.
        num_cpus: CPUs of the "all CPUs" Ray run (default: ``os.cpu_count()``).
        split: measure one split (e.g. ``train``); None streams every subject.
        rows_per_unit: rows per unit of work (default: the pipeline's).
        pad_multiple, window_batches: batching parameters (None: the data configuration's,
            ``pad_multiple`` resolved for CPU).
        data: data configuration (defaults otherwise; ``batch_size`` wins).

    Returns:
        The ``bench.json`` content (flat keys, numbers; see the module doc).

    Raises:
        RuntimeError: Ray is already initialised in this process (the bench starts its own), or
            the paths disagree on the number of subjects.
    """
    import ray

    if ray.is_initialized():
        raise RuntimeError("run_ingest_bench starts its own local Ray: call it before ray.init()")
    os.makedirs(out, exist_ok=True)
    ncpu = int(num_cpus or os.cpu_count() or 1)
    cfg = data or DataConfig(cohort=cohort, batch_size=batch_size)
    pad_multiple = pad_multiple or cfg.resolved_pad_multiple(use_gpu=False)
    window_batches = window_batches or cfg.window_batches
    kw: dict[str, Any] = {"pad_multiple": pad_multiple, "window_batches": window_batches}
    if rows_per_unit is not None:
        kw["rows_per_unit"] = rows_per_unit
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # validate_s: a scan (no cached report), and the scans and the cache measured side by side
    validate_s, pipe = _timed(lambda: IngestPipeline(cohort, cfg, validation_cache="none", **kw))
    validation = validation_timings(cohort, repeats=repeats)
    fit_s, fit = _timed(pipe.fit)
    n_cohort = pipe.report.n_subjects
    _read_all(cohort, False)  # page cache warm for everyone

    single_stats = BatchStats()
    ray_stats = BatchStats()
    asof_pipe = _asof_pipeline(cohort, cfg, kw, out, pipe)

    def single() -> int:
        return _consume(pipe.iter_batches(split, 0, batch_size=batch_size, stats=single_stats))

    def ray_path() -> int:
        return _consume(pipe.iter_ray_batches(split, 0, batch_size=batch_size, stats=ray_stats))

    passes = {
        "read": lambda: _read_all(cohort, False),
        "read_dict": lambda: _read_all(cohort, True),
        "single": single,
        "asof": lambda: _consume(asof_pipe.iter_batches(split, 0, batch_size=batch_size)),
        "ray": ray_path,
    }
    t_n, last_n, mem_n = _ray_session(ncpu, repeats, passes, sample_rss="ray")
    t_1, last_1, mem_1 = _ray_session(1, repeats, {"ray": ray_path}, sample_rss="ray")
    n_single = int(last_n["single"])
    if not (last_1["ray"] == last_n["ray"] == n_single):
        raise RuntimeError(
            f"paths disagree on the number of subjects: single {n_single}, "
            f"ray(1 cpu) {last_1['ray']}, ray({ncpu} cpus) {last_n['ray']}"
        )
    runs = repeats + 1  # every pass ran once more as a warm-up
    real_tokens = single_stats.real_tokens // runs
    slots = single_stats.token_slots // runs
    if ray_stats.real_tokens != 2 * single_stats.real_tokens:  # two Ray sessions, same batches
        raise RuntimeError("the Ray path produced other batches than the single-process path")
    # The driver's memory, measured in a fresh process that does nothing but consume batches.
    drv = _driver_memory(
        cohort, cfg, kw, pipe.report, pipe.vocab, ncpu, max(2, repeats), batch_size, split
    )
    # The same batches padded to a multiple of 1 and of 8 (the CPU and GPU defaults).
    st1, st8 = BatchStats(), BatchStats()
    _consume(_with_pad(pipe, split, batch_size, st1, 1))
    _consume(_with_pad(pipe, split, batch_size, st8, 8))

    best = {k: min(v) for k, v in t_n.items()}
    ray1 = min(t_1["ray"])
    med = {k: statistics.median(v) for k, v in t_n.items()}
    res: dict[str, Any] = {
        "ray_subjects_per_s": n_single / best["ray"],
        "ray_1cpu_subjects_per_s": n_single / ray1,
        "single_subjects_per_s": n_single / best["single"],
        "pyarrow_read_subjects_per_s": n_cohort / best["read"],
        "speedup": best["single"] / best["ray"],
        "io_fraction": best["read"] / best["single"] * (n_single / n_cohort),
        "real_token_fraction": single_stats.real_token_fraction,
        "driver_peak_rss_mb": drv["peak"],
        # extras
        "asof_overhead": best["asof"] / best["single"] - 1.0,
        "asof_overhead_median": med["asof"] / med["single"] - 1.0,
        "asof_single_s": best["asof"],
        "asof_single_median_s": med["asof"],
        "asof_samples": int(last_n["asof"]),
        "speedup_median": med["single"] / med["ray"],
        "io_fraction_median": med["read"] / med["single"] * (n_single / n_cohort),
        "ray_1cpu_speedup": best["single"] / ray1,
        "pyarrow_read_dict_subjects_per_s": n_cohort / best["read_dict"],
        "io_fraction_vs_dict_read": best["read_dict"] / best["single"] * (n_single / n_cohort),
        "ray_tokens_per_s": real_tokens / best["ray"],
        "ray_1cpu_tokens_per_s": real_tokens / ray1,
        "single_tokens_per_s": real_tokens / best["single"],
        "real_token_fraction_pad_multiple_1": st1.real_token_fraction,
        "real_token_fraction_pad_multiple_8": st8.real_token_fraction,
        "driver_rss_growth_mb": drv["growth"],
        "driver_rss_before_ingest_mb": drv["before"],
        "bench_process_rss_during_ray_mb": mem_n["peak"],
        "bench_process_rss_during_ray_1cpu_mb": mem_1["peak"],
        "bench_process_rss_with_object_store_pages_mb": mem_n["peak_total"],
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "subjects": n_single,
        "cohort_subjects": n_cohort,
        "real_tokens": real_tokens,
        "token_slots": slots,
        "batches": single_stats.batches // runs,
        "batch_size": batch_size,
        "pad_multiple": pad_multiple,
        "window_batches": window_batches,
        "units": pipe.plan.num_units,
        "num_cpus": ncpu,
        "repeats": repeats,
        "load_avg_1m_at_start": load0,
        "validate_s": validate_s,
        "fit_vocab_s": fit_s,
        "vocab_size": fit.vocab.size,
        "pyarrow_read_s": best["read"],
        "single_s": best["single"],
        "ray_s": best["ray"],
        "ray_1cpu_s": ray1,
        "pyarrow_read_median_s": med["read"],
        "single_median_s": med["single"],
        "ray_median_s": med["ray"],
        "ray_1cpu_median_s": statistics.median(t_1["ray"]),
    }
    res.update(validation)
    atomic.write_json(res, os.path.join(out, "bench.json"))
    atomic.write_text(ingest_summary(cohort, res, pipe.plan), os.path.join(out, "SUMMARY.md"))
    return res


def _asof_pipeline(
    cohort: str, cfg: DataConfig, kw: dict[str, Any], out: str, pipe: IngestPipeline
) -> IngestPipeline:
    """The calendar-axis pipeline of the same cohort: prediction times at each subject's last
    record (a MEDS label file in ``out``), an event code that never occurs (every sample at
    risk), the visit run's vocabulary."""
    files = data_files(cohort)[1]
    parts = [pq.read_table(f, columns=[S.SUBJECT_ID, S.TIME]).cast(_SID_TIME) for f in files]
    t = pa.concat_tables(parts)
    t = t.filter(pc.is_valid(t[S.TIME]))
    last = t.group_by(S.SUBJECT_ID).aggregate([(S.TIME, "max")])
    labels = pa.table(
        {
            S.SUBJECT_ID: last[S.SUBJECT_ID],
            S.PREDICTION_TIME: last[f"{S.TIME}_max"],
        }
    )
    path = os.path.join(out, "asof_labels.parquet")
    atomic.write_parquet(labels, path)
    # An event code no cohort holds: every sample is at risk (with MEDS_DEATH, a subject whose
    # last record is its death would be excluded as not at risk, and the two paths would do
    # different amounts of work); the outcome look-up still runs in full.
    task = TaskSpec(event_codes=(ASOF_EVENT_CODE,), horizon_days=3650.0, labels=path)
    asof = IngestPipeline(
        cohort, cfg, report=None, require_outcomes=False, task=task, vocab=pipe.vocab, **kw
    )
    return asof


def _with_pad(
    pipe: IngestPipeline, split: str | None, batch_size: int, stats: BatchStats, multiple: int
) -> Iterator[dict[str, np.ndarray]]:
    spec = pipe.batch_spec(batch_size, pad_multiple=multiple)
    return batches_from_blocks(pipe.blocks(split), spec, 0, stats)
