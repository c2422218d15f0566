"""The long-history generator (``ehrsurv synth --preset long``): MEDS-valid, deterministic, long
lab-heavy histories, and a truth that reads the lab values before the prediction time."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.constants import DAY_US
from ehrsurv_dist.data.events import time_us
from ehrsurv_dist.data.synth_calendar import (
    LABELS_DIR,
    TRUTH_RATE,
    TRUTH_RATE_OBSERVABLE,
    calendar_summary,
    synthesize_calendar,
)
from ehrsurv_dist.data.synth_long import (
    INFORMATIVE_LABS,
    LONG_NAMES,
    LongParams,
    cohort_stats,
    generate_long_block,
    long_observable_rate,
    synthesize_long,
)
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.data.validate import validate_cohort

N = 80


def _data(cohort: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("long") / "c")
    synthesize_long(out, subjects=N, seed=42, shards=3, workers=2)
    return out


def test_same_seed_same_cohort_whatever_shards_and_workers(tmp_path: Path, cohort: str) -> None:
    other = str(tmp_path / "one")
    synthesize_long(other, subjects=N, seed=42, shards=1, workers=1)
    assert _data(other).equals(_data(cohort))
    for f in (S.TRUTH_FILE, S.OUTCOMES_FILE, f"{LABELS_DIR}/death.parquet"):
        assert pq.read_table(os.path.join(other, f)).equals(pq.read_table(os.path.join(cohort, f)))
    a, b = generate_long_block(0, 20, 1, seed=42), generate_long_block(0, 20, 1, seed=43)
    assert not np.array_equal(a.rate, b.rate)
    # --preset long on the calendar entry point is this generator
    via = str(tmp_path / "via")
    synthesize_calendar(via, preset="long", subjects=N, seed=42, shards=2)
    assert _data(via).equals(_data(cohort))


def test_meds_valid(cohort: str) -> None:
    rep = validate_cohort(cohort)
    assert rep.ok and not rep.problems, rep.format()
    assert rep.n_subjects == N
    for f in glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")):
        t = pq.read_table(f)
        meds.DataSchema.validate(t)
        assert t.schema.field(S.NUMERIC_VALUE).type == pa.float32()
    meds.LabelSchema.validate(pq.read_table(os.path.join(cohort, LABELS_DIR, "death.parquet")))
    meds.SubjectSplitSchema.validate(pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH)))
    codes = pq.read_table(os.path.join(cohort, S.CODE_METADATA_PATH))
    meds.CodeMetadataSchema.validate(codes)
    assert codes.num_rows == len(LONG_NAMES) - 2  # all but MEDS_BIRTH / MEDS_DEATH
    meta = json.loads(Path(cohort, S.DATASET_METADATA_PATH).read_text())
    meds.DatasetMetadataSchema.validate(meta)
    assert meta["dataset_name"] == "ehrsurv-synth-calendar-long"


def test_long_histories_many_codes_per_day_values_on_labs_only(cohort: str) -> None:
    d = _data(cohort)
    st = cohort_stats(cohort)
    assert st["subjects"] == N and st["rows"] == d.num_rows
    assert st["rows_per_subject_median"] >= 1000
    assert st["distinct_codes"] >= 2500  # thousands of codes from 80 subjects
    assert 0.45 < st["numeric_share"] < 0.7  # most rows are lab results
    code = np.asarray(d[S.CODE].to_numpy(zero_copy_only=False), dtype=object)
    has_value = ~np.asarray(d[S.NUMERIC_VALUE].is_null().to_numpy(zero_copy_only=False))
    is_lab = np.char.startswith(code.astype(str), "LOINC/")
    assert np.array_equal(has_value, is_lab)  # values on lab codes, and only there
    vals = np.asarray(d[S.NUMERIC_VALUE].to_numpy(zero_copy_only=False))[has_value]
    assert np.all(np.isfinite(vals)) and np.all(vals > 0)
    # admissions: tens of codes per (subject, day); the row-weighted median day holds >= 20
    t, tnull = time_us(d[S.TIME])
    sid = np.asarray(d[S.SUBJECT_ID].to_numpy())
    _, inv, cnt = np.unique(
        np.stack([sid[~tnull], t[~tnull] // DAY_US]),
        axis=1,
        return_inverse=True,
        return_counts=True,
    )
    assert np.median(cnt[inv]) >= 20
    assert cnt.max() >= 60
    # every lab code has its own value distribution: creatinine near 1, NT-proBNP in hundreds
    for name, lo, hi in (("LOINC/2160-0", 0.3, 3.0), ("LOINC/33762-6", 50.0, 2000.0)):
        med = np.median(np.asarray(d[S.NUMERIC_VALUE].to_numpy(zero_copy_only=False))[code == name])
        assert lo < med < hi, (name, med)


def test_heavy_tail_is_the_admissions_spread() -> None:
    def per_subject(p: LongParams) -> np.ndarray:
        b = generate_long_block(0, 256, 1, seed=7, params=p)
        return np.bincount(b.row_subject - 1)

    heavy = per_subject(LongParams())
    flat = per_subject(LongParams(admissions_sigma=0.0))
    # log-normal admissions (log-SD 1.2): the largest history is > 10x the median; without the
    # spread (every subject 7 admissions) it is within a few times (per-subject intensity only)
    assert heavy.max() / np.median(heavy) > 10
    assert flat.max() / np.median(flat) < 5
    assert np.median(heavy) >= 1000


def test_truth_is_recomputed_from_the_records_and_values_before_pt(cohort: str) -> None:
    d = _data(cohort)
    tr = pq.read_table(os.path.join(cohort, S.TRUTH_FILE))
    samples = tr.select([S.SUBJECT_ID, S.PREDICTION_TIME])
    exp = np.asarray(tr[TRUTH_RATE_OBSERVABLE].to_numpy())
    np.testing.assert_allclose(long_observable_rate(d, samples), exp, rtol=1e-9)
    assert np.all(np.asarray(tr[TRUTH_RATE].to_numpy()) > 0)
    # the informative lab values enter the rate: without them (beta_lab = 0) it changes ...
    no_lab = long_observable_rate(d, samples, LongParams(beta_lab=0.0))
    assert np.corrcoef(np.log(exp), np.log(no_lab))[0, 1] < 0.9
    # ... and doubling every creatinine value before pt raises every rate that saw one
    code = np.asarray(d[S.CODE].to_numpy(zero_copy_only=False), dtype=object)
    v = np.asarray(d[S.NUMERIC_VALUE].to_numpy(zero_copy_only=False), np.float32)
    v2 = np.where(code == INFORMATIVE_LABS[0][0], v * 2, v).astype(np.float32)
    d2 = d.set_column(
        d.schema.get_field_index(S.NUMERIC_VALUE),
        S.NUMERIC_VALUE,
        pa.array(v2, pa.float32(), mask=np.isnan(v2)),
    )
    assert np.all(long_observable_rate(d2, samples) > exp)
    # records after pt do not count: dropping them changes nothing
    t, tnull = time_us(d[S.TIME])
    pt_of = dict(
        zip(samples[S.SUBJECT_ID].to_pylist(), time_us(samples[S.PREDICTION_TIME])[0], strict=True)
    )
    pt = np.array([pt_of[s] for s in d[S.SUBJECT_ID].to_pylist()])
    pre = d.filter(pa.array(tnull | (t <= pt)))
    assert pre.num_rows < d.num_rows
    np.testing.assert_allclose(long_observable_rate(pre, samples), exp, rtol=1e-12)


def test_summary_and_oracle(cohort: str) -> None:
    rep = calendar_summary(cohort, 730.0)
    assert rep["subjects"] == N
    assert 0.05 < rep["true_death_within_horizon"] < 0.6
    assert rep["oracle_held_out"]["edges_days"] == [0.0, 30.0, 90.0, 180.0, 365.0, 730.0]


def test_visit_axis_refuses_the_long_preset(tmp_path: Path) -> None:
    from ehrsurv_dist.cli import main

    with pytest.raises(ValueError, match="calendar-axis"):
        synthesize(str(tmp_path / "v"), preset="long", subjects=5)
    assert main(["synth", "--preset", "long", "--axis", "visit", "--out", str(tmp_path / "x")]) == 2
    out = tmp_path / "c"
    assert (
        main(["synth", "--preset", "long", "--subjects", "30", "--quiet", "--out", str(out)]) == 0
    )
    rep = json.loads((out / "synth_report.json").read_text())
    assert rep["subjects"] == 30
    assert pq.read_table(out / LABELS_DIR / "death.parquet").num_rows == 30


def test_written_block_by_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards are streamed one row group per block (never the whole cohort at once), and at
    most ``workers + 2`` generated blocks are alive (``workers + 1`` queued, one being written)."""
    import ehrsurv_dist.data.synth_long as SL

    monkeypatch.setattr(SL, "LONG_BLOCK", 10)
    alive: list[int] = []
    live = 0
    real = SL.generate_long_block

    class Counted:
        def __del__(self) -> None:
            nonlocal live
            live -= 1

    def counted(*a: object, **k: object) -> object:
        nonlocal live
        b = real(*a, **k)  # type: ignore[arg-type]
        live += 1
        alive.append(live)
        b._counted = Counted()  # type: ignore[attr-defined]
        return b

    monkeypatch.setattr(SL, "generate_long_block", counted)
    out = str(tmp_path / "c")
    SL.synthesize_long(out, subjects=45, seed=1, shards=2, workers=2)
    groups = [
        pq.ParquetFile(f).num_row_groups
        for f in sorted(glob.glob(os.path.join(out, S.DATA_SUBDIR, "*.parquet")))
    ]
    # 5 blocks of 10 subjects over shards of 22 and 23 subjects: blocks 0-2 and 2-4
    assert groups == [3, 3]
    assert len(alive) == 5 and max(alive) <= 4
