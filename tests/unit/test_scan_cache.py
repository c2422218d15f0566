"""Scan once per cohort and settings: the totals of ``IngestPipeline.fit``'s scan, cached under
the cohort's fingerprint and the scan settings, round-trip exactly; a hit reads no unit; an
edited shard or a changed scan setting scans again."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import schema as S
from ehrsurv_dist.config import DataConfig
from ehrsurv_dist.data import pipeline as P
from ehrsurv_dist.data import scan_cache as SC
from ehrsurv_dist.data.numeric import MERGE_LIMIT, ValueSketch
from ehrsurv_dist.data.pipeline import IngestPipeline
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.data.scan import ScanTotals, reduce_facts
from ehrsurv_dist.data.synth_long import synthesize_long
from ehrsurv_dist.data.synthetic import synthesize

OLD = time.time() - 3600  # an hour ago: outside the racy window


def _age(root: str) -> None:
    """Date every file of the cohort an hour back (as a cohort written earlier would be)."""
    for d, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(d, f), (OLD, OLD))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A visit-axis smoke cohort and a calendar-axis long cohort with numeric values."""
    root = tmp_path_factory.mktemp("scan")
    visit, long = str(root / "visit"), str(root / "long")
    synthesize(visit, "smoke", subjects=60, seed=3)
    synthesize_long(long, subjects=30, seed=5, shards=2, workers=1)
    _age(visit)
    _age(long)
    return {"visit": visit, "long": long}


def _pipe(
    cohort: str, axis: str, cache: str | None = None, layout: str = "flat", **data: Any
) -> IngestPipeline:
    if axis == "visit":
        cfg = DataConfig(**{"cohort": cohort, "max_seq_len": 64, **data})
        return IngestPipeline(cohort, cfg, validation_cache=cache, layout=layout)  # type: ignore[arg-type]
    task = TaskSpec(("MEDS_DEATH",), 730.0, labels=f"{cohort}/labels/death.parquet")
    cfg = DataConfig(**{"cohort": cohort, "max_seq_len": 128, "numeric": "quantile_bins", **data})
    return IngestPipeline(cohort, cfg, task=task, validation_cache=cache)


class Scans:
    """Counts the calls of the pipeline's unit reader and scan function (a scan reads and
    scans every unit)."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.scans = 0
        read, scan = P.read_unit, P.scan_events

        def counted_read(*a: Any, **k: Any) -> Any:
            self.reads += 1
            return read(*a, **k)

        def counted_scan(*a: Any, **k: Any) -> Any:
            self.scans += 1
            return scan(*a, **k)

        mp.setattr(P, "read_unit", counted_read)
        mp.setattr(P, "scan_events", counted_scan)


def _entries(cohort: str) -> list[Path]:
    d = Path(cohort, ".ehrsurv", "scan")
    return sorted(d.glob("*.arrow")) if d.exists() else []


def _cached(entry: Path) -> ScanTotals:
    """The totals of a cache file."""
    totals = SC._load(str(entry), entry.stem)
    assert totals is not None
    return totals


def _clear(cohort: str) -> None:
    for f in _entries(cohort):
        f.unlink()


def assert_same_totals(a: ScanTotals, b: ScanTotals) -> None:
    """Every field equal, to the bit and the dtype (and the order of dicts and lists)."""
    assert list(a.counts) == list(b.counts)
    for s in a.counts:
        assert a.counts[s].schema == b.counts[s].schema
        assert a.counts[s].equals(b.counts[s]), s
    assert a.stats == b.stats and list(a.stats) == list(b.stats)
    assert a.reject_subjects.dtype == b.reject_subjects.dtype == np.int64
    assert np.array_equal(a.reject_subjects, b.reject_subjects)
    assert a.reject_reasons == b.reject_reasons
    assert list(a.event_days) == list(b.event_days)
    for s in a.event_days:
        assert a.event_days[s].dtype == b.event_days[s].dtype
        assert a.event_days[s].tobytes() == b.event_days[s].tobytes(), s
    assert list(a.values.points) == list(b.values.points)
    for code, parts in a.values.points.items():
        other = b.values.points[code]
        assert len(parts) == len(other), code
        for (p, w), (q, v) in zip(parts, other, strict=True):
            assert p.dtype == q.dtype and w.dtype == v.dtype
            assert p.tobytes() == q.tobytes() and np.array_equal(w, v)


def test_round_trip_is_exact_with_compressed_sketch_parts() -> None:
    """A sketch past MERGE_LIMIT (a compressed part, then more parts), rejects and event days
    with awkward values round-trip to the bit."""
    rng = np.random.default_rng(0)
    sketch = ValueSketch()
    for i in range(MERGE_LIMIT // 200 + 3):
        keys = [f"1:LAB/{c}" for c in ("A", "B|x", "é") for _ in range(200)]
        vals = np.concatenate([rng.normal(size=200) * 10**i for _ in range(3)])
        vals[0] = -0.0
        sketch.add(keys, vals.view(np.int64))
    assert any(len(sketch.points[c]) >= 2 for c in sketch.points)
    src = reduce_facts([])
    src.reject_subjects = np.array([5, 2, 5], np.int64)
    src.reject_reasons = ["no_visits", "a, b (prediction_time 2020-01-01)", ""]
    src.event_days = {"train": np.array([0.1, 1 / 3, 1e-300]), "tuning": np.zeros(0)}
    src.values = sketch
    src.stats["train"]["subjects"] = 7
    back, record = SC.totals_from_table(SC.totals_to_table(src, {"format": 1, "key": "k"}))
    assert record["key"] == "k"
    assert_same_totals(src, back)


@pytest.mark.parametrize("axis", ["visit", "long"])
def test_a_second_fit_reuses_the_scan_and_reads_no_unit(
    cohorts: dict[str, str],
    axis: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cohort = cohorts[axis]
    _clear(cohort)
    fresh = reduce_facts(_pipe(cohort, axis)._scan_single())
    first = _pipe(cohort, axis).fit()  # a miss: scans and stores
    (entry,) = _entries(cohort)
    assert_same_totals(_cached(entry), fresh)
    if axis == "long":
        assert fresh.values.points and any(len(d) for d in fresh.event_days.values())

    count = Scans(monkeypatch)
    pipe = _pipe(cohort, axis)
    with caplog.at_level(logging.INFO, logger="ehrsurv_dist.data.scan_cache"):
        second = pipe.fit(use_ray=False)
    assert (count.reads, count.scans) == (0, 0)
    n = sum(s["subjects"] for s in fresh.stats.values())
    assert f"cohort scanned earlier ({entry.stem}): reusing its counts, {n} subjects" in caplog.text
    assert second.vocab.hash == first.vocab.hash
    assert second.stats == first.stats
    assert second.rejects.equals(first.rejects)
    assert list(second.event_days) == list(first.event_days)
    for s in first.event_days:
        assert np.array_equal(second.event_days[s], first.event_days[s])
    # batches of the hit's vocabulary are those of the miss's
    b1 = next(pipe.iter_batches(S.TRAIN_SPLIT))
    pipe.vocab = first.vocab
    b2 = next(pipe.iter_batches(S.TRAIN_SPLIT))
    assert all(np.array_equal(b1[k], b2[k]) for k in b1)


def test_what_scans_again_and_what_does_not(
    cohorts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = cohorts["visit"]
    _clear(cohort)
    _pipe(cohort, "visit").fit()
    count = Scans(monkeypatch)

    def scans(layout: str = "flat", **data: Any) -> int:
        before = count.scans
        _pipe(cohort, "visit", layout=layout, **data).fit()
        return count.scans - before

    assert scans() == 0
    # settings the scan does not read: the same entry
    assert scans(min_count=3, max_vocab_size=50, batch_size=7) == 0
    # a different truncation limit changes the statistics: scans again (then stores it)
    assert scans(max_seq_len=32) > 0
    assert scans(max_seq_len=32) == 0
    assert scans(split_seed=1) > 0
    assert scans(layout="hierarchical") > 0  # statistics of what a layout keeps may differ
    assert len(_entries(cohort)) == 4

    # an edited shard (rewritten: new size and mtime) scans again
    shard = sorted(Path(cohort, S.DATA_SUBDIR).glob("*.parquet"))[0]
    t = pq.read_table(shard)
    pq.write_table(t.slice(0, t.num_rows - 1), shard)
    os.utime(shard, (OLD + 10, OLD + 10))
    assert scans() > 0
    assert scans() == 0


def test_turned_off_and_racy_files_store_nothing(
    tmp_path: Path, cohorts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cohort = cohorts["visit"]
    _clear(cohort)
    count = Scans(monkeypatch)
    _pipe(cohort, "visit", cache="none").fit()
    monkeypatch.setenv("EHRSURV_VALIDATION_CACHE", "none")
    _pipe(cohort, "visit").fit()
    assert _entries(cohort) == [] and count.scans > 0
    monkeypatch.delenv("EHRSURV_VALIDATION_CACHE")

    fresh = str(tmp_path / "fresh")  # just written: its files are racy
    synthesize(fresh, "smoke", subjects=20, seed=1)
    _pipe(fresh, "visit").fit()
    assert _entries(fresh) == []


def test_an_unreadable_entry_is_ignored_with_a_warning_and_rewritten(
    cohorts: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cohort = cohorts["visit"]
    _clear(cohort)
    first = _pipe(cohort, "visit").fit()
    (entry,) = _entries(cohort)
    entry.write_bytes(entry.read_bytes()[:100])
    count = Scans(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = _pipe(cohort, "visit").fit()
    assert "ignoring the unreadable scan cache file" in caplog.text and count.scans > 0
    assert again.vocab.hash == first.vocab.hash
    assert _cached(entry).stats[S.TRAIN_SPLIT]["subjects"] == first.stats[S.TRAIN_SPLIT]["subjects"]
