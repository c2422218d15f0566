"""Per-unit work: a unit's rows → visits → vocabulary ids → a token block (pure; no Ray).

The same functions run in the Ray Data map tasks and in the single-process reference loop, so
both paths produce bit-identical blocks: read the unit (:func:`read_unit`), group its visits and
cut them at the outcome (:func:`unit_visits`), keep one split, look the codes up and lay the
visits out (:func:`encode_unit`), and write the Arrow block (:func:`encode_events`). Outcome and
split tables are read once per process (each Ray worker caches them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data import io
from ehrsurv_dist.data.blocks import Layout, flat_to_arrow, hier_to_arrow
from ehrsurv_dist.data.events import EventArrays, OutcomeArrays, event_arrays
from ehrsurv_dist.data.layouts import FlatTokens, Limits, VisitTokens, flatten, to_hierarchical
from ehrsurv_dist.data.meds import CohortReport, read_outcomes
from ehrsurv_dist.data.meds_read import numeric_values
from ehrsurv_dist.data.normalize import normalise_events
from ehrsurv_dist.data.numeric import apply_value_bins, vocab_edges
from ehrsurv_dist.data.plan import Unit, UnitPlan
from ehrsurv_dist.data.samples import (
    LabelArrays,
    TaskSpec,
    event_code_mask,
    make_samples,
    read_labels,
)
from ehrsurv_dist.data.splits import cohort_splits_path, hash_splits, read_split_file
from ehrsurv_dist.data.visits import GroupedUnit, group_visits
from ehrsurv_dist.data.vocab import Vocabulary
from ehrsurv_dist.rng import splitmix64

READ_COLUMNS = (S.SUBJECT_ID, S.TIME, S.CODE)
ROW = "__row"
_ROW_SHIFT = 40  # row key = file index << 40 | row in file


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs to turn a unit into a block (picklable).

    Attributes mirror :class:`config.DataConfig`; ``bad_subjects`` are dropped (sorted int64);
    ``splits_path`` is the MEDS split file or None; ``limits`` are the layouts' truncation;
    ``task`` is the calendar-axis task (one row per (subject, prediction time), outcomes from
    event codes or ``task.outcomes``; :mod:`samples`), None on the visit axis (one row per
    subject, ``outcomes``).
    """

    cohort: str
    outcomes: str | None
    granularity: str = "day"
    split_seed: int = 0
    splits_path: str | None = None
    bad_subjects: tuple[int, ...] = ()
    layout: Layout = "flat"
    limits: Limits = Limits()
    task: TaskSpec | None = None
    numeric: str = "none"
    numeric_bins: int = 10

    @property
    def reads_values(self) -> bool:
        """Whether units are read with their ``numeric_value`` column (data.numeric)."""
        return self.numeric != "none"

    @classmethod
    def for_cohort(
        cls,
        cohort: str,
        data: DataConfig,
        report: CohortReport,
        layout: Layout,
        task: TaskSpec | None = None,
    ) -> EncodeSpec:
        """The spec of a validated cohort under a data configuration (and a calendar task)."""
        return cls(
            cohort=cohort,
            outcomes=report.outcomes if task is None else None,
            task=task,
            granularity=data.granularity,
            split_seed=data.split_seed,
            splits_path=cohort_splits_path(cohort),
            bad_subjects=tuple(sorted(int(s) for s in report.bad_subjects)),
            layout=layout,
            limits=Limits(
                data.max_seq_len, data.max_visits, data.max_codes_per_visit, data.truncation
            ),
            numeric=data.numeric,
            numeric_bins=data.numeric_bins,
        )


_CACHE: dict[tuple[str, str], Any] = {}


def _cache_key(kind: str, path: str) -> tuple[str, str]:
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    return kind, f"{path}|{info.size}|{info.mtime_ns}"


def _outcome_arrays(path: str) -> OutcomeArrays:
    """The outcome table, read once per process (each Ray worker caches it)."""
    key = _cache_key("outcomes", path)
    if key not in _CACHE:
        _CACHE[key] = OutcomeArrays.from_table(read_outcomes(path))
    return _CACHE[key]  # type: ignore[no-any-return]


def _label_arrays(path: str) -> LabelArrays:
    """The task's label file(s), read once per process (each Ray worker caches them)."""
    key = ("labels", path)
    if key not in _CACHE:
        _CACHE[key] = read_labels(path)
    return _CACHE[key]  # type: ignore[no-any-return]


def _split_table(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted subject ids, int32 index into names (-1: none), split names), read once per
    process, with the split names mapped as :func:`splits.read_split_file` does."""
    key = _cache_key("splits", path)
    if key not in _CACHE:
        sf = read_split_file(path)
        sf.raise_if_unusable()
        names = np.asarray(S.SPLITS, dtype=object)
        idx = np.full(len(sf.subject_id), -1, dtype=np.int32)
        for i, name in enumerate(S.SPLITS):
            idx[sf.split == name] = i
        _CACHE[key] = (sf.subject_id, idx, names)
    return _CACHE[key]  # type: ignore[no-any-return]


def subject_split(spec: EncodeSpec, subject_id: np.ndarray) -> np.ndarray:
    """Split name per subject: the MEDS split file, else the hash (as ``splits.subject_splits``)."""
    out = hash_splits(subject_id, spec.split_seed)
    if spec.splits_path is None or len(subject_id) == 0:
        return out
    sid, idx, names = _split_table(spec.splits_path)
    if len(sid) == 0:
        return out
    pos = np.minimum(np.searchsorted(sid, subject_id), len(sid) - 1)
    found = (sid[pos] == subject_id) & (idx[pos] >= 0)
    out[found] = names[idx[pos[found]]]
    return out


def read_unit(unit: Unit, cohort: str, with_row: bool = False, numeric: bool = False) -> pa.Table:
    """The unit's rows: ``subject_id``, ``time``, ``code`` (dictionary-encoded), column-pruned.

    Args:
        unit: the unit.
        cohort: the cohort directory or URI (selects the filesystem).
        with_row: add ``__row`` (file index << 40 | row in file): the order of appearance.
        numeric: also ``numeric_value`` as float32 (all null where the file has none).
    """
    fs, _ = io.resolve(cohort)
    with fs.open_input_file(unit.path) as f:
        pf = pq.ParquetFile(f, read_dictionary=[S.CODE])
        cols = list(READ_COLUMNS)
        has_value = numeric and S.NUMERIC_VALUE in pf.schema_arrow.names
        if has_value:
            cols.append(S.NUMERIC_VALUE)
        if unit.row_groups is None:
            t = pf.read(columns=cols)
        else:
            t = pf.read_row_groups(list(unit.row_groups), columns=cols)
    # one schema for every shard, whatever tool wrote it (the validator reads the same way)
    t, _ = normalise_events(t, unit.path, dictionary_codes=True)
    if numeric:
        t = numeric_values(t, unit.path, has_value)
    if with_row:
        rows = (np.int64(unit.file_index) << _ROW_SHIFT) + unit.first_row + np.arange(t.num_rows)
        t = t.append_column(ROW, pa.array(rows, pa.int64()))
    return t


def read_buckets(
    plan: UnitPlan, cohort: str, numeric: bool = False
) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, every row of its subjects) of a ``hash`` plan, in one process: every shard
    contributes to every bucket, so everything is read (the reference path)."""
    tables = [read_unit(u, cohort, with_row=True, numeric=numeric) for u in plan.units]
    if not tables:
        return
    t = with_string_codes(pa.concat_tables([x.cast(tables[0].schema) for x in tables]))
    b = bucket_of(np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64), plan.num_buckets)
    for k in range(plan.num_buckets):
        rows = np.flatnonzero(b == k)
        if len(rows):
            yield k, t.take(pa.array(rows))


def _events(table: pa.Table, spec: EncodeSpec) -> EventArrays:
    """The unit's rows as arrays, in order of appearance, without the bad subjects."""
    if ROW in table.column_names:  # hash buckets: restore the order of appearance
        row = np.asarray(table[ROW].to_numpy(), dtype=np.int64)
        if len(row) > 1 and not bool(np.all(row[1:] > row[:-1])):
            table = table.take(pa.array(np.argsort(row, kind="stable")))
    ev = event_arrays(table)
    if spec.bad_subjects:
        bad = np.asarray(spec.bad_subjects, dtype=np.int64)
        pos = np.minimum(np.searchsorted(bad, ev.subject_id), len(bad) - 1)
        keep = bad[pos] != ev.subject_id
        if not bool(keep.all()):
            ev = ev.take(np.flatnonzero(keep))
    return ev


def unit_visits(table: pa.Table, spec: EncodeSpec) -> GroupedUnit:
    """Visits, labels and rejects of one unit's rows (every row of its subjects).

    On the calendar axis (``spec.task``) a row is a sample (subject, prediction time): its
    visits are the subject's records up to the prediction time, its labels the days to the
    event or censoring (``visits.extra``), and a rejected sample's reason names its
    prediction time.
    """
    ev = _events(table, spec)
    if spec.task is None:
        out = _outcome_arrays(spec.outcomes) if spec.outcomes else None
        return group_visits(ev, out, spec.granularity)
    task = spec.task
    labels = _label_arrays(task.labels) if task.labels else None
    table = _outcome_arrays(task.outcomes) if task.outcomes else None
    su = make_samples(ev, task, labels, spec.granularity, table)
    sv = su.visits
    sv.extra = {
        S.PREDICTION_TIME: np.asarray(su.prediction_time_us, dtype=np.int64),
        S.TIME_DAYS: np.asarray(su.time_days, dtype=np.float64),
        S.PREDICTION_AGE: np.asarray(su.prediction_age, dtype=np.float32),
    }
    rj = su.rejects
    rj_sid = np.asarray(rj[S.SUBJECT_ID].to_numpy(zero_copy_only=False), dtype=np.int64)
    when = rj[S.PREDICTION_TIME].cast(pa.string()).to_pylist()
    why = [
        f"{r} (prediction_time {t})"
        for r, t in zip(rj[S.REJECT_REASON].to_pylist(), when, strict=True)
    ]
    return GroupedUnit(sv, ev.dictionary, rj_sid, np.asarray(why, dtype=object))


def encode_unit(
    table: pa.Table, spec: EncodeSpec, vocab: Vocabulary, split: str | None
) -> FlatTokens | VisitTokens:
    """One unit's rows → its subjects' token sequences (flat or hierarchical layout).

    Args:
        table: every row of the unit's subjects (``subject_id``, ``time``, ``code``).
        spec: the encoding parameters.
        vocab: the fitted vocabulary.
        split: keep only this split's subjects; None keeps all.
    """
    if spec.reads_values:
        table = binned_values(table, spec, vocab)
    sv = unit_visits(table, spec).visits
    if split is not None:
        sv = sv.take(np.flatnonzero(subject_split(spec, sv.subject_id) == split))
    ids, _ = vocab.lookup(sv.codes)
    if spec.layout == "hierarchical":
        return to_hierarchical(sv, ids, spec.limits)
    return flatten(sv, ids, spec.limits)


def binned_values(table: pa.Table, spec: EncodeSpec, vocab: Vocabulary) -> pa.Table:
    """The unit's rows with value-bin tokens (:func:`numeric.apply_value_bins`) for the codes
    the vocabulary has bins for; the task's event codes are never binned."""
    edges = vocab_edges(vocab)
    if not edges:
        return table
    exclude = None
    if spec.task is not None:
        col = table[S.CODE]
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if pa.types.is_dictionary(arr.type):
            codes = [*spec.task.event_codes, *([spec.task.at_code] if spec.task.at_code else [])]
            exclude = event_code_mask(tuple(codes), arr.dictionary.cast(pa.string()))
            table = table.set_column(table.schema.get_field_index(S.CODE), S.CODE, arr)
    return apply_value_bins(table, edges, exclude)


def encode_events(
    table: pa.Table, spec: EncodeSpec, vocab: Vocabulary, split: str | None, unit_id: int
) -> pa.Table:
    """:func:`encode_unit` as an Arrow block (one row per subject, :mod:`blocks`)."""
    block = encode_unit(table, spec, vocab, split)
    if isinstance(block, VisitTokens):
        return hier_to_arrow(block, unit_id)
    return flat_to_arrow(block, unit_id)


def bucket_of(subject_id: np.ndarray, k: int) -> np.ndarray:
    """int64 hash bucket in ``[0, k)`` of each subject (hash mode: a bucket is a unit)."""
    return (splitmix64(subject_id.astype(np.int64).view(np.uint64)) % np.uint64(k)).astype(np.int64)


def with_string_codes(table: pa.Table) -> pa.Table:
    """``table`` with its ``code`` column as plain strings (so tables of several files, each
    with its own dictionary, can be concatenated and shuffled)."""
    i = table.schema.get_field_index(S.CODE)
    return table.set_column(i, S.CODE, table[S.CODE].cast(pa.string()))
