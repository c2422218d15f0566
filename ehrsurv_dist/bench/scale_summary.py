"""The pure part of ``ehrsurv bench scale``: keys, growth figures and ``SUMMARY.md``.

No Ray and no I/O: :func:`scale_keys` turns the two sizes' measurements (what
:func:`ehrsurv_dist.bench.scale.measure_size` returns) into the flat ``bench.json`` keys, and
:func:`scale_summary` writes the Markdown from those keys.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

from ehrsurv_dist.bench.table import cell, json_appendix

STAGES = ("validate", "vocab", "ingest")  # the per-event stages of per_event_cost_growth
COST_GROWTH_GOAL = 1.2  # seconds per event at 10·N ÷ at N
RSS_GROWTH_GOAL = 0.10  # peak RSS growth from N to 10·N
SIZES = ("n", "10n")  # key suffixes of the two sizes

# Per-size measurements copied to bench.json as KEY_n and KEY_10n.
PER_SIZE = (
    "subjects",
    "events",
    "shards",
    "validate_s",
    "validate_median_s",
    "validate_events",
    "validate_events_per_s",
    "vocab_s",
    "vocab_median_s",
    "vocab_events",
    "vocab_events_per_s",
    "ingest_s",
    "ingest_median_s",
    "ingest_events",
    "ingest_events_per_s",
    "ingest_subjects",
    "train_tokens_per_s",
    "train_subjects_per_s",
    "train_epoch_s",
    "train_steps",
    "train_wall_s",
    "train_cached",
    "train_cache_estimate_mb",
    "driver_peak_rss_mb",
    "driver_peak_rss_after_validate_mb",
    "driver_peak_rss_after_vocab_mb",
    "driver_peak_rss_after_ingest_mb",
    "worker_peak_rss_mb",
    "worker_peak_private_mb",
    "train_worker_peak_rss_mb",
    "data_worker_peak_rss_mb",
    "train_worker_peak_private_mb",
    "data_worker_peak_private_mb",
    "workers_sampled",
    "object_store_spilled_mb",
    "object_store_restored_mb",
    "object_store_mb",
    "synth_s",
    "size_wall_s",
)

REQUIRED_KEYS = tuple(
    f"{k}_{s}"
    for s in SIZES
    for k in (
        "validate_events_per_s",
        "vocab_events_per_s",
        "ingest_events_per_s",
        "train_tokens_per_s",
        "driver_peak_rss_mb",
        "worker_peak_rss_mb",
        "object_store_spilled_mb",
    )
) + (
    "per_event_cost_growth",
    "driver_rss_growth",
    "worker_rss_growth",
    "object_store_spilled_mb",
)


def per_event_s(m: Mapping[str, Any], stages: tuple[str, ...] = STAGES) -> float:
    """Seconds per event of ``stages`` together: Σ (stage seconds ÷ stage events)."""
    return sum(float(m[f"{s}_s"]) / max(1, int(m[f"{s}_events"])) for s in stages)


def growth(small: float, large: float) -> float:
    """``large ÷ small`` (inf when ``small`` is 0)."""
    return float(large) / float(small) if small else float("inf")


def scale_keys(small: Mapping[str, Any], large: Mapping[str, Any]) -> dict[str, Any]:
    """The flat ``bench.json`` keys of the two sizes' measurements.

    ``per_event_cost_growth`` = (Σ over validate, vocab, ingest of seconds ÷ events) at 10·N ÷
    the same at N (goal ≤ :data:`COST_GROWTH_GOAL`); ``per_event_cost_growth_<stage>`` the same
    per stage. ``driver_rss_growth`` / ``worker_rss_growth`` = peak at 10·N ÷ peak at N − 1
    (goal ≤ :data:`RSS_GROWTH_GOAL`). ``object_store_spilled_mb`` is the larger size's.
    """
    res: dict[str, Any] = {}
    for suffix, m in zip(SIZES, (small, large), strict=True):
        for k in PER_SIZE:
            res[f"{k}_{suffix}"] = m[k]
    res["size_ratio"] = growth(small["subjects"], large["subjects"])
    res["event_ratio"] = growth(small["events"], large["events"])
    res["per_event_cost_growth"] = growth(per_event_s(small), per_event_s(large))
    for s in STAGES:
        res[f"per_event_cost_growth_{s}"] = growth(
            per_event_s(small, (s,)), per_event_s(large, (s,))
        )
    res["train_tokens_per_s_ratio"] = growth(
        small["train_tokens_per_s"], large["train_tokens_per_s"]
    )
    res["driver_rss_growth"] = growth(small["driver_peak_rss_mb"], large["driver_peak_rss_mb"]) - 1
    res["worker_rss_growth"] = growth(small["worker_peak_rss_mb"], large["worker_peak_rss_mb"]) - 1
    res["worker_private_rss_growth"] = (
        growth(small["worker_peak_private_mb"], large["worker_peak_private_mb"]) - 1
    )
    res["object_store_spilled_mb"] = large["object_store_spilled_mb"]
    res["cost_growth_pass"] = int(res["per_event_cost_growth"] <= COST_GROWTH_GOAL)
    res["rss_growth_pass"] = int(
        max(res["driver_rss_growth"], res["worker_rss_growth"]) <= RSS_GROWTH_GOAL
    )
    return res


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def scale_summary(r: Mapping[str, Any]) -> str:
    """``SUMMARY.md`` of a scale bench: both sizes side by side, the goals, then ``bench.json``."""
    rows = (
        ("subjects", "subjects", 0),
        ("events (cohort rows)", "events", 0),
        ("Parquet shards", "shards", 0),
        ("validate events/s (scan, no cache)", "validate_events_per_s", 0),
        ("vocabulary events/s (Ray scan)", "vocab_events_per_s", 0),
        ("ingest events/s (train split encoded)", "ingest_events_per_s", 0),
        ("train tokens/s (bounded epoch)", "train_tokens_per_s", 0),
        ("train subjects/s", "train_subjects_per_s", 1),
        ("train epoch s / steps", None, 0),
        ("train splits cached (data.cache)", "train_cached", 0),
        ("driver peak RSS MB", "driver_peak_rss_mb", 0),
        ("… after validate / vocab / ingest", None, 4),
        ("worker peak RSS MB (largest Ray worker, VmHWM)", "worker_peak_rss_mb", 0),
        ("… Ray Train worker / other Ray workers", None, 2),
        ("worker peak private RSS MB (no object-store pages)", "worker_peak_private_mb", 0),
        ("… Ray Train worker / other Ray workers", None, 3),
        ("object store spilled MB", "object_store_spilled_mb", 0),
        ("object store MB", "object_store_mb", 0),
        ("seconds: validate / vocab / ingest (best round)", None, 1),
        ("seconds: whole size (train run included)", "size_wall_s", 0),
    )

    def value(key: str | None, suffix: str, nd: int) -> str:
        if key is None and nd == 0:
            return f"{r[f'train_epoch_s_{suffix}']:.1f} / {r[f'train_steps_{suffix}']}"
        if key is None and nd == 4:
            return " / ".join(f"{r[f'driver_peak_rss_after_{s}_mb_{suffix}']:,.0f}" for s in STAGES)
        if key is None and nd in (2, 3):
            kind = "rss" if nd == 2 else "private"
            return " / ".join(
                f"{r[f'{w}_worker_peak_{kind}_mb_{suffix}']:,.0f}" for w in ("train", "data")
            )
        if key is None:
            return " / ".join(f"{r[f'{s}_s_{suffix}']:.1f}" for s in STAGES)
        x = r[f"{key}_{suffix}"]
        return f"{x:,.0f}" if nd == 0 else cell(float(x), nd)

    cost, rss = r["per_event_cost_growth"], max(r["driver_rss_growth"], r["worker_rss_growth"])
    lines = [
        "# Scale benchmark",
        "",
        f"The long preset at {r['subjects_n']:,} (N) and {r['subjects_10n']:,} (10·N) subjects, "
        f"seed {r['seed']}, each size in a fresh driver process with its own local Ray "
        f"({r['num_cpus']} CPUs); {platform.machine()} {platform.system()}, load average "
        f"{r['load_avg_1m_at_start']:.2f} at start, {r['load_avg_1m_at_end']:.2f} at the end; "
        f"{r['wall_s']:.0f} s in all; validate, vocab and ingest: best of {r['repeats']} rounds.",
        "",
        "| | N | 10·N | 10·N ÷ N |",
        "|---|---:|---:|---:|",
    ]
    for label, key, nd in rows:
        ratio = "–"
        if key is not None and key not in ("train_cached",):
            a, b = float(r[f"{key}_n"]), float(r[f"{key}_10n"])
            ratio = cell(growth(a, b), 2) if a else "–"
        lines.append(f"| {label} | {value(key, 'n', nd)} | {value(key, '10n', nd)} | {ratio} |")
    per_stage = ", ".join(f"{s} {r[f'per_event_cost_growth_{s}']:.2f}" for s in STAGES)
    lines += [
        "",
        f"- per_event_cost_growth (validate + vocab + ingest seconds per event, 10·N ÷ N): "
        f"**{cost:.2f}** (goal ≤ {COST_GROWTH_GOAL}: **{_mark(cost <= COST_GROWTH_GOAL)}**); "
        f"per stage: {per_stage}",
        f"- peak RSS growth N → 10·N: driver **{r['driver_rss_growth']:+.1%}**, worker "
        f"**{r['worker_rss_growth']:+.1%}** (goal ≤ {RSS_GROWTH_GOAL:.0%}: "
        f"**{_mark(rss <= RSS_GROWTH_GOAL)}**); worker private RSS (no object-store pages) "
        f"{r['worker_private_rss_growth']:+.1%}",
        f"- train tokens/s 10·N ÷ N: {r['train_tokens_per_s_ratio']:.2f} "
        f"({r['steps']} steps of {r['batch_size']} subjects, max_seq_len {r['max_seq_len']})",
        f"- object store spilled at 10·N: {r['object_store_spilled_mb']:.0f} MB",
        "",
        *json_appendix(r),
    ]
    return "\n".join(lines)
