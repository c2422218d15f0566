"""Driver-side launch helpers that need no Ray: paths and the run-directory contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ehrsurv_dist.config import load_config
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train.launch import absolute_paths
from ehrsurv_dist.train.outdir import prepare_run_dir


def test_local_paths_become_absolute_uris_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_config(
        JobSpec,
        None,
        [("data.cohort", "c"), ("finetune.init", "runs/pre"), ("train.step_log", "steps.jsonl")],
    )
    a = absolute_paths(spec)
    assert a.data.cohort == os.path.join(str(tmp_path), "c")
    assert a.finetune.init == os.path.join(str(tmp_path), "runs", "pre")
    assert a.train.step_log == os.path.join(str(tmp_path), "steps.jsonl")
    assert a.data.outcomes is None
    assert absolute_paths(load_config(JobSpec, None, [])).train.step_log is None
    s3 = load_config(JobSpec, None, [("data.cohort", "s3://bucket/cohort")])
    assert absolute_paths(s3).data.cohort == "s3://bucket/cohort"


def test_run_dir_contract(tmp_path: Path) -> None:
    spec = load_config(JobSpec, None, ["train.epochs=2"])
    out = str(tmp_path / "run")
    assert prepare_run_dir(out, spec, "finetune") is False  # new run
    assert prepare_run_dir(out, spec, "finetune") is True  # same run: resume
    with pytest.raises(OutputError, match="another run"):
        prepare_run_dir(out, load_config(JobSpec, None, ["train.epochs=3"]), "finetune")
    with pytest.raises(OutputError, match="another run"):
        prepare_run_dir(out, spec, "pretrain")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        prepare_run_dir(str(other), spec, "finetune")
    assert (other / "notes.txt").read_text() == "mine"


def test_ray_data_info_lines_stay_off_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from ehrsurv_dist.train.launch import quiet_ray_data_console

    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    quiet_ray_data_console()
    handlers = logging.getLogger("ray.data").handlers
    console = [h for h in handlers if type(h).__name__ != "SessionFileHandler"]
    files = [h for h in handlers if type(h).__name__ == "SessionFileHandler"]
    assert console and files
    # INFO (plans, progress summaries) is dropped on the console, warnings still pass ...
    assert all(h.level > logging.INFO and h.level <= logging.WARNING for h in console)
    # ... and the session's ray-data log file still gets everything
    assert all(h.level <= logging.INFO for h in files)
