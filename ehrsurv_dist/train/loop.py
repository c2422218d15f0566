"""The training loop: plain code, no Ray (forward, loss, backward, step, evaluate).

The same functions run inside a Ray Train worker and in a single process; the engine hides
whether DeepSpeed or plain torch sits underneath. In distributed runs every rank scores the
whole (unsharded) validation split, so metrics are over the whole split.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ehrsurv_dist import schema as S
from ehrsurv_dist.models.survival import select_inputs
from ehrsurv_dist.ragged import Ragged
from ehrsurv_dist.train.distributed import all_reduce, is_distributed

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
    """What one training epoch did (this rank only).

    ``measures`` holds what the epoch's step hooks returned from ``on_epoch_end`` (merged;
    empty without hooks).
    """

    loss: float
    components: dict[str, float]
    subjects: int
    tokens: int
    steps: int
    seconds: float
    data_wait_seconds: float
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0


class StepHooks(Protocol):
    """Observers of :func:`train_epoch` (progress reports, the bench's counters).

    The loop calls ``on_epoch_start`` after its clock starts, ``on_step`` after every step
    with the step's index, its wall time (its wait for the batch included), the subjects
    trained so far this epoch and the step's batch (numpy, read-only to the hook), and
    ``on_epoch_end`` after its clock stops; what that returns lands in
    :attr:`EpochResult.measures`. Hooks observe; they change no number of the training.
    """

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_step(self, step: int, seconds: float, subjects: int, batch: Batch) -> None: ...

    def on_epoch_end(self) -> dict[str, Any]: ...


def _batch_tokens(batch: Batch) -> int:
    """Real tokens of a batch (flat: attention mask; hierarchical: code mask)."""
    if S.ATTENTION_MASK in batch:
        return int(np.asarray(batch[S.ATTENTION_MASK]).sum())
    if S.CODE_MASK in batch:
        return int(np.asarray(batch[S.CODE_MASK]).sum())
    return 0


def train_epoch(
    engine: Any,
    task: TaskFn,
    batches: Iterable[Batch],
    device: torch.device,
    epoch: int,
    hooks: Sequence[StepHooks] = (),
) -> EpochResult:
    """One pass over ``batches``: forward, loss, backward, step. Returns this rank's stats.

    ``data_wait_seconds`` is the time spent waiting for the next batch: what ingest costs
    the trainer.
    """
    engine.train()
    t_start = time.perf_counter()
    for h in hooks:
        h.on_epoch_start(epoch)
    wait = 0.0
    total = 0.0
    comps: dict[str, float] = {}
    n_batches = subjects = tokens = 0
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
        tokens += _batch_tokens(batch)
        step_seconds = time.perf_counter() - t0
        for h in hooks:
            h.on_step(n_batches - 1, step_seconds, subjects, batch)
    seconds = time.perf_counter() - t_start
    measures: dict[str, Any] = {}
    for h in hooks:  # after the clock: what a hook does at the end (a log write) is not timed
        measures.update(h.on_epoch_end())
    n = max(n_batches, 1)
    return EpochResult(
        loss=total / n,
        components={k: v / n for k, v in comps.items()},
        subjects=subjects,
        tokens=tokens,
        steps=n_batches,
        seconds=seconds,
        data_wait_seconds=wait,
        measures=measures,
    )


def synchronized(
    batches: Iterable[Batch], group: int = 1, max_groups: int | None = None
) -> Iterator[Batch]:
    """Yield batches in groups of ``group`` for as long as *every* rank has a full group, and
    at most ``max_groups`` groups (None: no bound; ``train.max_steps_per_epoch``).

    Ranks of a data-parallel run must take the same number of optimizer steps (each step is a
    collective); shards of a streamed split can differ by a batch or two. One tiny all-reduce
    per group decides, so no rank blocks in a collective the others never enter, and every epoch
    ends on a gradient-accumulation boundary. The bound is the same on every rank, so it needs
    no collective; batches after it are not read.
    """
    distributed = is_distributed()
    it = iter(batches)
    for _ in itertools.count() if max_groups is None else range(max_groups):
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
    """Per-subject hazards of a split: a typed view over one :class:`~ehrsurv_dist.ragged.Ragged`.

    Attributes:
        subject_id: int64 [N].
        event: bool [N].
        last_visit: int64 [N].
        hazard: N rows; row i holds the hazards of subject i, float32, length
            ``last_visit[i] + 1`` (visit axis) or K, one per day bin (calendar axis).
        extra: calendar axis: ``prediction_time`` int64 [N] and ``time_days`` float64 [N]
            (a row is then a sample: subject and prediction time); empty on the visit axis.
    """

    subject_id: np.ndarray
    event: np.ndarray
    last_visit: np.ndarray
    hazard: Ragged
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        """float32 [sum(last_visit + 1)]: every subject's hazards, back to back."""
        return np.asarray(self.hazard.values)

    @property
    def offsets(self) -> np.ndarray:
        """int64 [N + 1]: subject i's hazards are ``values[offsets[i]:offsets[i + 1]]``."""
        return self.hazard.offsets

    def hazards(self, i: int) -> np.ndarray:
        return np.asarray(self.hazard.row(i))

    def take(self, idx: np.ndarray) -> Predictions:
        """Subjects ``idx``, in that order."""
        return Predictions(
            self.subject_id[idx],
            self.event[idx],
            self.last_visit[idx],
            self.hazard.take(idx),
            {k: v[idx] for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        """Concatenate, then sort by subject id (and prediction time on the calendar axis):
        a canonical order whatever the sharding."""
        parts = [p for p in parts if len(p.subject_id)]
        if not parts:
            z = np.zeros(0, np.int64)
            return Predictions(z, z.astype(bool), z, Ragged.empty(np.zeros(0, np.float32)))
        joined = Predictions(
            subject_id=np.concatenate([p.subject_id for p in parts]),
            event=np.concatenate([p.event for p in parts]),
            last_visit=np.concatenate([p.last_visit for p in parts]),
            hazard=Ragged.concat([p.hazard for p in parts]),
            extra={k: np.concatenate([p.extra[k] for p in parts]) for k in parts[0].extra},
        )
        if S.PREDICTION_TIME in joined.extra:
            order = np.lexsort((joined.extra[S.PREDICTION_TIME], joined.subject_id))
        else:
            order = np.argsort(joined.subject_id, kind="stable")
        return joined.take(order)


@torch.no_grad()
def predict(
    forward: Any, module: nn.Module, batches: Iterable[Batch], device: torch.device
) -> Predictions:
    """Hazards of every subject in ``batches`` (this rank's share), eval mode.

    The hazards of subject b are those of its real visit slots ``0..last_visit[b]``; the label
    construction guarantees these are exactly the real visits. On the calendar axis (batches
    carry ``bin``) a row is a sample and its hazards are the K day bins'.
    """
    was_training = module.training
    module.eval()
    parts: list[Predictions] = []
    try:
        for batch in batches:
            tb = to_tensors(batch, device)
            out = forward(**select_inputs(module, tb))
            h = torch.sigmoid(out.logits.float()).cpu().numpy()  # [B, V] or [B, K]
            lv = np.asarray(batch[S.LAST_VISIT], dtype=np.int64)
            if S.BIN in batch:  # calendar axis: K hazards per sample
                parts.append(_calendar_predictions(batch, h, lv))
                continue
            vm = out.visit_mask.cpu().numpy()
            real = np.arange(h.shape[1])[None, :] <= lv[:, None]  # [B, V]
            if not np.array_equal(real & vm, real):
                raise RuntimeError("a visit slot up to last_visit is not a real visit slot")
            parts.append(
                Predictions(
                    subject_id=np.asarray(batch[S.SUBJECT], dtype=np.int64),
                    event=np.asarray(batch[S.EVENT], dtype=bool),
                    last_visit=lv,
                    # row-major: subject after subject
                    hazard=Ragged.from_lengths(h[real].astype(np.float32), lv + 1),
                )
            )
    finally:
        module.train(was_training)
    return Predictions.concat(parts)


def _calendar_predictions(batch: Batch, h: np.ndarray, lv: np.ndarray) -> Predictions:
    """A calendar batch's predictions: every sample's K day-bin hazards (``h`` [B, K])."""
    n, k = h.shape
    return Predictions(
        subject_id=np.asarray(batch[S.SUBJECT], dtype=np.int64),
        event=np.asarray(batch[S.EVENT], dtype=bool),
        last_visit=lv,
        hazard=Ragged.from_lengths(h.astype(np.float32).reshape(-1), np.full(n, k, np.int64)),
        extra={
            S.PREDICTION_TIME: np.asarray(batch[S.PREDICTION_TIME], dtype=np.int64),
            S.TIME_DAYS: np.asarray(batch[S.TIME_DAYS], dtype=np.float64),
        },
    )


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
    total_all, n_all = all_reduce([total, float(n)])
    total, n = float(total_all), int(n_all)
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
