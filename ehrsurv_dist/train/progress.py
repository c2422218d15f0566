"""A progress bar on the driver for a Ray Train run (edge module: Ray imported in functions).

``trainer.fit()`` blocks the driver while the workers run, possibly on other nodes, so rank 0
pushes its progress to a tiny Ray actor (no CPU reserved, on the driver's node) and a thread on
the driver polls it and draws a ``tqdm`` bar: subjects done in the current epoch, the last
epoch's loss and validation score. The updates are fire-and-forget and throttled, so the hot
loop never waits on them; a lost update only makes the bar lag.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


class ProgressSink:
    """The actor's state: the latest fields each worker update set."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def update(self, fields: dict[str, Any]) -> None:
        self.state.update(fields)

    def get(self) -> dict[str, Any]:
        return dict(self.state)


class StepReporter:
    """Step hooks of ``train_epoch`` for rank 0: report ``subjects × world`` (every rank gets
    an equal share of the epoch) to ``sink``, at most every ``min_interval_s`` seconds."""

    def __init__(self, sink: Any, world: int, min_interval_s: float = 0.5) -> None:
        self.sink = sink
        self.world = world
        self.min_interval_s = min_interval_s
        self.epoch = 0
        self._last = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._last = 0.0

    def on_step(self, step: int, seconds: float, subjects: int, batch: Any) -> None:
        del step, seconds, batch
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self._last = now
            self.sink.update.remote({"epoch": self.epoch, "subjects": subjects * self.world})

    def on_epoch_end(self) -> dict[str, Any]:
        return {}


def _postfix(state: dict[str, Any]) -> str:
    parts = []
    if "train_loss" in state:
        parts.append(f"loss {state['train_loss']:.4f}")
    if "val_c_index_td" in state:
        parts.append(f"val td-C {state['val_c_index_td']:.4f}")
    elif "val_loss" in state:
        parts.append(f"val loss {state['val_loss']:.4f}")
    if "best_epoch" in state:
        parts.append(f"best epoch {int(state['best_epoch'])}")
    return ", ".join(parts)


class _BarView:
    """Draws the workers' latest state (``ProgressSink.get``) on a ``tqdm`` bar.

    The bar's clock starts at the first report, not when the bar is made: Ray start-up, the
    worker group and the first batches would otherwise count as training time and show a rate
    and an ETA far off for the whole first epoch. Epochs already done when the first report
    comes (a resumed run) count as the bar's ``initial``, not as progress made at that rate.
    """

    def __init__(self, bar: Any, epochs: int, per_epoch: int) -> None:
        self.bar, self.epochs, self.per_epoch = bar, epochs, per_epoch
        self.total = epochs * per_epoch
        self.started = False
        self.last_done: Any = None

    def show(self, state: dict[str, Any]) -> None:
        bar = self.bar
        if not state:  # no report yet: the workers are starting
            return
        epoch = int(state.get("epoch", 0))
        done = min(int(state.get("subjects", 0)), self.per_epoch)
        if state.get("epoch_done") == epoch:
            done = self.per_epoch
        n = min(self.total, epoch * self.per_epoch + done)
        if not self.started:
            self.started = True
            bar.reset(total=self.total)  # restarts the clock and the rate's averages
            bar.initial = min(self.total, epoch * self.per_epoch)
            bar.n = bar.last_print_n = bar.initial
        bar.set_description(f"epoch {min(epoch + 1, self.epochs)}/{self.epochs}", False)
        bar.set_postfix_str(_postfix(state), refresh=False)
        if n > bar.n:
            bar.update(n - bar.n)  # redraws at most every mininterval
        if state.get("epoch_done") != self.last_done:  # one line per epoch even in a log
            self.last_done = state.get("epoch_done")
            bar.refresh()


class DriverProgress:
    """Context manager: the sink actor plus the polling thread and its bar.

    Args:
        epochs: the run's maximum number of epochs.
        subjects_per_epoch: train subjects (the bar's length per epoch).
        enabled: False (e.g. ``--quiet`` or no TTY wanted) makes this a no-op with no actor.
        interval_s: polling period.
    """

    def __init__(
        self,
        epochs: int,
        subjects_per_epoch: int,
        enabled: bool = True,
        interval_s: float = 0.5,
    ) -> None:
        self.epochs = epochs
        self.per_epoch = max(1, subjects_per_epoch)
        self.enabled = enabled
        self.interval_s = interval_s
        self.sink: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DriverProgress:
        if not self.enabled:
            return self
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node, as Ray Train pins its controller: a worker node lost mid-run
        # (its workers replaced, docs/cluster.md) would otherwise take the bar's actor with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.sink = ray.remote(num_cpus=0)(ProgressSink).options(scheduling_strategy=here).remote()
        self._thread = threading.Thread(target=self._run, name="ehrsurv-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import ray
        from tqdm import tqdm

        # In a log file (e.g. `ray job logs`) redraw rarely instead of a stream of \r updates.
        tty = sys.stderr.isatty()
        with tqdm(
            total=self.epochs * self.per_epoch,
            unit="subj",
            desc="train",
            file=sys.stderr,
            mininterval=0.1 if tty else 30.0,
            leave=True,
        ) as bar:
            view = _BarView(bar, self.epochs, self.per_epoch)
            while True:
                stopping = self._stop.wait(self.interval_s)
                try:
                    state = ray.get(self.sink.get.remote(), timeout=5)
                except Exception:  # the actor or Ray went away: stop drawing, never fail the run
                    return
                view.show(state)
                if stopping:
                    return

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
        if self.sink is not None:
            import ray

            try:
                ray.kill(self.sink)
            except Exception:  # already gone with its Ray
                pass
