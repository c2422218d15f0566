"""Synthetic MEDS cohorts with known per-visit hazards (docs/data.md, docs/design.md §2).

Trajectories follow the seed's realistic generator (the disease patterns and code tables of
:mod:`ehrsurv_dist.data.synth_codes`); outcomes follow the v2 hazard process:
at visit ``t`` the features x1..x5 (chronic count, decayed acute events, comorbid pairs,
log-treatments, age) give ``h_t = sigmoid(α + K·βᵀx_t + frailty)`` where ``K`` is ``signal``.

Adapted to docs/design.md §2: the event (or drop-out) happens in the interval *after* a visit, and no
visit is emitted after it. A subject censored at visit T (drop-out, or the end of its planned
visits) is not observed through the interval after T, so an event drawn for that interval is
not seen: censoring wins the tie, which makes the likelihood of docs/design.md §2 exact for this data.
So the history of subject i is exactly its visits ``0..T_i`` and the true hazards ``h_0..h_T``
are written to ``truth.parquet`` next to the data.

Generation (:mod:`ehrsurv_dist.data.synth_block`) is vectorised over blocks of :data:`BLOCK`
subjects; block ``b`` draws from ``default_rng([seed, b])``, so the output is the same for a
seed whatever the shard count. Shards are written one row group per block (bounded memory).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.config import PRESETS, Preset
from ehrsurv_dist.data.splits import hash_splits
from ehrsurv_dist.data.synth_block import Block, HazardParams, generate_block
from ehrsurv_dist.data.synth_codes import CODE_KIND, CODE_NAMES, KIND_DESCRIPTION, SEX_CODES
from ehrsurv_dist.errors import OutputError

__all__ = [
    "BLOCK",
    "PRESETS",
    "Block",
    "HazardParams",
    "Preset",
    "SynthResult",
    "generate_block",
    "synthesize",
]

BLOCK = 8192


_TS = pa.timestamp("us")


def _block_data_table(b: Block, lo: int, hi: int) -> pa.Table:
    """MEDS rows of subjects ``lo:hi`` of the block: static, birth, then visits (time-sorted)."""
    ids = b.subject_id[lo:hi]
    k = hi - lo
    sel = (b.row_subject >= ids[0]) & (b.row_subject <= ids[-1]) if k else np.zeros(0, bool)
    n_rows = len(ids) * 2 + int(sel.sum())
    subj = np.concatenate([ids, ids, b.row_subject[sel]])
    # static rows have a null time; use a mask
    time = np.concatenate([np.zeros(k, np.int64), b.birth_us[lo:hi], b.row_time_us[sel]])
    time_null = np.zeros(n_rows, bool)
    time_null[:k] = True
    sex_code = np.where(b.sex[lo:hi] == 0, len(CODE_NAMES), len(CODE_NAMES) + 1)
    code_idx = np.concatenate([sex_code, np.full(k, len(CODE_NAMES) + 2), b.row_code[sel]])
    value = np.concatenate([np.full(2 * k, np.nan, np.float32), b.row_value[sel]])
    # order: per subject: static first, then birth, then events (already time-ordered)
    group = np.concatenate([np.zeros(k), np.ones(k), np.full(int(sel.sum()), 2)])
    order = np.lexsort((np.arange(n_rows), group, subj))
    all_names = [*CODE_NAMES, *SEX_CODES, S.BIRTH_CODE]
    return meds_rows_table(
        subj[order], time[order], time_null[order], code_idx[order], value[order], all_names
    )


def meds_rows_table(
    subject: np.ndarray,
    time_us: np.ndarray,
    time_null: np.ndarray,
    code_idx: np.ndarray,
    value: np.ndarray,
    names: list[str],
) -> pa.Table:
    """A MEDS data table (``meds.DataSchema`` without ``text_value``) from rows in final order.

    Args:
        subject: int64 [R] subject ids.
        time_us: int64 [R] µs since the epoch (ignored where ``time_null``).
        time_null: bool [R] True = static row (null time).
        code_idx: int [R] indices into ``names``.
        value: float32 [R] numeric values, NaN = null.
        names: the code strings.
    """
    codes = pa.DictionaryArray.from_arrays(
        pa.array(code_idx.astype(np.int32)), pa.array(names)
    ).cast(pa.string())
    tarr = pa.array(time_us, type=pa.int64(), mask=time_null).cast(_TS)
    varr = pa.array(value, type=pa.float32(), mask=np.isnan(value))
    return pa.table(
        {S.SUBJECT_ID: pa.array(subject), S.TIME: tarr, S.CODE: codes, S.NUMERIC_VALUE: varr},
        schema=meds.DataSchema.schema().remove(
            meds.DataSchema.schema().get_field_index("text_value")
        ),
    )


def _block_outcomes(b: Block) -> pa.Table:
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(b.subject_id),
            S.OUTCOME_EVENT: pa.array(b.event),
            S.OUTCOME_TIME: pa.array(b.outcome_us, type=pa.int64()).cast(_TS),
        }
    )


def _block_truth(b: Block) -> pa.Table:
    off = pa.array(b.hazard_offsets.astype(np.int32))
    return pa.table(
        {
            S.SUBJECT_ID: pa.array(b.subject_id),
            S.TRUTH_HAZARD: pa.ListArray.from_arrays(off, pa.array(b.hazard)),
            S.TRUTH_HAZARD_OBSERVABLE: pa.ListArray.from_arrays(off, pa.array(b.hazard_observable)),
        }
    )


@dataclass
class SynthResult:
    out: str
    subjects: int
    shards: int
    rows: int
    seconds: float


class ParquetStream:
    """Row groups streamed into one Parquet file through ``atomic.atomic_path``.

    The file opens at the first write (the schema is the first table's) and belongs to
    ``files``: closing that stack renames it into place, unwinding it on an error removes it.
    """

    def __init__(self, files: ExitStack, path: str) -> None:
        self.files = files
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            tmp = self.files.enter_context(atomic.atomic_path(self.path))
            self.writer = self.files.enter_context(pq.ParquetWriter(tmp, table.schema))
        self.writer.write_table(table)


class ShardRouter:
    """Data shards filled in subject order: each block's rows go to the shards whose subject
    ranges (``bounds``, positions of the cohort's subjects) it overlaps. One shard is open at a
    time and is finished (closed and renamed) when the next one starts or on :meth:`close`; on
    failure ``files`` removes the open one, so only finished shards remain.
    """

    def __init__(self, files: ExitStack, out: str, bounds: np.ndarray) -> None:
        self.files = files.enter_context(ExitStack())
        self.out = out
        self.bounds = bounds
        self.shard: ParquetStream | None = None
        self.open_shard = -1
        self.rows = 0

    def write(self, lo: int, hi: int, table: Callable[[int, int], pa.Table]) -> None:
        """Write the block of subject positions ``[lo, hi)``; ``table(a, b)`` gives the MEDS rows
        of positions ``[a, b)``."""
        for sh in range(len(self.bounds) - 1):
            a, b = max(int(self.bounds[sh]), lo), min(int(self.bounds[sh + 1]), hi)
            if a >= b:
                continue
            tbl = table(a, b)
            self.rows += tbl.num_rows
            if self.shard is None or sh != self.open_shard:
                self.files.close()
                path = os.path.join(self.out, S.DATA_SUBDIR, f"shard_{sh:04d}.parquet")
                self.shard, self.open_shard = ParquetStream(self.files, path), sh
            self.shard.write(tbl)

    def close(self) -> None:
        """Finish the open shard."""
        self.files.close()


def _block_rows_between(blk: Block, lo: int, a: int, b: int) -> pa.Table:
    """The MEDS rows of the block's subjects at cohort positions ``[a, b)`` (the block starts at
    position ``lo``)."""
    return _block_data_table(blk, a - lo, b - lo)


def _write_blocks(
    out: str,
    n_total: int,
    k_shards: int,
    seed: int,
    max_visits: int,
    hp: HazardParams,
    progress: Callable[[int], None] | None,
) -> tuple[list[pa.Table], int]:
    """Generate block by block; stream data shards and truth.parquet one row group per block.

    Shards fill in order, so a shard is finished (closed and renamed) when the next one starts;
    on failure the open files are removed and only finished shards remain.

    Returns:
        The outcome table of every block, and the number of data rows written.
    """
    first_id = 10_001
    bounds = np.linspace(0, n_total, k_shards + 1).astype(np.int64)  # shard subject ranges
    outcomes: list[pa.Table] = []
    with ExitStack() as files:
        truth = ParquetStream(files, os.path.join(out, S.TRUTH_FILE))
        shards = ShardRouter(files, out, bounds)
        for bi in range(-(-n_total // BLOCK)):
            lo_g, hi_g = bi * BLOCK, min((bi + 1) * BLOCK, n_total)
            blk = generate_block(bi, hi_g - lo_g, first_id + lo_g, seed, max_visits, hp)
            outcomes.append(_block_outcomes(blk))
            truth.write(_block_truth(blk))
            shards.write(lo_g, hi_g, functools.partial(_block_rows_between, blk, lo_g))
            if progress is not None:
                progress(hi_g - lo_g)
        shards.close()  # the last shard before truth.parquet, as shards always come first
    return outcomes, shards.rows


def code_descriptions() -> tuple[list[str], list[str]]:
    """The visit-axis generator's codes (disease patterns, routine, sex) and their descriptions."""
    descs = [
        f"{KIND_DESCRIPTION[CODE_KIND[i]]} code {CODE_NAMES[i]}" for i in range(len(CODE_NAMES))
    ]
    return [*CODE_NAMES, *SEX_CODES], [*descs, "sex: female", "sex: male"]


def write_metadata(
    out: str,
    ids: np.ndarray,
    dataset_name: str,
    dataset_version: str,
    codes: tuple[list[str], list[str]] | None = None,
) -> None:
    """metadata/: subject splits, the code table and dataset.json, each validated by ``meds``.

    Args:
        ids: int64 [N] every subject id.
        codes: (code strings, descriptions) of codes.parquet; default :func:`code_descriptions`.
    """
    splits = pa.table(
        {S.SUBJECT_ID: pa.array(ids), S.SPLIT: pa.array(hash_splits(ids).tolist(), pa.string())}
    )
    meds.SubjectSplitSchema.validate(splits)
    atomic.write_parquet(splits, os.path.join(out, S.SUBJECT_SPLITS_PATH))
    all_names, descs = codes if codes is not None else code_descriptions()
    codes_t = pa.table(
        {
            "code": pa.array(all_names, pa.string()),
            "description": pa.array(descs, pa.string()),
            "parent_codes": pa.array([[] for _ in all_names], pa.list_(pa.string())),
        }
    )
    meds.CodeMetadataSchema.validate(codes_t)
    atomic.write_parquet(codes_t, os.path.join(out, S.CODE_METADATA_PATH))
    meta = {
        "dataset_name": dataset_name,
        "dataset_version": dataset_version,
        "etl_name": "ehrsurv synth",
        "etl_version": package_version(),
        "meds_version": meds.__version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(),
    }
    meds.DatasetMetadataSchema.validate(meta)
    atomic.write_json(meta, os.path.join(out, S.DATASET_METADATA_PATH))


def synthesize(
    out: str,
    preset: str = "smoke",
    subjects: int | None = None,
    seed: int = 42,
    shards: int | None = None,
    signal: float = 1.0,
    frailty: float = 0.5,
    dropout: float = 0.04,
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write a synthetic MEDS cohort to ``out`` (which must not hold files already).

    Layout: ``data/shard_KKKK.parquet``, ``metadata/{codes,subject_splits}.parquet``,
    ``metadata/dataset.json``, ``outcomes.parquet``, ``truth.parquet``. Every file is written
    under a temporary name and renamed when complete.
    """
    t0 = time.perf_counter()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if preset == "long":
        raise ValueError(
            "preset 'long' is a calendar-axis cohort (ehrsurv synth --preset long, "
            "synth_calendar.synthesize_calendar); the visit axis has no long preset"
        )
    p = PRESETS[preset]
    n_total = int(subjects if subjects is not None else p.subjects)
    if n_total < 1:
        raise ValueError("subjects must be >= 1")
    k_shards = int(shards if shards is not None else max(p.shards, -(-n_total // 250_000)))
    k_shards = max(1, min(k_shards, n_total))
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"output directory {out} is not empty; choose a new --out")
    os.makedirs(os.path.join(out, S.DATA_SUBDIR), exist_ok=True)
    os.makedirs(os.path.join(out, "metadata"), exist_ok=True)
    hp = HazardParams(signal=signal, frailty_sd=frailty, dropout_per_visit=dropout)
    outcomes, rows = _write_blocks(out, n_total, k_shards, seed, p.max_visits, hp, progress)

    out_t = pa.concat_tables(outcomes)
    atomic.write_parquet(out_t, os.path.join(out, S.OUTCOMES_FILE))
    write_metadata(
        out,
        np.asarray(out_t[S.SUBJECT_ID].to_numpy()),
        f"ehrsurv-synth-{preset}",
        f"seed{seed}-n{n_total}-signal{signal:g}-frailty{frailty:g}",
    )
    return SynthResult(out, n_total, k_shards, rows, time.perf_counter() - t0)


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ehrsurv_dist")
    except Exception:
        return "0+unknown"
