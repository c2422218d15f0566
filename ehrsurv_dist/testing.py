"""Build small MEDS cohorts by hand, for tests and examples (cf. femr's test tools).

>>> rows = [(1, None, "GENDER/F"), (1, "1960-01-01", "MEDS_BIRTH"), (1, "2020-01-01 09:00", "A")]
>>> write_cohort(tmp, rows, outcomes=[(1, True, "2020-03-01")])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S

Row = tuple[int, str | None, str]  # (subject_id, ISO time or None for static, code)
OutcomeRow = tuple[int, bool, str]  # (subject_id, event, ISO time)


def _ts(values: Sequence[str | None]) -> pa.Array:
    arr = np.array(
        [np.datetime64(v, "us") if v is not None else np.datetime64("NaT") for v in values],
        dtype="datetime64[us]",
    )
    return pa.array(arr, type=pa.timestamp("us"), from_pandas=True)


def events_table(rows: Sequence[Row]) -> pa.Table:
    """A MEDS data table (subject_id int64, time timestamp[us], code string) from tuples."""
    return pa.table(
        {
            S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            S.TIME: _ts([r[1] for r in rows]),
            S.CODE: pa.array([r[2] for r in rows], pa.string()),
        }
    )


def outcomes_table(rows: Sequence[OutcomeRow]) -> pa.Table:
    """An outcome table (subject_id, event, time) from tuples."""
    return pa.table(
        {
            S.SUBJECT_ID: pa.array([r[0] for r in rows], pa.int64()),
            S.OUTCOME_EVENT: pa.array([r[1] for r in rows], pa.bool_()),
            S.OUTCOME_TIME: _ts([r[2] for r in rows]),
        }
    )


def write_cohort(
    root: str | os.PathLike[str],
    shards: Sequence[Sequence[Row]] | Sequence[Row],
    outcomes: Sequence[OutcomeRow] | None = None,
) -> str:
    """Write a MEDS cohort: one Parquet shard per inner list (or one shard for a flat list)."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, S.DATA_SUBDIR), exist_ok=True)
    groups: list[Sequence[Row]]
    if shards and isinstance(shards[0], tuple):
        groups = [shards]  # type: ignore[list-item]
    else:
        groups = list(shards)  # type: ignore[arg-type]
    for i, g in enumerate(groups):
        pq.write_table(events_table(g), os.path.join(root, S.DATA_SUBDIR, f"shard_{i}.parquet"))
    if outcomes is not None:
        pq.write_table(outcomes_table(outcomes), os.path.join(root, S.OUTCOMES_FILE))
    return root
