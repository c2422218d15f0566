"""The throughput bench's step hooks: thread counters and the step log (no Ray, no torch)."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from ehrsurv_dist.train.steplog import (
    StepLog,
    append_step_log,
    batch_key,
    read_step_log,
    thread_counters,
)


def test_thread_counters_count_this_threads_page_faults() -> None:
    # A fresh anonymous mapping (not the allocator's, which may hand back resident memory
    # after a long test session), huge pages off, one byte written per 4 KB page: each write
    # faults one page in.
    size = 64 << 20
    buf = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    before = thread_counters()
    for off in range(0, size, 4096):
        buf[off] = 1
    after = thread_counters()
    buf.close()
    assert after[2] - before[2] >= 4_000  # 16,384 pages of 4 KB
    assert all(b >= a for a, b in zip(before, after, strict=True))


def test_step_log_round_trip_per_rank(tmp_path: Path) -> None:
    def log(epoch: int, rank: int, steps: list[float]) -> None:
        append_step_log(
            path, epoch, rank, seconds=sum(steps) + 0.5, cpu_seconds=0.25, step_seconds=steps
        )

    path = str(tmp_path / "logs" / "steps.jsonl")
    append_step_log(
        path, 0, 2, seconds=1.0, cpu_seconds=0.5, step_seconds=[1.0], switches=(7, 3),
        page_faults=11,
    )  # fmt: skip
    log(0, 0, [0.5, 0.25])
    log(0, 1, [0.75])
    log(1, 0, [0.125])
    log(1, 0, [0.0625, 0.5])  # epoch 1 again (re-run after a resume)
    r0, r1 = read_step_log(path, rank=0), read_step_log(path, rank=1)
    assert {e: r["step_seconds"] for e, r in r0.items()} == {0: [0.5, 0.25], 1: [0.0625, 0.5]}
    assert {e: r["step_seconds"] for e, r in r1.items()} == {0: [0.75]}
    assert r0[0]["seconds"] == 1.25 and r0[0]["cpu_seconds"] == 0.25
    assert len(open(path).read().splitlines()) == 5
    r2 = read_step_log(path, rank=2)[0]
    assert r2["switches"] == [7, 3] and r2["page_faults"] == 11
    assert r0[0]["switches"] == [0, 0] and r0[0]["page_faults"] == 0


def test_step_log_hook_appends_one_line_per_epoch(tmp_path: Path) -> None:
    path = str(tmp_path / "steps.jsonl")
    hook = StepLog(path, rank=1)
    first, second = {"subject_id": np.array([3, 1])}, {"subject_id": np.array([7])}
    for epoch in (0, 1):
        hook.on_epoch_start(epoch)
        hook.on_step(0, 0.25, 2, first)
        hook.on_step(1, 0.5, 3, second)
        rec = hook.on_epoch_end()
        assert rec["step_seconds"] == [0.25, 0.5]
        assert rec["step_keys"] == [batch_key(first), batch_key(second)]
    logged = read_step_log(path, rank=1)
    assert sorted(logged) == [0, 1]
    assert list(logged[1]) == [
        "epoch", "rank", "seconds", "cpu_seconds", "step_seconds", "step_keys", "switches",
        "page_faults",
    ]  # fmt: skip
    assert logged[1]["step_seconds"] == [0.25, 0.5] and logged[1]["rank"] == 1
    assert logged[1]["step_keys"] == [batch_key(first), batch_key(second)]


def test_batch_key_names_the_subjects_and_samples_of_a_batch() -> None:
    ids = np.array([5, 9, 2], dtype=np.int64)
    key = batch_key({"subject_id": ids, "x": np.zeros(3)})
    # the subject ids decide it, whatever their dtype on the way in and the other arrays
    assert key == batch_key({"subject_id": ids.astype(np.int32), "x": np.ones(3)})
    assert key != batch_key({"subject_id": ids[::-1].copy()})  # another order: another batch
    assert key != batch_key({"subject_id": ids[:2]})
    # calendar axis: the same subjects at other prediction times are another batch
    t1 = {"subject_id": ids, "prediction_time": np.array([10, 20, 30], dtype=np.int64)}
    t2 = {"subject_id": ids, "prediction_time": np.array([10, 20, 31], dtype=np.int64)}
    assert batch_key(t1) != batch_key(t2) and batch_key(t1) != key
    assert 0 <= key < 2**32
    assert batch_key({"x": np.zeros(3)}) == -1  # no subject ids: unnamed
