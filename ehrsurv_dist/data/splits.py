"""Subject splits: the MEDS ``subject_splits.parquet`` or a deterministic hash (DESIGN.md §1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.rng import splitmix64

TRAIN_FRACTION = 0.70
TUNING_FRACTION = 0.15  # the rest (0.15) is held_out


def hash_splits(subject_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Split names (``train`` 70% / ``tuning`` 15% / ``held_out`` 15%) from a hash of the id.

    Stable across runs, machines and shard layouts; ``seed`` gives a different partition.
    """
    ids = np.asarray(subject_ids, dtype=np.int64).view(np.uint64)
    h = splitmix64(ids ^ splitmix64(np.array([seed], dtype=np.int64).view(np.uint64)))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.full(len(ids), S.HELD_OUT_SPLIT, dtype=object)
    out[u < TRAIN_FRACTION + TUNING_FRACTION] = S.TUNING_SPLIT
    out[u < TRAIN_FRACTION] = S.TRAIN_SPLIT
    return out


def subject_splits(cohort: str, subject_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Split of each subject: from ``metadata/subject_splits.parquet`` if present, else hashed.

    Subjects missing from the splits file are assigned by the hash (and so are stable too).

    Raises:
        CohortError: the splits file is unreadable or lacks ``subject_id``/``split``.
    """
    fs, root = io.resolve(cohort)
    path = io.join(root, S.SUBJECT_SPLITS_PATH)
    out = hash_splits(subject_ids, seed)
    if not io.exists(fs, path):
        return out
    try:
        with fs.open_input_file(path) as f:
            t = pq.read_table(f)
    except Exception as e:
        raise CohortError(f"cannot read splits file {path}: {e}") from None
    for col in (S.SUBJECT_ID, S.SPLIT):
        if col not in t.column_names:
            raise CohortError(f"splits file {path}: required column '{col}' is missing")
    sid = np.asarray(t[S.SUBJECT_ID].cast(pa.int64()).to_numpy(zero_copy_only=False))
    spl = np.asarray(t[S.SPLIT].cast(pa.string()).to_pylist(), dtype=object)
    order = np.argsort(sid, kind="stable")
    sid, spl = sid[order], spl[order]
    pos = np.minimum(np.searchsorted(sid, subject_ids), max(len(sid) - 1, 0))
    found = (len(sid) > 0) & (sid[pos] == subject_ids)
    out[found] = spl[pos[found]]
    return out
