"""``SUMMARY.md`` of ``bench throughput``, and the keys every ``bench.json`` must hold."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from typing import Any

from ehrsurv_dist.bench.table import json_appendix

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


def summary(r: Mapping[str, Any], cohort: str, size: str, stages: Sequence[int]) -> str:
    """``SUMMARY.md``: the tables of ``run_throughput_bench`` and what they mean."""

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
        *json_appendix(r),
    ]
    return "\n".join(lines)
