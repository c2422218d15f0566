"""Pure parts of ``ehrsurv bench scale`` (no Ray): keys, growth formulas, summary, memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from ehrsurv_dist.bench.scale import bench_overrides, worker_memory
from ehrsurv_dist.bench.scale_summary import (
    PER_SIZE,
    REQUIRED_KEYS,
    growth,
    per_event_s,
    scale_keys,
    scale_summary,
)
from ehrsurv_dist.bench.throughput.memory import WorkerMemory, _status_kb
from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec


def _size(subjects: int, seconds: float, rss: float) -> dict[str, Any]:
    """One size's measurements: every stage takes ``seconds`` for 1,000 events per subject."""
    m: dict[str, Any] = {k: 1.0 for k in PER_SIZE}
    events = 1000 * subjects
    m.update(subjects=subjects, events=events, train_tokens_per_s=500.0)
    for s in ("validate", "vocab", "ingest"):
        m.update({f"{s}_s": seconds, f"{s}_events": events})
    m.update(driver_peak_rss_mb=rss, worker_peak_rss_mb=2 * rss, worker_peak_private_mb=rss)
    return m


def _keys(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    r = scale_keys(small, large)
    r.update(
        seed=42,
        steps=30,
        batch_size=16,
        max_seq_len=512,
        num_cpus=2,
        repeats=3,
        load_avg_1m_at_start=5.0,
        load_avg_1m_at_end=6.0,
        wall_s=900.0,
    )
    return r


def test_per_event_seconds_sum_the_stages() -> None:
    m = _size(10, 2.0, 100.0)
    assert per_event_s(m) == pytest.approx(3 * 2.0 / 10_000)
    assert per_event_s(m, ("vocab",)) == pytest.approx(2.0 / 10_000)
    assert growth(2.0, 3.0) == 1.5
    assert growth(0.0, 1.0) == float("inf")


def test_linear_cost_and_flat_memory_pass() -> None:
    # 10x the events in 10x the time: the same cost per event; memory up 5%.
    r = _keys(_size(100, 1.0, 1000.0), _size(1000, 10.0, 1050.0))
    assert r["per_event_cost_growth"] == pytest.approx(1.0)
    assert r["per_event_cost_growth_ingest"] == pytest.approx(1.0)
    assert r["driver_rss_growth"] == pytest.approx(0.05)
    assert r["worker_rss_growth"] == pytest.approx(0.05)
    assert r["cost_growth_pass"] == 1 and r["rss_growth_pass"] == 1
    assert set(REQUIRED_KEYS) <= set(r)
    assert r["subjects_10n"] == 1000 and r["event_ratio"] == pytest.approx(10.0)
    text = scale_summary(r)
    assert "**1.00** (goal ≤ 1.2: **PASS**)" in text
    assert "(goal ≤ 10%: **PASS**)" in text
    assert "| subjects | 100 | 1,000 | 10.00 |" in text


def test_superlinear_cost_and_growing_memory_fail() -> None:
    r = _keys(_size(100, 1.0, 1000.0), _size(1000, 13.0, 1200.0))
    assert r["per_event_cost_growth"] == pytest.approx(1.3)
    assert r["cost_growth_pass"] == 0 and r["rss_growth_pass"] == 0
    text = scale_summary(r)
    assert "**1.30** (goal ≤ 1.2: **FAIL**)" in text
    assert "driver **+20.0%**" in text and "(goal ≤ 10%: **FAIL**)" in text


def test_every_key_is_a_number() -> None:
    r = _keys(_size(10, 1.0, 10.0), _size(100, 10.0, 10.0))
    assert all(isinstance(v, int | float) for v in r.values())


def test_train_job_is_bounded_and_valid() -> None:
    opts = {
        "steps": 7,
        "max_seq_len": 512,
        "batch_size": 16,
        "cache": "auto",
        "object_store_mb": 512,
        "seed": 3,
    }
    spec = load_config(JobSpec, None, bench_overrides("/some/cohort", opts))
    assert spec.train.max_steps_per_epoch == 7 and spec.train.epochs == 1
    assert spec.train.num_workers == 1 and spec.train.use_gpu is False
    assert spec.ray.object_store_mb == 512 and spec.data.cache == "auto"


class _FakeMemory(WorkerMemory):
    def __init__(self) -> None:
        super().__init__(marker="ray::")
        self.peaks = {1: 900.0, 2: 400.0, 3: 300.0}
        self.private_peaks = {1: 600.0, 2: 350.0, 3: 200.0}
        self.titles = {
            1: "ray::RayTrainWorker",
            2: "ray::MapBatches(_ray_encode_tasks)",
            3: "ray::IDLE",
        }


def test_worker_memory_splits_train_and_data_workers() -> None:
    m = worker_memory(_FakeMemory())
    assert m["worker_peak_rss_mb"] == 900.0 and m["worker_peak_private_mb"] == 600.0
    assert m["train_worker_peak_rss_mb"] == 900.0 and m["data_worker_peak_rss_mb"] == 400.0
    assert m["train_worker_peak_private_mb"] == 600.0 and m["data_worker_peak_private_mb"] == 350.0
    assert m["workers_sampled"] == 3


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_worker_memory_samples_marked_children_only() -> None:
    assert _status_kb(os.getpid(), ("VmHWM", "RssAnon"))["VmHWM"] > 0  # type: ignore[index]
    code = "import time; x = bytearray(64 << 20); time.sleep(30)"
    marked = subprocess.Popen([sys.executable, "-c", code, "ehrsurv-marker-test"])
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        mem = WorkerMemory(marker="ehrsurv-marker-test", every_s=0.05)
        with mem:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and mem.private_peaks.get(marked.pid, 0) < 64:
                time.sleep(0.1)
        assert set(mem.peaks) == {marked.pid}
        assert mem.private_peaks[marked.pid] >= 64 and mem.peaks[marked.pid] >= 64
        assert mem.titles[marked.pid] == sys.executable
    finally:
        for p in (marked, other):
            p.kill()
            p.wait()


def test_cli_options() -> None:
    args = build_parser().parse_args(
        ["bench", "scale", "--out", "o", "--subjects", "20", "--steps", "2", "--keep"]
    )
    assert (args.subjects, args.steps, args.keep, args.no_warmup) == (20, 2, True, False)
    assert (args.batch_size, args.max_seq_len, args.cache) == (16, 512, "auto")
    assert args.object_store_mb == 1024 and args.seed == 42 and args.shard_subjects == 500
