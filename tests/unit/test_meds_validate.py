"""The MEDS validator: every check fires on a corrupted cohort, names file/column/subject."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.meds import validate_cohort
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import events_table, outcomes_table, write_cohort

B = "1960-01-01"
GOOD = [
    (1, None, "GENDER/F"),
    (1, B, S.BIRTH_CODE),
    (1, "2020-01-01 09:00", "A"),
    (1, "2020-02-01 09:00", "B"),
    (2, B, S.BIRTH_CODE),
    (2, "2020-01-03 09:00", "A"),
]
GOOD_OUT = [(1, True, "2020-03-01"), (2, False, "2020-06-01")]


def _checks(rep) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {p.check: p.severity for p in rep.problems}


def test_clean_cohort_is_ok(tmp_path: Path) -> None:
    rep = validate_cohort(write_cohort(tmp_path, GOOD, GOOD_OUT))
    assert rep.ok and not rep.problems
    assert (rep.n_subjects, rep.n_rows, rep.n_static_rows, rep.n_codes) == (2, 6, 1, 3)
    assert (rep.n_outcome_rows, rep.n_events) == (2, 1)


def test_missing_code_column(tmp_path: Path) -> None:
    write_cohort(tmp_path, GOOD, GOOD_OUT)
    shard = tmp_path / "data" / "shard_0.parquet"
    pq.write_table(events_table(GOOD).drop_columns([S.CODE]), shard)
    rep = validate_cohort(str(tmp_path))
    (p,) = [p for p in rep.errors if p.check == "missing_column"]
    assert p.column == S.CODE and p.file == str(shard) and rep.fatal


def test_null_subject_id(tmp_path: Path) -> None:
    t = events_table(GOOD)
    sid = pa.array([1, None, 1, 1, 2, 2], pa.int64())
    write_cohort(tmp_path, [], GOOD_OUT)
    pq.write_table(t.set_column(0, S.SUBJECT_ID, sid), tmp_path / "data" / "s.parquet")
    rep = validate_cohort(str(tmp_path))
    (p,) = [p for p in rep.errors if p.check == "null_subject_id"]
    assert p.count == 1 and p.column == S.SUBJECT_ID and p.file and p.file.endswith("s.parquet")


def test_string_times(tmp_path: Path) -> None:
    t = events_table(GOOD)
    write_cohort(tmp_path, [], GOOD_OUT)
    times = pa.array([None, "1960-01-01", "2020-01-01", "2020-02-01", "1960", "2020"])
    pq.write_table(t.set_column(1, S.TIME, times), tmp_path / "data" / "s.parquet")
    rep = validate_cohort(str(tmp_path))
    (p,) = [p for p in rep.errors if p.check == "wrong_dtype"]
    assert p.column == S.TIME and "string" in p.message and rep.fatal


def test_truncated_and_non_parquet_files(tmp_path: Path) -> None:
    write_cohort(tmp_path, GOOD, GOOD_OUT)
    shard = tmp_path / "data" / "shard_0.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    (tmp_path / "data" / "notes.parquet").write_text("this is not parquet")
    rep = validate_cohort(str(tmp_path))
    bad = sorted(p.file for p in rep.errors if p.check == "unreadable_file")  # type: ignore[type-var]
    assert bad == [str(tmp_path / "data" / "notes.parquet"), str(shard)]


def test_outcome_for_unknown_subject_and_duplicates(tmp_path: Path) -> None:
    out = [*GOOD_OUT, (99, True, "2020-03-01"), (2, False, "2020-07-01")]
    rep = validate_cohort(write_cohort(tmp_path, GOOD, out))
    errs = {p.check: p for p in rep.errors}
    assert errs["unknown_outcome_subject"].subjects == [99]
    assert errs["duplicate_outcome"].subjects == [2]
    assert not rep.fatal and set(rep.bad_subjects) == {2, 99}


def test_subject_checks(tmp_path: Path) -> None:
    rows = [
        *GOOD,
        (3, "2020-01-01", "A"),  # no birth
        (4, B, S.BIRTH_CODE),
        (4, "1950-01-01", "A"),  # before birth
        (5, "1800-01-01", S.BIRTH_CODE),
        (5, "2020-01-01", "A"),  # age > 125
        (6, B, S.BIRTH_CODE),
        (6, "2020-05-01", "A"),
        (6, "2020-01-01", "B"),  # unsorted (warning)
        (7, B, S.BIRTH_CODE),
        (7, "2020-05-01", "A"),  # outcome before first visit
        (8, B, S.BIRTH_CODE),
        (8, "2020-05-01", "A"),  # event on the first visit's day: no history
    ]
    out = [
        *GOOD_OUT,
        (3, False, "2021-01-01"),
        (4, False, "2021-01-01"),
        (5, False, "2021-01-01"),
        (6, False, "2021-01-01"),
        (7, False, "2020-04-01"),
        (8, True, "2020-05-01 20:00"),
    ]
    rep = validate_cohort(write_cohort(tmp_path, rows, out))
    by = {p.check: p for p in rep.problems}
    assert by["no_birth"].subjects == [3] and by["no_birth"].severity == "error"
    assert by["negative_age"].subjects == [4]
    assert by["age_over_125"].subjects == [5]
    assert by["unsorted_times"].subjects == [4, 6] and by["unsorted_times"].severity == "warning"
    assert by["outcome_before_first_visit"].subjects == [7, 8]
    assert set(rep.bad_subjects) == {3, 4, 5, 7, 8}
    with pytest.raises(CohortError, match="drop_bad_subjects"):
        rep.raise_if_unusable(drop_bad_subjects=False)
    rep.raise_if_unusable(drop_bad_subjects=True)  # droppable: no raise


def test_subject_spanning_shards_is_a_warning(tmp_path: Path) -> None:
    a = [(1, B, S.BIRTH_CODE), (1, "2020-01-01", "A")]
    b = [(1, "2020-02-01", "B"), (2, B, S.BIRTH_CODE), (2, "2020-01-01", "A")]
    rep = validate_cohort(write_cohort(tmp_path, [a, b], GOOD_OUT))
    assert rep.ok
    assert _checks(rep) == {"subject_spans_shards": "warning"}
    assert rep.problems[0].subjects == [1]


def test_empty_cohort(tmp_path: Path) -> None:
    os.makedirs(tmp_path / "data")
    rep = validate_cohort(str(tmp_path))
    assert [p.check for p in rep.errors] == ["empty_cohort"]


def test_missing_outcomes_is_a_warning_unless_required(tmp_path: Path) -> None:
    write_cohort(tmp_path, GOOD)
    assert _checks(validate_cohort(str(tmp_path))) == {"no_outcomes": "warning"}
    assert not validate_cohort(str(tmp_path), require_outcomes=True).ok


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehrsurv_dist.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("corrupt", "needle"),
    [
        ("no_code", "missing_column"),
        ("null_subject", "null_subject_id"),
        ("string_time", "wrong_dtype"),
        ("truncated", "unreadable_file"),
        ("unknown_outcome", "unknown_outcome_subject"),
    ],
)
def test_cli_validate_corrupted_exit_nonzero_no_traceback(
    tmp_path: Path, corrupt: str, needle: str
) -> None:
    write_cohort(tmp_path, GOOD, GOOD_OUT)
    shard = tmp_path / "data" / "shard_0.parquet"
    t = events_table(GOOD)
    if corrupt == "no_code":
        pq.write_table(t.drop_columns([S.CODE]), shard)
    elif corrupt == "null_subject":
        pq.write_table(t.set_column(0, S.SUBJECT_ID, pa.array([1, None, 1, 1, 2, 2])), shard)
    elif corrupt == "string_time":
        pq.write_table(t.set_column(1, S.TIME, pa.array(["x"] * 6)), shard)
    elif corrupt == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        pq.write_table(
            outcomes_table([*GOOD_OUT, (77, True, "2020-01-01")]), tmp_path / "outcomes.parquet"
        )
    r = _cli("validate", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert needle in r.stdout
    named = "outcomes.parquet" if corrupt == "unknown_outcome" else str(shard)
    assert named in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
