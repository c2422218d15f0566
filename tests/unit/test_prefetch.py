"""The background batch producer keeps order, surfaces errors and stops when abandoned."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from ehrsurv_dist.train.prefetch import prefetch


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_prefetch_keeps_every_item_in_order(depth: int) -> None:
    assert list(prefetch(range(100), depth)) == list(range(100))
    assert list(prefetch([], depth)) == []


def test_prefetch_reraises_the_producer_error_in_sequence() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad block in unit 7")

    got = []
    with pytest.raises(ValueError, match="bad block in unit 7"):
        for x in prefetch(gen(), 2):
            got.append(x)
    assert got == [1, 2]


def test_prefetch_stops_the_producer_when_the_consumer_stops_early() -> None:
    produced = []

    def gen() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    it = prefetch(gen(), 3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # what `synchronized` does when ranks stop an epoch early
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 5 + 3 + 2  # bounded look-ahead, then nothing more
    assert not any(t.name == "ehrsurv-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetch_prepares_the_next_items_while_the_consumer_holds_one() -> None:
    ready = threading.Event()
    produced = []

    def gen() -> Iterator[int]:
        for i in range(6):
            produced.append(i)
            if len(produced) == 3:
                ready.set()
            yield i

    it = prefetch(gen(), 4)
    assert next(it) == 0
    # while item 0 is in use (the training step), items 1 and 2 get collated
    assert ready.wait(timeout=10)
    assert list(it) == [1, 2, 3, 4, 5]


def test_prefetch_starts_producing_before_the_first_next() -> None:
    """The worker builds the next epoch's Prefetch before validating: it must fill meanwhile."""
    produced = []
    filled = threading.Event()

    def gen() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            if len(produced) == 3:
                filled.set()
            yield i

    it = prefetch(gen(), 2)
    assert filled.wait(timeout=10)  # nobody has called next() yet
    assert list(it) == list(range(10))


def test_an_abandoned_prefetch_stops_its_thread() -> None:
    """A next epoch that never runs (early stopping): dropping the iterator ends the producer."""
    import gc

    def gen() -> Iterator[int]:
        yield from range(10_000)

    def alive() -> int:
        return sum(t.name == "ehrsurv-prefetch" and t.is_alive() for t in threading.enumerate())

    before = alive()
    it = prefetch(gen(), 2)
    assert alive() == before + 1
    del it
    gc.collect()
    deadline = time.monotonic() + 5
    while alive() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == before


def test_prefetch_closes_its_source_when_stopped_early() -> None:
    """A bounded epoch (train.max_steps_per_epoch) stops reading: the source generator (a Ray
    Data read in a worker) is closed by the producer, not left running until collected."""
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            closed.set()

    it = prefetch(gen(), 2)
    assert next(it) == 0
    it.close()
    assert closed.wait(5)
