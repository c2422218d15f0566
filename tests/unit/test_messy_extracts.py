"""Messy real MEDS extracts (issue 19): schema drift, bad bytes, split files, outcome values,
empty codes and stray files, at the reader and in the validator (pure; no Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.encode import EncodeSpec, read_unit, subject_split
from ehrsurv_dist.data.meds import validate_cohort
from ehrsurv_dist.data.meds_read import data_files, read_events_table, read_outcomes
from ehrsurv_dist.data.normalize import EncodingError, normalise_events, schema_changes
from ehrsurv_dist.data.plan import plan_units
from ehrsurv_dist.data.splits import canonical_split, read_split_file, subject_splits
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
    (3, B, S.BIRTH_CODE),
    (3, "2020-01-05 09:00", "C"),
]
GOOD_OUT = [(1, True, "2020-03-01"), (2, False, "2020-06-01"), (3, False, "2020-06-01")]


def _checks(rep) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {p.check: p for p in rep.problems}


def _bad_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding exactly these bytes (pyarrow validates only on request)."""
    offsets = np.cumsum([0, *[len(v) for v in values]]).astype(np.int32)
    return pa.StringArray.from_buffers(
        len(values), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))
    )


def _shard(c: str) -> str:
    return os.path.join(c, S.DATA_SUBDIR, "shard_0.parquet")


# --- 1. schema normalisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "time_type",
    [
        pa.timestamp("s"),
        pa.timestamp("ms", tz="UTC"),
        pa.timestamp("ns"),
        pa.timestamp("us", tz="America/New_York"),
    ],
)
@pytest.mark.parametrize(
    "code_type",
    [pa.large_string(), pa.dictionary(pa.int8(), pa.large_string()), pa.string()],
)
def test_every_variant_reads_as_the_meds_types(
    tmp_path: Path, time_type: pa.DataType, code_type: pa.DataType
) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    clean = read_events_table(_shard(c), data_files(c)[0])
    t = clean.cast(
        pa.schema([(S.SUBJECT_ID, pa.int32()), (S.TIME, time_type), (S.CODE, code_type)])
    )
    pq.write_table(t, _shard(c))
    got = read_events_table(_shard(c), data_files(c)[0])
    assert got.schema == clean.schema and got.equals(clean)  # same instants, UTC-naive
    unit = plan_units(c).units[0]
    ingest = read_unit(unit, c)
    assert ingest.schema.field(S.CODE).type == pa.dictionary(pa.int32(), pa.string())
    assert ingest[S.TIME].equals(clean[S.TIME]) and ingest[S.SUBJECT_ID].equals(clean[S.SUBJECT_ID])
    rep = validate_cohort(c)
    assert rep.ok
    norm = [p for p in rep.problems if p.check == "normalised"]
    assert len(norm) == 1 and norm[0].file == _shard(c)
    assert "'subject_id' int32 → int64" in norm[0].message
    if time_type.tz and time_type.tz != "UTC":
        assert "converted from America/New_York to UTC" in norm[0].message


def test_sub_microsecond_times_are_floored_and_counted(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    clean = read_events_table(_shard(c), data_files(c)[0])
    us = pc.fill_null(clean[S.TIME].cast(pa.int64()), 0).to_numpy()
    null = clean[S.TIME].is_null().to_numpy(zero_copy_only=False)
    plus = np.array([0, 999, 1, 0, 500, 0, 0, 7])  # 4 times get a sub-µs part
    arr = pa.array(us * 1000 + plus, pa.int64(), mask=null).cast(pa.timestamp("ns"))
    pq.write_table(clean.set_column(1, S.TIME, arr), _shard(c))
    got = read_events_table(_shard(c), data_files(c)[0])
    assert got.equals(clean)  # floored to the microsecond, not refused
    rep = validate_cohort(c)
    assert rep.ok
    (norm,) = [p for p in rep.problems if p.check == "normalised"]
    assert norm.count == 4 and "4 time(s)" in norm.message
    assert "floored to the microsecond" in norm.message


def test_clean_schema_needs_no_change_and_is_not_copied() -> None:
    t = events_table(GOOD)
    assert schema_changes(t.schema) == []
    out, floored = normalise_events(t, "x")
    assert out is t and floored == 0


def test_dictionary_encoded_ids_and_times_are_decoded() -> None:
    t = events_table(GOOD)
    d = t.set_column(0, S.SUBJECT_ID, t[S.SUBJECT_ID].dictionary_encode())
    out, _ = normalise_events(d, "x")
    assert out.equals(t)
    assert schema_changes(d.schema) == [f"'{S.SUBJECT_ID}' {d.schema.field(0).type} → int64"]


# --- 2. bytes that are not UTF-8 ------------------------------------------------------------------


def test_invalid_utf8_code_names_file_column_subject(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    t = events_table(GOOD)
    codes = [r[2].encode() for r in GOOD]
    codes[5] = b"ICD\xff9"  # subject 2
    pq.write_table(t.set_column(2, S.CODE, _bad_utf8(codes)), _shard(c))
    with pytest.raises(EncodingError, match=r"column 'code'.*subject_id 2"):
        read_events_table(_shard(c), data_files(c)[0])
    with pytest.raises(EncodingError, match=r"shard_0.parquet: column 'code'"):
        read_unit(plan_units(c).units[0], c)
    rep = validate_cohort(c)  # never a UnicodeDecodeError
    p = _checks(rep)["invalid_utf8"]
    assert p.fatal and p.file == _shard(c) and p.column == S.CODE and p.subjects == [2]  # type: ignore[attr-defined]


def test_invalid_utf8_text_value_is_an_error(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    t = events_table(GOOD)
    text = [b""] * len(GOOD)
    text[7] = b"caf\xe9"  # latin-1, subject 3
    pq.write_table(t.append_column(S.TEXT_VALUE, _bad_utf8(text)), _shard(c))
    p = _checks(validate_cohort(c))["invalid_utf8"]
    assert p.column == S.TEXT_VALUE and p.subjects == [3] and p.count == 1  # type: ignore[attr-defined]


# --- 3. split files ------------------------------------------------------------------------------


def _splits(c: str, sid: list[int], names: list[str | None]) -> str:
    path = os.path.join(c, S.SUBJECT_SPLITS_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({S.SUBJECT_ID: sid, S.SPLIT: pa.array(names, pa.string())}), path)
    return path


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("TRAIN", "train"),
        ("Test", "held_out"),
        ("val", "tuning"),
        ("VALID", "tuning"),
        (" validation ", "tuning"),
        ("held_out", "held_out"),
        ("tuning", "tuning"),
        ("dev", None),
        ("", None),
    ],
)
def test_split_aliases(name: str, want: str | None) -> None:
    assert canonical_split(name) == want


def test_split_aliases_are_read_everywhere_and_reported(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    path = _splits(c, [1, 2, 3, 99], ["TRAIN", "test", "Validation", "train"])
    ids = np.array([1, 2, 3], dtype=np.int64)
    want = ["train", "held_out", "tuning"]
    assert subject_splits(c, ids).tolist() == want  # the in-memory loader
    spec = EncodeSpec(cohort=c, outcomes=None, splits_path=path)
    assert subject_split(spec, ids).tolist() == want  # what training reads
    rep = validate_cohort(c)
    assert rep.ok
    aliases = [p for p in rep.problems if p.check == "split_alias"]
    assert sorted((p.message, p.count) for p in aliases) == [
        ("split name 'TRAIN' read as 'train'", 1),
        ("split name 'Validation' read as 'tuning'", 1),
        ("split name 'test' read as 'held_out'", 1),
    ]
    unknown = _checks(rep)["unknown_split_subject"]
    assert unknown.severity == "warning" and unknown.subjects == [99]  # type: ignore[attr-defined]


def test_unknown_split_names_are_refused(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    path = _splits(c, [1, 2, 3], ["train", "dev", "dev"])
    rep = validate_cohort(c)
    p = _checks(rep)["unknown_split"]
    assert p.fatal and p.count == 2 and p.subjects == [2, 3] and "'dev'" in p.message  # type: ignore[attr-defined]
    with pytest.raises(CohortError, match=r"unknown split \('dev'; subject_id 2, 3\)"):
        subject_split(EncodeSpec(cohort=c, outcomes=None, splits_path=path), np.array([1]))
    with pytest.raises(CohortError, match="unknown split"):
        subject_splits(c, np.array([1]))


def test_split_file_conflicts_nulls_and_unlisted_subjects(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    _splits(c, [1, 1, 2], ["train", "tuning", None])
    sf = read_split_file(os.path.join(c, S.SUBJECT_SPLITS_PATH))
    assert sf.conflicting.tolist() == [1] and sf.null_rows == 1
    checks = _checks(validate_cohort(c))
    assert checks["conflicting_split"].fatal  # type: ignore[attr-defined]
    assert checks["null_split"].severity == "warning"  # type: ignore[attr-defined]
    assert checks["no_split"].subjects == [3]  # type: ignore[attr-defined]


# --- 4. outcome values --------------------------------------------------------------------------


def test_event_values_other_than_0_1_are_refused(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, None)
    t = outcomes_table(GOOD_OUT)
    t = t.set_column(1, S.OUTCOME_EVENT, pa.array([1, 2, 0], pa.int8()))
    pq.write_table(t, os.path.join(c, S.OUTCOMES_FILE))
    with pytest.raises(CohortError, match=r"'event': 1 row\(s\).*\(2; subject_id 2\)"):
        read_outcomes(os.path.join(c, S.OUTCOMES_FILE))
    rep = validate_cohort(c)
    assert rep.fatal and "subject_id 2" in _checks(rep)["bad_outcomes"].message  # type: ignore[attr-defined]


def test_integer_0_1_events_and_ns_tz_outcome_times_are_read(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, None)
    t = outcomes_table(GOOD_OUT)
    t = t.set_column(1, S.OUTCOME_EVENT, pa.array([1, 0, 0], pa.int64()))
    t = t.set_column(2, S.OUTCOME_TIME, t[S.OUTCOME_TIME].cast(pa.timestamp("ns", tz="UTC")))
    pq.write_table(t, os.path.join(c, S.OUTCOMES_FILE))
    got = read_outcomes(os.path.join(c, S.OUTCOMES_FILE))
    assert got.equals(outcomes_table(GOOD_OUT))
    assert validate_cohort(c).ok


def test_implausible_outcome_times_are_counted(tmp_path: Path) -> None:
    out = [(1, True, "2200-01-01"), (2, False, "1950-01-01"), (3, False, "2020-06-01")]
    rep = validate_cohort(write_cohort(tmp_path, GOOD, out))
    checks = _checks(rep)
    late = checks["outcome_after_data_end"]
    assert late.severity == "warning" and late.subjects == [1] and late.count == 1  # type: ignore[attr-defined]
    early = checks["outcome_before_birth"]
    assert early.severity == "error" and early.subjects == [2]  # type: ignore[attr-defined]
    assert rep.bad_subjects[2] == "outcome_before_birth"


def test_null_outcome_values_name_the_subject(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, None)
    t = outcomes_table(GOOD_OUT)
    t = t.set_column(1, S.OUTCOME_EVENT, pa.array([True, None, False]))
    pq.write_table(t, os.path.join(c, S.OUTCOMES_FILE))
    p = _checks(validate_cohort(c))["null_outcome"]
    assert p.subjects == [2] and "subject_id 2" in p.line()  # type: ignore[attr-defined]


# --- 5. empty codes / 6. hidden files ------------------------------------------------------------


def test_empty_and_whitespace_codes_are_refused_per_subject(tmp_path: Path) -> None:
    rows = [*GOOD, (2, "2020-01-04 09:00", ""), (3, "2020-01-06 09:00", " \t")]
    rep = validate_cohort(write_cohort(tmp_path, rows, GOOD_OUT))
    p = _checks(rep)["empty_code"]
    assert p.severity == "error" and not p.fatal and p.count == 2 and p.subjects == [2, 3]  # type: ignore[attr-defined]
    assert sorted(rep.bad_subjects) == [2, 3]  # droppable with data.drop_bad_subjects=true


def test_hidden_files_are_ignored_and_reported(tmp_path: Path) -> None:
    c = write_cohort(tmp_path, GOOD, GOOD_OUT)
    data = Path(c) / S.DATA_SUBDIR
    (data / ".tmp-shard_0.parquet").write_bytes(Path(_shard(c)).read_bytes())
    (data / "_SUCCESS").write_text("")
    (data / "_temporary").mkdir()
    (data / "_temporary" / "part-0.parquet").write_bytes(Path(_shard(c)).read_bytes())
    fs, files, ignored = data_files(c)
    assert files == [_shard(c)] and len(ignored) == 3
    assert plan_units(c).files == [_shard(c)]
    rep = validate_cohort(c)
    assert rep.ok and rep.n_rows == len(GOOD)  # not doubled
    hidden = [p for p in rep.problems if p.check == "ignored_file"]
    assert len(hidden) == 3 and all("hidden file" in p.message for p in hidden)
    assert "subject_spans_shards" not in _checks(rep)
