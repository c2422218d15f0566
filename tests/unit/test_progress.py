"""The driver's progress bar (no Ray): its clock starts at the workers' first report."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from ehrsurv_dist.train.progress import StepReporter, _BarView


def _bar(total: int) -> tqdm:
    return tqdm(total=total, file=io.StringIO(), mininterval=0.0)


def test_rate_counts_from_the_first_report_not_from_start_up() -> None:
    bar = _bar(3 * 100)
    view = _BarView(bar, epochs=3, per_epoch=100)
    view.show({})  # workers still starting: nothing drawn, clock not started
    assert bar.n == 0 and not view.started
    time.sleep(0.6)  # "start-up" that must not count
    view.show({"epoch": 0, "subjects": 10})
    time.sleep(0.1)
    view.show({"epoch": 0, "subjects": 60})
    elapsed = bar.format_dict["elapsed"]
    assert bar.n == 60
    assert elapsed < 0.5  # counted from the first report (0.1 s ago), not from creation (0.7 s)
    view.show({"epoch": 0, "subjects": 100, "epoch_done": 0, "train_loss": 1.5})
    assert bar.n == 100 and "epoch 1/3" in bar.desc
    view.show({"epoch": 1, "subjects": 30, "epoch_done": 0})
    assert bar.n == 130 and "epoch 2/3" in bar.desc


def test_a_resumed_run_starts_the_bar_at_its_epoch() -> None:
    bar = _bar(4 * 50)
    view = _BarView(bar, epochs=4, per_epoch=50)
    view.show({"epoch": 2, "subjects": 5})
    # the two epochs done before the resume are the bar's initial count, not progress
    assert bar.initial == 100 and bar.n == 105
    view.show({"epoch": 2, "subjects": 80})  # capped at one epoch's subjects
    assert bar.n == 150


def test_step_reporter_throttles_updates() -> None:
    sent: list[dict[str, int]] = []

    class Sink:
        class update:  # noqa: N801 - mimics an actor method handle
            @staticmethod
            def remote(fields: dict[str, int]) -> None:
                sent.append(fields)

    reporter = StepReporter(Sink(), world=2, min_interval_s=60.0)
    reporter.on_epoch_start(3)
    for step, subjects in enumerate((8, 16, 24)):
        reporter.on_step(step, 0.1, subjects, {})
    # the first step reports at once (times the world size); the rest fall inside the interval
    assert sent == [{"epoch": 3, "subjects": 16}]
