"""Subject splits: the MEDS ``subject_splits.parquet`` or a deterministic hash (docs/design.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.data.meds_read import short_error
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


# Split names the reader accepts (compared after trimming and lower-casing) → the MEDS name.
SPLIT_ALIASES: dict[str, str] = {
    S.TRAIN_SPLIT: S.TRAIN_SPLIT,
    S.TUNING_SPLIT: S.TUNING_SPLIT,
    "val": S.TUNING_SPLIT,
    "valid": S.TUNING_SPLIT,
    "validation": S.TUNING_SPLIT,
    S.HELD_OUT_SPLIT: S.HELD_OUT_SPLIT,
    "test": S.HELD_OUT_SPLIT,
}
MAX_NAMED = 5


@dataclass
class SplitFile:
    """A MEDS split file, read and mapped to the MEDS split names.

    Attributes:
        path: the file.
        subject_id: int64 [N], ascending (stable: duplicates keep file order).
        split: object [N]: ``train``, ``tuning``, ``held_out``, or None (null or unknown name).
        aliases: name as written → (MEDS name, rows), for names that were mapped (``TEST``,
            ``val``, ...).
        unknown: name as written → rows, for names that map to no split (refused).
        unknown_subjects: int64, sorted: subjects of the rows with an unknown name.
        null_rows: rows with a null split (assigned by the hash, like unlisted subjects).
        conflicting: int64, sorted: subjects listed twice with different splits (refused).
    """

    path: str
    subject_id: np.ndarray
    split: np.ndarray
    aliases: dict[str, tuple[str, int]] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    unknown_subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    null_rows: int = 0
    conflicting: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def raise_if_unusable(self) -> None:
        """Raise :class:`CohortError` for unknown split names or conflicting rows."""
        if self.unknown:
            names = ", ".join(repr(n[:40]) for n in list(self.unknown)[:MAX_NAMED])
            ids = ", ".join(map(str, self.unknown_subjects[:MAX_NAMED].tolist()))
            raise CohortError(
                f"splits file {self.path}: column '{S.SPLIT}': "
                f"{sum(self.unknown.values())} row(s) name an unknown split ({names}; "
                f"subject_id {ids}); use {', '.join(S.SPLITS)} "
                "(or test → held_out, val/valid/validation → tuning)"
            )
        if len(self.conflicting):
            ids = ", ".join(map(str, self.conflicting[:MAX_NAMED].tolist()))
            raise CohortError(
                f"splits file {self.path}: column '{S.SUBJECT_ID}': "
                f"{len(self.conflicting)} subject(s) are listed in two different splits "
                f"(subject_id {ids})"
            )


def canonical_split(name: str) -> str | None:
    """The MEDS split name of ``name`` (case-insensitive, :data:`SPLIT_ALIASES`), or None."""
    return SPLIT_ALIASES.get(name.strip().lower())


def read_split_file(path: str) -> SplitFile:
    """Read ``metadata/subject_splits.parquet`` and map its split names; never refuses names
    (see :meth:`SplitFile.raise_if_unusable`).

    Raises:
        CohortError: unreadable, a missing column, a non-integer ``subject_id``, a ``split``
            column that is not a string, null subject ids.
    """
    fs, p = io.resolve(path)
    try:
        with fs.open_input_file(p) as f:
            t = pq.read_table(f)
    except Exception as e:
        raise CohortError(f"cannot read splits file {path}: {short_error(e)}") from None
    for col in (S.SUBJECT_ID, S.SPLIT):
        if col not in t.column_names:
            raise CohortError(f"splits file {path}: required column '{col}' is missing")
    sid_col, spl_col = t[S.SUBJECT_ID], t[S.SPLIT]
    if pa.types.is_dictionary(sid_col.type):
        sid_col = sid_col.cast(sid_col.type.value_type)
    if pa.types.is_dictionary(spl_col.type):
        spl_col = spl_col.cast(spl_col.type.value_type)
    if not pa.types.is_integer(sid_col.type):
        raise CohortError(
            f"splits file {path}: column '{S.SUBJECT_ID}' has type {sid_col.type}, expected int64"
        )
    if not (pa.types.is_string(spl_col.type) or pa.types.is_large_string(spl_col.type)):
        raise CohortError(
            f"splits file {path}: column '{S.SPLIT}' has type {spl_col.type}, expected string"
        )
    if sid_col.null_count:
        raise CohortError(
            f"splits file {path}: column '{S.SUBJECT_ID}': {sid_col.null_count} null value(s)"
        )
    try:
        spl_col.validate(full=True)
    except pa.ArrowInvalid:
        raise CohortError(
            f"splits file {path}: column '{S.SPLIT}' holds values that are not valid UTF-8"
        ) from None
    sid = np.asarray(sid_col.cast(pa.int64()).to_numpy(), dtype=np.int64)
    enc = pc.dictionary_encode(spl_col.cast(pa.string())).combine_chunks()
    idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    written = enc.dictionary.to_pylist()
    mapped = np.asarray([canonical_split(n) for n in written] + [None], dtype=object)
    split = mapped[idx]  # idx -1 → the trailing None
    out = SplitFile(path, sid, split, null_rows=int((idx < 0).sum()))
    for i, (name, m) in enumerate(zip(written, mapped[:-1], strict=True)):
        rows = int((idx == i).sum())
        if not rows:
            continue
        if m is None:
            out.unknown[name] = rows
        elif m != name:
            out.aliases[name] = (m, rows)
    if out.unknown:
        is_unknown = (idx >= 0) & (mapped[np.maximum(idx, 0)] == None)  # noqa: E711
        out.unknown_subjects = np.unique(sid[is_unknown])
    order = np.argsort(sid, kind="stable")
    out.subject_id, out.split = sid[order], split[order]
    same = out.subject_id[1:] == out.subject_id[:-1]
    if bool(same.any()):
        a, b = out.split[1:][same], out.split[:-1][same]
        differ = np.asarray([x != y for x, y in zip(a, b, strict=True)], dtype=bool)
        out.conflicting = np.unique(out.subject_id[1:][same][differ])
    return out


def cohort_splits_path(cohort: str) -> str | None:
    """The cohort's MEDS split file, or None when it has none."""
    fs, root = io.resolve(cohort)
    sp = io.join(root, S.SUBJECT_SPLITS_PATH)
    if not io.exists(fs, sp):
        return None
    return sp if "://" not in cohort else cohort.rstrip("/") + "/" + S.SUBJECT_SPLITS_PATH


def subject_splits(cohort: str, subject_ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Split of each subject: from ``metadata/subject_splits.parquet`` if present, else hashed.

    Subjects missing from the splits file (or with a null split) are assigned by the hash (and
    so are stable too); split names are mapped as :func:`read_split_file` does.

    Raises:
        CohortError: the splits file is unreadable, lacks ``subject_id``/``split``, names an
            unknown split or lists a subject in two splits.
    """
    fs, root = io.resolve(cohort)
    path = io.join(root, S.SUBJECT_SPLITS_PATH)
    out = hash_splits(subject_ids, seed)
    if not io.exists(fs, path):
        return out
    sf = read_split_file(path)
    sf.raise_if_unusable()
    sid, spl = sf.subject_id, sf.split
    if len(sid) == 0:
        return out
    pos = np.minimum(np.searchsorted(sid, subject_ids), len(sid) - 1)
    found = (sid[pos] == subject_ids) & np.asarray(spl[pos] != None, dtype=bool)  # noqa: E711
    out[found] = spl[pos[found]]
    return out
