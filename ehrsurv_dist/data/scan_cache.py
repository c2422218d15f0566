"""Scan a cohort once: the summed facts of :meth:`IngestPipeline.fit`'s scan kept under a key.

:meth:`~ehrsurv_dist.data.pipeline.IngestPipeline.fit` scans every unit of the cohort
(:mod:`scan`) and sums the facts into a :class:`~ehrsurv_dist.data.scan.ScanTotals`: per-split
code counts and statistics, rejects, calendar-axis event times, and the numeric value sketch.
On a large cohort that is a minute of work, the same for every command on the same cohort and
settings; :func:`cached_totals` stores the totals and reuses them. The vocabulary is not cached:
``fit`` fits it (or checks the one passed in) from the totals, which is cheap.

**The key** (:func:`scan_key`) is a hash of

- the cohort's validation fingerprint (:func:`validation_cache.fingerprint`: every data, split,
  outcome and label file's path, size and mtime, the validator's and pyarrow's and numpy's
  versions), taken with ``require_outcomes=False`` whatever the pipeline's (it changes the scan
  only through the report, whose outcomes, bad subjects and plan are in the key): pretraining
  and fine-tuning on the same data settings share an entry when their reports agree; no
  fingerprint, no caching;
- every :class:`~ehrsurv_dist.data.encode.EncodeSpec` field that the scan reads: cohort,
  outcomes, granularity, split seed and split file, the bad subjects dropped, the limits
  (``max_seq_len``, ``max_visits``, ``max_codes_per_visit`` decide the truncation statistics;
  ``truncation`` too), ``layout`` (statistics of what the layout keeps may depend on it), every
  field of the calendar task, and ``numeric``. Left out, as the scan does not read it:
  ``numeric_bins`` (the bins are fitted from the sketch afterwards);
- the unit plan (mode, buckets, and each unit's file, row groups and rows): the value sketch is
  taken per unit (:func:`numeric.value_facts` compresses a code's values within a unit), so
  ``rows_per_unit`` can change it; the counts and statistics do not depend on it;
- :data:`SCAN_FORMAT`, the statistics' names (:data:`scan.STAT_KEYS`: a new statistic is a new
  key, never an entry without it) and the sketch sizes (:data:`numeric.SKETCH_POINTS`,
  :data:`numeric.MERGE_LIMIT`).

The totals of one scan are reused as they are: the order of the rejects and event times, and
past :data:`numeric.MERGE_LIMIT` points the last digits of a code's sketch, are those of the scan
that stored them (a Ray scan's order is the order its units finished in, so they vary between
fresh scans too; nothing downstream depends on them: rejects are sorted, edges are quantiles).

**Where**, **pruning**, **racy files**, **off**: as the validation cache's (its
:func:`~validation_cache.cache_dirs` with ``sub="scan"``: ``COHORT/.ehrsurv/scan/<key>.arrow``
or the user cache's ``scan`` folder; :data:`~validation_cache.MAX_ENTRIES` per folder;
``$EHRSURV_VALIDATION_CACHE=none`` or ``validation_cache="none"`` turns both caches off).

**Format**: one Arrow IPC file per entry: a long table (:data:`TABLE_SCHEMA`) holding the
counts, rejects, event days and sketch points (each part of each code's list), and the
statistics, the names of splits and sketched codes and the key inputs as JSON in the schema
metadata. The round trip is exact (to the bit, the dtype and the order of dicts and lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from ehrsurv_dist import atomic
from ehrsurv_dist.data import numeric
from ehrsurv_dist.data import validation_cache as VC
from ehrsurv_dist.data.encode import EncodeSpec
from ehrsurv_dist.data.meds_read import short_error
from ehrsurv_dist.data.plan import UnitPlan
from ehrsurv_dist.data.scan import STAT_KEYS, ScanTotals
from ehrsurv_dist.data.vocab import COUNTS_SCHEMA

log = logging.getLogger(__name__)

SCAN_FORMAT = 1  # bump whenever scan_events/reduce_facts change a result, or this file's layout
SUBDIR = "scan"
SUFFIX = ".arrow"
META = b"ehrsurv.scan"
KINDS = ("count", "reject", "days", "value")  # the table's ``kind`` is an index into these
TABLE_SCHEMA = pa.schema(
    [
        ("kind", pa.int8()),  # index into KINDS
        ("split", pa.int8()),  # index into the record's "splits", -1: none
        ("key", pa.string()),  # count: the code; reject: the reason
        ("code", pa.int32()),  # value: index into the record's "value_codes"
        ("part", pa.int32()),  # value: the part of the code's list
        ("int", pa.int64()),  # count, rejected subject id, or sketch weight
        ("real", pa.float64()),  # event days, or sketch point
    ]
)


def scan_key(fp: VC.Fingerprint, spec: EncodeSpec, plan: UnitPlan) -> tuple[str, dict[str, Any]]:
    """(hex key, what was hashed) of a scan of the cohort ``fp`` with ``spec`` over ``plan``
    (see the module doc)."""
    units = [[u.file_index, u.path, u.row_groups, u.num_rows, u.first_row] for u in plan.units]
    plan_blob = json.dumps([plan.mode, plan.num_buckets, units], separators=(",", ":"))
    inputs = {
        "scan_format": SCAN_FORMAT,
        "fingerprint": fp.key,
        "spec": {
            "cohort": spec.cohort,
            "outcomes": spec.outcomes,
            "granularity": spec.granularity,
            "layout": spec.layout,
            "split_seed": spec.split_seed,
            "splits_path": spec.splits_path,
            "bad_subjects": hashlib.sha256(
                np.asarray(spec.bad_subjects, np.int64).tobytes()
            ).hexdigest()[:24],
            "limits": asdict(spec.limits),
            "task": None if spec.task is None else asdict(spec.task),
            "numeric": spec.numeric,
        },
        "plan": hashlib.sha256(plan_blob.encode("utf-8")).hexdigest()[:24],
        "sketch": [numeric.SKETCH_POINTS, numeric.MERGE_LIMIT],
        "stat_keys": list(STAT_KEYS),
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24], inputs


def cached_totals(
    spec: EncodeSpec,
    plan: UnitPlan,
    scan: Callable[[], ScanTotals],
    *,
    outcomes: str | None,
    cache: str | None = None,
) -> ScanTotals:
    """``scan()``'s totals, or those cached under the same key; a fresh result is cached.

    Args:
        spec: the pipeline's encoding parameters (the cohort is ``spec.cohort``).
        plan: the pipeline's units.
        scan: scans the cohort (on Ray or in this process).
        outcomes: the outcome table to fingerprint (the report's, else ``data.outcomes``).
        cache: :func:`validation_cache.cache_dirs`'s setting (None, ``auto``, ``none``, a folder).
    """
    cohort = spec.cohort
    look, write = VC.cache_dirs(cohort, cache, SUBDIR)
    # The files' identity only: require_outcomes changes the scan through the report alone,
    # i.e. through spec.outcomes, spec.bad_subjects and the plan, which are in the key.
    fp = VC.fingerprint(cohort, outcomes, spec.granularity, False, spec.task) if look else None
    if fp is None:
        return scan()
    key, inputs = scan_key(fp, spec, plan)
    for d in look:
        path = os.path.join(d, key + SUFFIX)
        totals = _load(path, key)
        if totals is not None:
            subjects = sum(int(s.get("subjects", 0)) for s in totals.stats.values())
            log.info(
                "cohort scanned earlier (%s): reusing its counts, %d subjects, from %s",
                key,
                subjects,
                path,
            )
            return totals
    start = time.time_ns()
    totals = scan()
    if write is not None and VC.settled(fp, start, "scan", cohort):
        _store(os.path.join(write, key + SUFFIX), key, inputs, totals)
    return totals


def totals_to_table(totals: ScanTotals, meta: dict[str, Any]) -> pa.Table:
    """``totals`` as one long table; statistics, split and code names and ``meta`` in its
    metadata."""
    splits = list(dict.fromkeys([*totals.counts, *totals.event_days, *totals.stats]))
    parts = [
        _rows("count", splits.index(s), c.num_rows, key=c["code"], ints=c["count"])
        for s, c in totals.counts.items()
    ]
    reasons = pa.array(totals.reject_reasons, pa.string())
    ints = pa.array(totals.reject_subjects, pa.int64())
    parts.append(_rows("reject", -1, len(reasons), key=reasons, ints=ints))
    for s, days in totals.event_days.items():
        parts.append(_rows("days", splits.index(s), len(days), reals=pa.array(days, pa.float64())))
    codes = list(totals.values.points)
    lists = [totals.values.points[c] for c in codes]
    sizes = np.array([len(p) for lst in lists for p, _ in lst], np.int64)
    if len(sizes):
        n_parts = [len(lst) for lst in lists]
        parts.append(
            _rows(
                "value",
                -1,
                int(sizes.sum()),
                code=np.repeat(np.repeat(np.arange(len(codes)), n_parts), sizes),
                part=np.repeat(np.concatenate([np.arange(k) for k in n_parts]), sizes),
                ints=np.concatenate([w for lst in lists for _, w in lst]).astype(np.int64),
                reals=np.concatenate([p for lst in lists for p, _ in lst]).astype(np.float64),
            )
        )
    record = {
        **meta,
        "splits": splits,
        "stats": totals.stats,
        "counts": list(totals.counts),
        "event_days": list(totals.event_days),
        "value_codes": codes,
    }
    table = pa.concat_tables(parts)
    return table.replace_schema_metadata({META: json.dumps(record).encode("utf-8")})


def totals_from_table(table: pa.Table) -> tuple[ScanTotals, dict[str, Any]]:
    """The inverse of :func:`totals_to_table`: (totals, the metadata record)."""
    record = json.loads((table.schema.metadata or {})[META])
    kind = np.asarray(table["kind"].to_numpy(), np.int8)
    split = np.asarray(table["split"].to_numpy(), np.int8)
    splits = list(record["splits"])

    def sel(k: str, s: str | None = None) -> pa.Table:
        mask = kind == KINDS.index(k)
        if s is not None:
            mask &= split == splits.index(s)
        return table.filter(pa.array(mask))

    counts = {}
    for s in record["counts"]:
        t = sel("count", s)
        counts[s] = pa.table([t["key"], t["int"]], schema=COUNTS_SCHEMA)
    rj = sel("reject")
    days = {s: _numpy(sel("days", s)["real"], np.float64) for s in record["event_days"]}
    sketch = numeric.ValueSketch()
    vt = sel("value")
    if vt.num_rows:
        names = record["value_codes"]
        code, part = _numpy(vt["code"], np.int64), _numpy(vt["part"], np.int64)
        pts, wts = _numpy(vt["real"], np.float64), _numpy(vt["int"], np.int64)
        cut = np.flatnonzero((code[1:] != code[:-1]) | (part[1:] != part[:-1])) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(code)], strict=True):
            sketch.points.setdefault(names[int(code[a])], []).append((pts[a:b], wts[a:b]))
    stats = {s: {k: int(v) for k, v in d.items()} for s, d in record["stats"].items()}
    reasons = [str(x) for x in rj["key"].to_pylist()]
    totals = ScanTotals(counts, stats, _numpy(rj["int"], np.int64), reasons, days, sketch)
    return totals, record


def _numpy(col: pa.ChunkedArray, dtype: Any) -> np.ndarray:
    """A writable numpy copy of a column."""
    return np.array(col.to_numpy(), dtype=dtype)


def _rows(
    kind: str,
    split: int,
    n: int,
    *,
    key: Any = None,
    code: Any = None,
    part: Any = None,
    ints: Any = None,
    reals: Any = None,
) -> pa.Table:
    def col(x: Any, t: pa.DataType) -> Any:
        if x is None:
            return pa.nulls(n, t)
        return x.combine_chunks().cast(t) if isinstance(x, pa.ChunkedArray) else pa.array(x, t)

    return pa.table(
        [
            pa.array(np.full(n, KINDS.index(kind), np.int8)),
            pa.array(np.full(n, split, np.int8)),
            col(key, pa.string()),
            col(code, pa.int32()),
            col(part, pa.int32()),
            col(ints, pa.int64()),
            col(reals, pa.float64()),
        ],
        schema=TABLE_SCHEMA,
    )


def _load(path: str, key: str) -> ScanTotals | None:
    """The totals cached at ``path`` under ``key``; None when there are none, or (with a
    warning) when the file cannot be used."""
    if not os.path.exists(path):
        return None
    try:
        with pa.OSFile(path, "rb") as f:
            table = pa.ipc.open_file(f).read_all()
        totals, record = totals_from_table(table)
        if record.get("format") != SCAN_FORMAT or record.get("key") != key:
            raise ValueError("written for another key or format")
        return totals
    except Exception as e:
        log.warning(
            "ignoring the unreadable scan cache file %s (%s): scanning the cohort again",
            path,
            short_error(e),
        )
        return None


def _store(path: str, key: str, inputs: dict[str, Any], totals: ScanTotals) -> None:
    """Write the cache file atomically, then prune the folder; a failure is only a warning."""
    try:
        table = totals_to_table(totals, {"format": SCAN_FORMAT, "key": key, "inputs": inputs})
        atomic.write_arrow(table, path)
    except Exception as e:  # a full disk, a permission, an Arrow error: never fail the fit
        log.warning("could not cache the cohort's scan at %s: %s", path, short_error(e))
        return
    log.info("cohort scan cached at %s", path)
    VC.prune(os.path.dirname(path), SUFFIX)
