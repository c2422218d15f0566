"""How a cohort is cut into units of work, from Parquet metadata only (no data is read).

MEDS shards normally hold whole subjects, sorted. When the Parquet row-group statistics prove
that subject-id ranges do not overlap, a unit is a run of row groups of one file (about
``rows_per_unit`` rows, no shuffle). Otherwise, when validation found no subject in two shards, a
unit is a file. Otherwise (a subject spans shards) the rows are hash-partitioned by subject into
buckets (each bucket one unit). Units decide the batches; how they are grouped into Ray tasks
(:func:`task_groups`) only decides the scheduling. Pure pyarrow; no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.data.meds import CohortReport, data_files
from ehrsurv_dist.errors import CohortError

Mode = Literal["row_groups", "files", "hash"]
ROWS_PER_UNIT = 100_000
# (rows, min subject_id, max subject_id) of one row group; (n, 0, -1) when unknown or empty.
RowGroup = tuple[int, int, int]


@dataclass(frozen=True)
class Unit:
    """One piece of work: row groups of a file (all of them when ``row_groups`` is None)."""

    unit_id: int
    file_index: int
    path: str
    row_groups: tuple[int, ...] | None
    num_rows: int
    first_row: int = 0  # row number of the unit's first row in its file


@dataclass
class UnitPlan:
    """How a cohort is cut into units (see the module doc).

    Attributes:
        mode: ``row_groups``, ``files`` or ``hash``.
        files: the Parquet shards, sorted.
        units: the units (``row_groups``/``files``); in ``hash`` mode, the read tasks (each
            then contributes rows to every bucket).
        num_buckets: number of hash buckets (``hash`` mode), each becoming one unit id.
        reason: why this mode was chosen.
    """

    mode: Mode
    files: list[str]
    units: list[Unit]
    num_buckets: int = 0
    reason: str = ""

    @property
    def num_units(self) -> int:
        return self.num_buckets if self.mode == "hash" else len(self.units)


def _row_group_ranges(fs: Any, files: list[str]) -> tuple[list[list[RowGroup]], bool]:
    """Per file: (num_rows, min subject_id, max subject_id) per row group; stats complete?"""
    out: list[list[RowGroup]] = []
    complete = True
    for path in files:
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
        col = md.schema.to_arrow_schema().get_field_index(S.SUBJECT_ID)
        rgs: list[RowGroup] = []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            st = rg.column(col).statistics if col >= 0 else None
            if st is None or not st.has_min_max or rg.num_rows == 0:
                complete = complete and rg.num_rows == 0
                rgs.append((rg.num_rows, 0, -1))
            else:
                rgs.append((rg.num_rows, int(st.min), int(st.max)))
        out.append(rgs)
    return out, complete


def _disjoint(ranges: list[tuple[int, int]]) -> bool:
    r = sorted(x for x in ranges if x[0] <= x[1])
    return all(a[1] < b[0] for a, b in zip(r[:-1], r[1:], strict=True))


def _balanced_units(
    files: list[str], per_file: list[list[RowGroup]], rows_per_unit: int
) -> list[Unit]:
    """Each file gets ceil(rows / rows_per_unit) units; a row group goes to the unit its middle
    row falls in (contiguous runs of row groups, near-equal rows)."""
    units: list[Unit] = []
    for fi, (path, rgs) in enumerate(zip(files, per_file, strict=True)):
        n_rows = sum(r[0] for r in rgs)
        k = max(1, min(len(rgs), math.ceil(n_rows / rows_per_unit)))
        start = 0
        cur: list[int] = []
        cur_k, cur_rows, cur_first = -1, 0, 0
        for i, (n, _, _) in enumerate(rgs):
            j = min(k - 1, int(k * (start + n / 2) / max(n_rows, 1)))
            if j != cur_k and cur:
                units.append(Unit(len(units), fi, path, tuple(cur), cur_rows, cur_first))
                cur, cur_rows = [], 0
            if not cur:
                cur_first = start
            cur_k = j
            cur.append(i)
            cur_rows += n
            start += n
        if cur:
            units.append(Unit(len(units), fi, path, tuple(cur), cur_rows, cur_first))
    return units


def _row_group_units(files: list[str], per_file: list[list[RowGroup]]) -> list[Unit]:
    """One read task per row group (hash mode: each contributes rows to every bucket)."""
    units: list[Unit] = []
    for fi, (path, rgs) in enumerate(zip(files, per_file, strict=True)):
        start = 0
        for i, (n, _, _) in enumerate(rgs):
            units.append(Unit(len(units), fi, path, (i,), n, start))
            start += n
    return units


def _file_range(rgs: list[RowGroup]) -> tuple[int, int]:
    """(min, max) subject id of a file from its row groups ((0, -1) when unknown)."""
    lo = min((lo for _, lo, hi in rgs if lo <= hi), default=0)
    return lo, max((hi for *_, hi in rgs), default=-1)


def plan_units(
    cohort: str, report: CohortReport | None = None, rows_per_unit: int = ROWS_PER_UNIT
) -> UnitPlan:
    """Cut a cohort into units of work without reading any data (Parquet metadata only).

    Args:
        cohort: cohort directory or URI.
        report: the validation report, if any: without row-group statistics, files are units
            only when it shows no ``subject_spans_shards`` warning.
        rows_per_unit: target rows per unit in ``row_groups`` mode (and per bucket in ``hash``).

    Raises:
        CohortError: no Parquet files.
    """
    fs, files, _ = data_files(cohort)
    if not files:
        raise CohortError(f"no Parquet files under {io.join(cohort, S.DATA_SUBDIR)}")
    per_file, complete = _row_group_ranges(fs, files)
    file_rows = [sum(r[0] for r in rgs) for rgs in per_file]
    if complete and _disjoint([(lo, hi) for rgs in per_file for (_, lo, hi) in rgs]):
        units = _balanced_units(files, per_file, rows_per_unit)
        return UnitPlan("row_groups", files, units, reason="row-group subject ranges are disjoint")
    spans = report is not None and any(p.check == "subject_spans_shards" for p in report.problems)
    disjoint_files = complete and _disjoint([_file_range(rgs) for rgs in per_file])
    if disjoint_files or (report is not None and not spans):
        units = [
            Unit(i, i, p, None, n) for i, (p, n) in enumerate(zip(files, file_rows, strict=True))
        ]
        return UnitPlan("files", files, units, reason="every subject lies in one shard")
    k = max(1, math.ceil(sum(file_rows) / rows_per_unit))
    why = (
        "subjects span shards (validation)"
        if spans
        else "subject ranges overlap and no validation report"
    )
    return UnitPlan("hash", files, _row_group_units(files, per_file), num_buckets=k, reason=why)


def task_groups(plan: UnitPlan, num_tasks: int) -> list[list[int]]:
    """Contiguous runs of units, balanced by rows: what each Ray task processes.

    The units (and so the batches) do not depend on this grouping, only the scheduling does.
    """
    rows = np.array([u.num_rows for u in plan.units], dtype=np.float64)
    n = len(rows)
    k = max(1, min(num_tasks, n))
    mid = np.cumsum(rows) - rows / 2
    which = np.minimum((mid * k / max(rows.sum(), 1.0)).astype(np.int64), k - 1)
    return [g for g in (np.flatnonzero(which == j).tolist() for j in range(k)) if g]
