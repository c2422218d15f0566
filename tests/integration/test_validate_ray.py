"""Validation's shard checks on Ray tasks (what a driver connected to Ray uses): the same report
as the serial scan, on a cohort with a subject spanning shards and bad rows in two shards."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data import pipeline as P
from ehrsurv_dist.data import validate as V
from ehrsurv_dist.data.validate_files import FileCheck
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import write_cohort

pytestmark = pytest.mark.integration

B = "1960-01-01"
SHARDS = [
    [(1, B, S.BIRTH_CODE), (1, "2020-01-01", "A"), (2, B, S.BIRTH_CODE), (2, "2020-01-02", "A")],
    [(2, "2020-02-01", "B"), (3, "2020-01-01", "A"), (4, B, S.BIRTH_CODE), (4, "2020-01-01", "")],
    [(5, B, S.BIRTH_CODE), (5, "2020-01-01", "A"), (6, B, S.BIRTH_CODE), (6, "1950-01-01", "A")],
]
OUT = [(i, i % 2 == 0, "2021-01-01") for i in range(1, 7)]


def test_ray_tasks_give_the_serial_report(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = write_cohort(tmp_path, SHARDS, OUT)
    old = time.time() - 3600
    for d, _, files in os.walk(tmp_path):
        for f in files:
            os.utime(os.path.join(d, f), (old, old))
    serial = V.validate_cohort(cohort, mapper=V.serial_mapper)
    assert list(serial.bad_subjects.items()) == [
        (4, "empty_code"),
        (3, "no_birth"),
        (6, "negative_age"),
    ]
    assert [p.subjects for p in serial.problems if p.check == "subject_spans_shards"] == [[2]]
    assert P.ray_validation_mapper() is P._ray_map_files  # the driver, outside a placement group
    on_ray = V.validate_cohort(cohort, mapper=P._ray_map_files)
    assert on_ray == serial and list(on_ray.bad_subjects) == list(serial.bad_subjects)

    # the pipeline picks Ray tasks for a cohort over the size threshold (here: any)
    calls: list[int] = []
    on_tasks = P._ray_map_files

    def counting(fn: Callable[[str], FileCheck], items: Sequence[str]) -> list[FileCheck]:
        calls.append(len(items))
        return on_tasks(fn, items)

    monkeypatch.setattr(V, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(P, "_ray_map_files", counting)
    with pytest.raises(CohortError, match="errors in 3 subject"):
        P.IngestPipeline(cohort, validation_cache="none")
    assert calls == [3]
    data = DataConfig(cohort=cohort, drop_bad_subjects=True)
    pipe = P.IngestPipeline(cohort, data, validation_cache="none")
    assert calls == [3, 3] and pipe.report == serial
