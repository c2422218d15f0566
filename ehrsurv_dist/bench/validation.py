"""Validation measured side by side: serial scan, parallel scan, cached report.

``repeats`` rounds (after a warm-up round: page cache warm, the cache entry written) each run,
back to back on the same cohort:

- ``validate_serial_s``: :func:`validate_cohort` checking the shards one after another in this
  process (``serial_mapper``);
- ``validate_parallel_s``: the same with the shards checked in a pool of ``validate_workers``
  spawned processes (``process_mapper``: what pretrain/finetune/evaluate/predict use for large
  cohorts before Ray starts), pool start-up included;
- ``validate_cached_s``: :func:`validate_cached` finding the report under the cohort's
  fingerprint (listing and stat of every input file, hashing, reading the JSON);
- ``validate_shard_checks_serial_s`` / ``_parallel_s``: the per-shard part alone (what the
  pool parallelises; the cross-shard merge and the outcome, split and label checks run in the
  driver either way).

Rates use each path's best round; ``*_median_s`` keep the medians. The three reports must be
equal (the bench fails otherwise). Also run by ``ehrsurv bench ingest`` (the same keys in its
``bench.json``), or alone: ``python -m ehrsurv_dist.bench.validation COHORT``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from ehrsurv_dist.data.meds_read import list_data_files
from ehrsurv_dist.data.validate import (
    default_workers,
    process_mapper,
    serial_mapper,
    validate_cohort,
)
from ehrsurv_dist.data.validate_files import check_file
from ehrsurv_dist.data.validation_cache import fingerprint, validate_cached


def validation_timings(
    cohort: str, repeats: int = 3, workers: int | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """Time the serial scan, the parallel scan and the cached report of ``cohort``.

    Args:
        cohort: a MEDS cohort.
        repeats: timed rounds (after one warm-up round).
        workers: processes of the parallel scan (default: the CPUs, at most one per shard).
        cache_dir: the cache folder to use (default: a temporary one, removed after).

    Returns:
        Flat keys (see the module doc).

    Raises:
        RuntimeError: the three reports differ, or the report could not be cached (files
            modified in the last seconds).
    """
    listing = list_data_files(cohort)
    files = listing.parquet
    n = max(1, min(workers or default_workers(), len(files)))
    shard_fn = functools.partial(check_file, fs=listing.fs)
    with tempfile.TemporaryDirectory(prefix="ehrsurv-valbench-") as tmp:
        cache = cache_dir or tmp
        passes: dict[str, Callable[[], Any]] = {
            "serial": lambda: validate_cohort(cohort, mapper=serial_mapper),
            "parallel": lambda: validate_cohort(cohort, mapper=process_mapper(n)),
            "cached": lambda: validate_cached(cohort, cache=cache),
            "shard_checks_serial": lambda: serial_mapper(shard_fn, files),
            "shard_checks_parallel": lambda: process_mapper(n)(shard_fn, files),
        }
        times: dict[str, list[float]] = {k: [] for k in passes}
        last: dict[str, Any] = {}
        for rnd in range(repeats + 1):
            for name, fn in passes.items():
                t0 = time.perf_counter()
                last[name] = fn()
                if rnd:
                    times[name].append(time.perf_counter() - t0)
            if rnd == 0:
                fp = fingerprint(cohort)
                entry = None if fp is None else os.path.join(cache, fp.key + ".json")
                if entry is None or not os.path.exists(entry):
                    raise RuntimeError(
                        f"the validation report of {cohort} was not cached (files modified in "
                        "the last seconds, or no modification times): run the bench again"
                    )
        if not (last["serial"] == last["parallel"] == last["cached"]):
            raise RuntimeError("serial, parallel and cached validation gave different reports")
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    res: dict[str, Any] = {
        "validate_serial_s": best["serial"],
        "validate_parallel_s": best["parallel"],
        "validate_cached_s": best["cached"],
        "validate_parallel_speedup": best["serial"] / best["parallel"],
        "validate_cached_speedup": best["serial"] / best["cached"],
        "validate_shard_checks_serial_s": best["shard_checks_serial"],
        "validate_shard_checks_parallel_s": best["shard_checks_parallel"],
        "validate_workers": n,
        "validate_shards": len(files),
        "validate_rows": last["serial"].n_rows,
        "validate_bytes": sum(i.size or 0 for i in listing.fs.get_file_info(files)),
        "validate_cpus": default_workers(),
        "validate_repeats": repeats,
    }
    res.update({f"validate_{k}_median_s": v for k, v in med.items()})
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ehrsurv_dist.bench.validation COHORT``: print the timings as JSON."""
    p = argparse.ArgumentParser(
        prog="python -m ehrsurv_dist.bench.validation",
        description="Time validation of a MEDS cohort: serial scan, parallel scan (a process "
        "pool) and the cached report, side by side; prints JSON (docs/data.md).",
    )
    p.add_argument("cohort", help="cohort directory (local path or pyarrow filesystem URI)")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed rounds after one warm-up (default 3)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes of the parallel scan (default: the CPUs, at most one per shard)",
    )
    p.add_argument("--out", help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.workers is not None and args.workers < 1):
        p.error("--repeats and --workers must be >= 1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res = validation_timings(args.cohort, args.repeats, args.workers)
    res["load_avg_1m_at_start"] = load
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        from ehrsurv_dist import atomic

        atomic.write_text(text + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
