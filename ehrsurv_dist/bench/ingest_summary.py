"""The Markdown summary of ``ehrsurv bench ingest`` (``OUT/SUMMARY.md``)."""

from __future__ import annotations

import json
import platform
from typing import Any

from ehrsurv_dist.data.plan import UnitPlan


def ingest_summary(cohort: str, r: dict[str, Any], plan: UnitPlan) -> str:
    """``SUMMARY.md`` of an ingest bench: the paths side by side, then ``bench.json``."""

    def f(x: float) -> str:
        return f"{x:,.0f}"

    lines = [
        "# Ingest benchmark",
        "",
        f"Cohort `{cohort}`: {r['cohort_subjects']:,} subjects, {plan.num_units} units "
        f"({plan.mode}: {plan.reason}); batch size {r['batch_size']}, "
        f"{r['num_cpus']} CPU(s), {platform.machine()} {platform.system()}, load average "
        f"{r['load_avg_1m_at_start']:.2f} at start; best of {r['repeats']} interleaved rounds "
        f"after a warm-up (medians: speedup {r['speedup_median']:.2f}, io_fraction "
        f"{r['io_fraction_median']:.3f}).",
        "",
        "| path | subjects/s | tokens/s | vs single |",
        "|---|---:|---:|---:|",
        f"| pyarrow read (plain, I/O ceiling) | {f(r['pyarrow_read_subjects_per_s'])} | – | – |",
        f"| pyarrow read (code dictionary-encoded) | {f(r['pyarrow_read_dict_subjects_per_s'])}"
        " | – | – |",
        f"| single process (reference) | {f(r['single_subjects_per_s'])} | "
        f"{f(r['single_tokens_per_s'])} | 1.00 |",
        f"| Ray Data blocks → consumer collate (training path), 1 CPU | "
        f"{f(r['ray_1cpu_subjects_per_s'])} | "
        f"{f(r['ray_1cpu_tokens_per_s'])} | {r['ray_1cpu_speedup']:.2f} |",
        f"| Ray Data blocks → consumer collate (training path), {r['num_cpus']} CPUs | "
        f"{f(r['ray_subjects_per_s'])} | "
        f"{f(r['ray_tokens_per_s'])} | {r['speedup']:.2f} |",
        "",
        f"- io_fraction (single ÷ plain read): **{r['io_fraction']:.3f}** "
        f"(÷ dictionary read: {r['io_fraction_vs_dict_read']:.3f})",
        f"- speedup (Ray ÷ single): **{r['speedup']:.2f}**",
        f"- real-token fraction: **{r['real_token_fraction']:.3f}** with padding to a multiple of "
        f"{r['pad_multiple']} (multiple of 1: {r['real_token_fraction_pad_multiple_1']:.3f}; "
        f"multiple of 8, the GPU default: {r['real_token_fraction_pad_multiple_8']:.3f})",
        f"- a fresh driver streaming the Ray path: peak private RSS "
        f"**{r['driver_peak_rss_mb']:.0f} MB**, rising by at most "
        f"{r['driver_rss_growth_mb']:.0f} MB during an epoch (bench process: "
        f"{r['bench_process_rss_during_ray_mb']:.0f} MB)",
        f"- calendar axis, the as-of cut (prediction time at each subject's last record, "
        f"single process): {r['asof_single_s']:.3f} s for {r['asof_samples']:,} samples vs "
        f"{r['single_s']:.3f} s for {r['subjects']:,} subjects without labels: overhead "
        f"**{r['asof_overhead']:+.1%}** (median {r['asof_overhead_median']:+.1%})",
        f"- one-time steps: validation {r['validate_s']:.2f} s, vocabulary scan "
        f"{r['fit_vocab_s']:.2f} s (vocabulary size {r['vocab_size']})",
        f"- validation of {r['validate_shards']} shards: serial {r['validate_serial_s']:.2f} s, "
        f"parallel ({r['validate_workers']} processes) {r['validate_parallel_s']:.2f} s, "
        f"cached report {r['validate_cached_s'] * 1e3:.1f} ms",
        "",
        "```json",
        json.dumps(r, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
