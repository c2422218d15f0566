"""The tune job section, the search-space expansion, resource planning and the results files
(no Ray: everything here runs before or after the sweep)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ehrsurv_dist import cli
from ehrsurv_dist.cluster import head_command
from ehrsurv_dist.config import ConfigError, load_config
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.tune import (
    DRIVER_MEMORY,
    PG_FILE,
    TuneJobSpec,
    TuneSpec,
    expand_trials,
    job_spec,
    markdown_table,
    pick_best,
    plan_resources,
    trial_spec,
    write_best_yaml,
    write_results,
)
from ehrsurv_dist.tune.placement_groups import recorded_groups

ROOT = Path(__file__).resolve().parents[2]


def _spec(space: list[dict[str, Any]], *more: Any) -> TuneJobSpec:
    return load_config(TuneJobSpec, None, [("tune.space", space), *more])


def test_strategies_job_expands_to_the_documented_grid() -> None:
    spec = load_config(TuneJobSpec, ROOT / "jobs" / "tune_strategies.yaml")
    trials = expand_trials(spec)
    assert [t.space for t in trials] == ["frozen"] * 2 + ["lora"] * 8 + ["full"] * 2
    assert [t.name for t in trials][:3] == ["t000_frozen", "t001_frozen", "t002_lora"]
    lora = [trial_spec(job_spec(spec), t).finetune for t in trials if t.space == "lora"]
    assert sorted({f.lora_rank for f in lora}) == [4, 8, 16, 32]
    assert all(f.lora_alpha == 2 * f.lora_rank and f.strategy == "lora" for f in lora)
    # every trial keeps the job's own values for what the space does not set
    assert {trial_spec(job_spec(spec), t).finetune.lambda_rank for t in trials} == {0.05}


def test_losses_job_covers_the_seed_grid_and_never_selects_bidirectional() -> None:
    spec = load_config(TuneJobSpec, ROOT / "jobs" / "tune_losses.yaml")
    trials = expand_trials(spec)
    specs = [trial_spec(job_spec(spec), t) for t in trials]
    hybrid = {
        (s.finetune.lambda_rank, s.finetune.margin) for s in specs if s.finetune.loss == "hybrid"
    }
    assert hybrid == {(lr, m) for lr in (0.01, 0.05, 0.1, 0.2) for m in (0.05, 0.1, 0.2)}
    assert {s.finetune.loss for s in specs} == {"nll", "hybrid", "rank", "cox"}
    bidir = [t for t, s in zip(trials, specs, strict=True) if s.model.attention == "bidirectional"]
    assert len(bidir) == 1 and not bidir[0].select
    assert all(t.select for t in trials if t not in bidir)


def test_random_keys_are_seeded_in_range_and_drawn_per_sample() -> None:
    space = [
        {
            "name": "lr",
            "grid": {"finetune.loss": ["nll", "hybrid"]},
            "loguniform": {"train.engine.lr": [1e-5, 1e-2]},
            "choice": {"finetune.lora_rank": [4, 8, 16]},
            "uniform": {"model.dropout": [0.0, 0.3]},
        }
    ]
    a = expand_trials(_spec(space, "tune.num_samples=5"))
    assert len(a) == 10
    lrs = [t.overrides["train.engine.lr"] for t in a]
    assert all(1e-5 <= x <= 1e-2 for x in lrs) and len(set(lrs)) == 10
    assert {t.overrides["finetune.lora_rank"] for t in a} <= {4, 8, 16}
    assert all(0.0 <= t.overrides["model.dropout"] <= 0.3 for t in a)
    # the same seed draws the same trials; another seed, others
    assert expand_trials(_spec(space, "tune.num_samples=5")) == a
    b = expand_trials(_spec(space, "tune.num_samples=5", "seed=1"))
    assert [t.overrides for t in b] != [t.overrides for t in a]
    # a branch without random keys is not repeated by num_samples
    assert (
        len(expand_trials(_spec([{"grid": {"finetune.loss": ["nll"]}}], "tune.num_samples=5"))) == 1
    )


def test_empty_space_is_one_trial_with_the_job_values() -> None:
    spec = load_config(TuneJobSpec, None, ["finetune.loss=cox"])
    (t,) = expand_trials(spec)
    assert t.overrides == {} and trial_spec(job_spec(spec), t) == job_spec(spec)


@pytest.mark.parametrize(
    ("space", "more", "match"),
    [
        (
            [{"grid": {"finetune.lora_rnk": [4]}}],
            [],
            r"tune\.space\[0\]: .*unknown key 'finetune\.lora_rnk' \(did you mean 'finetune\.lora_rank'",
        ),
        (
            [{"grid": {"finetune.loss": ["nlll"]}}],
            [],
            r"tune\.space\[0\]: .*finetune\.loss: must be one of",
        ),
        (
            [{"fixed": {"finetune.loss": "nll"}, "grid": {"finetune.loss": ["cox"]}}],
            [],
            "also set in fixed",
        ),
        ([{"fixed": {"tune.grace_period": 2}}], [], "not tune"),
        ([{"loguniform": {"train.engine.lr": [0, 1]}}], [], "must be > 0"),
        ([{"uniform": {"model.dropout": [0.3, 0.1]}}], [], "low <= high"),
        ([{"grid": {"finetune.loss": []}}], [], "at least one value"),
        ([{"name": "a"}, {"name": "a"}], [], "unique"),
        ([], ["tune.grace_period=11"], r"tune\.grace_period: must be <= train\.epochs \(10\)"),
        ([], ["tune.reduction_factor=1"], "reduction_factor: must be > 1"),
    ],
)
def test_bad_spaces_fail_at_load_time(space: list[Any], more: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _spec(space, *more)


def _jobs(*overrides: str) -> list[JobSpec]:
    return [load_config(JobSpec, None, list(overrides))]


def test_resources_fit_trials_on_the_cluster() -> None:
    # 2 workers x 1 CPU + 1 for Ray Data: one trial on a 3-CPU local Ray, the driver holds no CPU
    plan = plan_resources(_jobs("train.num_workers=2"), TuneSpec(), {"CPU": 3.0})
    assert (plan.cpus_per_trial, plan.max_concurrent) == (3.0, 1)
    assert plan.driver_resources == {"memory": DRIVER_MEMORY}
    jobs = _jobs("train.num_workers=2") * 4
    assert plan_resources(jobs, TuneSpec(), {"CPU": 10.0}).max_concurrent == 3
    # never more in flight than trials, or than tune.max_concurrent_trials
    assert plan_resources(jobs[:2], TuneSpec(), {"CPU": 100.0}).max_concurrent == 2
    assert (
        plan_resources(jobs, TuneSpec(max_concurrent_trials=1), {"CPU": 100.0}).max_concurrent == 1
    )
    # GPUs limit: 4 GPU workers per trial on 8 GPUs
    gpu = _jobs("train.num_workers=4", "train.use_gpu=true") * 3
    p = plan_resources(gpu, TuneSpec(), {"CPU": 64.0, "GPU": 8.0})
    assert (p.gpus_per_trial, p.max_concurrent) == (4.0, 2)
    # the largest trial sets the size
    mixed = _jobs("train.num_workers=1") + _jobs("train.num_workers=3")
    assert plan_resources(mixed, TuneSpec(), {"CPU": 8.0}).cpus_per_trial == 4.0
    # a driver CPU is added on top
    p = plan_resources(_jobs("train.num_workers=1"), TuneSpec(driver_cpus=0.5), {"CPU": 8.0})
    assert p.cpus_per_trial == 2.5 and p.driver_resources == {"CPU": 0.5}


def test_resources_refuse_a_trial_that_cannot_fit_unless_told_to_wait() -> None:
    with pytest.raises(EhrsurvError, match=r"one trial needs 4 CPUs .* the cluster has 3 CPUs"):
        plan_resources(_jobs("train.num_workers=2"), TuneSpec(driver_cpus=1), {"CPU": 3.0})
    with pytest.raises(EhrsurvError, match="tune.max_concurrent_trials"):
        plan_resources(_jobs("train.use_gpu=true"), TuneSpec(), {"CPU": 8.0})
    # an autoscaling cluster: trust the user's concurrency, nodes come on demand
    p = plan_resources(_jobs("train.use_gpu=true"), TuneSpec(max_concurrent_trials=2), {"CPU": 8.0})
    assert p.max_concurrent == 1  # one trial in the sweep


def _row(trial: str, strategy: str, td: float | None, params: int, **kw: Any) -> dict[str, Any]:
    return {
        "trial": trial,
        "space": strategy,
        "selectable": kw.pop("selectable", True),
        "strategy": strategy,
        "loss": "hybrid",
        "params": "lr=0.001",
        "trainable_params": params,
        "total_params": 100_000,
        "val_td_c": td,
        "best_epoch": 1,
        "epochs": 3,
        "status": kw.pop("status", "completed"),
        "tuning_td_c": td,
        "tuning_ibs": 0.1234,
        "wall_s": 12.0,
        **kw,
    }


def test_best_is_the_selectable_row_with_the_highest_validation_score() -> None:
    rows = [
        _row("t000_frozen", "frozen", 0.61, 500),
        _row("t001_lora", "lora", 0.70, 5_000),
        _row("t002_bidir", "lora", 0.95, 5_000, selectable=False),
        _row("t003_full", "full", None, 100_000, status="error"),
        _row("t004_full", "full", math.nan, 100_000),
    ]
    best = pick_best(rows)
    assert best is not None and best["trial"] == "t001_lora"
    assert pick_best([rows[2], rows[3]]) is None


def test_results_files_and_best_yaml(tmp_path: Path) -> None:
    rows = [
        _row("t000_frozen", "frozen", 0.61, 500),
        _row("t001_lora", "lora", 0.70, 5_000),
        _row("t002_full", "full", None, 100_000, status="error", error="boom"),
    ]
    write_results(str(tmp_path), rows, "t001_lora")
    with open(tmp_path / "results.csv") as fh:
        got = list(csv.DictReader(fh))
    assert [r["trial"] for r in got] == ["t000_frozen", "t001_lora", "t002_full"]
    assert got[2]["val_td_c"] == "" and got[2]["error"] == "boom"
    md = markdown_table(rows, "t001_lora").splitlines()
    assert md[2].startswith("| **t001_lora** |")  # best first, in bold
    assert "| t002_full |" in md[-1] and "| 5,000 |" in md[2].replace("**", "")
    assert (tmp_path / "results.md").read_text().count("\n| t0") == 2
    assert os.path.getsize(tmp_path / "plots" / "tdc_vs_params.png") > 1000

    spec = load_config(
        JobSpec, None, ["finetune.strategy=full", "train.engine.lr=0.0002", "data.cohort=/c"]
    )
    path = str(tmp_path / "best.yaml")
    write_best_yaml(spec, path, str(tmp_path), rows[1])
    text = open(path).read()
    assert text.startswith("# Best trial t001_lora") and "ehrsurv finetune --config" in text
    assert load_config(JobSpec, path) == spec
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert body == [  # only what differs from the defaults
        "data:",
        "  cohort: /c",
        "train:",
        "  engine:",
        "    lr: 0.0002",
        "finetune:",
        "  strategy: full",
    ]


def test_cli_dry_run_lists_trials(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(ROOT / "jobs" / "tune_losses.yaml")
    assert cli.main(["tune", "--config", cfg, "--dry-run"]) == 0  # no --out needed to list
    out = capsys.readouterr().out
    assert out.startswith("16 trial(s):") and "t015_bidirectional" in out
    # a real sweep without --out is refused on one line, before Ray starts
    assert cli.main(["tune", "--config", cfg]) != 0
    captured = capsys.readouterr()
    assert "--out is required (only --dry-run runs without it)" in captured.err
    assert "Traceback" not in captured.err
    rc = cli.main(["tune", "--config", cfg, "--out", "x", "--dry-run", "tune.num_samples=0"])
    assert rc != 0
    assert "tune.num_samples: must be >= 1" in capsys.readouterr().err


def test_importing_the_package_leaves_ray_out() -> None:
    # `ehrsurv tune --dry-run` and these tests import ehrsurv_dist.tune: Ray stays at the edges
    code = "import sys, ehrsurv_dist.tune; print(sorted(m for m in sys.modules if m == 'ray'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_placement_group_records_are_read_per_trial(tmp_path: Path) -> None:
    (tmp_path / "t000_a").mkdir()
    (tmp_path / "t001_b").mkdir()
    (tmp_path / "t000_a" / PG_FILE).write_text("ctl0 aa\nctl0 bb\ncut-short\n")
    (tmp_path / "t001_b" / PG_FILE).write_text("ctl1 cc\n")
    found = sorted(
        (os.path.basename(os.path.dirname(p)), c, g) for p, c, g in recorded_groups(str(tmp_path))
    )
    assert found == [("t000_a", "ctl0", "aa"), ("t000_a", "ctl0", "bb"), ("t001_b", "ctl1", "cc")]


def test_cluster_commands_never_stop_ray_without_yes(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = head_command(port=7000, dashboard_port=7001, num_cpus=3, block=True, ray="ray")
    assert cmd[:3] == ["ray", "start", "--head"]
    assert {"--port=7000", "--dashboard-port=7001", "--num-cpus=3", "--block"} <= set(cmd)
    assert "--dashboard-host=127.0.0.1" in cmd
    assert cli.main(["cluster", "down"]) != 0
    assert "stops every Ray on this machine" in capsys.readouterr().err
