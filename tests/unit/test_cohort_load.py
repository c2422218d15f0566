"""load_cohort: refuse bad cohorts, or drop and record bad subjects; pyarrow URIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.cohort import load_cohort
from ehrsurv_dist.data.meds import validate_cohort
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import write_cohort

B = "1960-01-01"
ROWS = [
    (1, B, S.BIRTH_CODE),
    (1, "2020-01-01", "A"),
    (1, "2020-02-01", "B"),
    (2, "2020-01-01", "A"),  # no birth: subject-level error
    (3, B, S.BIRTH_CODE),
    (3, "2020-01-01", "C"),
    (3, "2020-01-01", "D"),
    (3, "2020-05-01", "E"),
]
OUT = [(1, True, "2020-03-01"), (2, False, "2021-01-01"), (3, False, "2021-01-01")]


def test_refuses_then_drops_and_writes_rejects(tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path / "c", ROWS, OUT)
    with pytest.raises(CohortError, match=r"1 subject\(s\).*no_birth.*subject_id 2"):
        load_cohort(cohort)
    rej_path = str(tmp_path / "rejects.parquet")
    c = load_cohort(cohort, drop_bad_subjects=True, rejects_path=rej_path)
    assert c.visits.subject_id.tolist() == [1, 3]
    assert c.visits.last_visit.tolist() == [1, 1]
    rej = pq.read_table(rej_path).to_pylist()
    assert [r[S.SUBJECT_ID] for r in rej] == [2] and rej[0][S.REJECT_REASON] == "no_birth"
    assert len(c.split) == 2 and set(c.split) <= set(S.SPLITS)


def test_file_uri(tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path / "c", [r for r in ROWS if r[0] != 2], [OUT[0], OUT[2]])
    rep = validate_cohort("file://" + cohort)
    assert rep.ok and rep.n_subjects == 2 and rep.n_events == 1
    c = load_cohort("file://" + cohort)
    assert c.visits.subject_id.tolist() == [1, 3]


def test_take_subjects_matches_per_subject_view(tmp_path: Path) -> None:
    cohort = write_cohort(tmp_path / "c", [r for r in ROWS if r[0] != 2], [OUT[0], OUT[2]])
    sv = load_cohort(cohort).visits
    sub = sv.take(np.array([1, 0]))
    assert [sub.subject(i) for i in range(2)] == [sv.subject(1), sv.subject(0)]
    empty = sv.take(np.array([], dtype=np.int64))
    assert empty.num_subjects == 0 and len(empty.codes) == 0
