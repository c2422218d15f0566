"""Messy real extracts (issue 19) through the real ingest: a cohort that validates never fails
in ingest on its schema, and validate and ingest agree on random schema variants.

Shards written by different tools (``timestamp[ms, tz=UTC]`` times and ``large_string`` codes
in a refresh, ns times, dictionary-encoded codes, int32 ids, ...) are normalised once at the
reader (``data/normalize.py``), so the Ray Data path sees one schema (it used to die with
"Failed to unify schemas" when the blocks were shuffled) and the batches are those of the
same cohort written with the MEDS types.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data.encode import read_unit
from ehrsurv_dist.data.meds import validate_cohort
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.plan import plan_units
from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.errors import CohortError
from ehrsurv_dist.testing import drift_shards

pytestmark = pytest.mark.integration

Row = tuple[bytes, ...]
MEDS_TYPES = {"time_type": pa.timestamp("us"), "code_type": pa.string(), "id_type": pa.int64()}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("messy") / "base")
    synthesize(out, "smoke", subjects=200, shards=1, seed=7)
    return out


def _copy(src: str, dst: Path) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _per_subject(batches: Any) -> dict[int, Row]:
    """subject_id -> bytes of its real tokens and labels (independent of padding width)."""
    out: dict[int, Row] = {}
    for b in batches:
        n = b[S.ATTENTION_MASK].sum(1)
        for r, s in enumerate(b[S.SUBJECT]):
            out[int(s)] = tuple(
                b[k][r, : n[r]].tobytes() for k in (S.CODES, S.AGES, S.VISIT_IDS)
            ) + tuple(b[k][r].tobytes() for k in (S.LAST_VISIT, S.EVENT, S.NUM_VISITS))
    return out


def _batch_sets(batches: list[dict[str, np.ndarray]]) -> list[tuple[int, ...]]:
    return sorted(tuple(sorted(int(s) for s in b[S.SUBJECT])) for b in batches)


def _collect(batches: Any) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in b.items()} for b in batches]


DATA: dict[str, Any] = {"batch_size": 16, "max_seq_len": 32, "max_visits": 12}


@pytest.mark.parametrize("span", [False, True], ids=["subject_complete", "subject_spans"])
def test_drifted_shards_through_ray_data(
    ray_local: None, base: str, tmp_path: Path, span: bool
) -> None:
    """A refresh shard with ``timestamp[ms, tz=UTC]`` times, ``large_string`` codes and int32
    ids next to a MEDS shard: validate reports it and says OK, and the Ray Data path (fit and
    batches) gives what the same rows written with the MEDS types give."""
    clean = _copy(base, tmp_path / "clean")
    drift_shards(clean, span=span, **MEDS_TYPES)
    drifted = _copy(base, tmp_path / "drifted")
    _, refresh = drift_shards(drifted, span=span)
    rep = validate_cohort(drifted)
    assert rep.ok
    assert [p.file for p in rep.problems if p.check == "normalised"] == [refresh]
    ref = IngestPipeline(clean, DataConfig(cohort=clean, **DATA), rows_per_unit=400)
    got = IngestPipeline(drifted, DataConfig(cohort=drifted, **DATA), rows_per_unit=400)
    assert got.plan.mode == ("hash" if span else "row_groups") == ref.plan.mode
    ref_fit = ref.fit()
    got_fit = got.fit(use_ray=True)
    assert got_fit.vocab.hash == ref_fit.vocab.hash and got_fit.stats == ref_fit.stats
    for split in (S.TRAIN_SPLIT, S.TUNING_SPLIT):
        single = _collect(ref.iter_batches(split, 0))
        on_ray = _collect(got.iter_ray_batches(split, 0))
        assert single and _batch_sets(on_ray) == _batch_sets(single)
        assert _per_subject(on_ray) == _per_subject(single)


# --- property-style: random schema variants of a good cohort -----------------------------------

TIME_UNITS = ("s", "ms", "us", "ns")
ZONES = (None, "UTC", "Asia/Tokyo", "America/New_York")
CODE_TYPES = (
    pa.string(),
    pa.large_string(),
    pa.dictionary(pa.int8(), pa.string()),
    pa.dictionary(pa.int32(), pa.large_string()),
)
ID_TYPES = (pa.int64(), pa.int32(), pa.uint32(), pa.int16())
BREAKS = ("string_time", "date_time", "float_ids", "binary_codes", "bad_utf8")


def _retype(t: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, str]:
    """The shard's rows in random (usable) Arrow types; ns times get sub-µs parts."""
    unit = str(rng.choice(TIME_UNITS))
    zone = ZONES[int(rng.integers(len(ZONES)))]
    ttype = pa.timestamp(unit, tz=zone)
    time = t[S.TIME].cast(pa.timestamp(unit))
    if unit == "ns":  # a sub-µs part the reader floors away
        jitter = pa.array(rng.integers(0, 1000, t.num_rows), pa.int64())
        time = pc.add(time.cast(pa.int64()), jitter).cast(pa.timestamp("ns"))
    ctype = CODE_TYPES[int(rng.integers(len(CODE_TYPES)))]
    itype = ID_TYPES[int(rng.integers(len(ID_TYPES)))]
    cols = {
        S.SUBJECT_ID: t[S.SUBJECT_ID].cast(itype),
        S.TIME: time.cast(ttype),
        S.CODE: t[S.CODE].cast(ctype),
    }
    if rng.random() < 0.5:
        cols[S.NUMERIC_VALUE] = pa.array(rng.normal(size=t.num_rows), pa.float64())
    return pa.table(cols), f"id {itype}, time {ttype}, code {ctype}"


def _break(t: pa.Table, how: str) -> pa.Table:
    """An unusable variant of a shard (both readers must refuse it)."""
    i = t.schema.get_field_index
    if how == "string_time":
        return t.set_column(i(S.TIME), S.TIME, t[S.TIME].cast(pa.string()))
    if how == "date_time":
        day = pc.cast(t[S.TIME], pa.timestamp("s"), safe=False)
        return t.set_column(i(S.TIME), S.TIME, pc.cast(day, pa.date32(), safe=False))
    if how == "float_ids":
        return t.set_column(i(S.SUBJECT_ID), S.SUBJECT_ID, t[S.SUBJECT_ID].cast(pa.float64()))
    if how == "binary_codes":
        return t.set_column(
            i(S.CODE), S.CODE, t[S.CODE].cast(pa.large_string()).cast(pa.large_binary())
        )
    codes = [c.encode() for c in t[S.CODE].cast(pa.string()).to_pylist()]
    codes[len(codes) // 2] += b"\xff"
    offsets = np.cumsum([0, *[len(c) for c in codes]]).astype(np.int32)
    bad = pa.StringArray.from_buffers(
        len(codes), pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(codes))
    )
    return t.set_column(i(S.CODE), S.CODE, bad)


@pytest.fixture(scope="module")
def sharded(base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base cohort in 3 subject-complete shards of MEDS types (the variants' reference)."""
    out = str(tmp_path_factory.mktemp("messy") / "sharded")
    shutil.copytree(base, out)
    data = os.path.join(out, S.DATA_SUBDIR)
    (old,) = [os.path.join(data, f) for f in os.listdir(data)]
    t = pq.read_table(old, columns=[S.SUBJECT_ID, S.TIME, S.CODE])
    os.remove(old)
    sid = t[S.SUBJECT_ID].to_numpy()
    cuts = np.quantile(np.unique(sid), [1 / 3, 2 / 3])
    part = np.searchsorted(cuts, sid, side="right")
    for k in range(3):
        pq.write_table(t.take(pa.array(np.flatnonzero(part == k))), f"{data}/shard_{k}.parquet")
    return out


def _ingest_refuses(cohort: str) -> bool:
    """The ingest reader (no validation report) refuses some unit with a CohortError."""
    for unit in plan_units(cohort).units:
        try:
            read_unit(unit, cohort)
        except CohortError:
            return True
    return False


def test_random_schema_variants_validate_and_ingest_agree(
    ray_local: None, sharded: str, tmp_path: Path
) -> None:
    """Random per-shard schema variants: validate and ingest either both refuse, or both
    accept and ingest gives the reference batches (single process; every 4th accepted
    variant through Ray Data too)."""
    rng = np.random.default_rng(19)
    data = os.path.join(sharded, S.DATA_SUBDIR)
    shards = sorted(os.listdir(data))
    ref_pipe = IngestPipeline(sharded, DataConfig(cohort=sharded, **DATA), rows_per_unit=400)
    ref_pipe.fit()
    ref = _per_subject(ref_pipe.iter_batches(S.TRAIN_SPLIT, 0))
    ref_sets = _batch_sets(_collect(ref_pipe.iter_batches(S.TRAIN_SPLIT, 0)))
    accepted = refused = 0
    for v in range(15):
        c = _copy(sharded, tmp_path / f"v{v}")
        broken = v % 3 == 2  # every third variant breaks one random shard, each way once
        which = int(rng.integers(len(shards)))
        how = BREAKS[(v // 3) % len(BREAKS)]
        what = []
        for k, name in enumerate(shards):
            path = os.path.join(c, S.DATA_SUBDIR, name)
            t, desc = _retype(pq.read_table(path), rng)
            if broken and k == which:
                t, desc = _break(t, how), how
            pq.write_table(t, path)
            what.append(desc)
        rep = validate_cohort(c)
        assert rep.ok is not broken, (what, rep.format())
        if broken:
            refused += 1
            assert rep.fatal and _ingest_refuses(c), what
            with pytest.raises(CohortError):
                IngestPipeline(c, DataConfig(cohort=c, **DATA))
            continue
        accepted += 1
        assert not _ingest_refuses(c), what
        pipe = IngestPipeline(c, DataConfig(cohort=c, **DATA), rows_per_unit=400)
        fit = pipe.fit(use_ray=accepted % 4 == 1)
        assert fit.vocab.hash == ref_pipe.vocab.hash, what  # type: ignore[union-attr]
        got = (
            _collect(pipe.iter_ray_batches(S.TRAIN_SPLIT, 0))
            if accepted % 4 == 1
            else _collect(pipe.iter_batches(S.TRAIN_SPLIT, 0))
        )
        assert _batch_sets(got) == ref_sets and _per_subject(got) == ref, what
    assert (accepted, refused) == (10, 5)
