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
  ``truncation`` too, to be safe), every field of the calendar task, and ``numeric``. Left out,
  as the scan does not read them: ``layout`` (both truncation statistics are always counted)
  and ``numeric_bins`` (the bins are fitted from the sketch afterwards);
- the unit plan (mode, buckets, and each unit's file, row groups and rows): the value sketch is
  taken per unit (:func:`numeric.value_facts` compresses a code's values within a unit), so
  ``rows_per_unit`` can change it; the counts and statistics do not depend on it;
- :data:`SCAN_FORMAT` and the sketch sizes (:data:`numeric.SKETCH_POINTS`,
  :data:`numeric.MERGE_LIMIT`).

The totals of one scan are reused as they are: the order of the rejects and event times, and
past :data:`numeric.MERGE_LIMIT` points the last digits of a code's sketch, are those of the scan
that stored them (a Ray scan's order is the order its units finished in, so they vary between
fresh scans too; nothing downstream depends on them: rejects are sorted, edges are quantiles).

**Where**, **pruning**, **racy files**, **off**: as the validation cache's (its
:func:`~validation_cache.cache_dirs` with ``sub="scan"``: ``COHORT/.ehrsurv/scan/<key>.arrow``
or the user cache's ``scan`` folder; :data:`~validation_cache.MAX_ENTRIES` per folder;
``$EHRSURV_VALIDATION_CACHE=none`` or ``validation_cache="none"`` turns both caches off).

**Format**: one Arrow IPC file per entry: a long table (``kind``, ``split``, ``key``, ``int``,
``real``, ``part``) holding the counts, rejects, event days and sketch points, and the
statistics and key inputs as JSON in the schema metadata. The round trip is exact.
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
import pyarrow.compute as pc

from ehrsurv_dist import atomic
from ehrsurv_dist.data import numeric
from ehrsurv_dist.data import validation_cache as VC
from ehrsurv_dist.data.encode import EncodeSpec
from ehrsurv_dist.data.meds_read import short_error
from ehrsurv_dist.data.plan import UnitPlan
from ehrsurv_dist.data.scan import ScanTotals
from ehrsurv_dist.data.vocab import COUNTS_SCHEMA

log = logging.getLogger(__name__)

SCAN_FORMAT = 1  # bump whenever scan_events/reduce_facts change a result, or this file's layout
SUBDIR = "scan"
SUFFIX = ".arrow"
META = b"ehrsurv.scan"
TABLE_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # count | reject | days | value
        ("split", pa.string()),
        ("key", pa.string()),  # code, or reject reason
        ("int", pa.int64()),  # count, rejected subject id, or sketch weight
        ("real", pa.float64()),  # event days, or sketch point
        ("part", pa.int64()),  # sketch: the part of the code's list
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
    """``totals`` as one long table; statistics, split names and ``meta`` in its metadata."""
    parts: list[pa.Table] = []
    for split, c in totals.counts.items():
        parts.append(_rows("count", split, key=c["code"], ints=c["count"]))
    parts.append(
        _rows(
            "reject",
            None,
            key=pa.array(totals.reject_reasons, pa.string()),
            ints=pa.array(totals.reject_subjects, pa.int64()),
        )
    )
    for split, days in totals.event_days.items():
        parts.append(_rows("days", split, reals=pa.array(days, pa.float64())))
    for code, lst in totals.values.points.items():
        for i, (p, w) in enumerate(lst):
            parts.append(
                _rows(
                    "value",
                    None,
                    key=pa.array([code] * len(p), pa.string()),
                    ints=pa.array(w, pa.int64()),
                    reals=pa.array(p, pa.float64()),
                    part=i,
                )
            )
    record = {
        **meta,
        "stats": totals.stats,
        "counts": list(totals.counts),
        "event_days": list(totals.event_days),
    }
    table = pa.concat_tables(parts) if parts else TABLE_SCHEMA.empty_table()
    return table.replace_schema_metadata({META: json.dumps(record).encode("utf-8")})


def totals_from_table(table: pa.Table) -> tuple[ScanTotals, dict[str, Any]]:
    """The inverse of :func:`totals_to_table`: (totals, the metadata record)."""
    record = json.loads((table.schema.metadata or {})[META])
    kind = table["kind"]

    def sel(k: str, split: str | None = None) -> pa.Table:
        mask = pc.equal(kind, k)
        if split is not None:
            mask = pc.and_(mask, pc.equal(table["split"], split))
        return table.filter(mask)

    counts = {}
    for s in record["counts"]:
        t = sel("count", s)
        counts[s] = pa.table([t["key"], t["int"]], schema=COUNTS_SCHEMA)
    rj = sel("reject")
    days = {
        s: np.asarray(sel("days", s)["real"].to_numpy(), np.float64).copy()
        for s in record["event_days"]
    }
    sketch = numeric.ValueSketch()
    vt = sel("value")
    if vt.num_rows:
        enc = pc.dictionary_encode(vt["key"]).combine_chunks()
        code = np.asarray(enc.indices.to_numpy(), np.int64)
        names = enc.dictionary.to_pylist()
        part = np.asarray(vt["part"].to_numpy(), np.int64)
        pts = np.asarray(vt["real"].to_numpy(), np.float64)
        wts = np.asarray(vt["int"].to_numpy(), np.int64)
        cut = np.flatnonzero((code[1:] != code[:-1]) | (part[1:] != part[:-1])) + 1
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(code)], strict=True):
            lst = sketch.points.setdefault(names[int(code[a])], [])
            lst.append((pts[a:b].copy(), wts[a:b].copy()))
    stats = {s: {k: int(v) for k, v in d.items()} for s, d in record["stats"].items()}
    totals = ScanTotals(
        counts,
        stats,
        np.asarray(rj["int"].to_numpy(), np.int64).copy(),
        [str(x) for x in rj["key"].to_pylist()],
        days,
        sketch,
    )
    return totals, record


def _rows(
    kind: str,
    split: str | None,
    *,
    key: Any = None,
    ints: Any = None,
    reals: Any = None,
    part: int | None = None,
) -> pa.Table:
    n = len(next(x for x in (key, ints, reals) if x is not None))

    def col(x: Any, t: pa.DataType) -> Any:
        return pa.nulls(n, t) if x is None else x

    return pa.table(
        [
            pa.array([kind] * n, pa.string()),
            pa.array([split] * n, pa.string()),
            col(key, pa.string()),
            col(ints, pa.int64()),
            col(reals, pa.float64()),
            pa.nulls(n, pa.int64()) if part is None else pa.array([part] * n, pa.int64()),
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
    except OSError as e:
        log.warning("could not cache the cohort's scan at %s: %s", path, short_error(e))
        return
    log.info("cohort scan cached at %s", path)
    VC.prune(os.path.dirname(path), SUFFIX)
