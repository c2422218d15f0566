"""The Python API (``load_model``), the scoring overrides of predict/evaluate, and scoring a new
cohort — all in this process (no Ray), on untrained tiny runs. The Ray paths and the CLI's file
against a fine-tuned run are in tests/integration/test_api_ray.py."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.errors import CohortError, ConfigError, EhrsurvError, OutputError
from ehrsurv_dist.score_overrides import check_scoring_overrides, refusal

TINY = ["model.size=tiny", "train.min_free_gb=0"]
N_SUBJECTS = 200  # the smoke preset


def _main(*argv: str) -> tuple[int, str, str]:
    from ehrsurv_dist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# --- overrides: which keys a scoring command takes ---------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        "eval.actors=2",
        "eval.n_boot=7",
        "eval.horizons_days=[30, 60]",
        "train.use_gpu=false",
        "ray.num_cpus=2",
        "data.batch_size=8",
        "data.cache=false",
        "data.drop_bad_subjects=true",
        "finetune.risk_score=horizon",
        ("eval.actors", 3),
        "eval={n_boot: 3}",
    ],
)
def test_scoring_overrides_that_do_not_change_the_model_pass(item: Any) -> None:
    check_scoring_overrides([item])


@pytest.mark.parametrize(
    ("item", "why"),
    [
        ("model.size=small", "architecture"),
        ("model.dropout=0.2", "architecture"),
        ("data.max_seq_len=64", "model's inputs"),
        ("data.granularity=hour", "model's inputs"),
        ("data.min_count=3", "vocabulary"),
        ("data.max_vocab_size=10", "vocabulary"),
        ("task.bins.edges_days=[10, 20]", "task"),
        ("task.horizon_days=30", "task"),
        ("task.labels=x.parquet", "--labels"),
        ("data.outcomes=o.parquet", "--outcomes"),
        ("data.cohort=c", "--cohort"),
        ("train.epochs=3", "training setting"),
        ("finetune.strategy=full", "training setting"),
        ("seed=3", "seed"),
        ("data={batch_size: 4}", "one by one"),
        (("model.arch", "lstm"), "architecture"),
    ],
)
def test_scoring_overrides_that_change_the_model_are_refused(item: Any, why: str) -> None:
    key = item[0] if isinstance(item, tuple) else item.partition("=")[0]
    with pytest.raises(ConfigError) as ei:
        check_scoring_overrides(["eval.n_boot=1", item])
    assert ei.value.key == key
    assert "cannot be overridden when scoring a trained run" in str(ei.value)
    assert why in str(ei.value)
    assert "\n" not in str(ei.value)


def test_refusal_reasons_match_the_allow_list() -> None:
    assert refusal("eval.n_boot") is None and refusal("eval") is None
    assert refusal("train.use_gpu") is None
    assert refusal("train.use_gpu_x") is not None  # a prefix of a name is not the name
    assert refusal("model") == "it changes the trained model's architecture"


def test_every_job_key_has_a_decision_and_the_lists_name_real_keys() -> None:
    """A key added to the job later is classified by its section (never the fallback), and the
    allow / refuse lists name keys that exist (a renamed key cannot go stale silently)."""
    from ehrsurv_dist.config import describe
    from ehrsurv_dist.jobspec import JobSpec
    from ehrsurv_dist.score_overrides import ALLOWED, REFUSED

    keys = [k for k, *_ in describe(JobSpec)]
    assert [k for k in keys if refusal(k) == "it is not a scoring setting"] == []
    allowed = [k for k in keys if refusal(k) is None]
    assert "eval.actors" in allowed and "train.use_gpu" in allowed
    assert "ray.object_store_mb" in allowed and len(allowed) == 20
    for pattern in [*ALLOWED, *(p for p, _ in REFUSED)]:
        name = pattern.rstrip(".")
        assert name in keys or any(k.startswith(name + ".") for k in keys), pattern


def test_unknown_override_keys_are_left_to_the_loader_and_its_suggestion(
    tmp_path: Path, visit_run: str
) -> None:
    from ehrsurv_dist.evaluate import load_run

    check_scoring_overrides(["eval.nboot=3"])  # not refused here: the loader names it
    with pytest.raises(ConfigError, match="unknown key") as ei:
        load_run(visit_run, ["eval.nboot=3"])
    assert ei.value.suggestion == "eval.n_boot"
    spec, _, _ = load_run(visit_run, ["eval.n_boot=7", "data.batch_size=5"])
    assert (spec.eval.n_boot, spec.data.batch_size) == (7, 5)


# --- fixtures: untrained tiny runs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The run's cohort (its outcome table moved out of it, as a ``data.outcomes=PATH`` run
    has it) and a new cohort without an outcome table."""
    from ehrsurv_dist.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("api")
    own = str(root / "own")
    synthesize(own, "smoke", seed=3, signal=3.0)
    moved = str(root / "own_outcomes.parquet")
    shutil.move(os.path.join(own, S.OUTCOMES_FILE), moved)
    new = str(root / "new")
    synthesize(new, "smoke", seed=5, signal=3.0)
    new_outcomes = str(root / "new_outcomes.parquet")
    shutil.move(os.path.join(new, S.OUTCOMES_FILE), new_outcomes)
    return {"own": own, "own_outcomes": moved, "new": new, "new_outcomes": new_outcomes}


@pytest.fixture(scope="module")
def visit_run(
    cohorts: dict[str, str], tmp_path_factory: pytest.TempPathFactory, make_untrained_run: Any
) -> str:
    run = str(tmp_path_factory.mktemp("api") / "run")
    make_untrained_run(cohorts["own"], run, [*TINY, f"data.outcomes={cohorts['own_outcomes']}"])
    return run


# --- load_model ----------------------------------------------------------------------------------


def test_load_model_attributes(visit_run: str) -> None:
    from ehrsurv_dist import load_model
    from ehrsurv_dist.data.vocab import Vocabulary

    m = load_model(visit_run)
    assert m.time_axis == "visit" and m.bin_edges_days is None
    assert m.vocab_size == Vocabulary.load(os.path.join(visit_run, "vocab.json")).size > 4
    assert m.num_parameters == sum(p.numel() for p in m.model.parameters()) > 10_000
    assert m.spec.model.size == "tiny"
    assert f"{m.num_parameters:,} parameters" in repr(m)
    with pytest.raises(ConfigError, match="model.size"):
        load_model(visit_run, ["model.size=small"])
    assert load_model(visit_run, ["eval.n_boot=3"]).spec.eval.n_boot == 3


def test_predict_of_a_data_outcomes_run_on_a_new_cohort_without_outcomes(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    """The run's outcome table names the subjects of its own cohort; predict on another cohort
    (without any outcome table) reads none, through the file path and the API alike."""
    from ehrsurv_dist import load_model
    from ehrsurv_dist.evaluate import predict_cohort

    out = str(tmp_path / "p.parquet")
    rep = predict_cohort(visit_run, cohorts["new"], out, use_ray=False)
    t = pq.read_table(out)
    assert rep.subjects == t.num_rows == N_SUBJECTS
    assert not any(t.column(S.EVENT).to_pylist())  # no outcome table: nothing is an event
    assert set(t.column(S.SPLIT).to_pylist()) == {"all"}
    got = load_model(visit_run).predict(cohorts["new"])  # 200 subjects: in this process
    assert got.schema == t.schema
    assert got.equals(t)
    assert not os.path.exists(os.path.join(cohorts["new"], S.OUTCOMES_FILE))
    df = load_model(visit_run).predict(cohorts["new"], as_pandas=True)
    assert list(df.columns) == t.column_names and len(df) == N_SUBJECTS


def test_api_predict_rows_are_the_models_hazards(visit_run: str, cohorts: dict[str, str]) -> None:
    """Every row's survival is cumprod(1 - hazard) over visits 0..last_visit, and the curves of
    ``survival()`` are those values at the visit indices."""
    from ehrsurv_dist import load_model

    m = load_model(visit_run)
    t = m.predict(cohorts["own"], use_ray=False)
    curves = m.survival(t)
    assert len(curves) == t.num_rows == N_SUBJECTS
    for (x, s), hz, lv in zip(
        curves[:30],
        t.column("hazard").to_pylist()[:30],
        t.column(S.LAST_VISIT).to_pylist()[:30],
        strict=True,
    ):
        assert len(hz) == lv + 1 == len(x) == len(s)
        np.testing.assert_array_equal(x, np.arange(lv + 1))
        np.testing.assert_allclose(s, np.cumprod(1 - np.asarray(hz, np.float64)), rtol=1e-5)
    df_curves = m.survival(t.to_pandas())
    np.testing.assert_array_equal(df_curves[3][1], curves[3][1])
    with pytest.raises(EhrsurvError, match="survival"):
        m.survival(42)


def test_auto_mode_picks_the_process_below_the_threshold(
    cohorts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ehrsurv_dist import api

    size = api.cohort_bytes(cohorts["new"])
    data = os.path.join(cohorts["new"], S.DATA_SUBDIR)
    files = [os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs]
    assert size == sum(os.path.getsize(f) for f in files if f.endswith(".parquet")) > 0
    assert api.choose_ray(cohorts["new"], None) is False
    assert api.choose_ray(cohorts["new"], True) is True
    monkeypatch.setattr(api, "IN_PROCESS_MAX_BYTES", size - 1)
    assert api.choose_ray(cohorts["new"], None) is True
    assert api.choose_ray(cohorts["new"], False) is False


def test_importing_the_package_stays_cheap_and_ray_free() -> None:
    code = (
        "import sys, ehrsurv_dist\n"
        "assert 'ehrsurv_dist.api' not in sys.modules and 'torch' not in sys.modules\n"
        "from ehrsurv_dist import load_model, TrainedModel\n"
        "assert callable(load_model) and 'ray' not in sys.modules\n"
        "try:\n    ehrsurv_dist.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert "has no attribute 'nope'" in out.stdout


# --- calendar axis ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calendar_run(
    tmp_path_factory: pytest.TempPathFactory, make_untrained_run: Any
) -> tuple[str, str]:
    """(cohort, run): a tiny calendar cohort and an untrained run on it with fixed bins."""
    from ehrsurv_dist.data.synth_calendar import synthesize_calendar

    root = tmp_path_factory.mktemp("apical")
    cohort = str(root / "cohort")
    synthesize_calendar(cohort, subjects=40, seed=11)
    run = str(root / "run")
    make_untrained_run(
        cohort,
        run,
        [
            *TINY,
            "task.axis=calendar",
            "task.labels=labels/death.parquet",
            "task.horizon_days=730",
            "task.bins.edges_days=[90, 365]",
            "data.max_seq_len=64",
        ],
    )
    return cohort, run


def test_calendar_survival_curves_start_at_one_at_day_zero(
    calendar_run: tuple[str, str], tmp_path: Path
) -> None:
    from ehrsurv_dist import load_model
    from ehrsurv_dist.evaluate import predict_cohort

    cohort, run = calendar_run
    m = load_model(run)
    assert m.time_axis == "calendar" and m.bin_edges_days == [0.0, 90.0, 365.0, 730.0]
    t = m.predict(cohort)
    out = str(tmp_path / "p.parquet")
    predict_cohort(run, cohort, out, use_ray=False)
    assert t.equals(pq.read_table(out))
    assert t.column_names[:5] == [S.SUBJECT_ID, S.SPLIT, S.PREDICTION_TIME, S.EVENT, S.TIME_DAYS]
    assert t.num_rows == pq.read_table(os.path.join(cohort, "labels", "death.parquet")).num_rows
    curves = m.survival(t)
    for (x, s), surv, risk in zip(
        curves, t.column("survival").to_pylist(), t.column("risk").to_pylist(), strict=True
    ):
        np.testing.assert_array_equal(x, [0.0, 90.0, 365.0, 730.0])
        assert s[0] == 1.0 and np.all(np.diff(s) <= 0)
        np.testing.assert_allclose(s[1:], surv, rtol=1e-6)
        assert risk == pytest.approx(1 - s[-1], abs=1e-6)
    with pytest.raises(EhrsurvError, match="bins"):
        m.survival(t.set_column(t.column_names.index("survival"), "survival", _short(t)))


def _short(t: pa.Table) -> pa.Array:
    return pa.array([s[:1] for s in t.column("survival").to_pylist()], pa.list_(pa.float32()))


# --- the CLI's overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_refuses_a_model_key_on_one_line(
    command: str, visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    extra = ["--out", str(tmp_path / ("p.parquet" if command == "predict" else "ev"))]
    code, out, err = _main(
        command, visit_run, "--cohort", cohorts["new"], *extra, "model.size=small"
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"ehrsurv {command}: config error: model.size: cannot be overridden when scoring a "
        "trained run: it changes the trained model's architecture"
    ]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_help_explains_the_overrides(command: str) -> None:
    from ehrsurv_dist.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices[command].format_help()  # type: ignore[union-attr]
    flat = " ".join(text.split())
    assert "KEY=VALUE" in flat and "eval.actors=2" in flat and "train.use_gpu" in flat
    assert "are refused" in flat


# --- evaluate on a new cohort ------------------------------------------------------------------------


def test_evaluate_a_new_cohort_with_its_outcomes(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    from sksurv.metrics import concordance_index_censored

    from ehrsurv_dist.evaluate import evaluate_run

    before = sorted(os.listdir(visit_run))
    out = str(tmp_path / "ext")
    res = evaluate_run(
        visit_run,
        None,
        0,
        use_ray=False,
        cohort=cohorts["new"],
        outcomes=cohorts["new_outcomes"],
        out=out,
    )
    assert list(res) == ["all"]
    pred = pq.read_table(os.path.join(out, "predictions", "predictions.parquet")).to_pandas()
    assert res["all"]["n_subjects"] == len(pred) == N_SUBJECTS
    outcomes = pq.read_table(cohorts["new_outcomes"]).to_pandas().set_index(S.SUBJECT_ID)
    ev = pred[S.EVENT].to_numpy()
    np.testing.assert_array_equal(ev, outcomes.loc[pred[S.SUBJECT_ID], "event"].to_numpy())
    assert res["all"]["n_events"] == int(ev.sum()) > 0
    time = pred[S.LAST_VISIT].to_numpy() + 0.5 * ev
    want = concordance_index_censored(ev, time, pred["risk"].to_numpy())[0]
    assert res["all"]["c_index_harrell"] == pytest.approx(want, abs=1e-12)
    assert sorted(os.listdir(os.path.join(out, "plots"))) == [
        "calibration_all.png",
        "km_risk_tertiles_all.png",
        "risk_vs_length_all.png",
        "survival_all.png",
    ]
    assert sorted(os.listdir(visit_run)) == before  # nothing written into the run


def test_evaluate_a_new_cohort_on_its_own_splits(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    from ehrsurv_dist.evaluate import evaluate_run

    res = evaluate_run(
        visit_run,
        (S.HELD_OUT_SPLIT,),
        0,
        use_ray=False,
        cohort=cohorts["new"],
        outcomes=cohorts["new_outcomes"],
        out=str(tmp_path / "ext"),
    )
    splits = pq.read_table(os.path.join(cohorts["new"], S.SUBJECT_SPLITS_PATH)).to_pandas()
    assert list(res) == [S.HELD_OUT_SPLIT]
    assert res[S.HELD_OUT_SPLIT]["n_subjects"] == int((splits[S.SPLIT] == S.HELD_OUT_SPLIT).sum())


def test_evaluate_a_new_cohort_refuses_what_it_cannot_do(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    from ehrsurv_dist.evaluate import evaluate_run

    new, outc = cohorts["new"], cohorts["new_outcomes"]
    with pytest.raises(OutputError, match="needs --out"):
        evaluate_run(visit_run, None, use_ray=False, cohort=new, outcomes=outc)
    with pytest.raises(OutputError, match="is the run directory"):
        evaluate_run(visit_run, None, use_ray=False, cohort=new, outcomes=outc, out=visit_run)
    with pytest.raises(EhrsurvError, match="give its --cohort"):
        evaluate_run(visit_run, None, use_ray=False, outcomes=outc)
    with pytest.raises(EhrsurvError, match="--labels needs a calendar-axis run"):
        evaluate_run(
            visit_run, None, use_ray=False, cohort=new, labels=outc, out=str(tmp_path / "x")
        )
    nosplits = str(tmp_path / "nosplits")
    shutil.copytree(new, nosplits)
    os.remove(os.path.join(nosplits, S.SUBJECT_SPLITS_PATH))
    with pytest.raises(CohortError, match="--split needs the cohort's own splits"):
        evaluate_run(
            visit_run,
            (S.HELD_OUT_SPLIT,),
            use_ray=False,
            cohort=nosplits,
            outcomes=outc,
            out=str(tmp_path / "y"),
        )
    # a new cohort without an outcome table cannot be scored: the error names the file
    with pytest.raises(CohortError, match=S.OUTCOMES_FILE):
        evaluate_run(visit_run, None, use_ray=False, cohort=new, out=str(tmp_path / "z"))
    assert not os.path.exists(os.path.join(visit_run, "predictions"))


def test_cli_takes_overrides_after_the_options_and_refuses_other_strays(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    from ehrsurv_dist.cli import build_parser, main

    argv = ["predict", visit_run, "eval.n_boot=1", "--cohort", "c", "--out", "o", "eval.actors=2"]
    args, extra = build_parser().parse_known_args(argv)
    assert (args.overrides, extra) == (["eval.n_boot=1"], ["eval.actors=2"])
    with pytest.raises(SystemExit) as ei:
        main(["predict", visit_run, "--cohort", cohorts["new"], "--out", "o.parquet", "stray"])
    assert ei.value.code == 2
    with pytest.raises(SystemExit):
        main(["predict", visit_run, "--cohort", cohorts["new"], "--out", "o.parquet", "--bad=1"])


def test_evaluate_the_runs_own_cohort_into_another_folder(
    visit_run: str, cohorts: dict[str, str], tmp_path: Path
) -> None:
    """Without --cohort, --out takes the scores of the run's own splits elsewhere (e.g. with
    other eval.* overrides), but never into another run's directory."""
    from ehrsurv_dist.evaluate import evaluate_run

    before = sorted(os.listdir(visit_run))
    out = str(tmp_path / "again")
    res = evaluate_run(visit_run, (S.HELD_OUT_SPLIT,), 0, use_ray=False, out=out)
    splits = pq.read_table(os.path.join(cohorts["own"], S.SUBJECT_SPLITS_PATH)).to_pandas()
    n_held = int((splits[S.SPLIT] == S.HELD_OUT_SPLIT).sum())
    assert res[S.HELD_OUT_SPLIT]["n_subjects"] == n_held
    pred = pq.read_table(os.path.join(out, "predictions", "predictions.parquet"))
    assert pred.num_rows == n_held
    assert sorted(os.listdir(visit_run)) == before
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.yaml").write_text("name: x\n")
    with pytest.raises(OutputError, match="another run's directory"):
        evaluate_run(visit_run, (S.HELD_OUT_SPLIT,), 0, use_ray=False, out=str(other))
    with pytest.raises(OutputError, match="another run's directory"):
        evaluate_run(visit_run, None, use_ray=False, cohort=cohorts["new"], out=str(other))


def test_summary_of_a_new_cohort_names_it() -> None:
    from ehrsurv_dist.cli.jobs import summary

    no_train = {"mode": "finetune", "best_epoch": -1, "best_val_score": float("nan")}
    m = {"n_subjects": 12, "n_events": 3, "c_index_td": 0.61, "c_index_td_ci": [0.5, 0.7]}
    text = summary({"train": no_train, "all": m}, "ext", "run R scored on cohort C")
    lines = text.splitlines()
    assert lines[0] == "run R scored on cohort C"
    assert lines[1].startswith("  all       n=   12 events=    3  td-C 0.6100 [0.5000, 0.7000]")
    assert lines[-1] == "metrics: ext/metrics.json   plots: ext/plots/"


def test_scoring_resolves_use_gpu_auto_from_the_cluster() -> None:
    """``train.use_gpu=auto`` given to predict/evaluate: GPUs only when the cluster has them
    (the string 'auto' must not count as true)."""
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.evaluate import scores_on_gpu
    from ehrsurv_dist.jobspec import JobSpec

    auto = load_config(JobSpec, None, ["train.use_gpu=auto"])
    assert scores_on_gpu(auto, {"CPU": 8.0}) is False
    assert scores_on_gpu(auto, {"CPU": 8.0, "GPU": 2.0}) is True
    off = load_config(JobSpec, None, ["train.use_gpu=false"])
    assert scores_on_gpu(off, {"CPU": 8.0, "GPU": 2.0}) is False
