"""Experiment tracking on a real local Ray: a fine-tuning run logged to a local MLflow file store
(through ``ehrsurv finetune``, evaluation and plots included) and a run logged to TensorBoard.
Every number is
read back with the libraries' own readers and compared with what the run wrote to its files.

The sweep's tracking (one MLflow run per trial, nested in the sweep's run, kept on resume) is
checked by the two-trial sweep of ``test_tune_ray.py``, which runs with ``train.tracking=mlflow``
so that the tier runs one sweep, not two."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from ehrsurv_dist import rundir
from ehrsurv_dist.cli import main
from ehrsurv_dist.config import load_config, to_dict
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import tracking
from ehrsurv_dist.train.launch import run_training

pytestmark = pytest.mark.integration
pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TINY = [
    "model.size=tiny",
    "data.batch_size=16",
    "data.max_seq_len=96",
    "train.num_workers=1",
    "train.engine.engine=torch",
    "train.engine.lr=0.003",
    "train.epochs=2",
    "train.patience=0",
    "eval.n_boot=0",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("track") / "cohort")
    synthesize(out, "smoke", seed=5, signal=3.0)
    return out


def _client(uri: str) -> Any:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(out: str, key: str) -> list[tuple[int, float]]:
    with open(os.path.join(out, rundir.METRICS)) as fh:
        hist = json.load(fh)["train"]["history"]
    return [(int(h["epoch"]), float(h[key])) for h in hist]


def test_finetune_logs_params_epochs_final_metrics_and_plots_to_mlflow(
    cohort: str, tmp_path: Path, ray_local: None
) -> None:
    out = str(tmp_path / "ft")
    args = ["finetune", "--cohort", cohort, "--out", out, *TINY, "train.tracking=mlflow"]
    assert main([*args, "train.tracking_experiment=smoke-exp"]) == 0

    target = tracking.load_target(out)
    assert target is not None and target.uri == os.path.join(out, "mlruns")
    c = _client(target.uri)
    assert c.get_experiment(target.experiment_id).name == "smoke-exp"
    run = c.get_run(target.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ft"
    # parameters: the run's resolved config (config.yaml), flattened
    spec = load_config(JobSpec, os.path.join(out, rundir.CONFIG))
    assert run.data.params == tracking.flatten_params(to_dict(spec))
    assert run.data.params["train.tracking"] == "mlflow"
    assert run.data.params["data.cohort"] == cohort
    # every epoch, as the workers reported it (metrics.json keeps the same history)
    for key in ("val_c_index_td", "train_loss", "lr", "val_score"):
        logged = [(m.step, m.value) for m in c.get_metric_history(target.run_id, key)]
        want = _history(out, key)
        assert [s for s, _ in logged] == [s for s, _ in want] == [0, 1], key
        assert [v for _, v in logged] == pytest.approx([v for _, v in want], rel=1e-12), key
    # the final metrics of metrics.json, and the plots
    with open(os.path.join(out, rundir.METRICS)) as fh:
        final = json.load(fh)
    assert run.data.metrics["held_out/c_index_td"] == pytest.approx(
        final["held_out"]["c_index_td"], rel=1e-12
    )
    assert run.data.metrics["train/best_epoch"] == final["train"]["best_epoch"]
    plots = {os.path.basename(a.path) for a in c.list_artifacts(target.run_id, "plots")}
    assert plots == set(os.listdir(os.path.join(out, rundir.PLOTS)))
    assert {"training_curves.png", "survival_held_out.png"} <= plots
    assert {"config.yaml", "metrics.json"} <= {a.path for a in c.list_artifacts(target.run_id)}


def test_run_writes_tensorboard_scalars_of_every_epoch(
    cohort: str, tmp_path: Path, ray_local: None
) -> None:
    out = str(tmp_path / "tb")
    spec = load_config(
        JobSpec, None, [*TINY, "train.tracking=tensorboard", ("data.cohort", cohort)]
    )
    res = run_training(spec, "pretrain", out, progress=False)
    logdir = os.path.join(out, "tensorboard")
    assert tracking.load_target(out) == tracking.Target("tensorboard", logdir)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    assert [h["epoch"] for h in res.history] == [0, 1]
    keys = [k for k in res.history[0] if k != "epoch"]
    assert {"val_loss", "train_loss", "val_score", "lr", "tokens_per_s"} <= set(keys)
    assert set(keys) <= set(acc.Tags()["scalars"])
    for key in keys:  # every number of every epoch (TensorBoard keeps float32)
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        want = [(h["epoch"], h[key]) for h in res.history if math.isfinite(h[key])]
        assert [s for s, _ in got] == [s for s, _ in want], (key, res.history)
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert acc.Tags()["tensors"] == ["config/text_summary"]  # the resolved config, as text
