"""The calendar axis wired end to end, without Ray: the job's task section and CLI shortcuts,
the blocks' extra columns, the single-process pipeline against ``make_samples``, the task checks
of ``validate_cohort``, no leakage of anything after the prediction time into a bidirectional
model, and the loss a calendar ``SurvivalTask`` uses."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist import task as T
from ehrsurv_dist.bins import bin_index
from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.cli.args import job_overrides
from ehrsurv_dist.config import DataConfig, describe, load_config
from ehrsurv_dist.constants import US_PER_DAY
from ehrsurv_dist.data.blocks import flat_from_arrow, flat_to_arrow, hier_from_arrow, hier_to_arrow
from ehrsurv_dist.data.encode import encode_unit, read_unit
from ehrsurv_dist.data.events import OutcomeArrays, event_arrays
from ehrsurv_dist.data.layouts import FlatTokens, VisitTokens
from ehrsurv_dist.data.meds_read import read_outcomes
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.samples import (
    REJECT_CENSORED_BEFORE,
    REJECT_NO_OUTCOME_ROW,
    REJECT_NOT_AT_RISK,
    TaskSpec,
    make_samples,
    read_labels,
)
from ehrsurv_dist.data.synth_calendar import synthesize_calendar
from ehrsurv_dist.data.validate import validate_cohort
from ehrsurv_dist.errors import ConfigError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.models import behrt_tiny, build_survival_model, select_inputs
from ehrsurv_dist.objectives import calendar_nll, discrete_time_nll
from ehrsurv_dist.ragged import Ragged
from ehrsurv_dist.testing import write_cohort
from ehrsurv_dist.train.tasks import SurvivalTask

N_SUBJECTS = 60
HORIZON = 730.0
EDGES = (0.0, 30.0, 90.0, 365.0, HORIZON)
TS = pa.timestamp("us")

# --- job config and CLI shortcuts --------------------------------------------------------------


def _load(*overrides: Any) -> JobSpec:
    return load_config(JobSpec, None, list(overrides))


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        (["task.axis=calendar"], "task.labels", "exactly one source of prediction times"),
        (
            ["task.axis=calendar", "task.labels=l.parquet", "task.prediction_times.at_code=A"],
            "task.labels",
            "exactly one source",
        ),
        (
            [
                "task.axis=calendar",
                "task.prediction_times.at_code=A",
                "task.prediction_times.days_after_first_record=30",
            ],
            "task.prediction_times.at_code",
            "not both",
        ),
        (
            ["task.axis=calendar", "task.labels=l", "task.horizon_days=0"],
            "task.horizon_days",
            "> 0",
        ),
        (
            ["task.axis=calendar", "task.labels=l", "task.bins.edges_days=[90, 30]"],
            "task.bins.edges_days",
            "increase",
        ),
        (
            ["task.axis=calendar", "task.labels=l", "task.bins.edges_days=[30, 30]"],
            "task.bins.edges_days",
            "increase",
        ),
        (
            ["task.axis=calendar", "task.labels=l", "task.bins.edges_days=[30, 800]"],
            "task.bins.edges_days",
            "800",
        ),
        (
            # edges that fit the file's horizon but not a shorter one from the command line
            ["task.axis=calendar", "task.labels=l", "task.bins.edges_days=[30, 400]"]
            + ["task.horizon_days=365"],
            "task.bins.edges_days",
            "400",
        ),
    ],
)
def test_bad_task_config_is_one_line_naming_the_key(
    overrides: list[str], key: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as ei:
        _load(*overrides)
    err = ei.value
    assert err.key == key
    assert "\n" not in str(err) and key in str(err) and needle in str(err)


def test_good_task_config_and_its_edges() -> None:
    spec = _load("task.axis=calendar", "task.labels=l", "task.bins.edges_days=[30, 90]")
    assert spec.task.edges() == [0.0, 30.0, 90.0, HORIZON]
    # 0 and the horizon may be given; they are not doubled
    spec = _load("task.axis=calendar", "task.labels=l", "task.bins.edges_days=[0, 30, 730]")
    assert spec.task.edges() == [0.0, 30.0, HORIZON]
    # the visit axis ignores the missing source of prediction times
    assert _load().task.axis == "visit"


def _shortcuts(*argv: str, command: str = "finetune") -> list[Any]:
    return job_overrides(build_parser().parse_args([command, "--out", "RUN", *argv]))


@pytest.mark.parametrize("command", ["finetune", "tune"])
def test_cli_shortcuts_map_to_task_keys_and_select_the_calendar_axis(command: str) -> None:
    ov = _shortcuts(
        "--labels",
        "labels/x.parquet",
        "--event-code",
        "MEDS_DEATH",
        "--event-code",
        "DX//I21//*",
        "--horizon-days",
        "365",
        "train.epochs=1",
        command=command,
    )
    assert ov[0] == "train.epochs=1"  # the user's overrides first
    pairs: dict[str, Any] = dict(x for x in ov if isinstance(x, tuple))
    assert pairs == {
        "task.axis": "calendar",
        "task.labels": "labels/x.parquet",
        "task.event_codes": ["MEDS_DEATH", "DX//I21//*"],
        "task.horizon_days": 365.0,
    }
    spec = _load(*ov)
    assert spec.task.axis == "calendar"
    assert spec.task.labels == "labels/x.parquet"
    assert spec.task.event_codes == ["MEDS_DEATH", "DX//I21//*"]
    assert spec.task.horizon_days == 365.0
    # any one shortcut selects the calendar axis
    for argv in (["--labels", "l.parquet"], ["--event-code", "X"], ["--horizon-days", "30"]):
        assert ("task.axis", "calendar") in _shortcuts(*argv, command=command)
    # none: the visit axis, nothing added
    assert _shortcuts("train.epochs=1", command=command) == ["train.epochs=1"]


def test_cli_shortcut_without_a_source_of_prediction_times_is_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        _load(*_shortcuts("--horizon-days", "30"))
    assert ei.value.key == "task.labels"
    with pytest.raises(ConfigError) as ei:
        _load(*_shortcuts("--labels", "l.parquet", "--horizon-days", "0"))
    assert ei.value.key == "task.horizon_days"


# --- a tiny synthetic calendar cohort with several samples per subject ------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("calwire") / "cohort")
    synthesize_calendar(out, subjects=N_SUBJECTS, seed=11)
    return out


def _all_rows(cohort: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(cohort, S.DATA_SUBDIR, "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


@pytest.fixture(scope="module")
def multi_labels(cohort: str) -> str:
    """The cohort's label file with two more prediction times per subject (half a year before,
    and 100 days after, its own): several samples per subject, some of them rejected."""
    lab = pq.read_table(os.path.join(cohort, "labels", "death.parquet"))
    sid = np.asarray(lab[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    pt = np.asarray(lab[S.PREDICTION_TIME].cast(pa.int64()).to_numpy(), dtype=np.int64)
    sids = np.concatenate([sid, sid, sid])
    pts = np.concatenate([pt, pt - 180 * US_PER_DAY, pt + 100 * US_PER_DAY])
    path = os.path.join(os.path.dirname(cohort), "multi.parquet")
    pq.write_table(
        pa.table({S.SUBJECT_ID: pa.array(sids), S.PREDICTION_TIME: pa.array(pts).cast(TS)}), path
    )
    return path


def _task(labels: str, **kw: Any) -> TaskSpec:
    return TaskSpec(event_codes=("MEDS_DEATH",), horizon_days=HORIZON, labels=labels, **kw)


def _collect(batches: Iterator[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in b.items()} for b in batches]


def _splits(cohort: str) -> dict[int, str]:
    t = pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH))
    return dict(zip(t[S.SUBJECT_ID].to_pylist(), t[S.SPLIT].to_pylist(), strict=True))


def test_single_process_batches_carry_the_samples_and_their_bins(
    cohort: str, multi_labels: str
) -> None:
    task = _task(multi_labels)
    data = DataConfig(cohort=cohort, batch_size=8, max_seq_len=48)
    pipe = IngestPipeline(cohort, data, task=task, check_batches=-1)
    fit = pipe.fit()
    pipe.bin_edges = EDGES

    # the reference: make_samples on every row of the cohort at once
    ref = make_samples(event_arrays(_all_rows(cohort)), task, read_labels(multi_labels))
    assert ref.num_samples > N_SUBJECTS  # several samples per subject
    assert sum(ref.reject_counts.values()) > 0  # ... and some rejected
    ref_sid = np.asarray(ref.visits.subject_id, dtype=np.int64)
    expected = {
        (int(s), int(p)): (float(d), bool(e))
        for s, p, d, e in zip(
            ref_sid, ref.prediction_time_us, ref.time_days, ref.visits.event, strict=True
        )
    }
    split_of = _splits(cohort)

    got: dict[tuple[int, int], tuple[float, bool]] = {}
    split_of_sample: dict[int, set[str]] = {}
    for split in S.SPLITS:
        for b in _collect(pipe.iter_batches(split)):
            for f in S.CALENDAR_FIELDS:
                assert b[f.name].dtype == f.dtype and b[f.name].shape == b[S.SUBJECT].shape
            np.testing.assert_array_equal(
                b[S.BIN], bin_index(b[S.TIME_DAYS], b[S.EVENT], np.asarray(EDGES))
            )
            assert (b[S.TIME_DAYS] >= 0).all() and (b[S.TIME_DAYS] <= HORIZON).all()
            for s, p, d, e in zip(
                b[S.SUBJECT], b[S.PREDICTION_TIME], b[S.TIME_DAYS], b[S.EVENT], strict=True
            ):
                key = (int(s), int(p))
                assert key not in got  # each sample once
                got[key] = (float(d), bool(e))
                split_of_sample.setdefault(int(s), set()).add(split)
    assert got == expected
    # all samples of a subject are in one split: the cohort's split of that subject
    assert all(v == {split_of[s]} for s, v in split_of_sample.items())
    assert {S.TRAIN_SPLIT, S.TUNING_SPLIT, S.HELD_OUT_SPLIT} <= set(split_of.values())

    # the quantile bins are fitted on the train split's event days (kept to the minute)
    train = np.array([split_of[int(s)] == S.TRAIN_SPLIT for s in ref_sid])
    want = np.sort(ref.time_days[train & ref.visits.event])
    days = np.sort(np.asarray(fit.event_days[S.TRAIN_SPLIT], dtype=np.float64))
    assert len(want) > 0
    np.testing.assert_allclose(days, want, rtol=0, atol=0.5 / 1440 + 1e-9)
    assert fit.stats[S.TRAIN_SPLIT]["events"] == len(want)
    assert fit.stats[S.TRAIN_SPLIT]["subjects"] == int(train.sum())  # samples, on this axis
    # the rejects name their reason and prediction time
    assert fit.rejects.num_rows == sum(ref.reject_counts.values())
    assert all("prediction_time" in r for r in fit.rejects[S.REJECT_REASON].to_pylist())


def test_without_bin_edges_batches_have_no_bin(cohort: str) -> None:
    path = os.path.join(cohort, "labels", "death.parquet")
    pipe = IngestPipeline(cohort, DataConfig(cohort=cohort, batch_size=16), task=_task(path))
    pipe.fit()
    b = next(iter(pipe.iter_batches(S.TRAIN_SPLIT)))
    assert S.BIN not in b and S.TIME_DAYS in b


# --- blocks round trip --------------------------------------------------------------------------


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, (where, a.dtype, b)
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, Ragged):
        _assert_same(a.offsets, b.offsets, where + ".offsets")
        _assert_same(a.values, b.values, where + ".values")
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a), set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k}]")
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert a == b, where


def _unit_tokens(cohort: str, layout: Any, task: TaskSpec | None) -> FlatTokens | VisitTokens:
    pipe = IngestPipeline(
        cohort, DataConfig(cohort=cohort, max_seq_len=40), layout=layout, task=task
    )
    pipe.fit()
    assert pipe.vocab is not None
    unit = pipe.plan.units[0]
    return encode_unit(read_unit(unit, cohort), pipe.spec, pipe.vocab, None)


VISIT_AXIS_COLUMNS = {
    "flat": {"unit", "unit_size", S.SUBJECT_ID, S.EVENT, S.LAST_VISIT, "truncated"}
    | {S.CODES, S.AGES, S.VISIT_IDS},
    "hierarchical": {"unit", "unit_size", S.SUBJECT_ID, S.EVENT, S.LAST_VISIT, "truncated"}
    | {S.AGES, S.TIME_DELTAS, "visit_sizes", S.CODES},
}
CODECS: dict[str, tuple[Any, Any]] = {
    "flat": (flat_to_arrow, flat_from_arrow),
    "hierarchical": (hier_to_arrow, hier_from_arrow),
}


@pytest.mark.parametrize("layout", ["flat", "hierarchical"])
def test_calendar_blocks_round_trip_with_their_extra_columns(
    cohort: str, multi_labels: str, layout: str
) -> None:
    to_arrow, from_arrow = CODECS[layout]
    tokens = _unit_tokens(cohort, layout, _task(multi_labels))
    assert set(tokens.extra) == {S.PREDICTION_TIME, S.TIME_DAYS, S.PREDICTION_AGE}
    assert len(tokens.subject_id) > N_SUBJECTS
    table = to_arrow(tokens, 7)
    assert set(table.column_names) == VISIT_AXIS_COLUMNS[layout] | set(tokens.extra)
    assert table[S.PREDICTION_TIME].type == pa.int64()
    assert table[S.TIME_DAYS].type == pa.float64()
    assert table[S.PREDICTION_AGE].type == pa.float32()
    _assert_same(from_arrow(table), tokens)
    # any slice (Ray cuts blocks between rows) keeps each row's extra values
    lo, hi = 3, len(tokens.subject_id) - 5
    part = from_arrow(table.slice(lo, hi - lo))
    for name, values in tokens.extra.items():
        _assert_same(part.extra[name], values[lo:hi], name)
    _assert_same(part.subject_id, tokens.subject_id[lo:hi])


@pytest.mark.parametrize("layout", ["flat", "hierarchical"])
def test_visit_axis_blocks_have_no_extra_columns(tmp_path: Path, layout: str) -> None:
    rows = [
        (s, f"2020-01-{d:02d}", c)
        for s in range(1, 7)
        for d, c in ((1, "MEDS_BIRTH"), (2, "A"), (2, "B"), (5, "C"))
    ]
    c = write_cohort(tmp_path / "v", rows, [(s, s % 2 == 0, "2020-01-05") for s in range(1, 7)])
    tokens = _unit_tokens(c, layout, None)
    assert tokens.extra == {}
    to_arrow, from_arrow = CODECS[layout]
    table = to_arrow(tokens, 0)
    assert set(table.column_names) == VISIT_AXIS_COLUMNS[layout]
    _assert_same(from_arrow(table), tokens)


# --- validation of the task ---------------------------------------------------------------------


def _label_file(path: Path, rows: list[tuple[int, int]]) -> str:
    pq.write_table(
        pa.table(
            {
                S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
                S.PREDICTION_TIME: pa.array([r[1] for r in rows], pa.int64()).cast(TS),
            }
        ),
        path,
    )
    return str(path)


def _facts(cohort: str) -> tuple[np.ndarray, dict[int, int], dict[int, int]]:
    """(subjects, birth µs per subject, last record µs per subject)."""
    t = _all_rows(cohort)
    sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    tu = t[S.TIME].cast(pa.int64()).to_numpy(zero_copy_only=False)
    code = np.asarray(t[S.CODE].to_pylist(), dtype=object)
    ok = ~np.isnan(np.asarray(tu, dtype=np.float64))
    tu = np.where(ok, tu, 0).astype(np.int64)
    birth = {
        int(s): int(x)
        for s, x in zip(sid[code == S.BIRTH_CODE], tu[code == S.BIRTH_CODE], strict=True)
    }
    last: dict[int, int] = {}
    for s, x in zip(sid[ok], tu[ok], strict=True):
        last[int(s)] = max(last.get(int(s), x), int(x))
    return np.unique(sid), birth, last


def test_validate_label_rows_of_unknown_subjects_are_fatal(cohort: str, tmp_path: Path) -> None:
    subjects, birth, last = _facts(cohort)
    s0 = int(subjects[0])
    path = _label_file(
        tmp_path / "l.parquet", [(s0, last[s0] - US_PER_DAY), (987654, 0), (987655, 0)]
    )
    rep = validate_cohort(cohort, task=_task(path))
    assert rep.fatal and not rep.ok
    [err] = rep.errors
    assert "987654" in err.line() and "987655" in err.line() and "l.parquet" in err.line()


def test_validate_event_code_that_never_occurs(cohort: str) -> None:
    path = os.path.join(cohort, "labels", "death.parquet")
    task = TaskSpec(event_codes=("MEDS_DEATH", "NEVER//SEEN"), horizon_days=30, labels=path)
    rep = validate_cohort(cohort, task=task, require_outcomes=True)
    assert rep.fatal
    [err] = rep.errors
    assert "NEVER//SEEN" in err.line() and "task.event_codes" in err.line()
    assert "MEDS_DEATH" not in err.message  # the code that occurs is not named
    rep = validate_cohort(cohort, task=task, require_outcomes=False)
    assert rep.ok
    assert any("NEVER//SEEN" in w.line() for w in rep.warnings)
    # a family that matches nothing, too
    fam = TaskSpec(event_codes=("NEVER//*",), horizon_days=30, labels=path)
    assert validate_cohort(cohort, task=fam, require_outcomes=True).fatal


@pytest.mark.parametrize(
    "table",
    [
        pa.table({S.SUBJECT_ID: pa.array([1], pa.int64()), "time": pa.array([0]).cast(TS)}),
        pa.table({S.SUBJECT_ID: pa.array(["1"]), S.PREDICTION_TIME: pa.array([0]).cast(TS)}),
        pa.table({S.SUBJECT_ID: pa.array([1], pa.int64()), S.PREDICTION_TIME: pa.array(["x"])}),
    ],
    ids=["no_prediction_time", "string_subject", "string_time"],
)
def test_validate_label_file_with_the_wrong_schema_is_fatal(
    cohort: str, tmp_path: Path, table: pa.Table
) -> None:
    path = str(tmp_path / "bad_labels.parquet")
    pq.write_table(table, path)
    rep = validate_cohort(cohort, task=_task(path))
    assert rep.fatal
    assert any("bad_labels.parquet" in e.line() for e in rep.errors), rep.format()


def test_validate_prediction_times_before_birth_or_after_last_record_warn(
    cohort: str, tmp_path: Path
) -> None:
    subjects, birth, last = _facts(cohort)
    s = [int(x) for x in subjects[:5]]
    rows = [
        (s[0], birth[s[0]] - US_PER_DAY),  # before birth
        (s[1], birth[s[1]] - 10 * US_PER_DAY),  # before birth
        (s[2], last[s[2]] + US_PER_DAY),  # after the last record
        (s[3], last[s[3]] - US_PER_DAY),  # fine
        (s[4], last[s[4]]),  # at the last record: fine (inclusive)
    ]
    rep = validate_cohort(cohort, task=_task(_label_file(tmp_path / "w.parquet", rows)))
    assert rep.ok, rep.format()
    by = {w.check: w for w in rep.warnings}
    assert by["prediction_before_birth"].count == 2
    assert set(by["prediction_before_birth"].subjects) == {s[0], s[1]}
    assert by["prediction_after_last_record"].count == 1
    assert by["prediction_after_last_record"].subjects == [s[2]]


# --- task.outcomes: an explicit outcome table -------------------------------------------------


def _samples(su: Any) -> dict[tuple[int, int], tuple[float, bool]]:
    return {
        (int(s), int(p)): (float(d), bool(e))
        for s, p, d, e in zip(
            su.visits.subject_id, su.prediction_time_us, su.time_days, su.visits.event, strict=True
        )
    }


def test_task_outcomes_config_and_its_path(cohort: str, tmp_path: Path) -> None:
    base = ("task.axis=calendar", "task.labels=labels/death.parquet", ("data.cohort", cohort))
    spec = _load(*base, "task.outcomes=outcomes.parquet")
    assert spec.task.outcomes == "outcomes.parquet"
    # a relative path is looked up in the cohort first, as task.labels
    task = T.task_spec(spec)
    assert task is not None
    assert task.outcomes == os.path.abspath(os.path.join(cohort, S.OUTCOMES_FILE))
    other = tmp_path / "elsewhere.parquet"
    pq.write_table(pq.read_table(os.path.join(cohort, S.OUTCOMES_FILE)), other)
    task = T.task_spec(_load(*base, ("task.outcomes", str(other))))
    assert task is not None and task.outcomes == str(other)
    with pytest.raises(ConfigError) as ei:
        T.task_spec(_load(*base, "task.outcomes=nope.parquet"))
    assert ei.value.key == "task.outcomes" and "nope.parquet" in str(ei.value)
    # off by default; refused on the visit axis, which reads data.outcomes
    assert _load(*base).task.outcomes is None
    task = T.task_spec(_load(*base))
    assert task is not None and task.outcomes is None
    with pytest.raises(ConfigError) as ei:
        _load("task.outcomes=o.parquet")
    assert ei.value.key == "task.outcomes" and "data.outcomes" in str(ei.value)
    # it has help text saying that it replaces the event codes
    rows = {r[0]: r for r in describe(JobSpec)}
    assert "event_codes" in rows["task.outcomes"][3]
    assert "task.outcomes" in rows["task.event_codes"][3]


def _changed_outcomes(cohort: str, path: Path) -> str:
    """The cohort's outcome table with some subjects dropped, some censored earlier (a year
    before their last record) and some events moved to the prediction time of the cohort's
    label file, so that samples lose their row, are censored before their prediction time or
    are not at risk."""
    t = pq.read_table(os.path.join(cohort, S.OUTCOMES_FILE))
    sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
    ev = np.asarray(t[S.OUTCOME_EVENT].to_numpy(zero_copy_only=False), dtype=bool)
    tu = np.array(t[S.OUTCOME_TIME].cast(pa.int64()).to_numpy(), dtype=np.int64)
    early = np.flatnonzero(~ev)[:8]
    tu[early] -= 365 * US_PER_DAY
    lab = pq.read_table(os.path.join(cohort, "labels", "death.parquet"))
    lab_sid = lab[S.SUBJECT_ID].to_pylist()
    lab_pt = dict(zip(lab_sid, lab[S.PREDICTION_TIME].cast(pa.int64()).to_pylist(), strict=True))
    for i in np.flatnonzero(ev)[3:6]:  # an event at the prediction time: not at risk
        tu[i] = lab_pt[int(sid[i])]
    keep = np.ones(len(sid), bool)
    keep[np.flatnonzero(ev)[:3]] = False
    keep[np.flatnonzero(~ev)[-3:]] = False
    pq.write_table(
        pa.table(
            {
                S.SUBJECT_ID: pa.array(sid[keep]),
                S.OUTCOME_EVENT: pa.array(ev[keep]),
                S.OUTCOME_TIME: pa.array(tu[keep]).cast(TS),
            }
        ),
        path,
    )
    return str(path)


def test_pipeline_reads_task_outcomes_instead_of_event_codes(
    cohort: str, multi_labels: str, tmp_path: Path
) -> None:
    ev, labels = event_arrays(_all_rows(cohort)), read_labels(multi_labels)
    # the synthetic cohort's table (death, else censoring at the last record) states what the
    # MEDS_DEATH code does: the same samples and outcomes, though the event code is another
    own = os.path.join(cohort, S.OUTCOMES_FILE)
    by_code = make_samples(ev, _task(multi_labels), labels)
    task = TaskSpec(("NOT//A//CODE",), HORIZON, labels=multi_labels, outcomes=own)
    by_table = make_samples(ev, task, labels, "day", OutcomeArrays.from_table(read_outcomes(own)))
    assert _samples(by_table) == _samples(by_code) and by_code.visits.event.any()
    assert by_table.reject_counts == by_code.reject_counts

    # a changed table, through the single-process pipeline (each unit reads it once)
    path = _changed_outcomes(cohort, tmp_path / "changed.parquet")
    task = TaskSpec(("MEDS_DEATH",), HORIZON, labels=multi_labels, outcomes=path)
    ref = make_samples(ev, task, labels, "day", OutcomeArrays.from_table(read_outcomes(path)))
    for r in (REJECT_NO_OUTCOME_ROW, REJECT_CENSORED_BEFORE, REJECT_NOT_AT_RISK):
        assert ref.reject_counts[r] > 0, r
    assert _samples(ref) != _samples(by_code)
    pipe = IngestPipeline(
        cohort, DataConfig(cohort=cohort, batch_size=8), task=task, check_batches=-1
    )
    fit = pipe.fit()
    got: dict[tuple[int, int], tuple[float, bool]] = {}
    for split in S.SPLITS:
        for b in _collect(pipe.iter_batches(split)):
            for s, p, d, e in zip(
                b[S.SUBJECT], b[S.PREDICTION_TIME], b[S.TIME_DAYS], b[S.EVENT], strict=True
            ):
                got[(int(s), int(p))] = (float(d), bool(e))
    assert got == _samples(ref)
    reasons = fit.rejects[S.REJECT_REASON].to_pylist()
    assert len(reasons) == sum(ref.reject_counts.values())
    assert (
        sum(r.startswith(REJECT_NO_OUTCOME_ROW) for r in reasons)
        == ref.reject_counts[REJECT_NO_OUTCOME_ROW]
    )
    assert (
        sum(r.startswith(REJECT_CENSORED_BEFORE) for r in reasons)
        == ref.reject_counts[REJECT_CENSORED_BEFORE]
    )


def _outcome_file(path: Path, rows: list[tuple[int, bool, int]]) -> str:
    pq.write_table(
        pa.table(
            {
                S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
                S.OUTCOME_EVENT: pa.array([r[1] for r in rows], pa.bool_()),
                S.OUTCOME_TIME: pa.array([r[2] for r in rows], pa.int64()).cast(TS),
            }
        ),
        path,
    )
    return str(path)


def test_validate_task_outcomes_instead_of_event_codes(cohort: str, tmp_path: Path) -> None:
    labels = os.path.join(cohort, "labels", "death.parquet")
    own = os.path.join(cohort, S.OUTCOMES_FILE)

    def task(outcomes: str) -> TaskSpec:
        return TaskSpec(("NEVER//SEEN",), 30.0, labels=labels, outcomes=outcomes)

    # the event codes are not checked (they are ignored); the table is
    rep = validate_cohort(cohort, task=task(own), require_outcomes=True)
    assert rep.ok, rep.format()
    assert rep.outcomes == own and rep.n_outcome_rows == N_SUBJECTS
    subjects, birth, last = _facts(cohort)
    s = [int(x) for x in subjects[:3]]
    # a subject without a row is a warning: its samples are skipped
    rows = [(int(x), False, last[int(x)]) for x in subjects[1:]]
    rep = validate_cohort(cohort, task=task(_outcome_file(tmp_path / "a.parquet", rows)))
    assert rep.ok, rep.format()
    [w] = [w for w in rep.warnings if w.check == "no_outcome"]
    assert w.subjects == [s[0]] and "skipped" in w.message
    # an outcome at or before the first record (here: at birth) is no error on this axis
    # (samples are cut at their prediction times, not at the outcome)
    rows = [(int(x), True, birth[int(x)]) for x in subjects]
    assert validate_cohort(cohort, task=task(_outcome_file(tmp_path / "b.parquet", rows))).ok
    # duplicate rows and unknown subjects are errors, as on the visit axis
    rows = [(int(x), False, last[int(x)]) for x in subjects] + [(s[1], True, last[s[1]])]
    rows.append((987654, True, 0))
    rep = validate_cohort(cohort, task=task(_outcome_file(tmp_path / "c.parquet", rows)))
    assert {e.check for e in rep.errors} == {"duplicate_outcome", "unknown_outcome_subject"}
    # an unreadable table, a missing column, a missing file: fatal
    bad = tmp_path / "d.parquet"
    pq.write_table(pa.table({S.SUBJECT_ID: pa.array([s[0]], pa.int64())}), bad)
    rep = validate_cohort(cohort, task=task(str(bad)))
    assert rep.fatal and any("d.parquet" in e.line() for e in rep.errors)
    rep = validate_cohort(cohort, task=task(str(tmp_path / "none.parquet")), require_outcomes=True)
    assert rep.fatal and "none.parquet" in rep.errors[0].line()


# --- no leakage with bidirectional attention ----------------------------------------------------


def _changed_after_prediction(cohort: str, out: str) -> str:
    """A copy of ``cohort`` that differs only after each subject's prediction time: other codes,
    more rows (one a second after the prediction time, in the same day), the death moved."""
    t = _all_rows(cohort)
    lab = pq.read_table(os.path.join(cohort, "labels", "death.parquet"))
    pt_of = dict(
        zip(
            lab[S.SUBJECT_ID].to_pylist(),
            lab[S.PREDICTION_TIME].cast(pa.int64()).to_pylist(),
            strict=True,
        )
    )
    sid = t[S.SUBJECT_ID].to_pylist()
    tu = t[S.TIME].cast(pa.int64()).to_pylist()
    codes = t[S.CODE].to_pylist()
    rows: list[tuple[int, int | None, str]] = []
    n_changed = n_moved = 0
    for s, x, c in zip(sid, tu, codes, strict=True):
        after = x is not None and x > pt_of[s]
        if after and c == S.DEATH_CODE:
            rows.append((s, x + 90 * US_PER_DAY, c))
            n_moved += 1
        elif after:
            rows.append((s, x, f"LATER//{len(c) % 3}"))
            n_changed += 1
        else:
            rows.append((s, x, c))
    for s, p in pt_of.items():
        rows.append((s, p + 1, "LEAK//SAME_DAY"))
        rows.append((s, p + 3 * US_PER_DAY, "LEAK//LATER"))
    assert n_changed > 0 and n_moved > 0
    rows.sort(key=lambda r: (r[0], -1 if r[1] is None else r[1]))
    os.makedirs(os.path.join(out, S.DATA_SUBDIR))
    pq.write_table(
        pa.table(
            {
                S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
                S.TIME: pa.array([r[1] for r in rows], pa.int64()).cast(TS),
                S.CODE: pa.array([r[2] for r in rows], pa.string()),
            }
        ),
        os.path.join(out, S.DATA_SUBDIR, "shard_0000.parquet"),
    )
    os.makedirs(os.path.join(out, "metadata"))
    pq.write_table(
        pq.read_table(os.path.join(cohort, S.SUBJECT_SPLITS_PATH)),
        os.path.join(out, S.SUBJECT_SPLITS_PATH),
    )
    return out


INPUT_FIELDS = (
    S.SUBJECT,
    S.CODES,
    S.AGES,
    S.VISIT_IDS,
    S.ATTENTION_MASK,
    S.LAST_VISIT,
    S.NUM_VISITS,
    S.PREDICTION_TIME,
    S.PREDICTION_AGE,
)


def test_nothing_after_the_prediction_time_reaches_a_bidirectional_model(
    cohort: str, tmp_path: Path
) -> None:
    other = _changed_after_prediction(cohort, str(tmp_path / "other"))
    labels = os.path.join(cohort, "labels", "death.parquet")
    data = DataConfig(cohort=cohort, batch_size=8, max_seq_len=64)
    pipes = []
    for c in (cohort, other):
        p = IngestPipeline(c, dataclasses.replace(data, cohort=c), task=_task(labels), seed=5)
        p.fit()
        p.bin_edges = EDGES
        pipes.append(p)
    a, b = pipes
    assert a.vocab == b.vocab  # the vocabulary is fitted on input tokens only
    assert a.vocab is not None
    k = len(EDGES) - 1
    torch.manual_seed(0)
    cfg = behrt_tiny(a.vocab.size, 64, num_bins=k, attention="bidirectional")
    model = build_survival_model(cfg).eval()
    n_batches = 0
    outcome_differs = False
    for split in S.SPLITS:
        ba = _collect(a.iter_batches(split, epoch=1))
        bb = _collect(b.iter_batches(split, epoch=1))
        assert len(ba) == len(bb) > 0
        for x, y in zip(ba, bb, strict=True):
            for f in INPUT_FIELDS:
                np.testing.assert_array_equal(x[f], y[f], err_msg=f)
            outcome_differs |= not np.array_equal(x[S.TIME_DAYS], y[S.TIME_DAYS])
            with torch.no_grad():
                tx = {f: torch.from_numpy(x[f]) for f in INPUT_FIELDS}
                ty = {f: torch.from_numpy(y[f]) for f in INPUT_FIELDS}
                ox = model(**select_inputs(model, tx))
                oy = model(**select_inputs(model, ty))
            assert ox.logits.shape == (len(x[S.SUBJECT]), k)
            torch.testing.assert_close(ox.logits, oy.logits, rtol=0, atol=0)
            n_batches += 1
    assert n_batches > 0
    assert outcome_differs  # the death moved: the labels do change, the inputs do not


# --- the loss of a calendar SurvivalTask --------------------------------------------------------


def test_survival_task_on_bins_uses_the_calendar_likelihood() -> None:
    k, b = 4, 6
    torch.manual_seed(0)
    model = build_survival_model(behrt_tiny(20, 16, num_bins=k)).eval()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(3, 20, (b, 16), generator=g)
    mask = torch.ones(b, 16, dtype=torch.bool)
    mask[:, 12:] = False
    ages = torch.linspace(40, 41, 16).repeat(b, 1)
    batch = {
        S.CODES: codes.masked_fill(~mask, S.PAD_ID),
        S.AGES: ages.masked_fill(~mask, 0.0),
        S.VISIT_IDS: (torch.arange(16) // 4).repeat(b, 1).masked_fill(~mask, 0),
        S.ATTENTION_MASK: mask,
        S.PREDICTION_AGE: torch.full((b,), 41.5),
        # events in bins 0..K-1, censorings in 0..K (K: censored at the horizon)
        S.BIN: torch.tensor([0, 3, 2, 0, 4, 1]),
        S.EVENT: torch.tensor([True, True, False, False, False, False]),
        S.LAST_VISIT: torch.tensor([1, 2, 2, 2, 2, 2]),
    }
    task = SurvivalTask(loss="nll", time_field=S.BIN)
    loss, parts = task(model, model, batch)
    with torch.no_grad():
        logits = model(**select_inputs(model, batch)).logits
    torch.testing.assert_close(loss.detach(), calendar_nll(logits, batch[S.BIN], batch[S.EVENT]))
    assert parts["nll"] == pytest.approx(float(loss.detach()))
    # not the visit-axis likelihood on the same numbers (censorings count differently there)
    visit = discrete_time_nll(
        logits, batch[S.BIN].clamp(max=k - 1), batch[S.EVENT], torch.ones(b, k, dtype=torch.bool)
    )
    assert not torch.isclose(loss.detach(), visit)
    # the visit-axis task reads last_visit, not bin
    loss_v, _ = SurvivalTask(loss="nll")(model, model, batch)
    assert not torch.isclose(loss_v.detach(), loss.detach())
