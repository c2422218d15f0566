"""A real Ray Tune sweep on the local Ray: two trials (frozen vs full), each a Ray Train run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from ehrsurv_dist.config import apply_overrides, load_config
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.tune import SweepResult, TuneJobSpec, run_sweep

pytestmark = pytest.mark.integration

SPACE = [
    {"name": "frozen", "fixed": {"finetune.strategy": "frozen"}},
    {"name": "full", "fixed": {"finetune.strategy": "full"}},
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("tune") / "cohort")
    synthesize(out, "smoke", seed=7, signal=3.0)
    return out


def _spec(cohort: str) -> TuneJobSpec:
    return load_config(
        TuneJobSpec,
        None,
        [
            "model.size=tiny",
            "data.batch_size=16",
            "data.max_seq_len=96",
            "train.num_workers=1",
            "train.engine.engine=torch",
            "train.engine.lr=0.003",
            "train.epochs=2",
            "eval.n_boot=10",
            "tune.grace_period=1",
            "train.tracking=mlflow",  # checked by _check_mlflow
            ("tune.space", SPACE),
            ("data.cohort", cohort),
        ],
    )


def test_two_trial_sweep_table_best_and_resume(
    cohort: str, tmp_path: Path, ray_local: None
) -> None:
    out = str(tmp_path / "sweep")
    spec = _spec(cohort)
    res = run_sweep(spec, out, progress=False)
    # no trial's Train workers still hold CPUs (a stopped trial's placement group is released)
    held = [p for p in ray.util.placement_group_table().values() if p["state"] == "CREATED"]
    assert held == []

    # the results table: one row per trial, in CSV, Markdown and JSON
    with open(os.path.join(out, "results.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["strategy"] for r in rows] == ["frozen", "full"]
    by = {r["strategy"]: r for r in res.rows}
    for r in res.rows:
        # ASHA (grace 1, 2 epochs) may stop the second trial after its first epoch
        assert r["status"] in ("completed", "stopped"), r
        assert r["epochs"] == (2 if r["status"] == "completed" else 1)
        assert r["best_epoch"] in range(r["epochs"])
        assert 0.0 < r["val_td_c"] < 1.0
        # the exported best epoch, scored by evaluate on the same split, gives the worker's td-C
        assert r["tuning_td_c"] == pytest.approx(r["val_td_c"], abs=1e-6)
        assert 0.0 < r["tuning_ibs"] < 0.5
        assert r["wall_s"] > 0
    assert res.rows[0]["status"] == "completed"  # the first trial has no one to trail
    _check_mlflow(out, res)
    # frozen trains the hazard head only; full trains everything
    assert by["full"]["trainable_params"] == by["full"]["total_params"]
    assert 0 < by["frozen"]["trainable_params"] < 0.2 * by["frozen"]["total_params"]
    md = open(os.path.join(out, "results.md")).read()
    assert "| trial |" in md and "t000_frozen" in md and "t001_full" in md
    assert os.path.getsize(os.path.join(out, "plots", "tdc_vs_params.png")) > 1000

    # the best trial: highest validation td-C, exported as a job file for `ehrsurv finetune`
    best = max(res.rows, key=lambda r: r["val_td_c"])
    assert res.best is not None and res.best["trial"] == best["trial"]
    best_spec = load_config(JobSpec, os.path.join(out, "best.yaml"))
    trial_dir = os.path.join(out, "trials", best["trial"])
    assert best_spec == load_config(JobSpec, os.path.join(trial_dir, "config.yaml"))
    assert best_spec.finetune.strategy == best["strategy"]

    # held_out scored once, for the best trial only, over the whole split
    held = json.load(open(os.path.join(out, "held_out.json")))
    assert held["trial"] == best["trial"]
    splits = pq.read_table(os.path.join(cohort, "metadata", "subject_splits.parquet")).to_pydict()
    n_held = sum(1 for s in splits["split"] if s == "held_out")
    assert held["held_out"]["n_subjects"] == n_held
    assert 0.0 < held["held_out"]["c_index_td"] < 1.0
    others = [r for r in res.rows if r["trial"] != best["trial"]]
    for r in others:
        m = json.load(open(os.path.join(out, "trials", r["trial"], "metrics.json")))
        assert "held_out" not in m and "tuning" in m

    # re-running the same command resumes: nothing trains again, the same table comes back
    mtimes = {r["trial"]: _export_mtime(out, r["trial"]) for r in res.rows}
    again = run_sweep(spec, out, progress=False)
    assert [(r["trial"], r["val_td_c"], r["status"]) for r in again.rows] == [
        (r["trial"], r["val_td_c"], r["status"]) for r in res.rows
    ]
    assert {r["trial"]: _export_mtime(out, r["trial"]) for r in again.rows} == mtimes
    _check_mlflow(out, again)  # the same three MLflow runs, none added
    # ... and another sweep is refused in the same directory
    with pytest.raises(OutputError, match="another sweep"):
        run_sweep(apply_overrides(spec, ["train.epochs=3"]), out, progress=False)


def _check_mlflow(out: str, res: SweepResult) -> None:
    """train.tracking=mlflow: the sweep's run (OUT/mlruns) and one nested run per trial, named
    after it, with its parameters, every epoch's validation td-C and its final tuning scores."""
    from ehrsurv_dist.train import tracking

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    sweep = tracking.load_target(out)
    assert sweep is not None and sweep.uri == os.path.join(out, "mlruns")
    c = MlflowClient(tracking_uri=sweep.uri)
    runs = {r.info.run_name: r for r in c.search_runs([sweep.experiment_id])}
    assert sorted(runs) == ["sweep", "t000_frozen", "t001_full"]
    parent = runs["sweep"]
    assert parent.info.status == "FINISHED"
    assert res.best is not None
    assert parent.data.metrics["best/val_td_c"] == pytest.approx(res.best["val_td_c"])
    assert parent.data.tags["ehrsurv.best_trial"] == res.best["trial"]
    assert {"results.csv", "best.yaml", "held_out.json", "plots"} <= {
        a.path for a in c.list_artifacts(parent.info.run_id)
    }
    assert [a.path for a in c.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/tdc_vs_params.png"
    ]
    status = {"completed": "FINISHED", "stopped": "KILLED"}
    for row in res.rows:
        r = runs[row["trial"]]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.params["finetune.strategy"] == row["strategy"]
        assert r.info.status == status[row["status"]]
        hist = c.get_metric_history(r.info.run_id, "val_c_index_td")
        with open(os.path.join(out, "trials", row["trial"], "metrics.json")) as fh:
            history = json.load(fh)["train"]["history"]
        assert [m.step for m in hist] == [h["epoch"] for h in history] == list(range(row["epochs"]))
        assert [m.value for m in hist] == pytest.approx([h["val_c_index_td"] for h in history])
        assert r.data.metrics["tuning/c_index_td"] == pytest.approx(row["tuning_td_c"])


def _export_mtime(out: str, trial: str) -> float:
    return os.path.getmtime(os.path.join(out, "trials", trial, "model", "config.json"))
