"""Experiment tracking without Ray (``train/tracking.py``): the config keys, the flattening of
parameters and final metrics, the missing-package error, and real MLflow file stores and
TensorBoard event files written and read back (the per-trial naming of a sweep included).

The Ray side (the Train callback, a whole run, a sweep) is in
``tests/integration/test_tracking_ray.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from ehrsurv_dist import rundir
from ehrsurv_dist.config import ConfigError, dump_yaml, format_help, load_config, to_dict
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import tracking
from ehrsurv_dist.tune import TuneJobSpec

# The tests that write and read real stores need the tracking extra (`make setup` installs it);
# the config, flattening and missing-package tests run without it.
needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mlflow", "tensorboardX", "tensorboard")),
    reason="needs pip install 'ehrsurv_dist[tracking]'",
)

ROWS = [  # two epochs as worker.py reports them (numbers only; "epoch" is the step)
    {"epoch": 0, "lr": 0.001, "val_c_index_td": 0.61, "train_loss": 1.5, "val_score": 0.61},
    {"epoch": 1, "lr": 0.0005, "val_c_index_td": 0.64, "train_loss": 1.25, "val_score": 0.64},
]
METRICS = {
    "train": {"mode": "finetune", "best_epoch": 1, "best_val_score": 0.64, "history": ROWS},
    "held_out": {
        "n_subjects": 40,
        "c_index_td": 0.625,
        "c_index_td_ci": [0.5, 0.75],
        "brier": {"30.0": 0.125},
        "ci": {"ibs": [0.05, 0.25]},
        "curve": [0.1, 0.2, 0.3],
        "warnings": ["a text"],
        "calibrated": True,
    },
}


def _spec(*more: str | tuple[str, object]) -> JobSpec:
    return load_config(JobSpec, None, ["name=trk", "model.size=tiny", *more])


def _run_dir(tmp_path: Path, spec: JobSpec, name: str = "run") -> str:
    """A run directory as a finished run leaves it: config.yaml, metrics.json, one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / name
    (out / rundir.PLOTS).mkdir(parents=True)
    dump_yaml(spec, out / rundir.CONFIG)
    (out / rundir.METRICS).write_text(json.dumps(METRICS))
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1.5, 1.25])
    fig.savefig(out / rundir.PLOTS / "training_curves.png")
    plt.close(fig)
    return str(out)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_tracking_keys_default_off_and_are_checked() -> None:
    spec = _spec()
    assert (spec.train.tracking, spec.train.tracking_uri, spec.train.tracking_experiment) == (
        "none",
        None,
        None,
    )
    spec = _spec("train.tracking=mlflow", "train.tracking_uri=/x/mlruns")
    assert (spec.train.tracking, spec.train.tracking_uri) == ("mlflow", "/x/mlruns")
    with pytest.raises(ConfigError, match=r"train\.tracking.*wandb"):
        _spec("train.tracking=wandb")
    with pytest.raises(ConfigError, match=r"train\.tracking_uri: must be a URI or folder"):
        _spec(("train.tracking_uri", " "))
    with pytest.raises(ConfigError, match=r"train\.tracking_experiment: must be a non-empty"):
        _spec(("train.tracking_experiment", ""))
    text = format_help(JobSpec)  # `ehrsurv config`
    for key in ("train.tracking:", "train.tracking_uri:", "train.tracking_experiment:"):
        assert key in text
    assert "pip install 'ehrsurv_dist[tracking]'" in text
    assert "MLFLOW_TRACKING_URI" in text


def test_resolve_uri_defaults_environment_and_relative_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "run")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri("mlflow", None, out) == os.path.join(out, "mlruns")
    assert tracking.resolve_uri("tensorboard", None, out) == os.path.join(out, "tensorboard")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_uri("mlflow", None, out) == "http://127.0.0.1:5000"
    assert tracking.resolve_uri("tensorboard", None, out) == os.path.join(out, "tensorboard")
    # the job's own key wins over the environment; a relative folder is made absolute
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri("mlflow", "store", out) == str(tmp_path / "store")
    assert tracking.resolve_uri("mlflow", "sqlite:///m.db", out) == "sqlite:///m.db"
    assert tracking.resolve_uri("mlflow", "file:/a/b", out) == "file:/a/b"
    assert tracking.resolve_uri("mlflow", "databricks", out) == "databricks"


# --------------------------------------------------------------------------------------------
# What is logged
# --------------------------------------------------------------------------------------------


def test_flatten_params_gives_dotted_keys_in_yaml_spelling() -> None:
    spec = _spec("train.engine.lr=0.0003", "eval.horizons=[2, 4]")
    params = tracking.flatten_params(to_dict(spec))
    assert params["train.engine.lr"] == "0.0003"
    assert params["train.epochs"] == "10"
    assert params["model.size"] == "tiny"
    assert params["train.tracking"] == "none"
    assert params["train.use_gpu"] == "false"
    assert params["finetune.init"] == "null"
    assert params["eval.horizons"] == "[2,4]"
    assert params["eval.horizons_days"] == "[30.0,90.0,365.0]"
    assert params["task.bins.quantiles"] == "8"  # two levels deep
    assert "train" not in params and "train.engine" not in params  # leaves only
    # every leaf of the config, once
    assert len(params) == len([r for r in _leaves(to_dict(spec))])
    # a sweep's list-of-dicts section is one JSON value; too long a value is cut for MLflow
    flat = tracking.flatten_params({"tune": {"space": [{"name": "a", "fixed": {"x.y": 1}}]}})
    assert json.loads(flat["tune.space"]) == [{"fixed": {"x.y": 1}, "name": "a"}]
    long = tracking.flatten_params({"k": "v" * 7000})["k"]
    assert len(long) == tracking.MAX_PARAM_CHARS and long.endswith("...")
    assert tracking.flatten_params({"d": {}}) == {"d": "{}"}  # an empty mapping is a value


def _leaves(tree: dict[str, object], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def test_epoch_and_final_metrics() -> None:
    step, values = tracking.epoch_metrics({**ROWS[1], "improved": True, "note": "x"})
    assert step == 1
    assert values == {"lr": 0.0005, "val_c_index_td": 0.64, "train_loss": 1.25, "val_score": 0.64}
    assert tracking.final_metrics(METRICS) == {
        "train/best_epoch": 1.0,
        "train/best_val_score": 0.64,
        "held_out/n_subjects": 40.0,
        "held_out/c_index_td": 0.625,
        "held_out/c_index_td_ci/low": 0.5,
        "held_out/c_index_td_ci/high": 0.75,
        "held_out/brier/30.0": 0.125,
        "held_out/ci/ibs/low": 0.05,
        "held_out/ci/ibs/high": 0.25,
    }


# --------------------------------------------------------------------------------------------
# The missing package
# --------------------------------------------------------------------------------------------


def test_check_installed() -> None:
    tracking.check_installed("none")
    with pytest.raises(EhrsurvError, match="one of none, mlflow, tensorboard"):
        tracking.check_installed("wandb")


@needs_extra
def test_check_installed_passes_with_the_extra() -> None:
    tracking.check_installed("mlflow")
    tracking.check_installed("tensorboard")


@pytest.mark.parametrize(
    ("module", "command", "backend", "package"),
    [
        ("mlflow", "finetune", "mlflow", "mlflow-skinny"),
        ("tensorboardX", "pretrain", "tensorboard", "tensorboardX"),
        ("mlflow", "tune", "mlflow", "mlflow-skinny"),
    ],
)
def test_missing_package_fails_fast_on_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    module: str,
    command: str,
    backend: str,
    package: str,
    no_ray_start: None,
) -> None:
    """The CLI as a user runs it, with ``import <module>`` failing as without the extra;
    refused before Ray starts (``no_ray_start``) and before the run directory is made."""
    from ehrsurv_dist.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like
    out = tmp_path / "run"
    args = ["--cohort", str(tmp_path / "no_cohort"), "--out", str(out)]
    code = main([command, *args, f"train.tracking={backend}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"ehrsurv {command}: error: train.tracking={backend} needs the {package} package, "
        "which is not installed: run pip install 'ehrsurv_dist[tracking]'"
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Real stores, no Ray
# --------------------------------------------------------------------------------------------


def _client(uri: str) -> object:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@needs_extra
def test_mlflow_run_params_epochs_outputs_and_resume(tmp_path: Path) -> None:
    spec = _spec("train.tracking=mlflow", "train.tracking_experiment=exp-a")
    out = _run_dir(tmp_path, spec)
    target = tracking.open_run(spec, out, "finetune")
    assert target is not None and target.uri == os.path.join(out, "mlruns")
    assert tracking.load_target(out) == target
    c = _client(target.uri)
    tracking.EpochLogger(target).log(ROWS[0])  # what the Train callback does every epoch
    first = c.get_metric_history(target.run_id, "val_c_index_td")  # type: ignore[attr-defined]
    assert [(m.step, m.value) for m in first] == [(0, 0.61)]
    tracking.end_run(target, "FINISHED")
    # the outputs, and epoch 1, which never reached the store (a trial stopped by Tune)
    assert tracking.log_outputs(out) is True

    run = c.get_run(target.run_id)  # type: ignore[attr-defined]
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert c.get_experiment(target.experiment_id).name == "exp-a"  # type: ignore[attr-defined]
    assert run.data.params == tracking.flatten_params(to_dict(spec))
    assert run.data.tags["ehrsurv.mode"] == "finetune"
    hist = c.get_metric_history(target.run_id, "val_c_index_td")  # type: ignore[attr-defined]
    assert [(m.step, m.value) for m in hist] == [(0, 0.61), (1, 0.64)]
    assert "epoch" not in run.data.metrics
    assert run.data.metrics["held_out/c_index_td"] == 0.625
    assert run.data.metrics["held_out/c_index_td_ci/high"] == 0.75
    arts = {a.path for a in c.list_artifacts(target.run_id)}  # type: ignore[attr-defined]
    assert {"config.yaml", "metrics.json", "plots"} <= arts
    plots = [a.path for a in c.list_artifacts(target.run_id, "plots")]  # type: ignore[attr-defined]
    assert plots == ["plots/training_curves.png"]

    # the same command again (a resume) logs on into the same run, parameters untouched
    again = tracking.open_run(spec, out, "finetune")
    assert again == target
    assert c.get_run(target.run_id).info.status == "RUNNING"  # type: ignore[attr-defined]
    assert len(c.search_runs([target.experiment_id])) == 1  # type: ignore[attr-defined]


@needs_extra
def test_mlflow_store_that_cannot_be_used_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spec = _spec("train.tracking=mlflow", ("train.tracking_uri", str(blocker / "mlruns")))
    out = _run_dir(tmp_path, spec)
    with pytest.raises(EhrsurvError, match=r"train\.tracking=mlflow: cannot log to .*mlruns"):
        tracking.open_run(spec, out, "finetune")
    assert tracking.load_target(out) is None


@needs_extra
def test_sweep_nests_one_named_run_per_trial(tmp_path: Path) -> None:
    tspec = load_config(
        TuneJobSpec,
        None,
        [
            "name=sw",
            "model.size=tiny",
            "train.tracking=mlflow",
            ("tune.space", [{"name": "a", "grid": {"finetune.strategy": ["frozen", "full"]}}]),
        ],
    )
    out = tmp_path / "sweep"
    out.mkdir()
    dump_yaml(tspec, out / rundir.CONFIG)
    sweep = tracking.open_sweep(tspec, str(out))
    assert sweep is not None and sweep.uri == str(out / "mlruns")
    dirs = []
    for name, strategy in (("t000_a", "frozen"), ("t001_a", "full")):
        spec = _spec("train.tracking=mlflow", f"finetune.strategy={strategy}")
        d = _run_dir(out / "trials", spec, name)
        t = tracking.open_run(spec, d, "finetune", within=sweep)
        assert t is not None and (t.uri, t.experiment_id) == (sweep.uri, sweep.experiment_id)
        tracking.EpochLogger(t).log(ROWS[0])
        dirs.append(d)
    (out / "results.csv").write_text("trial,val_td_c\nt000_a,0.61\n")
    tracking.log_sweep(
        str(out),
        sweep,
        [(dirs[0], "completed"), (dirs[1], "stopped")],
        {"trial": "t000_a", "val_td_c": 0.61},
    )

    c = _client(sweep.uri)
    runs = c.search_runs([sweep.experiment_id])  # type: ignore[attr-defined]
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == ["sweep", "t000_a", "t001_a"]
    parent = by_name["sweep"]
    assert json.loads(parent.data.params["tune.space"])[0]["grid"] == {
        "finetune.strategy": ["frozen", "full"]
    }
    assert parent.data.metrics["best/val_td_c"] == 0.61
    assert parent.data.tags["ehrsurv.best_trial"] == "t000_a"
    assert parent.info.status == "FINISHED"
    assert "results.csv" in {a.path for a in c.list_artifacts(parent.info.run_id)}  # type: ignore[attr-defined]
    for name, status, strategy in (("t000_a", "FINISHED", "frozen"), ("t001_a", "KILLED", "full")):
        r = by_name[name]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.status == status
        assert r.data.params["finetune.strategy"] == strategy
        hist = c.get_metric_history(r.info.run_id, "val_c_index_td")  # type: ignore[attr-defined]
        assert [(m.step, m.value) for m in hist] == [(0, 0.61), (1, 0.64)]  # 1 from metrics.json
        assert r.data.metrics["held_out/c_index_td"] == 0.625


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return {
        tag: [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["scalars"]
    }


@needs_extra
def test_tensorboard_scalars_images_and_trial_folders(tmp_path: Path) -> None:
    spec = _spec("train.tracking=tensorboard")
    out = _run_dir(tmp_path, spec)
    target = tracking.open_run(spec, out, "finetune")
    assert target == tracking.Target("tensorboard", os.path.join(out, "tensorboard"))
    tracking.EpochLogger(target).log({**ROWS[0], "val_score": float("-inf")})
    assert tracking.log_outputs(out) is True  # also writes epoch 1, missing from the folder
    s = _scalars(target.uri)
    assert s["val_c_index_td"] == [(0, 0.61), (1, 0.64)]
    assert s["train_loss"] == [(0, 1.5), (1, 1.25)]
    assert s["val_score"] == [(1, 0.64)]  # no point for an infinite score
    assert s["final/held_out/c_index_td"] == [(1, 0.625)]  # at the best epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(target.uri)
    acc.Reload()
    assert acc.Tags()["images"] == ["plots/training_curves"]
    # a sweep's trial writes its own sub-folder
    sweep = tracking.Target("tensorboard", str(tmp_path / "sweep" / "tensorboard"))
    t = tracking.open_run(spec, _run_dir(tmp_path, spec, "t001_b"), "finetune", within=sweep)
    assert t == tracking.Target("tensorboard", os.path.join(sweep.uri, "t001_b"))


def test_the_tracking_extra_and_the_test_extra_that_pulls_it() -> None:
    """`pip install 'ehrsurv_dist[tracking]'` (the error's advice) names real packages, and
    `make setup`'s `.[test]` brings them, so a fresh clone runs the store tests."""
    if sys.version_info < (3, 11):  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    import tomllib
    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {Requirement(r).name for r in extras["tracking"]}
    assert names == {"mlflow-skinny", "tensorboardX", "tensorboard"}
    test = [Requirement(r) for r in extras["test"]]
    assert any(r.name == "ehrsurv_dist" and r.extras == {"tracking"} for r in test)
