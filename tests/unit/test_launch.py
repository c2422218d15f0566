"""Driver-side launch helpers that need no Ray: paths, the run-directory contract,
``train.use_gpu=auto``, the warning for a random frozen encoder, and the console."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrsurv_dist.config import ConfigError, dump_yaml, load_config
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import console, launch
from ehrsurv_dist.train.launch import absolute_paths, resolve_use_gpu
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


# --------------------------------------------------------------------------------------------
# train.use_gpu: true, false or auto


def test_use_gpu_takes_auto_and_the_old_values() -> None:
    assert load_config(JobSpec, None, []).train.use_gpu is False
    assert load_config(JobSpec, None, ["train.use_gpu=true"]).train.use_gpu is True
    assert load_config(JobSpec, None, ["train.use_gpu=auto"]).train.use_gpu == "auto"
    with pytest.raises(ConfigError, match="train.use_gpu"):
        load_config(JobSpec, None, ["train.use_gpu=maybe"])
    with pytest.raises(ConfigError, match="auto is resolved on the driver"):
        _ = load_config(JobSpec, None, ["train.use_gpu=auto"]).train.gpu


def test_auto_is_decided_from_the_cluster_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auto = load_config(JobSpec, None, ["train.use_gpu=auto", "train.num_workers=4"])
    with caplog.at_level(logging.INFO, logger="ehrsurv_dist"):
        gpu = resolve_use_gpu(auto, {"CPU": 32.0, "GPU": 4.0})
        cpu = resolve_use_gpu(auto, {"CPU": 8.0})
    assert gpu.train.use_gpu is True and gpu.train.gpu is True
    assert cpu.train.use_gpu is False and cpu.train.gpu is False
    assert [r.getMessage() for r in caplog.records if r.name == launch.__name__] == [
        "train.use_gpu=auto: the cluster has 4 GPU(s), so use_gpu=true "
        "(one GPU for each of the 4 worker(s))",
        "train.use_gpu=auto: the cluster has 0 GPU(s), so use_gpu=false (CPU workers)",
    ]
    fixed = load_config(JobSpec, None, ["train.use_gpu=true"])
    assert resolve_use_gpu(fixed, {"CPU": 8.0}) is fixed  # true/false are kept as given
    # what the run's config.yaml records is the decision, a bool
    dump_yaml(gpu, tmp_path / "config.yaml")
    assert load_config(JobSpec, tmp_path / "config.yaml").train.use_gpu is True


def test_resuming_an_auto_run_keeps_what_auto_became(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    auto = load_config(JobSpec, None, ["train.use_gpu=auto"])
    # a new run: config.yaml as run_training leaves it once auto is decided (no GPU here)
    assert prepare_run_dir(out, resolve_use_gpu(auto, {"CPU": 4.0}), "finetune") is False
    again = launch._resumed_gpu_choice(auto, out)  # the same command, run again
    assert again.train.use_gpu is False
    assert prepare_run_dir(out, again, "finetune") is True  # resumes: the same run
    explicit = load_config(JobSpec, None, ["train.use_gpu=true"])
    assert launch._resumed_gpu_choice(explicit, out) is explicit
    with pytest.raises(OutputError, match="another run"):  # true is another run than false
        prepare_run_dir(out, explicit, "finetune")


# --------------------------------------------------------------------------------------------
# Fine-tuning a random encoder


def test_lora_or_frozen_without_init_warns_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    cases = [
        (
            ["finetune.strategy=lora"],
            "finetune",
            "(training updates only the adapters and the head)",
        ),
        (["finetune.strategy=frozen"], "finetune", "(training updates only the head)"),
        (
            ["finetune.strategy=lora", "finetune.train_embeddings=true"],
            "finetune",
            "(training updates only the adapters, the embeddings and the head)",
        ),
        (["finetune.strategy=full"], "finetune", None),
        (["finetune.strategy=lora", "finetune.init=runs/pre"], "finetune", None),
        (["finetune.strategy=lora"], "pretrain", None),
    ]
    for over, mode, said in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ehrsurv_dist"):
            warned = launch.warn_random_encoder(load_config(JobSpec, None, over), mode)
        msgs = [r.getMessage() for r in caplog.records]
        assert warned is (said is not None) and len(msgs) == int(warned), (over, mode, msgs)
        if said:
            assert said in msgs[0] and "without --init" in msgs[0] and "\n" not in msgs[0]


# --------------------------------------------------------------------------------------------
# The console


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    """The package logger, restored after the test (handlers, level, propagation)."""
    logger = logging.getLogger(console.PACKAGE_LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_console_logging_prints_one_line_per_record(
    package_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    console.console_logging("INFO")
    console.console_logging("INFO")  # idempotent: one handler
    ours = [h for h in package_logger.handlers if isinstance(h, console._StderrHandler)]
    assert len(ours) == 1
    worker_log = logging.getLogger("ehrsurv_dist.train.worker")
    worker_log.info("epoch %d, rank %d/%d: train loss %.4f", 0, 1, 2, 0.5)
    worker_log.debug("not at INFO")
    assert capsys.readouterr().err == (
        "INFO ehrsurv_dist.train.worker: epoch 0, rank 1/2: train loss 0.5000\n"
    )
    assert console.job_log_level() == logging.INFO  # what the workers are told
    console.console_logging("WARNING")
    worker_log.info("an epoch line")
    worker_log.warning("epoch 3, rank 0: no training step")
    assert capsys.readouterr().err == (
        "WARNING ehrsurv_dist.train.worker: epoch 3, rank 0: no training step\n"
    )


def test_ray_train_says_only_warnings_unless_debugging() -> None:
    assert console.ray_train_log_level("INFO") == "WARNING"
    assert console.ray_train_log_level(logging.WARNING) == "WARNING"
    assert console.ray_train_log_level("DEBUG") == "DEBUG"
    assert console.ray_train_log_level(logging.DEBUG) == "DEBUG"


def test_progress_counts_the_subjects_a_bounded_epoch_reads() -> None:
    from types import SimpleNamespace

    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.jobspec import JobSpec
    from ehrsurv_dist.train.launch import epoch_subjects

    fit = SimpleNamespace(stats={"train": {"subjects": 10_000}})
    spec = load_config(JobSpec, None, ["data.batch_size=16", "train.num_workers=2"])
    assert epoch_subjects(spec, fit) == 10_000
    bounded = load_config(
        JobSpec,
        None,
        [
            "data.batch_size=16",
            "train.num_workers=2",
            "train.engine.grad_accum=3",
            "train.max_steps_per_epoch=5",
        ],
    )
    assert epoch_subjects(bounded, fit) == 5 * 16 * 3 * 2
    fit.stats["train"]["subjects"] = 100  # a bound larger than the split: the split
    assert epoch_subjects(bounded, fit) == 100
