"""``bench scale`` end to end at its smallest: two long-preset cohorts (10 and 100 subjects),
each measured in a fresh process with its own local Ray (validation, vocabulary scan, train-split
encoding, a 2-step pretraining epoch). It does not use the session's Ray: each size starts its
own, in a spawned process."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ehrsurv_dist.bench.scale import run_scale_bench
from ehrsurv_dist.bench.scale_summary import REQUIRED_KEYS

pytestmark = pytest.mark.integration


def test_bench_scale_writes_every_key(tmp_path: Path) -> None:
    out = str(tmp_path / "bench")
    res = run_scale_bench(
        out,
        10,
        steps=2,
        batch_size=4,
        max_seq_len=64,
        object_store_mb=256,
        repeats=1,  # one timed round per stage: the test checks the keys, not the speed
        warmup=False,
        quiet=True,
    )
    with open(os.path.join(out, "bench.json")) as f:
        saved = json.load(f)
    assert saved == pytest.approx(res)
    for key in REQUIRED_KEYS:
        assert math.isfinite(saved[key]), key
    assert saved["subjects_n"] == 10 and saved["subjects_10n"] == 100
    assert saved["events_10n"] > saved["events_n"] > 0
    assert saved["train_steps_n"] == saved["train_steps_10n"] == 2
    assert saved["driver_peak_rss_mb_n"] > 0 and saved["worker_peak_rss_mb_10n"] > 0
    assert saved["object_store_mb_n"] == pytest.approx(256, rel=0.01)
    with open(os.path.join(out, "SUMMARY.md")) as f:
        assert "per_event_cost_growth" in f.read()
    assert not os.path.exists(os.path.join(out, "cohort_10"))  # removed without keep
