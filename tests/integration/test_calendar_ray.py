"""The calendar axis end to end on the session's local Ray: ``ehrsurv finetune`` with
``jobs/finetune_calendar.yaml`` through the real CLI entry, ``ehrsurv predict --labels`` on a new
cohort without outcomes, and the Ray Data ingest path against the single-process one."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.constants import US_PER_DAY
from ehrsurv_dist.data.events import event_arrays
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.samples import (
    REJECT_AFTER_LAST,
    REJECT_BEFORE_BIRTH,
    TaskSpec,
    make_samples,
    read_labels,
)
from ehrsurv_dist.data.synth_calendar import synthesize_calendar

pytestmark = pytest.mark.integration

JOB = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "finetune_calendar.yaml")
HORIZON = 730.0
TINY = [
    "model.size=tiny",
    "train.epochs=1",
    "train.num_workers=1",
    "eval.n_boot=5",
    "data.batch_size=32",
    "data.max_seq_len=64",
    "task.bins.quantiles=4",
]
CALENDAR_KEYS = {
    "c_index_td",
    "c_index_harrell",
    "c_index_uno",
    "ibs",
    "brier",
    "td_auc",
    "calibration",
    "n_samples",
    "n_subjects",
    "n_events",
    "horizon_days",
    "ci",
}


def _rows(cohort: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _main(*argv: str) -> tuple[int, str]:
    from ehrsurv_dist.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny calendar cohort whose label file has three more rows: two prediction times before
    the subject's birth and one after its last record (skipped, and written to the rejects)."""
    out = str(tmp_path_factory.mktemp("cal") / "cohort")
    synthesize_calendar(out, subjects=240, seed=21, shards=3)
    t = _rows(out)
    sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    tu = np.asarray(t[S.TIME].cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    code = np.asarray(t[S.CODE].to_pylist(), dtype=object)
    subjects = np.unique(sid)
    s0, s1, s2 = (int(x) for x in subjects[:3])
    birth = {
        int(s): int(x)
        for s, x in zip(sid[code == S.BIRTH_CODE], tu[code == S.BIRTH_CODE], strict=True)
    }
    last2 = int(tu[sid == s2].max())
    path = os.path.join(out, "labels", "death.parquet")
    lab = pq.read_table(path)
    extra = pa.table(
        {
            S.SUBJECT_ID: pa.array([s0, s1, s2], pa.int64()),
            S.PREDICTION_TIME: pa.array(
                [birth[s0] - US_PER_DAY, birth[s1] - 5 * US_PER_DAY, last2 + 400 * US_PER_DAY],
                pa.int64(),
            ).cast(pa.timestamp("us")),
            "boolean_value": pa.array([False, False, False]),
        }
    )
    both = pa.concat_tables([lab, extra.cast(lab.schema)])
    both = both.sort_by([(S.SUBJECT_ID, "ascending"), (S.PREDICTION_TIME, "ascending")])
    pq.write_table(both, path)
    return out


@pytest.fixture(scope="module")
def run(cohort: str, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    out = str(tmp_path_factory.mktemp("cal") / "run")
    code, text = _main("finetune", "--config", JOB, "--cohort", cohort, "--out", out, *TINY)
    assert code == 0, text
    assert "samples=" in text  # the calendar summary lines
    return out


def test_finetune_calendar_job_through_the_cli(cohort: str, run: str) -> None:
    with open(os.path.join(run, "time_axis.json")) as f:
        axis = json.load(f)
    edges = axis["edges"]
    assert axis["axis"] == "calendar" and axis["unit"] == "day"
    assert edges[0] == 0.0 and edges[-1] == HORIZON
    assert all(b > a for a, b in zip(edges, edges[1:], strict=False))
    k = len(edges) - 1
    assert 1 <= k <= 4
    with open(os.path.join(run, "predictions", "time_axis.json")) as f:
        assert json.load(f)["edges"] == edges

    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    held = metrics[S.HELD_OUT_SPLIT]
    assert CALENDAR_KEYS <= set(held), set(held)
    assert held["horizon_days"] == HORIZON
    # eval.horizons_days of the job: scored, or skipped with a warning (outside the follow-up)
    skipped = {
        d for d in ("30", "90", "365") if any(f"horizon {d} days" in w for w in held["warnings"])
    }
    assert set(held["brier"]) == set(held["td_auc"]) == {"30", "90", "365"} - skipped
    assert "365" in held["brier"]

    pred = pq.read_table(os.path.join(run, "predictions", "predictions.parquet"))
    assert pred.schema.field(S.SUBJECT_ID).type == pa.int64()
    assert pred.schema.field(S.PREDICTION_TIME).type == pa.timestamp("us")
    assert pred.schema.field(S.TIME_DAYS).type == pa.float64()
    assert pred.schema.field(S.EVENT).type == pa.bool_()
    assert pred.schema.field("risk").type == pa.float64()
    assert pred.schema.field("survival").type == pa.list_(pa.float32())
    assert pred.schema.field("hazard").type == pa.list_(pa.float32())
    assert set(pred.column_names) == {
        S.SUBJECT_ID,
        S.SPLIT,
        S.PREDICTION_TIME,
        S.EVENT,
        S.TIME_DAYS,
        "risk",
        "hazard",
        "survival",
    }
    p = pred.to_pandas()
    h = p[p[S.SPLIT] == S.HELD_OUT_SPLIT]
    assert held["n_samples"] == len(h) > 0
    assert held["n_subjects"] == h[S.SUBJECT_ID].nunique()
    assert held["n_events"] == int(h[S.EVENT].sum())
    surv = np.stack(p["survival"].to_numpy())
    assert surv.shape == (len(p), k)
    assert (np.diff(surv, axis=1) <= 1e-6).all()
    np.testing.assert_allclose(p["risk"].to_numpy(), 1 - surv[:, -1], rtol=0, atol=1e-6)
    assert ((p[S.TIME_DAYS] >= 0) & (p[S.TIME_DAYS] <= HORIZON)).all()

    # every kept sample of the label file has one prediction row, in the subject's split
    ref = make_samples(
        event_arrays(_rows(cohort)),
        TaskSpec(
            event_codes=("MEDS_DEATH",),
            horizon_days=HORIZON,
            labels=cohort + "/labels/death.parquet",
        ),
        read_labels(os.path.join(cohort, "labels", "death.parquet")),
    )
    splits = pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH)).to_pandas()
    split_of = dict(zip(splits[S.SUBJECT_ID], splits[S.SPLIT], strict=True))
    assert (p[S.SPLIT] == p[S.SUBJECT_ID].map(split_of)).all()
    assert set(p[S.SPLIT]) == {S.TUNING_SPLIT, S.HELD_OUT_SPLIT}  # evaluate scores these two
    got = set(zip(p[S.SUBJECT_ID], p[S.PREDICTION_TIME].astype("int64"), strict=True))
    want = {
        (s, t)
        for s, t in zip(
            ref.visits.subject_id.tolist(), ref.prediction_time_us.tolist(), strict=True
        )
        if split_of[s] != S.TRAIN_SPLIT
    }
    assert got == want and len(p) == len(got)

    # the MEDS-evaluation file: the same rows; null exactly where censored before the horizon
    meds = pq.read_table(os.path.join(run, "predictions", S.MEDS_EVAL_FILE))
    assert meds.schema.field(S.PREDICTION_TIME).type == pa.timestamp("us")
    m = meds.to_pandas()
    assert len(m) == len(p)
    np.testing.assert_array_equal(m[S.SUBJECT_ID], p[S.SUBJECT_ID])
    np.testing.assert_array_equal(m[S.PREDICTION_TIME], p[S.PREDICTION_TIME])
    censored_early = (~p[S.EVENT]) & (p[S.TIME_DAYS] < HORIZON)
    bv = meds.column("boolean_value")
    np.testing.assert_array_equal(bv.is_null().to_numpy(zero_copy_only=False), censored_early)
    known = ~censored_early.to_numpy()
    np.testing.assert_array_equal(
        np.asarray(bv.to_pylist(), dtype=object)[known].astype(bool), p[S.EVENT].to_numpy()[known]
    )
    assert censored_early.any() and known.any()
    np.testing.assert_allclose(m["predicted_boolean_probability"], p["risk"], atol=1e-6)

    assert os.path.exists(os.path.join(run, "plots", "calibration_days_held_out.png"))
    assert os.path.exists(os.path.join(run, "plots", "survival_days_held_out.png"))

    # the three label rows outside the records are skipped with their reasons
    rj = pq.read_table(os.path.join(run, S.REJECTS_FILE))
    reasons = rj[S.REJECT_REASON].to_pylist()
    assert len(reasons) == sum(ref.reject_counts.values()) >= 3
    assert sum(r.startswith(REJECT_BEFORE_BIRTH) for r in reasons) == 2
    assert sum(r.startswith(REJECT_AFTER_LAST) for r in reasons) == 1
    assert all("prediction_time" in r for r in reasons)


def test_predict_with_labels_on_a_new_cohort_without_outcomes(
    run: str, tmp_path: Path, ray_local: None
) -> None:
    new = str(tmp_path / "new")
    synthesize_calendar(new, subjects=50, seed=77)
    os.remove(os.path.join(new, S.OUTCOMES_FILE))
    os.remove(os.path.join(new, S.TRUTH_FILE))
    labels = os.path.join(new, "labels", "death.parquet")
    out = str(tmp_path / "preds.parquet")
    code, text = _main("predict", run, "--cohort", new, "--labels", labels, "--out", out)
    assert code == 0, text
    t = pq.read_table(out)
    with open(os.path.join(run, "time_axis.json")) as f:
        k = len(json.load(f)["edges"]) - 1
    ref = make_samples(
        event_arrays(_rows(new)),
        TaskSpec(event_codes=("MEDS_DEATH",), horizon_days=HORIZON, labels=labels),
        read_labels(labels),
    )
    assert (
        t.num_rows
        == ref.num_samples
        == pq.read_table(labels).num_rows - sum(ref.reject_counts.values())
    )
    got = sorted(
        zip(
            t[S.SUBJECT_ID].to_pylist(),
            t[S.PREDICTION_TIME].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    want = sorted(zip(ref.visits.subject_id.tolist(), ref.prediction_time_us.tolist(), strict=True))
    assert got == want
    assert t.schema.field(S.PREDICTION_TIME).type == pa.timestamp("us")
    assert all(len(s) == k for s in t["survival"].to_pylist())
    assert not os.path.exists(os.path.join(new, S.OUTCOMES_FILE))


def _per_sample(batches: Any) -> dict[tuple[int, int], tuple[Any, ...]]:
    out: dict[tuple[int, int], tuple[Any, ...]] = {}
    for b in batches:
        n = b[S.ATTENTION_MASK].sum(1)
        for r, (s, p) in enumerate(zip(b[S.SUBJECT], b[S.PREDICTION_TIME], strict=True)):
            key = (int(s), int(p))
            assert key not in out
            out[key] = (
                int(b[S.BIN][r]),
                float(b[S.TIME_DAYS][r]),
                bool(b[S.EVENT][r]),
                float(b[S.PREDICTION_AGE][r]),
                int(b[S.LAST_VISIT][r]),
                b[S.CODES][r, : n[r]].tobytes(),
                b[S.AGES][r, : n[r]].tobytes(),
                b[S.VISIT_IDS][r, : n[r]].tobytes(),
            )
    return out


def test_ray_data_calendar_batches_equal_the_single_process_ones(
    cohort: str, ray_local: None
) -> None:
    task = TaskSpec(
        event_codes=("MEDS_DEATH",),
        horizon_days=HORIZON,
        labels=os.path.join(cohort, "labels", "death.parquet"),
    )
    data = DataConfig(cohort=cohort, batch_size=16, max_seq_len=48)
    pipe = IngestPipeline(  # caches off: the Ray fit scans (no totals cached by the first fit)
        cohort,
        data,
        task=task,
        rows_per_unit=2000,
        check_batches=-1,
        seed=4,
        validation_cache="none",
    )
    assert pipe.plan.num_units >= 2
    single = pipe.fit()
    on_ray = pipe.fit(use_ray=True)
    assert on_ray.vocab == single.vocab
    assert on_ray.stats == single.stats
    for split in S.SPLITS:
        np.testing.assert_array_equal(
            np.sort(on_ray.event_days[split]), np.sort(single.event_days[split])
        )
    assert on_ray.rejects.num_rows == single.rejects.num_rows == 3
    pipe.bin_edges = (0.0, 60.0, 200.0, 500.0, HORIZON)
    for split in (S.TRAIN_SPLIT, S.HELD_OUT_SPLIT):
        ray_b = list(pipe.iter_ray_batches(split, 1))
        one_b = list(pipe.iter_batches(split, 1))
        got, want = _per_sample(ray_b), _per_sample(one_b)
        assert got == want and len(want) > 0
        assert sorted(tuple(sorted(b[S.SUBJECT].tolist())) for b in ray_b) == sorted(
            tuple(sorted(b[S.SUBJECT].tolist())) for b in one_b
        )
