"""The calendar-axis model bench: the Cox-on-counts baseline on a tiny calendar cohort (features
against a slow loop over the MEDS rows, survival shape, td-C) and the rows it lists."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.bench import calendar as C
from ehrsurv_dist.bench.models import run_bench
from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.config import load_config
from ehrsurv_dist.constants import US_PER_YEAR
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.synth_calendar import synthesize_calendar
from ehrsurv_dist.jobspec import JobSpec

N = 240


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("calbench") / "c")
    synthesize_calendar(out, subjects=N, seed=7, shards=2)
    return out


@pytest.fixture(scope="module")
def pipe(cohort: str):  # type: ignore[no-untyped-def]
    return C.count_pipeline(C.calendar_job(), cohort)


def _slow_counts(cohort: str, vocab, sid: int, pt_us: int) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    """Counts per vocabulary code of the subject's records at or before ``pt`` (no static rows,
    no birth / death), and the age at ``pt``, by a plain loop over the MEDS rows."""
    files = sorted(glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")))
    data = pa.concat_tables([pq.read_table(f) for f in files])
    data = data.filter(pa.compute.equal(data[S.SUBJECT_ID], sid))
    t, tnull = time_us(data[S.TIME])
    codes = data[S.CODE].to_pylist()
    counts = np.zeros(vocab.size - S.NUM_SPECIAL_TOKENS, np.int64)
    birth = None
    for ti, null, code in zip(t, tnull, codes, strict=True):
        if code == S.BIRTH_CODE:
            birth = ti
            continue
        if null or code == S.DEATH_CODE or ti > pt_us:
            continue
        i = vocab.id_of(code)
        if i >= S.NUM_SPECIAL_TOKENS:
            counts[i - S.NUM_SPECIAL_TOKENS] += 1
    assert birth is not None
    return counts, (pt_us - birth) / US_PER_YEAR


def test_count_features_match_a_slow_loop(cohort: str, pipe) -> None:  # type: ignore[no-untyped-def]
    f = C.count_features(pipe, S.TRAIN_SPLIT)
    n = len(f.samples.subject_id)
    assert n > 50 and f.counts.shape == (n, pipe.vocab.size - S.NUM_SPECIAL_TOKENS)
    assert f.x.shape == (n, f.counts.shape[1] + 1)
    rng = np.random.default_rng(0)
    for i in rng.choice(n, 4, replace=False):
        counts, age = _slow_counts(
            cohort, pipe.vocab, int(f.samples.subject_id[i]), int(f.samples.prediction_us[i])
        )
        np.testing.assert_array_equal(f.counts[i], counts)
        assert f.age[i] == pytest.approx(age, abs=1e-3)
    # the outcomes are the label file's samples: death within the horizon
    lab = pq.read_table(os.path.join(cohort, "labels", "death.parquet"))
    assert set(f.samples.subject_id) <= set(lab[S.SUBJECT_ID].to_pylist())
    assert np.all((f.samples.time_days >= 0) & (f.samples.time_days <= 730))


def test_cox_counts_survival_and_scores(cohort: str, pipe) -> None:  # type: ignore[no-untyped-def]
    spec = C.calendar_job()
    ref = C.pipeline_reference(pipe, spec)
    assert ref.edges[0] == 0 and ref.edges[-1] == spec.task.horizon_days
    train = C.count_features(pipe, S.TRAIN_SPLIT)
    fit = C.fit_cox(train, C.count_features(pipe, S.TUNING_SPLIT), n_alphas=8)
    assert fit.alpha in [float(a) for a in fit.model.alphas_] and fit.tuning_c_index is not None
    held = C.count_features(pipe, S.HELD_OUT_SPLIT)
    idx = C.align(held.samples.keys(), ref.held.keys(), "test")
    x = held.x[idx]
    surv = fit.survival(x, ref.edges)
    k = len(ref.edges) - 1
    assert surv.shape == (len(ref.held.subject_id), k)
    assert np.all((surv >= 0) & (surv <= 1)) and np.all(np.diff(surv, axis=1) <= 0)
    # scikit-survival's own survival function at the edges inside its domain
    fns = fit.model.predict_survival_function(fit._z(x[:3]), alpha=fit.alpha)
    inside = ref.edges[1:] <= fns[0].domain[1]
    assert inside.sum() >= k - 1
    for row, fn in zip(surv[:3], fns, strict=True):
        np.testing.assert_allclose(row[inside], fn(ref.edges[1:][inside]), rtol=1e-9)
    # higher linear predictor, lower survival
    lp = fit.risk(x)
    assert np.all(np.diff(surv[np.argsort(lp), -1]) <= 1e-12)
    m = C.score(surv, ref, spec, n_boot=0)
    assert 0.0 <= m["c_index_td"] <= 1.0 and m["n_samples"] == len(idx)
    row = C.cox_row(pipe, ref, spec, 0, 0.0)
    assert row["name"] == "cox_counts" and 0.0 <= row["c_index_td"] <= 1.0
    assert row["n_samples"] == len(idx) and row["trainable_params"] == fit.n_params > 1


def test_oracles_on_the_held_out_samples(cohort: str, pipe) -> None:  # type: ignore[no-untyped-def]
    spec = C.calendar_job()
    ref = C.pipeline_reference(pipe, spec)
    rows = {r["name"]: r for r in C.oracle_rows(cohort, ref, spec, 0)}
    assert set(rows) == {"oracle", "oracle_frailty"}
    for r in rows.values():
        assert r["n_samples"] == len(ref.held.subject_id) and 0 <= r["c_index_td"] <= 1


def test_calendar_rows_are_listed_and_valid_jobs() -> None:
    names = C.calendar_row_names()
    assert names == [
        "oracle",
        "oracle_frailty",
        "cox_counts",
        "behrt_scratch",
        "behrt_pretrained",
        "hierarchical",
        "lstm",
    ]
    for row in C.calendar_model_rows():
        over = [*row.overrides, ("data.cohort", "/c")]
        if row.pretrained:
            over.append(("finetune.init", "/pre"))
        spec = load_config(JobSpec, C.CALENDAR_JOB, over)
        assert spec.task.axis == "calendar"
    archs = {
        load_config(JobSpec, C.CALENDAR_JOB, list(r.overrides)).model.arch: r.name
        for r in C.calendar_model_rows()
    }
    assert set(archs) == {"behrt", "hierarchical", "lstm"}


def test_cli_axis_calendar_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = build_parser()
    a = p.parse_args(
        [
            "bench",
            "models",
            "--axis",
            "calendar",
            "--out",
            "x",
            "--subjects",
            "300",
            "--epochs",
            "1",
            "--only",
            "cox_counts",
            "--only",
            "oracle",
        ]
    )
    assert (a.axis, a.subjects, a.epochs, a.only) == ("calendar", 300, 1, ["cox_counts", "oracle"])
    assert p.parse_args(["bench", "models", "--out", "x"]).axis == "visit"
    with pytest.raises(ValueError, match="unknown rows"):
        run_bench("models", str(tmp_path), axis="calendar", only=["behrt_full_pre"])
