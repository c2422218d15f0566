"""The step log (``train.step_log``): step hooks that time an epoch of the training thread.

:func:`~ehrsurv_dist.train.loop.train_epoch` returns training facts only; the per-step wall
times, the training thread's CPU time and its kernel counters are taken here, by a
:class:`~ehrsurv_dist.train.loop.StepHooks` the caller passes in. It lives in ``train/`` because
the worker writes it for a documented config key; the throughput bench reads it. The Ray worker attaches a
:class:`StepLog` when ``train.step_log`` is set (a documented config key), and the bench's plain
loop attaches one to the same loop function, so both sides are timed by the same code.

The step log is JSON lines, one per (epoch, rank): ``{"epoch", "rank", "seconds",
"cpu_seconds", "step_seconds", "step_keys", "switches", "page_faults"}`` (``switches`` =
[voluntary, involuntary]; ``step_keys[s]`` names the batch of step ``s``: :func:`batch_key`).
No Ray, no torch.
"""

from __future__ import annotations

import json
import os
import resource
import time
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ehrsurv_dist import schema as S


def thread_counters() -> tuple[int, int, int]:
    """(voluntary context switches, involuntary ones, minor page faults) of the calling thread
    so far; zeros where the OS does not count them per thread (``RUSAGE_THREAD`` is
    Linux-only)."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is None:
        return 0, 0, 0
    ru = resource.getrusage(who)
    return int(ru.ru_nvcsw), int(ru.ru_nivcsw), int(ru.ru_minflt)


def batch_key(batch: Mapping[str, Any]) -> int:
    """A 32-bit name of a batch: the CRC-32 of its subject ids (and prediction times on the
    calendar axis, where a subject has several samples), in batch order.

    Ray delivers a split's units in the order its tasks finish, so two runs with the same seed
    train the same batches in an order that may differ; the key pairs a batch with itself
    across runs (``bench throughput``'s step floor). -1 for a batch without subject ids (the
    product's batches always have them).
    """
    if S.SUBJECT not in batch:
        return -1
    crc = zlib.crc32(np.ascontiguousarray(batch[S.SUBJECT], dtype=np.int64).tobytes())
    if S.PREDICTION_TIME in batch:
        times = np.ascontiguousarray(batch[S.PREDICTION_TIME], dtype=np.int64)
        crc = zlib.crc32(times.tobytes(), crc)
    return crc


class EpochCounters:
    """Step hooks that time one epoch of the thread running it.

    ``on_epoch_end`` returns ``{"seconds", "cpu_seconds", "step_seconds", "step_keys",
    "switches", "page_faults"}``: the epoch's wall time (from ``on_epoch_start``), the thread's
    CPU time (``time.thread_time``; ``seconds - cpu_seconds`` is the time it was not running:
    waiting for a batch, the GIL or a CPU), the wall time of every step (its wait for the batch
    included) and its batch's :func:`batch_key`, and the thread's context switches, voluntary (it blocked) and involuntary (the
    kernel preempted it), and minor page faults (memory the allocator had given back).
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._t0 = self._cpu0 = 0.0
        self._counters0 = (0, 0, 0)
        self._steps: list[float] = []
        self._keys: list[int] = []

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._steps = []
        self._keys = []
        self._t0 = time.perf_counter()
        self._cpu0 = time.thread_time()
        self._counters0 = thread_counters()

    def on_step(self, step: int, seconds: float, subjects: int, batch: Mapping[str, Any]) -> None:
        del step, subjects
        self._steps.append(seconds)
        self._keys.append(batch_key(batch))

    def on_epoch_end(self) -> dict[str, Any]:
        vol, invol, faults = (
            b - a for a, b in zip(self._counters0, thread_counters(), strict=True)
        )
        cpu_seconds = time.thread_time() - self._cpu0  # read first: CPU interval inside the wall
        seconds = time.perf_counter() - self._t0
        return {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "step_seconds": self._steps,
            "step_keys": self._keys,
            "switches": [vol, invol],
            "page_faults": faults,
        }


class StepLog(EpochCounters):
    """:class:`EpochCounters` that also appends each epoch to the step log ``path`` as ``rank``
    (``train.step_log``; the file is on the node where the rank runs)."""

    def __init__(self, path: str, rank: int) -> None:
        super().__init__()
        self.path = path
        self.rank = rank

    def on_epoch_end(self) -> dict[str, Any]:
        rec = super().on_epoch_end()
        append_step_log(
            self.path,
            self.epoch,
            self.rank,
            seconds=rec["seconds"],
            cpu_seconds=rec["cpu_seconds"],
            step_seconds=rec["step_seconds"],
            step_keys=rec["step_keys"],
            switches=(rec["switches"][0], rec["switches"][1]),
            page_faults=rec["page_faults"],
        )
        return rec


def append_step_log(
    path: str,
    epoch: int,
    rank: int,
    *,
    seconds: float,
    cpu_seconds: float,
    step_seconds: list[float],
    step_keys: list[int] | None = None,
    switches: tuple[int, int] = (0, 0),
    page_faults: int = 0,
) -> None:
    """Append one epoch of one rank to the JSON-lines file ``path`` (the module doc's format).

    One line, written by a single ``write`` on a file opened for appending, so lines of ranks
    sharing a file do not interleave. ``step_keys`` None: no batch keys (an empty list).
    """
    rec = {
        "epoch": epoch,
        "rank": rank,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "step_seconds": step_seconds,
        "step_keys": [] if step_keys is None else list(step_keys),
        "switches": list(switches),
        "page_faults": page_faults,
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    data = (json.dumps(rec) + "\n").encode()
    try:
        while data:  # a regular file takes it in one write unless the disk is full
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def read_step_log(path: str, rank: int = 0) -> dict[int, dict[str, Any]]:
    """The records of ``rank`` by epoch, from a file of :func:`append_step_log` (an epoch
    logged twice, e.g. re-run after a resume, keeps its last line)."""
    out: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["rank"] == rank:
                out[int(rec["epoch"])] = rec
    return out
