"""Validation once per cohort: parallel shard checks equal the serial scan, the report cached
under the cohort's fingerprint round-trips exactly, and any edit of an input re-validates."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.bench.validation import validation_timings
from ehrsurv_dist.cli import main as cli_main
from ehrsurv_dist.data import validate as V
from ehrsurv_dist.data import validation_cache as VC
from ehrsurv_dist.data.meds_read import list_data_files
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.plan import plan_units
from ehrsurv_dist.data.validate import process_mapper, serial_mapper, validate_cohort
from ehrsurv_dist.data.validate_files import FileCheck
from ehrsurv_dist.data.validation_report import (
    CohortReport,
    report_from_record,
    report_to_record,
)
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import events_table, write_cohort

B = "1960-01-01"
# Three shards with problems in each; subject 2 spans shards 0 and 1.
SHARD0 = [
    (1, None, "GENDER/F"),
    (1, B, S.BIRTH_CODE),
    (1, "2020-01-01 09:00", "A"),
    (1, "2020-02-01 09:00", "B"),
    (2, B, S.BIRTH_CODE),
    (2, "2020-01-03 09:00", "A"),
    (3, "2020-01-01", "A"),  # no birth
    (4, B, S.BIRTH_CODE),
    (4, "1950-01-01", "A"),  # before birth
    (6, B, S.BIRTH_CODE),
    (6, "2020-05-01", "A"),
    (6, "2020-01-01", "B"),  # unsorted (warning)
]
SHARD1 = [
    (2, "2020-02-01", "B"),  # subject 2 again: spans shards (warning)
    (5, "1800-01-01", S.BIRTH_CODE),
    (5, "2020-01-01", "A"),  # age > 125
    (7, B, S.BIRTH_CODE),
    (7, "2020-01-01", "A"),
    (7, "2020-01-02", "  "),  # empty code
]
SHARD2 = [
    (8, B, S.BIRTH_CODE),
    (8, "2020-01-01", "A"),
    (9, B, S.BIRTH_CODE),
    (9, "2020-03-01", "C"),
    (9, "2020-04-01", "D"),
]
OUT = [
    (1, True, "2020-03-01"),
    (2, False, "2020-06-01"),
    (3, False, "2021-01-01"),
    (4, False, "2021-01-01"),
    (5, False, "2021-01-01"),
    (6, False, "2021-01-01"),
    (7, False, "2021-01-01"),
    (8, True, "2020-01-01 20:00"),  # event on the first visit's day: no history
    (9, False, "2021-01-01"),
    (99, True, "2020-03-01"),  # unknown subject
]
OLD = time.time() - 3600  # an hour ago: outside the racy window


def _age(root: str | Path) -> None:
    """Date every file of the cohort an hour back (as a cohort written earlier would be)."""
    for d, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (OLD, OLD))


def _messy(root: Path) -> str:
    cohort = write_cohort(root, [SHARD0, SHARD1, SHARD2], OUT)
    (root / "data" / "notes.txt").write_text("not a shard")  # ignored_file warning
    os.makedirs(root / "metadata")
    splits = pa.table(
        {
            S.SUBJECT_ID: pa.array([1, 2, 3, 4, 5, 77], pa.int64()),
            S.SPLIT: ["train", "test", "train", "tuning", "train", "train"],
        }
    )
    pq.write_table(splits, root / "metadata" / "subject_splits.parquet")
    _age(root)
    return cohort


class Counting:
    """A serial mapper that counts scans (a scan checks every shard)."""

    def __init__(self) -> None:
        self.scans = 0

    def __call__(self, fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
        self.scans += 1
        return serial_mapper(fn, items)


def _reversed_mapper(fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
    """Shards checked last to first (results still returned in shard order)."""
    return [fn(x) for x in reversed(items)][::-1]


def _expect_messy(rep: CohortReport) -> None:
    """The numbers every path must give on :func:`_messy`."""
    assert (rep.n_subjects, rep.n_rows, rep.n_static_rows, rep.n_codes) == (9, 23, 1, 6)
    assert (rep.n_outcome_rows, rep.n_events) == (10, 3)
    assert list(rep.bad_subjects.items()) == [
        (7, "empty_code"),
        (3, "no_birth"),
        (4, "negative_age"),
        (5, "age_over_125"),
        (99, "unknown_outcome_subject"),
        (8, "outcome_before_first_visit"),
    ]
    by = {p.check: p for p in rep.problems}
    assert by["subject_spans_shards"].subjects == [2]
    assert by["empty_code"].file is not None and by["empty_code"].file.endswith("shard_1.parquet")
    assert by["unsorted_times"].subjects == [4, 6]
    assert by["split_alias"].count == 1
    assert by["unknown_split_subject"].subjects == [77]
    assert by["no_split"].subjects == [6, 7, 8, 9]
    assert by["ignored_file"].file is not None and by["ignored_file"].file.endswith("notes.txt")


def test_parallel_and_out_of_order_shard_checks_equal_the_serial_scan(tmp_path: Path) -> None:
    cohort = _messy(tmp_path)
    serial = validate_cohort(cohort, mapper=serial_mapper)
    _expect_messy(serial)
    for mapper in (process_mapper(2), _reversed_mapper):
        rep = validate_cohort(cohort, mapper=mapper)
        assert rep == serial
        assert list(rep.bad_subjects.items()) == list(serial.bad_subjects.items())
        assert rep.format() == serial.format()


def test_cached_report_round_trips_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cohort = _messy(tmp_path / "c")
    fresh = validate_cohort(cohort, mapper=serial_mapper)
    back = report_from_record(json.loads(json.dumps(report_to_record(fresh))))
    assert back == fresh and list(back.bad_subjects) == list(fresh.bad_subjects)

    count = Counting()
    first = VC.validate_cached(cohort, mapper=count)
    (entry,) = os.listdir(tmp_path / "c" / ".ehrsurv" / "validation")
    with caplog.at_level(logging.INFO, logger="ehrsurv_dist.data.validation_cache"):
        cached = VC.validate_cached(cohort, mapper=count)
    assert count.scans == 1  # the second call did not scan
    key = entry.removesuffix(".json")
    path = str(tmp_path / "c" / ".ehrsurv" / "validation" / entry)
    assert (
        f"cohort validated earlier (fingerprint {key}): reusing the report from {path}"
        in caplog.messages
    )
    for rep in (first, cached):
        assert rep == fresh
        assert list(rep.bad_subjects.items()) == list(fresh.bad_subjects.items())
        assert rep.to_dict() == fresh.to_dict() and rep.format() == fresh.format()
    _expect_messy(cached)
    # plan_units decides its mode from the report's problems: the same plan either way
    assert plan_units(cohort, cached) == plan_units(cohort, fresh)
    assert plan_units(cohort, cached).mode == "hash"
    # the hidden folder is not data: the reader lists the same shards and ignores nothing new
    listing = list_data_files(cohort)
    assert [os.path.basename(p) for p in listing.parquet] == [
        "shard_0.parquet",
        "shard_1.parquet",
        "shard_2.parquet",
    ]
    assert not any(".ehrsurv" in p for p in [*listing.other, *listing.hidden, *cached.files])


@pytest.mark.parametrize("edit", ["rewrite_bad_row", "new_shard", "touch", "outcomes", "splits"])
def test_an_edited_input_is_validated_again(tmp_path: Path, edit: str) -> None:
    clean = [(1, B, S.BIRTH_CODE), (1, "2020-01-01", "A"), (1, "2020-02-01", "B")]
    other = [(2, B, S.BIRTH_CODE), (2, "2020-01-01", "A"), (2, "2020-03-01", "C")]
    out = [(1, False, "2020-06-01"), (2, True, "2020-04-01")]
    cohort = write_cohort(tmp_path, [clean, other], out)
    _age(tmp_path)
    count = Counting()
    assert VC.validate_cached(cohort, mapper=count).ok
    assert VC.validate_cached(cohort, mapper=count).ok and count.scans == 1
    shard1 = tmp_path / "data" / "shard_1.parquet"
    if edit == "rewrite_bad_row":  # the shard rewritten with a row without a code
        pq.write_table(events_table([*other, (2, "2020-03-02", None)]), shard1)  # type: ignore[list-item]
    elif edit == "new_shard":
        pq.write_table(
            events_table([(3, "2020-01-01", "A")]), tmp_path / "data" / "shard_2.parquet"
        )
    elif edit == "touch":  # same bytes, new mtime
        os.utime(shard1, (OLD + 60, OLD + 60))
    elif edit == "outcomes":
        os.remove(tmp_path / S.OUTCOMES_FILE)
    else:
        os.makedirs(tmp_path / "metadata")
        pq.write_table(
            pa.table({S.SUBJECT_ID: pa.array([1], pa.int64()), S.SPLIT: ["nonsense"]}),
            tmp_path / "metadata" / "subject_splits.parquet",
        )
    rep = VC.validate_cached(cohort, mapper=count)
    assert count.scans == 2
    checks = {p.check for p in rep.errors}
    assert (
        checks
        == {
            "rewrite_bad_row": {"null_code"},
            "new_shard": {"no_birth"},
            "touch": set(),
            "outcomes": set(),
            "splits": {"unknown_split"},
        }[edit]
    )
    if edit == "outcomes":
        assert [p.check for p in rep.warnings] == ["no_outcomes"]


def test_pipeline_refuses_a_cohort_edited_after_its_report_was_cached(tmp_path: Path) -> None:
    rows = [(1, B, S.BIRTH_CODE), (1, "2020-01-01", "A"), (1, "2020-02-01", "B")]
    rows2 = [(2, B, S.BIRTH_CODE), (2, "2020-01-01", "A"), (2, "2020-02-01", "B")]
    out = [(1, True, "2020-03-01"), (2, False, "2020-06-01")]
    cohort = write_cohort(tmp_path, [rows, rows2], out)
    _age(tmp_path)
    first = IngestPipeline(cohort, require_outcomes=False)
    assert first.report.ok and first.report.n_rows == 6
    assert os.listdir(tmp_path / ".ehrsurv" / "validation")
    bad = [*rows2, (2, "2020-02-02", "   ")]  # appended: a whitespace-only code
    pq.write_table(events_table(bad), tmp_path / "data" / "shard_1.parquet")
    with pytest.raises(CohortError, match=r"empty_code.*shard_1\.parquet.*subject_id 2"):
        IngestPipeline(cohort, require_outcomes=False)


def test_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cohort = _messy(tmp_path)
    fresh = VC.validate_cached(cohort)
    folder = tmp_path / ".ehrsurv" / "validation"
    (entry,) = list(folder.iterdir())
    entry.write_text('{"format": 1, "fingerprint": "')  # truncated
    count = Counting()
    with caplog.at_level(logging.WARNING, logger="ehrsurv_dist.data.validation_cache"):
        rep = VC.validate_cached(cohort, mapper=count)
    assert count.scans == 1 and rep == fresh
    assert any(
        "ignoring the unreadable validation cache file" in m and str(entry) in m
        for m in caplog.messages
    )
    assert json.loads(entry.read_text())["report"] == report_to_record(fresh)  # rewritten
    assert VC.validate_cached(cohort, mapper=count) == fresh and count.scans == 1


def test_files_modified_just_now_are_not_cached(tmp_path: Path) -> None:
    rows = [(1, B, S.BIRTH_CODE), (1, "2020-01-01", "A")]
    cohort = write_cohort(tmp_path, rows, [(1, False, "2020-06-01")])  # written just now
    count = Counting()
    VC.validate_cached(cohort, mapper=count)
    VC.validate_cached(cohort, mapper=count)
    assert count.scans == 2 and not (tmp_path / ".ehrsurv").exists()


def test_where_the_cache_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = _messy(tmp_path / "c")
    user = tmp_path / "user"
    monkeypatch.setenv(VC.CACHE_HOME_ENV, str(user))
    local = str(tmp_path / "c" / ".ehrsurv" / "validation")
    assert VC.cache_dirs(cohort) == ([local, str(user / "validation")], local)
    # a URI (a remote store, or a folder we cannot write): the user cache
    uri = "file://" + cohort
    assert VC.cache_dirs(uri) == ([str(user / "validation")], str(user / "validation"))
    count = Counting()
    a = VC.validate_cached(uri, mapper=count)
    b = VC.validate_cached(uri, mapper=count)
    assert a == b and count.scans == 1 and len(os.listdir(user / "validation")) == 1
    # off: by argument or environment, nothing read or written
    assert VC.cache_dirs(cohort, "none") == ([], None)
    monkeypatch.setenv(VC.CACHE_ENV, "none")
    VC.validate_cached(cohort, mapper=count)
    VC.validate_cached(cohort, mapper=count)
    assert count.scans == 3 and not (tmp_path / "c" / ".ehrsurv").exists()
    # a folder
    monkeypatch.setenv(VC.CACHE_ENV, str(tmp_path / "mine"))
    VC.validate_cached(cohort, mapper=count)
    VC.validate_cached(cohort, mapper=count)
    assert count.scans == 4 and len(os.listdir(tmp_path / "mine")) == 1


def test_arguments_that_change_the_report_change_the_fingerprint(tmp_path: Path) -> None:
    cohort = _messy(tmp_path)
    keys = set()
    for args in (
        {},
        {"granularity": "hour"},
        {"require_outcomes": True},
        {"outcomes": str(tmp_path / S.OUTCOMES_FILE)},
    ):
        fp = VC.fingerprint(cohort, **args)  # type: ignore[arg-type]
        assert fp is not None
        keys.add(fp.key)
    assert len(keys) == 4
    fp = VC.fingerprint(cohort)
    assert fp is not None and fp == VC.fingerprint(cohort)  # stable
    assert fp.newest_mtime_ns == os.stat(tmp_path / "data" / "shard_0.parquet").st_mtime_ns
    files = [f[0] for f in fp.inputs["files"]]
    assert [os.path.relpath(f, tmp_path) for f in files] == [
        "data/notes.txt",
        "data/shard_0.parquet",
        "data/shard_1.parquet",
        "data/shard_2.parquet",
        "metadata/subject_splits.parquet",
        "outcomes.parquet",
    ]


def test_cli_validate_always_scans_and_refreshes_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cohort = _messy(tmp_path)
    folder = tmp_path / ".ehrsurv" / "validation"
    assert cli_main(["validate", cohort, "--no-cache"]) == 1
    assert not folder.exists()
    assert cli_main(["validate", cohort, "--workers", "1"]) == 1
    (entry,) = list(folder.iterdir())
    record = json.loads(entry.read_text())
    assert record["fingerprint"] == entry.name.removesuffix(".json")
    capsys.readouterr()
    # a valid entry that lies: the command does not read it, it scans and overwrites it
    record["report"]["n_rows"] = 0
    entry.write_text(json.dumps(record))
    assert cli_main(["validate", cohort]) == 1
    out = capsys.readouterr().out
    assert "rows 23  static rows 1  subjects 9" in out
    assert "FAILED: 6 error(s), 6 warning(s)" in out
    assert json.loads(entry.read_text())["report"]["n_rows"] == 23
    entry.write_text("garbage")
    assert cli_main(["validate", cohort]) == 1
    assert json.loads(entry.read_text())["report"]["n_rows"] == 23


def test_default_mapper_is_serial_below_the_size_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = _messy(tmp_path)
    listing = list_data_files(cohort)
    fs, files = listing.fs, listing.parquet
    monkeypatch.setenv(V.WORKERS_ENV, "2")
    assert V.default_mapper(fs, files) is V.serial_mapper  # a few kB
    assert V.default_mapper(fs, files[:1], _reversed_mapper) is V.serial_mapper  # one shard
    monkeypatch.setattr(V, "PARALLEL_MIN_BYTES", 1)
    assert V.default_mapper(fs, files, _reversed_mapper) is _reversed_mapper
    assert V.default_mapper(fs, files) not in (V.serial_mapper, _reversed_mapper)  # a pool
    monkeypatch.setenv(V.WORKERS_ENV, "1")
    assert V.default_mapper(fs, files) is V.serial_mapper
    monkeypatch.setenv(V.WORKERS_ENV, "lots")
    with pytest.raises(ValueError, match="EHRSURV_VALIDATE_WORKERS must be an integer"):
        V.default_mapper(fs, files)


def test_validation_bench_keys(tmp_path: Path) -> None:
    cohort = _messy(tmp_path)
    res = validation_timings(cohort, repeats=1, workers=1)
    assert (res["validate_shards"], res["validate_rows"], res["validate_workers"]) == (3, 23, 1)
    for k in ("serial", "parallel", "cached", "shard_checks_serial", "shard_checks_parallel"):
        assert res[f"validate_{k}_median_s"] > 0
    assert res["validate_cached_s"] < res["validate_serial_s"]
    assert not (tmp_path / ".ehrsurv").exists()  # the bench's cache is a temporary folder


def test_a_sweep_validates_once_and_its_trials_reuse_the_report(tmp_path: Path) -> None:
    """``tune.run._validate_once`` (before the trials start) caches the report under the key a
    trial's pipeline then looks up (the same arguments as the launcher's), so concurrent trials
    do not each scan the cohort; two trials with the same data validate once."""
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.jobspec import JobSpec
    from ehrsurv_dist.task import task_spec
    from ehrsurv_dist.tune.run import _validate_once

    cohort = _messy(tmp_path)
    spec = load_config(
        JobSpec, None, [("data.cohort", cohort), "data.drop_bad_subjects=true", "train.epochs=1"]
    )
    other = load_config(
        JobSpec, None, [("data.cohort", cohort), "data.drop_bad_subjects=true", "train.epochs=2"]
    )
    folder = tmp_path / ".ehrsurv" / "validation"
    _validate_once([spec, other])
    assert len(list(folder.iterdir())) == 1  # one setting, one report
    count = Counting()
    rep = VC.validate_cached(
        cohort,
        spec.data.outcomes,
        spec.data.granularity,
        require_outcomes=True,
        task=task_spec(spec),
        mapper=count,
    )
    assert count.scans == 0  # the trial's look-up hits the sweep's report
    assert rep == validate_cohort(cohort, None, "day", require_outcomes=True)
