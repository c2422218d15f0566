"""``bench throughput`` end to end at its smallest: real Ray Train + DeepSpeed on CPU, 1 and 2
workers, the plain loop, worker memory and the attention comparisons."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ehrsurv_dist.bench.throughput import REQUIRED_KEYS, run_throughput_bench
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.train.steplog import read_step_log

pytestmark = pytest.mark.integration


def test_bench_throughput_writes_every_key(tmp_path: Path, ray_local: None) -> None:
    cohort = str(tmp_path / "cohort")
    synthesize(cohort, "smoke", subjects=120, seed=5, signal=3.0)
    out = str(tmp_path / "bench")
    res = run_throughput_bench(
        out,
        cohort,
        size="tiny",
        batch_size=16,
        max_seq_len=64,
        epochs=2,
        rounds=1,
        zero_stages=[1],
        attention_len=32,
        attention_repeats=1,
        visits=6,
        codes=4,
        hier_batch=1,
    )
    with open(os.path.join(out, "bench.json")) as f:
        saved = json.load(f)
    assert saved == pytest.approx(res)
    for key in (*REQUIRED_KEYS, "peak_rss_mb_zero1", "model_state_mb_per_rank_zero1"):
        value = saved[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, key
    # every value is a plain number (flat keys)
    assert all(isinstance(v, (int, float)) for v in saved.values())
    # equal work: the plain loop trained as many steps per epoch as the Ray run did
    assert saved["steps_per_epoch"] >= 1 and saved["tokens_per_epoch"] > 0
    # a worker process holds at least the torch runtime: well above the analytic model state
    assert saved["peak_rss_mb_zero1"] > 100 > saved["model_state_mb_per_rank_zero1"]
    assert saved["flat_hier_attention_ops_ratio_seed"] == pytest.approx(
        (6 * 4) ** 2 / (6 * 4**2 + 6**2)
    )
    # one round, one steady epoch: its step floor is that epoch's steps, inside its wall time
    assert 0 < saved["ray_1w_step_floor_epoch_s"] <= saved["ray_1w_epoch_s"]
    assert 0 < saved["plain_step_floor_epoch_s"] <= saved["plain_epoch_s"]
    # every rank of the 2-worker run logged every epoch's steps, the same number on each
    log = os.path.join(out, "runs", "w2_zero1", "step_log.jsonl")
    ranks = [read_step_log(log, rank=r) for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [0, 1]
    for epoch in (0, 1):
        steps = [len(ranks[r][epoch]["step_seconds"]) for r in (0, 1)]
        assert steps[0] == steps[1] > 0
        assert all(0 < ranks[r][epoch]["cpu_seconds"] for r in (0, 1))
    assert 0 <= saved["ray_1w_off_cpu_fraction"] < 1 and 0 <= saved["plain_off_cpu_fraction"] < 1
    assert saved["train_cpu_ratio"] > 0
    text = open(os.path.join(out, "SUMMARY.md")).read()
    assert "train_overhead_ratio" in text and "ZeRO" in text


def test_gpu_bench_module_runs_on_cpu_and_says_what_it_skipped(tmp_path: Path) -> None:
    """``scripts/gpu_bench.sh``'s Python part, on the CPU (fp32): real DeepSpeed, tiny preset."""
    import subprocess
    import sys

    out = tmp_path / "gpu"
    cmd = [sys.executable, "-m", "ehrsurv_dist.bench.gpu", "--out", str(out), "--sizes", "tiny"]
    cmd += ["--batch", "2", "--seq-len", "20", "--steps", "2", "--warmup", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped the GPU-only parts" in proc.stdout
    res = json.loads((out / "bench.json").read_text())
    assert res["cuda"] == 0.0 and "tiny_mfu" not in res
    assert res["tiny_tokens_per_s"] > 0 and res["tiny_flops_per_token"] > 0
    assert res["tiny_seq_len"] == 20 and res["tiny_batch"] == 2
    assert "| tiny |" in (out / "SUMMARY.md").read_text()
