"""Ingest: a MEDS cohort streamed into fixed-shape training batches, on Ray Data or in one process.

This is the only data module that uses Ray (imported lazily, so the single-process reference
path runs without it). Both paths run the same pure functions on the same **units** of work and
so produce bit-identical tensors and the same batches:

    units (plan_units) ──► read + group + label + vocab + truncate + flatten (encode_unit)
          │                     a Ray Data map task per balanced run of units, or a plain loop
          ├──► epoch-independent dataset: compact blocks, one Arrow row per subject (list
          │    columns, never ragged numpy); the consumer buckets, pads and masks
          └──► epoch-specific dataset: the task also buckets, pads and masks (collate_unit);
               blocks carry finished batches as aligned binary buffers (one row per unit)
          ▼
    collate.batches_from_blocks: fixed-shape numpy batches, always-on checks on the first ones

**Units.** MEDS shards normally hold whole subjects, sorted. When the Parquet row-group statistics
prove that subject-id ranges do not overlap, a unit is a run of row groups of one file (about
``rows_per_unit`` rows, no shuffle). Otherwise, when validation found no subject in two shards, a
unit is a file. Otherwise (a subject spans shards) the rows are hash-partitioned by subject into
buckets: on Ray with a shuffle and ``groupby(bucket).map_groups`` (correct, slower), in one
process by reading everything. The order of appearance of the rows (file, row) is carried along,
so codes keep their order within a visit on every path. Units decide the batches; how they are
grouped into Ray tasks (:func:`task_groups`) only decides the scheduling.

**Epochs.** Everything that changes per epoch (subject shuffle, length bucketing, batch order, MLM
masks) is a function of (seed, epoch, unit, subject), so it can run on the worker (an
epoch-specific dataset, :meth:`IngestPipeline.iter_ray_batches`' default) or on the consumer (one
epoch-independent dataset for every epoch, what Ray Train's ``datasets=`` wants).

**Vocabulary.** :meth:`IngestPipeline.fit` scans every unit once (map: per-unit code counts per
split, rejects, statistics; reduce: sums in the driver, whose memory is bounded by the number of
distinct codes, not by the cohort) and fits the vocabulary on the train counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data import io
from ehrsurv_dist.data.collate import (
    BatchSpec,
    BatchStats,
    Layout,
    PaddedBlock,
    batches_from_blocks,
    collate_block,
    emit_batches,
    padded_to_arrow,
)
from ehrsurv_dist.data.flatten import (
    EventArrays,
    FlatTokens,
    OutcomeArrays,
    Truncation,
    VisitTokens,
    event_arrays,
    flat_to_arrow,
    flatten,
    group_visits,
    hier_to_arrow,
    split_last_visit,
    to_hierarchical,
)
from ehrsurv_dist.data.masking import splitmix64
from ehrsurv_dist.data.meds import CohortReport, data_files, validate_cohort
from ehrsurv_dist.data.splits import hash_splits
from ehrsurv_dist.data.visits import SubjectVisits, select_subjects
from ehrsurv_dist.data.vocab import (
    COUNT_CODE,
    COUNT_VALUE,
    Vocabulary,
    count_codes,
    fit_vocabulary,
    merge_counts,
)
from ehrsurv_dist.errors import CohortError

log = logging.getLogger(__name__)

Mode = Literal["row_groups", "files", "hash"]
READ_COLUMNS = (S.SUBJECT_ID, S.TIME, S.CODE)
ROWS_PER_UNIT = 100_000
BUCKET = "__bucket"
ROW = "__row"
_ROW_SHIFT = 40  # row key = file index << 40 | row in file

# --------------------------------------------------------------------------------------------
# Units


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


def _row_group_ranges(fs: Any, files: list[str]) -> tuple[list[list[tuple[int, int, int]]], bool]:
    """Per file: (num_rows, min subject_id, max subject_id) per row group; stats complete?"""
    out: list[list[tuple[int, int, int]]] = []
    complete = True
    for path in files:
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
        col = md.schema.to_arrow_schema().get_field_index(S.SUBJECT_ID)
        rgs = []
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
    total_rows = sum(file_rows)
    rg_ranges = [(lo, hi) for rgs in per_file for (_, lo, hi) in rgs]
    if complete and _disjoint(rg_ranges):
        # Balanced units: each file gets ceil(rows / rows_per_unit) units; a row group goes to
        # the unit its middle row falls in (contiguous runs of row groups, near-equal rows).
        units: list[Unit] = []
        for fi, (path, rgs) in enumerate(zip(files, per_file, strict=True)):
            n_rows = file_rows[fi]
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
        return UnitPlan("row_groups", files, units, reason="row-group subject ranges are disjoint")
    file_ranges = [
        (
            min((lo for _, lo, hi in rgs if lo <= hi), default=0),
            max((hi for *_, hi in rgs), default=-1),
        )
        for rgs in per_file
    ]
    spans = report is not None and any(p.check == "subject_spans_shards" for p in report.problems)
    if (complete and _disjoint(file_ranges)) or (report is not None and not spans):
        units = [
            Unit(i, i, p, None, n) for i, (p, n) in enumerate(zip(files, file_rows, strict=True))
        ]
        return UnitPlan("files", files, units, reason="every subject lies in one shard")
    units = []
    for fi, (path, rgs) in enumerate(zip(files, per_file, strict=True)):
        start = 0
        for i, (n, _, _) in enumerate(rgs):
            units.append(Unit(len(units), fi, path, (i,), n, start))
            start += n
    k = max(1, math.ceil(total_rows / rows_per_unit))
    why = (
        "subjects span shards (validation)"
        if spans
        else "subject ranges overlap and no validation report"
    )
    return UnitPlan("hash", files, units, num_buckets=k, reason=why)


# --------------------------------------------------------------------------------------------
# Per-unit work (pure; runs in Ray tasks and in the reference loop)


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs to turn a unit into a block (picklable).

    Attributes mirror :class:`config.DataConfig`; ``bad_subjects`` are dropped (sorted int64);
    ``splits_path`` is the MEDS split file or None; ``nvp_patient`` drops each subject's last
    visit from the input and ships its codes as the patient-level NVP target.
    """

    cohort: str
    outcomes: str | None
    granularity: str = "day"
    split_seed: int = 0
    splits_path: str | None = None
    bad_subjects: tuple[int, ...] = ()
    layout: Layout = "flat"
    max_seq_len: int = 512
    max_visits: int = 256
    max_codes_per_visit: int = 32
    truncation: Truncation = "keep_recent"
    nvp_patient: bool = False


_CACHE: dict[tuple[str, str], Any] = {}


def _cache_key(kind: str, path: str) -> tuple[str, str]:
    fs, p = io.resolve(path)
    info = fs.get_file_info(p)
    return kind, f"{path}|{info.size}|{info.mtime_ns}"


def _outcome_arrays(path: str) -> OutcomeArrays:
    """The outcome table, read once per process (each Ray worker caches it)."""
    key = _cache_key("outcomes", path)
    if key not in _CACHE:
        from ehrsurv_dist.data.meds import read_outcomes

        _CACHE[key] = OutcomeArrays.from_table(read_outcomes(path))
    return _CACHE[key]  # type: ignore[no-any-return]


def _split_table(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted subject ids, int32 index into names, split names), read once per process."""
    key = _cache_key("splits", path)
    if key not in _CACHE:
        fs, p = io.resolve(path)
        try:
            with fs.open_input_file(p) as f:
                t = pq.read_table(f, columns=[S.SUBJECT_ID, S.SPLIT])
        except Exception as e:
            raise CohortError(f"cannot read splits file {path}: {e}") from None
        sid = np.asarray(t[S.SUBJECT_ID].cast(pa.int64()).to_numpy(zero_copy_only=False))
        enc = pc.dictionary_encode(t[S.SPLIT].cast(pa.string())).combine_chunks()
        idx = np.asarray(pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False), np.int32)
        names = np.asarray(enc.dictionary.to_pylist(), dtype=object)
        order = np.argsort(sid, kind="stable")
        _CACHE[key] = (sid[order], idx[order], names)
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


def read_unit(unit: Unit, cohort: str, with_row: bool = False) -> pa.Table:
    """The unit's rows: ``subject_id``, ``time``, ``code`` (dictionary-encoded), column-pruned.

    Args:
        unit: the unit.
        cohort: the cohort directory or URI (selects the filesystem).
        with_row: add ``__row`` (file index << 40 | row in file): the order of appearance.
    """
    fs, _ = io.resolve(cohort)
    with fs.open_input_file(unit.path) as f:
        pf = pq.ParquetFile(f, read_dictionary=[S.CODE])
        cols = list(READ_COLUMNS)
        if unit.row_groups is None:
            t = pf.read(columns=cols)
        else:
            t = pf.read_row_groups(list(unit.row_groups), columns=cols)
    if with_row:
        rows = (np.int64(unit.file_index) << _ROW_SHIFT) + unit.first_row + np.arange(t.num_rows)
        t = t.append_column(ROW, pa.array(rows, pa.int64()))
    return t


def _events(table: pa.Table, spec: EncodeSpec) -> EventArrays:
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


def _visits(table: pa.Table, spec: EncodeSpec) -> tuple[SubjectVisits, Any]:
    ev = _events(table, spec)
    out = _outcome_arrays(spec.outcomes) if spec.outcomes else None
    gu = group_visits(ev, out, spec.granularity)
    return gu.visits, gu


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
    sv, _ = _visits(table, spec)
    if split is not None:
        sv = select_subjects(sv, np.flatnonzero(subject_split(spec, sv.subject_id) == split))
    if spec.layout == "hierarchical":
        ids, _ = vocab.lookup(sv.codes)
        return to_hierarchical(sv, ids, spec.max_visits, spec.max_codes_per_visit, spec.truncation)
    if spec.nvp_patient:
        hist, tpos, toff = split_last_visit(sv)
        ids, _ = vocab.lookup(sv.codes)
        hids, _ = vocab.lookup(hist.codes)
        ft = flatten(hist, hids, spec.max_seq_len, spec.max_visits, spec.truncation)
        return replace(ft, nvp_codes=ids[tpos], nvp_offsets=toff)
    ids, _ = vocab.lookup(sv.codes)
    return flatten(sv, ids, spec.max_seq_len, spec.max_visits, spec.truncation)


def encode_events(
    table: pa.Table, spec: EncodeSpec, vocab: Vocabulary, split: str | None, unit_id: int
) -> pa.Table:
    """:func:`encode_unit` as a compact wire-format block (one row per subject)."""
    block = encode_unit(table, spec, vocab, split)
    if isinstance(block, VisitTokens):
        return hier_to_arrow(block, unit_id)
    return flat_to_arrow(block, unit_id)


def collate_unit(
    table: pa.Table,
    spec: EncodeSpec,
    vocab: Vocabulary,
    split: str | None,
    unit_id: int,
    batch_spec: BatchSpec,
    epoch: int,
) -> PaddedBlock:
    """:func:`encode_unit`, then bucketed and padded into the epoch's batches."""
    return collate_block(encode_unit(table, spec, vocab, split), batch_spec, epoch, unit_id)


FACTS_SCHEMA = pa.schema(
    [("kind", pa.string()), ("split", pa.string()), ("key", pa.string()), ("value", pa.int64())]
)
STAT_KEYS = (
    "subjects",
    "events",
    "visits",
    "tokens",
    "truncated_flat",
    "truncated_hierarchical",
)


def scan_events(table: pa.Table, spec: EncodeSpec) -> pa.Table:
    """One unit's rows → facts (long format): code counts and statistics per split, rejects.

    Rows: ``kind='count'`` (split, code, count), ``kind='stat'`` (split, name, value),
    ``kind='reject'`` (split null, reason, subject_id).
    """
    sv, gu = _visits(table, spec)
    spl = subject_split(spec, sv.subject_id)
    nv = sv.num_visits
    ntok = sv.code_offsets[sv.visit_offsets[1:]] - sv.code_offsets[sv.visit_offsets[:-1]]
    vsize = np.diff(sv.code_offsets)
    big_visit = np.zeros(len(nv), dtype=bool)
    if len(vsize):
        over = np.concatenate([[0], np.cumsum(vsize > spec.max_codes_per_visit)])
        big_visit = (over[sv.visit_offsets[1:]] - over[sv.visit_offsets[:-1]]) > 0
    trunc_flat = (ntok > spec.max_seq_len) | (nv > spec.max_visits)
    trunc_hier = (nv > spec.max_visits) | big_visit
    parts: list[pa.Table] = []
    for name in S.SPLITS:
        m = spl == name
        if not bool(m.any()):
            continue
        counts = count_codes(sv.codes, np.repeat(m, ntok))
        parts.append(_facts("count", name, counts[COUNT_CODE], counts[COUNT_VALUE]))
        vals = [
            int(m.sum()),
            int(sv.event[m].sum()),
            int(nv[m].sum()),
            int(ntok[m].sum()),
            int(trunc_flat[m].sum()),
            int(trunc_hier[m].sum()),
        ]
        parts.append(_facts("stat", name, pa.array(STAT_KEYS), pa.array(vals, pa.int64())))
    if len(gu.reject_subjects):
        parts.append(
            _facts(
                "reject",
                None,
                pa.array(gu.reject_reasons.tolist(), pa.string()),
                pa.array(gu.reject_subjects, pa.int64()),
            )
        )
    return pa.concat_tables(parts) if parts else FACTS_SCHEMA.empty_table()


def _facts(kind: str, split: str | None, key: Any, value: Any) -> pa.Table:
    n = len(key)
    return pa.table(
        {
            "kind": pa.array([kind] * n, pa.string()),
            "split": pa.array([split] * n, pa.string()),
            "key": pa.array(key, pa.string())
            if not isinstance(key, pa.Array | pa.ChunkedArray)
            else key,
            "value": value,
        },
        schema=FACTS_SCHEMA,
    )


# Ray map functions (module level: pickled by reference) ------------------------------------


def _bucket_of(subject_id: np.ndarray, k: int) -> np.ndarray:
    return (splitmix64(subject_id.astype(np.int64).view(np.uint64)) % np.uint64(k)).astype(np.int64)


def _task_units(batch: pa.Table, plan: UnitPlan, groups: list[list[int]]) -> list[Unit]:
    return [plan.units[u] for t in batch["task"].to_pylist() for u in groups[int(t)]]


def _ray_encode_tasks(
    batch: pa.Table,
    plan: UnitPlan,
    groups: list[list[int]],
    spec: EncodeSpec,
    vocab: Vocabulary,
    split: str | None,
    batch_spec: BatchSpec | None,
    epoch: int | None,
) -> Iterator[pa.Table]:
    """One table per unit (streamed: Ray emits blocks while the task runs)."""
    for u in _task_units(batch, plan, groups):
        table = read_unit(u, spec.cohort)
        if epoch is None or batch_spec is None:  # compact blocks, collated by the consumer
            yield encode_events(table, spec, vocab, split, u.unit_id)
        else:
            pb = collate_unit(table, spec, vocab, split, u.unit_id, batch_spec, epoch)
            yield padded_to_arrow([(u.unit_id, pb)])


def _ray_scan_tasks(
    batch: pa.Table, plan: UnitPlan, groups: list[list[int]], spec: EncodeSpec
) -> pa.Table:
    return pa.concat_tables(
        [scan_events(read_unit(u, spec.cohort), spec) for u in _task_units(batch, plan, groups)]
    )


def _ray_read_bucketed(
    batch: pa.Table, plan: UnitPlan, groups: list[list[int]], cohort: str
) -> pa.Table:
    parts = []
    for u in _task_units(batch, plan, groups):
        t = read_unit(u, cohort, with_row=True)
        t = t.set_column(t.schema.get_field_index(S.CODE), S.CODE, t[S.CODE].cast(pa.string()))
        sid = np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64)
        parts.append(t.append_column(BUCKET, pa.array(_bucket_of(sid, plan.num_buckets))))
    return pa.concat_tables(parts)


def _ray_encode_group(
    group: pa.Table,
    spec: EncodeSpec,
    vocab: Vocabulary,
    split: str | None,
    batch_spec: BatchSpec | None,
    epoch: int | None,
) -> pa.Table:
    unit = int(group[BUCKET][0].as_py())
    table = group.drop_columns([BUCKET])
    if epoch is None or batch_spec is None:
        return encode_events(table, spec, vocab, split, unit)
    return padded_to_arrow(
        [(unit, collate_unit(table, spec, vocab, split, unit, batch_spec, epoch))]
    )


def _ray_scan_group(group: pa.Table, spec: EncodeSpec) -> pa.Table:
    return scan_events(group.drop_columns([BUCKET]), spec)


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


# --------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class IngestFit:
    """What :meth:`IngestPipeline.fit` learned from one scan of the cohort.

    Attributes:
        vocab: the vocabulary (fitted on train, or the one passed in).
        code_counts: per split, the ``code``/``count`` table of input tokens (before
            truncation).
        stats: per split, ``subjects``, ``events``, ``visits``, ``tokens``,
            ``truncated_flat`` (subjects cut by max_seq_len/max_visits),
            ``truncated_hierarchical`` (cut by max_visits/max_codes_per_visit),
            ``unknown_tokens`` (tokens that map to UNK).
        rejects: ``subject_id``, ``reason`` of every dropped subject.
    """

    vocab: Vocabulary
    code_counts: dict[str, pa.Table]
    stats: dict[str, dict[str, int]]
    rejects: pa.Table

    def summary(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab.size,
            "vocab_hash": self.vocab.hash,
            "rejects": self.rejects.num_rows,
            "splits": self.stats,
        }


class IngestPipeline:
    """A MEDS cohort → per-split batch streams, on Ray Data or in one process.

    Args:
        cohort: cohort directory or pyarrow filesystem URI.
        data: the data configuration (``DataConfig``); defaults if None.
        layout: ``flat`` (BEHRT, seed-spec §1.4) or ``hierarchical`` (§1.5).
        seed: seed of the shuffles and MLM masks.
        window_batches: batches per length-sorting window (None: ``data.window_batches``).
        pad_multiple: each batch's padded length is a multiple of this (None: ``data``'s,
            resolved for CPU; the training launcher passes the value for its device).
        mlm: add MLM masks (``codes`` masked, ``mlm_labels``).
        nvp_patient: patient-level NVP (bidirectional): input = all visits but the last,
            ``nvp_targets`` = multi-hot of the last visit's codes (flat layout).
        rows_per_unit: target rows per unit of work.
        check_batches: contract checks on this many first batches of each iteration (-1: all).
        report: a validation report to reuse; None runs :func:`meds.validate_cohort`.
        require_outcomes: False for pretraining without an outcome table.
        ray_remote_args: extra arguments of the Ray Data map tasks (``num_cpus``, ``memory``,
            ...).
        tasks_per_cpu: Ray tasks per cluster CPU (each processes a balanced run of units).
        max_rows_per_task: more tasks if a task would read more rows than this (memory bound).
        block_bytes: target size of the Ray blocks the tasks emit (``target_max_block_size``).
        vocab: a vocabulary to use without :meth:`fit` (e.g. the one saved with a run).

    Raises:
        CohortError: the cohort is unusable (as ``CohortReport.raise_if_unusable``).
    """

    def __init__(
        self,
        cohort: str,
        data: DataConfig | None = None,
        *,
        layout: Layout = "flat",
        seed: int = 0,
        window_batches: int | None = None,
        pad_multiple: int | None = None,
        mlm: bool = False,
        nvp_patient: bool = False,
        rows_per_unit: int = ROWS_PER_UNIT,
        check_batches: int = 8,
        report: CohortReport | None = None,
        require_outcomes: bool = True,
        ray_remote_args: dict[str, Any] | None = None,
        tasks_per_cpu: int = 1,
        max_rows_per_task: int = 4_000_000,
        block_bytes: int = 8 << 20,
        vocab: Vocabulary | None = None,
    ) -> None:
        self.cohort = cohort
        self.data = data or DataConfig(cohort=cohort)
        if nvp_patient and layout != "flat":
            raise ValueError("nvp_patient needs the flat layout")
        if report is None:
            report = validate_cohort(
                cohort, self.data.outcomes, self.data.granularity, require_outcomes=require_outcomes
            )
        report.raise_if_unusable(self.data.drop_bad_subjects)
        self.report = report
        self.plan = plan_units(cohort, report, rows_per_unit)
        fs, root = io.resolve(cohort)
        sp = io.join(root, S.SUBJECT_SPLITS_PATH)
        splits_path = (
            sp if "://" not in cohort else cohort.rstrip("/") + "/" + S.SUBJECT_SPLITS_PATH
        )
        self.spec = EncodeSpec(
            cohort=cohort,
            outcomes=report.outcomes,
            granularity=self.data.granularity,
            split_seed=self.data.split_seed,
            splits_path=splits_path if io.exists(fs, sp) else None,
            bad_subjects=tuple(sorted(int(s) for s in report.bad_subjects)),
            layout=layout,
            max_seq_len=self.data.max_seq_len,
            max_visits=self.data.max_visits,
            max_codes_per_visit=self.data.max_codes_per_visit,
            truncation=self.data.truncation,
            nvp_patient=nvp_patient,
        )
        self.layout: Layout = layout
        self.seed = seed
        self.window_batches = window_batches or self.data.window_batches
        self.pad_multiple = pad_multiple or self.data.resolved_pad_multiple(use_gpu=False)
        self.mlm = mlm
        self.check_batches = check_batches
        self.ray_remote_args = dict(ray_remote_args or {})
        self.tasks_per_cpu = max(1, tasks_per_cpu)
        self.block_bytes = max(1, block_bytes)
        self.max_rows_per_task = max(1, max_rows_per_task)
        self.vocab: Vocabulary | None = vocab
        self.fitted: IngestFit | None = None
        log.info(
            "ingest plan: %s units (%s: %s)", self.plan.num_units, self.plan.mode, self.plan.reason
        )

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        vocab: Vocabulary | None = None,
        *,
        use_ray: bool = False,
        vocab_path: str | None = None,
        rejects_path: str | None = None,
    ) -> IngestFit:
        """Scan every unit once: vocabulary (train split only), statistics, rejects.

        Args:
            vocab: reuse this vocabulary (fine-tuning on a pretrained one); None fits one.
            use_ray: run the map step as Ray Data tasks (the reduce is the same).
            vocab_path: save the vocabulary JSON here (atomically).
            rejects_path: write the rejects Parquet here (atomically) if any subject is dropped.
        """
        facts = self._scan_ray() if use_ray else self._scan_single()
        counts: dict[str, list[pa.Table]] = {s: [] for s in S.SPLITS}
        stats: dict[str, dict[str, int]] = {s: dict.fromkeys(STAT_KEYS, 0) for s in S.SPLITS}
        rej_sid: list[np.ndarray] = []
        rej_why: list[list[str]] = []
        for t in facts:
            kind = np.asarray(t["kind"].to_pylist(), dtype=object)
            for name in S.SPLITS:
                sel = (kind == "count") & (np.asarray(t["split"].to_pylist(), dtype=object) == name)
                if bool(sel.any()):
                    sub = t.filter(pa.array(sel))
                    counts[name].append(
                        pa.table({COUNT_CODE: sub["key"], COUNT_VALUE: sub["value"]})
                    )
                    if len(counts[name]) >= 64:  # bound the driver's memory: merge as we go
                        counts[name] = [merge_counts(counts[name])]
            st = t.filter(pa.array(kind == "stat"))
            for split, key, value in zip(
                st["split"].to_pylist(), st["key"].to_pylist(), st["value"].to_pylist(), strict=True
            ):
                stats[split][key] += int(value)
            rj = t.filter(pa.array(kind == "reject"))
            if rj.num_rows:
                rej_sid.append(np.asarray(rj["value"].to_numpy(), dtype=np.int64))
                rej_why.append(rj["key"].to_pylist())
        merged = {s: merge_counts(c) for s, c in counts.items()}
        if vocab is None:
            vocab = fit_vocabulary(
                merged[S.TRAIN_SPLIT],
                self.data.min_count,
                self.data.max_vocab_size,
                meta={"cohort": self.cohort, "fitted_on": S.TRAIN_SPLIT},
            )
        for s, c in merged.items():
            ids, _ = vocab.lookup(c[COUNT_CODE])
            n = np.asarray(c[COUNT_VALUE].to_numpy(), dtype=np.int64)
            stats[s]["unknown_tokens"] = int(n[ids == S.UNK_ID].sum())
        bad = self.report.bad_subjects
        sid = np.concatenate([np.array(sorted(bad), dtype=np.int64), *rej_sid])
        why = [bad[int(s)] for s in sorted(bad)] + [w for ws in rej_why for w in ws]
        order = np.argsort(sid, kind="stable")
        rejects = pa.table(
            {
                S.SUBJECT_ID: pa.array(sid[order], pa.int64()),
                S.REJECT_REASON: pa.array([why[i] for i in order], pa.string()),
            }
        )
        if rejects.num_rows:
            log.warning("dropped %d subject(s); reasons are in the rejects file", rejects.num_rows)
            if rejects_path is not None:
                atomic.write_parquet(rejects, rejects_path)
        if vocab_path is not None:
            vocab.save(vocab_path)
        self.vocab = vocab
        self.fitted = IngestFit(vocab, merged, stats, rejects)
        return self.fitted

    def _scan_single(self) -> Iterator[pa.Table]:
        for unit_id, table in self._unit_tables():
            del unit_id
            yield scan_events(table, self.spec)

    def _scan_ray(self) -> Iterator[pa.Table]:
        ds = self._ray_map(_ray_scan_tasks, _ray_scan_group, {"spec": self.spec})
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")

    # -- batches ---------------------------------------------------------------------------
    def batch_spec(self, batch_size: int | None = None, **overrides: Any) -> BatchSpec:
        """The consumer-side parameters (pass it to :func:`collate.batches_from_blocks`)."""
        vs = self._vocab().size
        spec = BatchSpec(
            layout=self.layout,
            batch_size=batch_size or self.data.batch_size,
            window_batches=self.window_batches,
            pad_multiple=self.pad_multiple,
            max_seq_len=self.data.max_seq_len,
            max_visits=self.data.max_visits,
            max_codes_per_visit=self.data.max_codes_per_visit,
            seed=self.seed,
            mlm_vocab_size=vs if self.mlm else None,
            nvp_vocab_size=vs if self.spec.nvp_patient else None,
            check_batches=self.check_batches,
        )
        return replace(spec, **overrides) if overrides else spec

    def _vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise RuntimeError("call fit() (or pass a vocabulary to fit) before reading batches")
        return self.vocab

    def _unit_tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(unit id, every row of the unit's subjects), in unit order, one process."""
        if self.plan.mode != "hash":
            for u in self.plan.units:
                yield u.unit_id, read_unit(u, self.cohort)
            return
        # Hash buckets: every shard contributes to every bucket; read them all (reference path).
        tables = [read_unit(u, self.cohort, with_row=True) for u in self.plan.units]
        t = pa.concat_tables([x.cast(tables[0].schema) for x in tables]) if tables else None
        if t is None:
            return
        t = t.set_column(t.schema.get_field_index(S.CODE), S.CODE, t[S.CODE].cast(pa.string()))
        b = _bucket_of(
            np.asarray(t[S.SUBJECT_ID].to_numpy(), dtype=np.int64), self.plan.num_buckets
        )
        for k in range(self.plan.num_buckets):
            rows = np.flatnonzero(b == k)
            if len(rows):
                yield k, t.take(pa.array(rows))

    def blocks(self, split: str | None) -> Iterator[pa.Table]:
        """Wire-format blocks of ``split`` (None = all subjects), one process, unit order."""
        vocab = self._vocab()
        for unit_id, table in self._unit_tables():
            yield encode_events(table, self.spec, vocab, split, unit_id)

    def iter_batches(
        self,
        split: str | None,
        epoch: int = 0,
        *,
        batch_size: int | None = None,
        stats: BatchStats | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """The single-process reference path: plain Python over the Parquet files.

        Yields the same batches as :meth:`iter_ray_batches` for the same split, seed and epoch
        (the batch order may differ, since Ray delivers units as they finish).
        """
        spec = self.batch_spec(batch_size)
        vocab = self._vocab()
        st = stats if stats is not None else BatchStats()
        for unit_id, table in self._unit_tables():
            block = encode_unit(table, self.spec, vocab, split)
            yield from emit_batches(collate_block(block, spec, epoch, unit_id), spec, st)

    # -- Ray -------------------------------------------------------------------------------
    def _num_tasks(self) -> int:
        """Tasks per dataset: ``tasks_per_cpu`` per cluster CPU, more if tasks would exceed
        ``max_rows_per_task`` rows. Few, balanced tasks: Ray Data adds a fixed cost per task and
        delivers outputs in ~100 ms scheduling rounds."""
        import ray

        cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1
        total = sum(u.num_rows for u in self.plan.units)
        return max(cpus * self.tasks_per_cpu, math.ceil(total / self.max_rows_per_task))

    def _ray_map(self, task_fn: Any, group_fn: Any, kwargs: dict[str, Any]) -> Any:
        """Units → Ray Data map tasks (a balanced run of units per task); in hash mode, read
        tasks, then a shuffle on the bucket and one ``map_groups`` call per bucket."""
        import ray.data
        from ray.data.context import ShuffleStrategy

        groups = task_groups(self.plan, self._num_tasks())
        items = [{"task": i} for i in range(len(groups))]
        ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
        common = {"plan": self.plan, "groups": groups}
        if self.plan.mode != "hash":
            ds = ds.map_batches(
                task_fn,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={**common, **kwargs},
                **self.ray_remote_args,
            )
            # One map operator, nothing to reserve CPUs for: with reservations on, Ray Data
            # caps this map at one task at a time on a small (2-CPU) cluster (measured: 10
            # tasks of 50 ms ran one after another in 0.84 s; 0.40 s without reservations).
            ds.context.op_resource_reservation_enabled = False
            # Small blocks: a task's units leave as they are done (the consumer starts early
            # and its memory does not grow with the task). Ray only cuts a block between
            # rows: units of padded blocks, subjects of compact ones (reassembled downstream).
            ds.context.target_max_block_size = self.block_bytes
            return ds
        ds = ds.map_batches(
            _ray_read_bucketed,
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={**common, "cohort": self.cohort},
            **self.ray_remote_args,
        )
        # A sort-based shuffle: on small and mid-size cohorts it starts in a fraction of the
        # time of the actor-based hash shuffle (0.5 s vs 4-11 s on the test cohort, 2 CPUs).
        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        return ds.groupby(BUCKET, num_partitions=self.plan.num_buckets).map_groups(
            group_fn, batch_format="pyarrow", fn_kwargs=kwargs, **self.ray_remote_args
        )

    def dataset(
        self, split: str | None, epoch: int | None = None, *, batch_size: int | None = None
    ) -> Any:
        """A lazy Ray Dataset of ``split`` (None = all subjects).

        Args:
            split: split name, or None for every subject.
            epoch: None: compact blocks (one row per subject, epoch-independent), so one dataset
                serves every epoch and can be passed to Ray Train's ``datasets=``; batches come
                from ``collate.batches_from_blocks(blocks, self.batch_spec(), epoch)`` on the
                consumer (see :func:`iter_shard_batches`). An int: the workers also bucket, pad
                and mask for that epoch, and the blocks carry finished batches (the consumer
                only slices views).
            batch_size: override ``data.batch_size`` (with ``epoch``).
        """
        bspec = self.batch_spec(batch_size) if epoch is not None else None
        kwargs = {
            "spec": self.spec,
            "vocab": self._vocab(),
            "split": split,
            "batch_spec": bspec,
            "epoch": epoch,
        }
        return self._ray_map(_ray_encode_tasks, _ray_encode_group, kwargs)

    def iter_ray_batches(
        self,
        split: str | None,
        epoch: int = 0,
        *,
        dataset: Any = None,
        batch_size: int | None = None,
        collate_on: Literal["workers", "consumer"] = "workers",
        prefetch_blocks: int = 2,
        stats: BatchStats | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``split`` through Ray Data (needs ``ray.init`` first).

        Args:
            split: split name, or None for all subjects.
            epoch: selects fresh shuffles and masks.
            dataset: a dataset (or a Ray Train shard / ``DataIterator``) from :meth:`dataset`;
                built if None. An epoch-specific dataset must have been built for ``epoch``.
            batch_size: override ``data.batch_size``.
            collate_on: ``workers`` (default): bucketing, padding and masking run in the Ray
                tasks; ``consumer``: here, from compact blocks.
            prefetch_blocks: blocks Ray prefetches ahead of the consumer.
            stats: filled while iterating.
        """
        if dataset is None:
            dataset = self.dataset(
                split, epoch if collate_on == "workers" else None, batch_size=batch_size
            )
        yield from batches_from_blocks(
            shard_blocks(dataset, prefetch_blocks), self.batch_spec(batch_size), epoch, stats
        )


def shard_blocks(shard: Any, prefetch_blocks: int = 2) -> Iterator[pa.Table]:
    """The blocks of a dataset or shard, whole, as Arrow tables (one Ray Data execution)."""
    return shard.iter_batches(  # type: ignore[no-any-return]
        batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_blocks
    )


def iter_shard_batches(
    shard: Any, spec: BatchSpec, epoch: int, prefetch_blocks: int = 2
) -> Iterable[dict[str, np.ndarray]]:
    """Batches from a Ray Train dataset shard (``ray.train.get_dataset_shard``)."""
    return batches_from_blocks(shard_blocks(shard, prefetch_blocks), spec, epoch)


class KeptShard:
    """A dataset shard whose blocks are the same at every read: read through Ray Data once,
    then kept in this process (within a byte budget) and read from there.

    Every ``iter_batches`` over a shard starts a Ray Data execution in the calling process (an
    executor thread, iterator and prefetcher threads, calls to Ray Data's stats actor), even
    when the dataset is materialised and the execution only hands over the same blocks again.
    In a training worker those threads take the GIL from the training thread (measured in
    docs/benchmarks.md). For a shard that is the same every epoch (a materialised split that is
    not split between workers: the train split of a 1-worker run, every worker's validation
    split), the blocks of the first complete read are kept: Arrow tables that reference the
    object store's copies, so keeping them costs no copy, but pins them (they cannot be spilled
    while kept). A shard whose blocks add up to more than ``max_bytes`` is not kept and is read
    through Ray Data every time; so is one whose read stopped early.

    Args:
        shard: a Ray Data ``DataIterator`` (or dataset) of compact, epoch-independent blocks.
        max_bytes: keep the blocks only if they add up to at most this (0 = never keep).
        prefetch_blocks: blocks Ray prefetches ahead while reading through Ray Data.
    """

    def __init__(self, shard: Any, max_bytes: int, prefetch_blocks: int = 2) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._shard = shard
        self._max_bytes = max_bytes
        self._prefetch_blocks = prefetch_blocks
        self._kept: list[pa.Table] | None = None
        self.reads = 0  # reads that went through Ray Data

    @property
    def kept(self) -> bool:
        """Whether the blocks are kept (later reads do not go through Ray Data)."""
        return self._kept is not None

    def blocks(self) -> Iterator[pa.Table]:
        """The shard's blocks, from memory once kept."""
        if self._kept is not None:
            yield from self._kept
            return
        self.reads += 1
        keep: list[pa.Table] | None = [] if self._max_bytes > 0 else None
        size = 0
        for table in shard_blocks(self._shard, self._prefetch_blocks):
            if keep is not None:
                size += table.nbytes
                if size <= self._max_bytes:
                    keep.append(table)
                else:
                    keep = None  # too large: read through Ray Data every time
            yield table
        if keep is not None:  # reached only when the read was complete
            self._kept = keep

    def batches(self, spec: BatchSpec, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``epoch``, as :func:`iter_shard_batches` makes them."""
        return batches_from_blocks(self.blocks(), spec, epoch)


__all__ = [
    "EncodeSpec",
    "IngestFit",
    "IngestPipeline",
    "KeptShard",
    "Unit",
    "UnitPlan",
    "collate_unit",
    "encode_events",
    "encode_unit",
    "iter_shard_batches",
    "plan_units",
    "read_unit",
    "scan_events",
    "shard_blocks",
    "subject_split",
    "task_groups",
]
