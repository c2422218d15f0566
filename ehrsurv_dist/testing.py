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


DRIFT_TIME = pa.timestamp("ms", tz="UTC")
DRIFT_CODE = pa.large_string()
DRIFT_ID = pa.int32()


def drift_shards(
    root: str | os.PathLike[str],
    time_type: pa.DataType = DRIFT_TIME,
    code_type: pa.DataType = DRIFT_CODE,
    id_type: pa.DataType = DRIFT_ID,
    span: bool = True,
) -> list[str]:
    """Make a cohort's shards drift, as an incremental refresh written by another tool does.

    Every shard under ``data/`` is read, the rows are cut in two by subject and written back
    as ``shard_a.parquet`` (MEDS types) and ``shard_b.parquet`` (``time_type``, ``code_type``,
    ``id_type``; other columns dropped). With ``span`` the first row of the last subject of
    ``shard_a`` moves to ``shard_b``: that subject spans shards (the reader's hash path).

    Returns:
        The two shard paths.
    """
    data = os.path.join(os.fspath(root), S.DATA_SUBDIR)
    olds = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".parquet")
    )
    t = pa.concat_tables(
        [pq.read_table(p, columns=[S.SUBJECT_ID, S.TIME, S.CODE]) for p in olds]
    ).combine_chunks()
    for p in olds:
        os.remove(p)
    sid = t[S.SUBJECT_ID].to_numpy()
    cut = np.unique(sid)[len(np.unique(sid)) // 2]
    a_rows = np.flatnonzero(sid < cut)
    b_rows = np.flatnonzero(sid >= cut)
    if span:  # a subject of shard_a gets one row in shard_b
        moved = np.flatnonzero(sid == sid[a_rows[-1]])[0]
        a_rows = a_rows[a_rows != moved]
        b_rows = np.concatenate([b_rows, [moved]])
    b = t.take(pa.array(b_rows)).cast(
        pa.schema([(S.SUBJECT_ID, id_type), (S.TIME, time_type), (S.CODE, code_type)])
    )
    paths = [os.path.join(data, "shard_a.parquet"), os.path.join(data, "shard_b.parquet")]
    pq.write_table(t.take(pa.array(a_rows)), paths[0])
    pq.write_table(b, paths[1])
    return paths


# Distinctive patient data: strings that cannot turn up in a log by chance, so a test can show
# that none of them does (subject ids, codes, dates and ages).
SECRET_SUBJECT0 = 987_654_321_000
SECRET_BIRTH = "1937-04-13"
SECRET_CODES = ("ZZSECRET/ALPHA", "ZZSECRET/BRAVO", "ZZSECRET/CHARLIE")
SECRET_DAYS = ("2019-08-17", "2019-09-23", "2019-11-29", "2020-02-11")


def distinctive_cohort(root: str | os.PathLike[str], n: int = 12) -> tuple[str, list[str]]:
    """A MEDS cohort of ``n`` subjects (a birth and four visits each, every other one an event)
    whose ids, codes and dates are distinctive; (its path, those strings and the subjects'
    ages as a log would print them)."""
    rows: list[Row] = []
    outcomes: list[OutcomeRow] = []
    for i in range(n):
        s = SECRET_SUBJECT0 + 7 * i
        rows.append((s, SECRET_BIRTH, S.BIRTH_CODE))
        for v, day in enumerate(SECRET_DAYS):
            rows.append((s, f"{day} 07:13", SECRET_CODES[(i + v) % 3]))
        outcomes.append((s, i % 2 == 0, "2020-06-30"))
    age = (np.datetime64(SECRET_DAYS[0]) - np.datetime64(SECRET_BIRTH)).astype(int) / 365.25
    cohort = write_cohort(root, rows, outcomes)
    secrets = [
        *SECRET_CODES,
        str(SECRET_SUBJECT0),
        str(SECRET_SUBJECT0 + 7),
        SECRET_BIRTH,
        *SECRET_DAYS[:2],
        "2020-06-30",
        f"{age:.2f}",
    ]
    return cohort, secrets
