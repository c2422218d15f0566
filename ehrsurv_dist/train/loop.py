"""The training loop: plain code, no Ray (forward, loss, backward, step, evaluate).

The same functions run inside a Ray Train worker and in a single process; the engine hides
whether DeepSpeed or plain torch sits underneath. In distributed runs every rank scores the
whole (unsharded) validation split, so metrics are over the whole split.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ehrsurv_dist import schema as S
from ehrsurv_dist.data.visits import concat_ranges
from ehrsurv_dist.models.survival import select_inputs

Batch = Mapping[str, np.ndarray]
TaskFn = Callable[..., tuple[Tensor, dict[str, float]]]


def to_tensors(batch: Batch, device: torch.device) -> dict[str, Tensor]:
    """numpy batch → torch tensors on ``device``.

    On CPU the arrays are shared, not copied, where possible. On a CUDA device each array is
    first copied into pinned (page-locked) host memory and then sent with ``non_blocking=True``:
    the host thread does not wait for the transfer and goes on to queue the forward pass, which
    the stream runs after the copy. (GPU only: not measurable on the CPU machines of this
    project; see ``docs/benchmarks.md``.)
    """
    if device.type != "cuda":
        return {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in batch.items()}
    return {
        k: torch.as_tensor(np.asarray(v)).pin_memory().to(device, non_blocking=True)
        for k, v in batch.items()
    }


@dataclass
class EpochResult:
    """What one training epoch did (this rank only)."""

    loss: float
    components: dict[str, float]
    subjects: int
    tokens: int
    steps: int
    seconds: float
    data_wait_seconds: float
    step_seconds: list[float] = field(default_factory=list)
    # CPU time of the thread that ran the epoch: ``seconds - cpu_seconds`` is the time it was
    # not running (waiting for a batch, for the GIL, or for a CPU).
    cpu_seconds: float = 0.0
    # That thread's counters during the epoch (Linux; 0 elsewhere): context switches, voluntary
    # (it blocked: a batch, the GIL, a lock) and involuntary (the kernel preempted it for
    # another process or thread), and minor page faults (memory the allocator had given back).
    voluntary_switches: int = 0
    involuntary_switches: int = 0
    page_faults: int = 0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0


def thread_counters() -> tuple[int, int, int]:
    """(voluntary context switches, involuntary ones, minor page faults) of the calling thread
    so far; zeros where the OS does not count them per thread (``RUSAGE_THREAD`` is
    Linux-only)."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    if who is None:
        return 0, 0, 0
    ru = resource.getrusage(who)
    return int(ru.ru_nvcsw), int(ru.ru_nivcsw), int(ru.ru_minflt)


def train_epoch(
    engine: Any,
    task: TaskFn,
    batches: Iterable[Batch],
    device: torch.device,
    epoch: int,
    on_step: Callable[[int], None] | None = None,
) -> EpochResult:
    """One pass over ``batches``: forward, loss, backward, step. Returns this rank's stats.

    ``data_wait_seconds`` is the time spent waiting for the next batch: what ingest costs
    the trainer. ``step_seconds`` holds the wall time of every step (waiting for its batch
    included), in order.
    """
    engine.train()
    t_start = time.perf_counter()
    cpu_start = time.thread_time()
    counters_start = thread_counters()
    wait = 0.0
    total = 0.0
    comps: dict[str, float] = {}
    n_batches = subjects = tokens = 0
    step_seconds: list[float] = []
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        wait += time.perf_counter() - t0
        if batch is None:
            break
        tb = to_tensors(batch, device)
        loss, parts = task(engine, engine.module, tb, epoch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at epoch {epoch}")
        engine.backward(loss)
        engine.step()
        n_batches += 1
        total += float(loss.detach())
        for k, v in parts.items():
            comps[k] = comps.get(k, 0.0) + v
        subjects += int(np.asarray(batch[S.LAST_VISIT]).shape[0])
        if S.ATTENTION_MASK in batch:
            tokens += int(np.asarray(batch[S.ATTENTION_MASK]).sum())
        elif S.CODE_MASK in batch:
            tokens += int(np.asarray(batch[S.CODE_MASK]).sum())
        if on_step is not None:
            on_step(subjects)
        step_seconds.append(time.perf_counter() - t0)
    vol, invol, faults = (b - a for a, b in zip(counters_start, thread_counters(), strict=True))
    cpu_seconds = time.thread_time() - cpu_start  # read first: CPU interval inside the wall one
    seconds = time.perf_counter() - t_start
    n = max(n_batches, 1)
    return EpochResult(
        loss=total / n,
        components={k: v / n for k, v in comps.items()},
        subjects=subjects,
        tokens=tokens,
        steps=n_batches,
        seconds=seconds,
        data_wait_seconds=wait,
        step_seconds=step_seconds,
        cpu_seconds=cpu_seconds,
        voluntary_switches=vol,
        involuntary_switches=invol,
        page_faults=faults,
    )


def append_step_log(
    path: str,
    epoch: int,
    rank: int,
    *,
    seconds: float,
    cpu_seconds: float,
    step_seconds: list[float],
    switches: tuple[int, int] = (0, 0),
    page_faults: int = 0,
) -> None:
    """Append one epoch of one rank to the JSON-lines file ``path``: ``{"epoch", "rank",
    "seconds", "cpu_seconds", "step_seconds", "switches", "page_faults"}`` (the fields of
    :class:`EpochResult`; ``switches`` = [voluntary, involuntary]).

    One line, written by a single ``write`` on a file opened for appending, so lines of ranks
    sharing a file do not interleave. The file is on the node where the rank runs
    (``train.step_log``).
    """
    rec = {
        "epoch": epoch,
        "rank": rank,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "step_seconds": step_seconds,
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


def synchronized(batches: Iterable[Batch], group: int = 1) -> Iterator[Batch]:
    """Yield batches in groups of ``group`` for as long as *every* rank has a full group.

    Ranks of a data-parallel run must take the same number of optimizer steps (each step is a
    collective); shards of a streamed split can differ by a batch or two. One tiny all-reduce
    per group decides, so no rank blocks in a collective the others never enter, and every epoch
    ends on a gradient-accumulation boundary.
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    it = iter(batches)
    while True:
        chunk = list(itertools.islice(it, group))
        full = len(chunk) == group
        if distributed:
            flag = torch.tensor([1 if full else 0], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            full = bool(flag.item())
        if not full:
            return
        yield from chunk


@dataclass
class Predictions:
    """Per-subject hazards of a split, in CSR form (``hazard`` of subject i is
    ``values[offsets[i]:offsets[i+1]]``, length ``last_visit[i] + 1``)."""

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    values: np.ndarray
    offsets: np.ndarray

    def hazards(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        """Concatenate, then sort by subject id (a canonical order whatever the sharding)."""
        parts = [p for p in parts if len(p.subject_id)]
        if not parts:
            z = np.zeros(0, np.int64)
            return Predictions(z, z.astype(bool), z, np.zeros(0, np.float32), np.zeros(1, np.int64))
        sid = np.concatenate([p.subject_id for p in parts])
        ev = np.concatenate([p.event for p in parts])
        lv = np.concatenate([p.last_visit for p in parts])
        vals = np.concatenate([p.values for p in parts])
        order = np.argsort(sid, kind="stable")
        lengths = (lv + 1)[order]
        starts = np.concatenate([[0], np.cumsum(lv + 1)[:-1]])[order]
        idx = concat_ranges(starts, lengths)
        return Predictions(
            subject_id=sid[order],
            event=ev[order],
            last_visit=lv[order],
            values=vals[idx],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        )


@torch.no_grad()
def predict(
    forward: Any, module: nn.Module, batches: Iterable[Batch], device: torch.device
) -> Predictions:
    """Hazards of every subject in ``batches`` (this rank's share), eval mode.

    The hazards of subject b are those of its real visit slots ``0..last_visit[b]``; the label
    construction guarantees these are exactly the real visits.
    """
    was_training = module.training
    module.eval()
    parts: list[Predictions] = []
    try:
        for batch in batches:
            tb = to_tensors(batch, device)
            out = forward(**select_inputs(module, tb))
            h = torch.sigmoid(out.logits.float()).cpu().numpy()  # [B, V]
            lv = np.asarray(batch[S.LAST_VISIT], dtype=np.int64)
            vm = out.visit_mask.cpu().numpy()
            real = np.arange(h.shape[1])[None, :] <= lv[:, None]  # [B, V]
            if not np.array_equal(real & vm, real):
                raise RuntimeError("a visit slot up to last_visit is not a real visit slot")
            parts.append(
                Predictions(
                    subject_id=np.asarray(batch[S.SUBJECT], dtype=np.int64),
                    event=np.asarray(batch[S.EVENT], dtype=bool),
                    last_visit=lv,
                    values=h[real].astype(np.float32),  # row-major: subject after subject
                    offsets=np.concatenate([[0], np.cumsum(lv + 1)]).astype(np.int64),
                )
            )
    finally:
        module.train(was_training)
    return Predictions.concat(parts)


@torch.no_grad()
def mean_loss(
    forward: Any, module: nn.Module, task: TaskFn, batches: Iterable[Batch], device: torch.device
) -> float:
    """Subject-weighted mean loss over ``batches``, averaged over all ranks."""
    was_training = module.training
    module.eval()
    total = 0.0
    n = 0
    try:
        for batch in batches:
            loss, _ = task(forward, module, to_tensors(batch, device))
            b = int(np.asarray(batch[S.LAST_VISIT]).shape[0])
            total += float(loss) * b
            n += b
    finally:
        module.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([total, float(n)], dtype=torch.float64)
        dist.all_reduce(t)
        total, n = float(t[0]), int(t[1])
    return total / n if n else math.nan


@dataclass
class LoopState:
    """Early-stopping state; saved with every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # the next epoch to run
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def update(self, metric: float, higher_is_better: bool = True) -> bool:
        """Record this epoch's selection metric; True when it is the best so far."""
        score = metric if higher_is_better else -metric
        improved = not math.isnan(score) and score > self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = score, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    def should_stop(self, patience: int) -> bool:
        return patience > 0 and self.bad_epochs >= patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LoopState:
        return LoopState(**d)
