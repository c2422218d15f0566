"""Faults and determinism on a real local Ray (Ray Train + DeepSpeed ZeRO-1 on CPU, tiny model).

- The same seed and worker count give identical metrics (two fresh runs, compared exactly).
- A corrupted latest checkpoint is detected by its manifest (sha256 of every file) when the run
  is resumed: the driver warns, the workers resume from the previous intact checkpoint and the
  curve continues as in the uninterrupted run; the export comes from an intact checkpoint.
- With no intact checkpoint left the run stops before training with one clear error.
- A nearly full output filesystem is refused before anything is written.

Worker kills and driver relaunches are in ``test_train_ray.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ehrsurv_dist.config import load_config
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.rundir import RAY_DIR, RUN_NAME
from ehrsurv_dist.train import manifest
from ehrsurv_dist.train.launch import run_training
from ehrsurv_dist.train.outdir import prepare_run_dir

pytestmark = pytest.mark.integration

TINY = [
    "model.size=tiny",
    "data.batch_size=16",
    "data.max_seq_len=96",
    "train.num_workers=2",
    "train.epochs=2",
    "train.patience=0",
    "train.keep_checkpoints=2",
    "train.engine.zero_stage=1",
    "train.engine.lr=0.001",
    "finetune.strategy=full",
    "eval.n_boot=10",
    "train.min_free_gb=0",
]
# Wall-clock measurements: not expected to repeat.
TIMING = {"epoch_seconds", "val_seconds", "subjects_per_s", "tokens_per_s", "data_wait_fraction"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    from ehrsurv_dist.data.synthetic import synthesize

    out = str(tmp_path_factory.mktemp("faults") / "cohort")
    synthesize(out, "smoke", seed=5, signal=3.0)
    return out


def _finetune(cohort: str, out: str) -> dict:  # type: ignore[type-arg]
    """``ehrsurv finetune`` as the CLI runs it (on the session's Ray); returns metrics.json."""
    from ehrsurv_dist.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["finetune", "--cohort", cohort, "--out", out, *TINY])
    assert code == 0, err.getvalue()
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)  # type: ignore[no-any-return]


def _strip_timing(m: object) -> object:
    if isinstance(m, dict):
        return {k: _strip_timing(v) for k, v in m.items() if k not in TIMING}
    if isinstance(m, list):
        return [_strip_timing(v) for v in m]
    return m


@pytest.fixture(scope="module")
def run_a(cohort: str, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    out = str(tmp_path_factory.mktemp("faults") / "a")
    _finetune(cohort, out)
    return out


def test_same_seed_and_workers_give_identical_metrics(
    cohort: str, run_a: str, tmp_path: Path, ray_local: None
) -> None:
    with open(os.path.join(run_a, "metrics.json")) as f:
        a = json.load(f)
    b = _finetune(cohort, str(tmp_path / "b"))
    assert [h["epoch"] for h in a["train"]["history"]] == [0, 1]
    assert a["held_out"]["n_subjects"] > 0 and np.isfinite(a["held_out"]["c_index_td"])
    # every number but wall-clock timings, exactly: losses, val C-index, lr, and the evaluation
    assert _strip_timing(b) == _strip_timing(a)


def _checkpoints(run: str) -> list[Path]:
    root = Path(run) / RAY_DIR / RUN_NAME
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint_"))


def _corrupt(ck: Path) -> Path:
    """Zero a stretch in the middle of the checkpoint's largest file (same size)."""
    victim = max((p for p in ck.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    victim.write_bytes(bytes(data))
    return victim


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(
    cohort: str,
    run_a: str,
    tmp_path: Path,
    ray_local: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with open(os.path.join(run_a, "metrics.json")) as f:
        want = json.load(f)["train"]["history"]
    run = str(tmp_path / "c")
    shutil.copytree(run_a, run)  # a finished run; its storage path is the run directory
    cks = _checkpoints(run)
    assert len(cks) == 2 and all(manifest.verify_checkpoint(str(c)) == [] for c in cks)
    latest, previous = cks[-1], cks[0]
    victim = _corrupt(latest)
    assert manifest.verify_checkpoint(str(latest))  # the manifest sees it

    spec = load_config(JobSpec, None, [*TINY, ("data.cohort", cohort)])
    with caplog.at_level(logging.WARNING, logger="ehrsurv_dist.train.launch"):
        res = run_training(spec, "finetune", run, progress=False)
    warned = [r.getMessage() for r in caplog.records if "corrupted checkpoint" in r.getMessage()]
    assert len(warned) == 1 and latest.name in warned[0] and previous.name in warned[0], warned
    assert victim.name in warned[0] or "sha256" in warned[0]
    # epoch 1 was trained again from epoch 0's checkpoint: the same curve as the original run
    got = res.history
    assert [h["epoch"] for h in got] == [0, 1]
    np.testing.assert_allclose(
        [h["train_loss"] for h in got], [h["train_loss"] for h in want], rtol=1e-6
    )
    np.testing.assert_allclose(
        [h["val_c_index_td"] for h in got], [h["val_c_index_td"] for h in want], rtol=1e-9
    )
    assert len(_checkpoints(run)) >= 2  # a new epoch-1 checkpoint was written
    from ehrsurv_dist.train import modeling

    assert modeling.load_export(res.export)["state_dict"]  # exported from an intact checkpoint


def test_no_intact_checkpoint_stops_before_training(
    cohort: str, run_a: str, tmp_path: Path, ray_local: None
) -> None:
    run = str(tmp_path / "d")
    shutil.copytree(run_a, run)
    for ck in _checkpoints(run):
        _corrupt(ck)
    before = sorted(p.name for p in _checkpoints(run))
    spec = load_config(JobSpec, None, [*TINY, ("data.cohort", cohort)])
    with pytest.raises(manifest.CheckpointError, match="no intact checkpoint") as e:
        run_training(spec, "finetune", run, progress=False)
    assert "\n" not in str(e.value) and "keep_checkpoints" in str(e.value)
    assert sorted(p.name for p in _checkpoints(run)) == before  # nothing trained or written


def test_full_output_filesystem_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import shutil as sh

    free_gb = sh.disk_usage(tmp_path).free / 1e9
    out = tmp_path / "new" / "run"
    spec = load_config(JobSpec, None, [f"train.min_free_gb={free_gb * 2 + 1:.0f}"])
    with pytest.raises(OutputError, match=r"GB free.*train\.min_free_gb") as e:
        prepare_run_dir(str(out), spec, "finetune")
    assert str(out) in str(e.value)
    assert not (tmp_path / "new").exists()
    # below the free space: accepted
    ok = load_config(JobSpec, None, [f"train.min_free_gb={max(free_gb / 2, 0.001):.3f}"])
    assert prepare_run_dir(str(out), ok, "finetune") is False
    assert (out / "config.yaml").exists()
