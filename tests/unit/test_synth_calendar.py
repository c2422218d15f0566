"""The calendar-time generator: MEDS-valid, deterministic, and its truth is exact and pre-pt only."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import DAY_US
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.synth_calendar import (
    DISCHARGE_CODE,
    LABELS_DIR,
    RISK0,
    RISK_CODES,
    TRUTH_DEATH_DAYS,
    TRUTH_FOLLOWUP_DAYS,
    TRUTH_RATE,
    TRUTH_RATE_OBSERVABLE,
    CalendarParams,
    generate_calendar_block,
    log_rate_of_rows,
    observable_rate,
    oracle_survival,
    synthesize_calendar,
)
from ehrsurv_dist.data.validate import validate_cohort
from ehrsurv_dist.errors import OutputError

N = 400


def _data(cohort: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("cal") / "c")
    synthesize_calendar(out, subjects=N, seed=42, shards=3)
    return out


def _per_subject(data: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(subject [R], time µs [R], null time [R], code [R] as str objects) of every row."""
    t, tnull = time_us(data[S.TIME])
    sid = np.asarray(data[S.SUBJECT_ID].to_numpy())
    code = np.asarray(data[S.CODE].to_numpy(zero_copy_only=False), dtype=object)
    return sid, t, tnull, code


def test_same_seed_same_cohort_whatever_the_shards(tmp_path: Path, cohort: str) -> None:
    other = str(tmp_path / "one_shard")
    synthesize_calendar(other, subjects=N, seed=42, shards=1)
    assert _data(other).equals(_data(cohort))
    for f in (S.TRUTH_FILE, S.OUTCOMES_FILE, f"{LABELS_DIR}/death.parquet"):
        assert pq.read_table(os.path.join(other, f)).equals(pq.read_table(os.path.join(cohort, f)))
    b1 = generate_calendar_block(0, 50, 1, seed=43)
    b2 = generate_calendar_block(0, 50, 1, seed=42)
    assert not np.array_equal(b1.rate, b2.rate)
    with pytest.raises(OutputError, match="not empty"):
        synthesize_calendar(other, subjects=5)


def test_meds_valid_and_the_validator_passes(cohort: str) -> None:
    rep = validate_cohort(cohort)
    assert rep.ok and not rep.problems, rep.format()
    assert rep.n_subjects == N
    for f in glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")):
        t = pq.read_table(f)
        meds.DataSchema.validate(t)
        sid, tu, tnull, _ = _per_subject(t)
        key = np.where(tnull, np.iinfo(np.int64).min, tu)
        assert np.all(np.diff(sid) >= 0)
        same = sid[1:] == sid[:-1]
        assert np.all(key[1:][same] >= key[:-1][same])  # static first, then by time
    splits = pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH))
    meds.SubjectSplitSchema.validate(splits)
    assert splits.num_rows == N
    known = set(pq.read_table(os.path.join(cohort, S.CODE_METADATA_PATH))["code"].to_pylist())
    used = set(pc.unique(_data(cohort)[S.CODE]).to_pylist())
    assert used - known == {S.BIRTH_CODE, S.DEATH_CODE}
    assert 250 < len(used) < 400 and DISCHARGE_CODE in used
    with open(os.path.join(cohort, S.DATASET_METADATA_PATH)) as fh:
        meds.DatasetMetadataSchema.validate(json.load(fh))


def test_histories_deaths_and_follow_up(cohort: str) -> None:
    """Per subject: >= 180 days of history ending at a discharge (pt); nothing after a death;
    a censored subject's last record is its end of follow-up."""
    data = _data(cohort)
    sid, t, tnull, code = _per_subject(data)
    truth = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    outc = pq.read_table(os.path.join(cohort, S.OUTCOMES_FILE))
    pt, _ = time_us(truth[S.PREDICTION_TIME])
    end, _ = time_us(outc[S.OUTCOME_TIME])
    died = np.asarray(outc[S.OUTCOME_EVENT].to_numpy(zero_copy_only=False))
    fu = np.asarray(truth[TRUTH_FOLLOWUP_DAYS].to_numpy())
    dd = np.asarray(truth[TRUTH_DEATH_DAYS].to_numpy())
    ids = np.asarray(truth[S.SUBJECT_ID].to_numpy())
    i = np.searchsorted(ids, sid)
    timed = ~tnull & (code != S.BIRTH_CODE)
    first = np.full(N, np.iinfo(np.int64).max)
    np.minimum.at(first, i[timed], t[timed])
    last = np.full(N, np.iinfo(np.int64).min)
    np.maximum.at(last, i[timed], t[timed])
    n_pre = np.bincount(i[timed & (t <= pt[i])], minlength=N)
    assert np.all((pt - first) >= 180 * DAY_US)
    assert 50 <= np.median(n_pre) <= 150 and n_pre.min() >= 10
    dis = (code == DISCHARGE_CODE) & (t == pt[i])
    assert np.array_equal(np.unique(i[dis]), np.arange(N))  # pt is a discharge of its subject
    # the last record is the outcome time: death, or the end of follow-up
    assert np.array_equal(last, end)
    is_death = code == S.DEATH_CODE
    assert np.array_equal(np.bincount(i[is_death], minlength=N), died.astype(np.int64))
    assert np.all(t[is_death] == end[i[is_death]])
    assert not np.any(timed & (t > end[i]))
    assert np.array_equal(died, dd <= fu)
    span = np.where(died, dd, fu) * DAY_US
    assert np.allclose(end - pt, span, atol=1.0)
    assert 0.15 < died.mean() < 0.7


def test_rate_depends_on_the_history_before_pt_only(cohort: str) -> None:
    # other follow-up draws (codes, visits, death after pt): the same histories and rates
    a = generate_calendar_block(0, 300, 1, seed=5)
    b = generate_calendar_block(0, 300, 1, seed=5, followup_salt=1)
    assert np.array_equal(a.rate, b.rate) and np.array_equal(a.prediction_us, b.prediction_us)
    pre_a = a.row_time_us <= a.prediction_us[a.row_subject - 1]
    pre_b = b.row_time_us <= b.prediction_us[b.row_subject - 1]
    assert np.array_equal(a.row_code[pre_a], b.row_code[pre_b])
    assert not np.array_equal(a.row_code[~pre_a], b.row_code[~pre_b])
    # the truth is a function of the MEDS records at or before pt alone
    data = _data(cohort)
    labels = pq.read_table(os.path.join(cohort, LABELS_DIR, "death.parquet"))
    truth = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    want = np.asarray(truth[TRUTH_RATE_OBSERVABLE].to_numpy())
    np.testing.assert_allclose(observable_rate(data, labels), want, rtol=1e-9)
    # a risk code after pt changes nothing; the same code 20 days before pt raises the rate
    s0 = int(labels[S.SUBJECT_ID][0].as_py())
    pt0 = labels[S.PREDICTION_TIME][0].value
    extra = {
        S.SUBJECT_ID: [s0],
        S.CODE: [RISK_CODES[0][0]],
        S.NUMERIC_VALUE: pa.array([None], pa.float32()),
    }
    for shift_days, changed in ((+5, False), (-20, True)):
        row = pa.table({**extra, S.TIME: pa.array([pt0 + shift_days * DAY_US], pa.timestamp("us"))})
        more = pa.concat_tables([data, row.select(data.column_names).cast(data.schema)])
        got = observable_rate(more, labels)
        np.testing.assert_allclose(got[1:], want[1:], rtol=1e-9)
        assert (got[0] > want[0] * 1.05) == changed, (got[0], want[0])


def test_recency_age_and_interaction_pinned() -> None:
    p = CalendarParams()
    age = np.array([65.0, 65.0, 85.0, 85.0, 65.0])
    sample = np.array([0, 1, 2, 3])
    dt = np.array([20.0, 3 * 365.0, 20.0, 3 * 365.0])
    code = np.full(4, 0)
    code[:] = RISK0  # weight 1.0
    eta = log_rate_of_rows(sample, dt, code, age, p)
    r20, r3y = np.log1p(np.exp(-20 / 45)), np.log1p(np.exp(-3 * 365 / 45))
    np.testing.assert_allclose(eta[0], -8.4 + 1.4 * r20)
    np.testing.assert_allclose(eta[1], -8.4 + 1.4 * r3y)  # 3 years ago: almost nothing
    np.testing.assert_allclose(eta[2], -8.4 + 0.45 * 2 + 1.4 * r20 + 0.45 * 2 * r20)
    np.testing.assert_allclose(eta[4], -8.4)
    assert eta[0] - eta[1] > 0.65 and (eta[2] - eta[3]) - (eta[0] - eta[1]) > 0.4
    with pytest.raises(ValueError, match="at or before"):
        log_rate_of_rows(sample, -dt, code, age, p)


def test_death_times_follow_the_rates() -> None:
    b = generate_calendar_block(0, 4000, 1, seed=9)
    # the drawn T − pt times the rate is Exp(1)
    e = b.death_days * b.rate
    assert abs(e.mean() - 1.0) < 0.06 and abs(np.median(e) - np.log(2)) < 0.06
    # observed (censored) data: deaths / Σ rate · follow-up time ≈ 1 (Poisson / martingale)
    t_obs = (b.end_us - b.prediction_us) / DAY_US
    oe = b.died.sum() / np.sum(b.rate * t_obs)
    assert abs(oe - 1.0) < 4 / np.sqrt(b.died.sum()), oe
    # Kaplan-Meier of the observed data in the top rate quartile vs the mean of exp(-rate t)
    top = b.rate >= np.quantile(b.rate, 0.75)
    tt, ev = t_obs[top], b.died[top]
    order = np.argsort(tt)
    at_risk = len(tt) - np.arange(len(tt))
    km = np.cumprod(1 - ev[order] / at_risk)
    for day in (90.0, 365.0, 730.0):
        s_km = km[np.searchsorted(tt[order], day, side="right") - 1]
        s_true = np.exp(-b.rate[top] * day).mean()
        assert abs(s_km - s_true) < 0.05, (day, s_km, s_true)


def test_label_file(cohort: str) -> None:
    labels = pq.read_table(os.path.join(cohort, LABELS_DIR, "death.parquet"))
    meds.LabelSchema.validate(labels)
    assert labels.column_names == [S.SUBJECT_ID, S.PREDICTION_TIME, "boolean_value"]
    truth = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    assert labels[S.SUBJECT_ID].equals(truth[S.SUBJECT_ID])
    assert labels[S.PREDICTION_TIME].equals(truth[S.PREDICTION_TIME])
    # boolean_value = a MEDS_DEATH row within 730 days after the prediction time
    data = _data(cohort)
    death = data.filter(pc.equal(data[S.CODE], S.DEATH_CODE))
    dsid = np.asarray(death[S.SUBJECT_ID].to_numpy())
    dt, _ = time_us(death[S.TIME])
    ids = np.asarray(labels[S.SUBJECT_ID].to_numpy())
    pt, _ = time_us(labels[S.PREDICTION_TIME])
    want = np.zeros(len(ids), bool)
    j = np.searchsorted(ids, dsid)
    want[j] = (dt - pt[j]) <= 730 * DAY_US
    got = np.asarray(labels["boolean_value"].to_numpy(zero_copy_only=False))
    assert np.array_equal(got, want) and 0.1 < got.mean() < 0.5


def test_oracle_survival() -> None:
    truth = pa.table({TRUTH_RATE: [0.002, 0.0], TRUTH_RATE_OBSERVABLE: [0.001, 0.0005]})
    s = oracle_survival(truth, np.array([0.0, 30.0, 730.0]))
    assert s.shape == (2, 2)
    np.testing.assert_allclose(
        s, [[np.exp(-0.03), np.exp(-0.73)], [np.exp(-0.015), np.exp(-0.365)]]
    )
    np.testing.assert_allclose(
        oracle_survival(truth, np.array([0, 500]), observable=False), [[np.exp(-1.0)], [1.0]]
    )
    for bad in ([30.0, 60.0], [0.0, 30.0, 30.0], [0.0]):
        with pytest.raises(ValueError, match="edges_days"):
            oracle_survival(truth, np.array(bad))


def test_cli_calendar_axis(tmp_path: Path) -> None:
    from ehrsurv_dist.cli import main

    out = tmp_path / "c"
    rc = main(
        [
            "synth",
            "--axis",
            "calendar",
            "--subjects",
            "60",
            "--horizon-days",
            "365",
            "--task",
            "mort",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rep = json.loads((out / "synth_report.json").read_text())
    assert rep["subjects"] == 60 and rep["horizon_days"] == 365
    lab = pq.read_table(out / LABELS_DIR / "mort.parquet")
    tr = pq.read_table(out / S.TRUTH_FILE)
    dd = np.asarray(tr[TRUTH_DEATH_DAYS].to_numpy())
    fu = np.asarray(tr[TRUTH_FOLLOWUP_DAYS].to_numpy())
    assert np.array_equal(
        lab["boolean_value"].to_numpy(zero_copy_only=False), (dd <= fu) & (dd <= 365)
    )
    assert main(["synth", "--horizon-days", "365", "--quiet", "--out", str(tmp_path / "v")]) == 2
