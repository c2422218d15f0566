"""Peak worker memory of a large model under ZeRO-0 and ZeRO-3: 2 Ray Train workers on CPU.

A few fine-tuning steps of ``model.size`` (default xlarge, ~115M parameters) on a small
synthetic cohort, once per ZeRO stage, through the product path (``run_training``: Ray Data,
Ray Train, DeepSpeed, checkpoint and export) with the worker processes' peak RSS sampled by
``bench throughput``'s :class:`~ehrsurv_dist.bench.throughput.memory.WorkerMemory`. One run per
stage: the numbers in docs/engines.md ("Large models on CPU") come from it::

    python scripts/zero3_memory.py --out /tmp/zero3_mem            # xlarge, ZeRO 0 and 3
    python scripts/zero3_memory.py --out /tmp/m --size tiny        # a quick check of the script

Writes ``OUT/zero3_memory.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ehrsurv_dist.bench.local_ray import start_local_ray
from ehrsurv_dist.bench.throughput.memory import WorkerMemory, model_state_bytes_per_rank
from ehrsurv_dist.bench.throughput.runs import ray_run
from ehrsurv_dist.bench.throughput.settings import TrainSettings, trainable_parameters
from ehrsurv_dist.data.synthetic import synthesize


class _RssTrace(WorkerMemory):
    """The workers' current RSS (``VmRSS``, MB) every ``every_s`` seconds: where the peak is."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(every_s=every_s)
        self.t0 = time.perf_counter()
        self.trace: list[tuple[float, int, float]] = []  # (seconds, pid, MB)

    def _sample(self) -> None:
        import psutil

        for p in psutil.Process().children(recursive=True):
            try:
                if self.marker not in " ".join(p.cmdline()):
                    continue
                rss = p.memory_info().rss / 2**20
            except (psutil.Error, OSError):
                continue
            self.trace.append((round(time.perf_counter() - self.t0, 1), p.pid, round(rss)))


class _Settings(TrainSettings):
    """``bench throughput``'s run settings plus extra DeepSpeed keys."""

    deepspeed_config: dict[str, Any] = {}  # noqa: RUF012 - set per instance in main

    def overrides(self, workers: int, zero_stage: int) -> list[Any]:
        extra = [("train.engine.deepspeed_config", self.deepspeed_config)]
        return super().overrides(workers, zero_stage) + (extra if self.deepspeed_config else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="xlarge")
    ap.add_argument("--subjects", type=int, default=48, help="synthetic cohort size (default 48)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=32)
    ap.add_argument("--zero-stages", type=int, nargs="+", default=[0, 3])
    ap.add_argument(
        "--deepspeed-config",
        type=json.loads,
        default={},
        help="JSON merged into train.engine.deepspeed_config of every run (e.g. ZeRO-3 buckets)",
    )
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    cohort = os.path.join(args.out, "cohort")
    if not os.path.exists(cohort):
        synthesize(cohort, "smoke", subjects=args.subjects, seed=0)
    settings = _Settings(
        cohort, size=args.size, batch_size=args.batch_size, max_seq_len=args.max_seq_len, epochs=1
    )
    settings.deepspeed_config = args.deepspeed_config
    start_local_ray(3)  # 2 workers + 1 CPU for Ray Data
    rows = []
    params = 0
    for stage in args.zero_stages:
        with _RssTrace() as trace:
            r = ray_run(settings, 2, stage, os.path.join(args.out, "runs", f"zero{stage}"))
        params = params or trainable_parameters(settings, r["vocab_path"])
        rows.append(
            {
                "zero_stage": stage,
                "steps_per_rank": r["steps"][0] // 2,  # the run reports all ranks' sum
                "worker_peak_rss_mb": r["worker_peak_rss_mb"],
                "model_state_mb_per_rank": model_state_bytes_per_rank(params, stage, 2) / 2**20,
                "step_s_median": sorted(r["step_s"][0])[len(r["step_s"][0]) // 2],
                "wall_s": r["wall_s"],
                "rss_trace": trace.trace,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "rss_trace"}), flush=True)
    result = {"size": args.size, "trainable_parameters": params, "runs": rows, **vars(args)}
    with open(os.path.join(args.out, "zero3_memory.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(
        f"\n{args.size}: {params:,} trainable parameters, 2 workers, batch {args.batch_size}, "
        f"L {args.max_seq_len}\n"
    )
    print(
        "| ZeRO | steps/rank | peak RSS per worker (MB) | fp32 weights+grads+AdamW per rank "
        "(MB, analytic) | median step (s) | run wall (s) |"
    )
    print("|---:|---:|---|---:|---:|---:|")
    for row in rows:
        rss = ", ".join(f"{v:,.0f}" for v in row["worker_peak_rss_mb"])
        print(
            f"| {row['zero_stage']} | {row['steps_per_rank']} | {rss} | "
            f"{row['model_state_mb_per_rank']:,.0f} | {row['step_s_median']:.2f} | "
            f"{row['wall_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
