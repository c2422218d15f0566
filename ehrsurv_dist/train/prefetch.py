"""Background batch preparation: collate the next batches while the model trains on this one.

A Ray Train worker receives compact blocks (one row per subject) and buckets, pads and masks them
itself (``collate.batches_from_blocks``). Done inline, that work is time the training step waits
for ("data wait"). :func:`prefetch` runs the batch iterator in a thread and hands batches over
through a bounded queue: numpy and torch release the GIL in their kernels, so collation overlaps
the forward and backward passes. Pure Python (no Ray): the tests use it directly.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _produce(items: Iterable[object], q: queue.Queue[object], stop: threading.Event) -> None:
    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(item):
                return
    except BaseException as e:  # handed to the consumer, raised there
        put(_Failure(e))
        return
    finally:
        # Stopped early (a bounded epoch, early stopping): the source stops now, in this
        # thread, instead of whenever it is collected (a Ray Data read would run on).
        close_source(items)
    put(_END)


def close_source(items: Iterable[object]) -> None:
    """Close ``items`` if it can be closed (a generator, a :class:`Prefetch`): a reader left
    part-way stops now instead of whenever it is collected."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


class Prefetch(Iterator[T]):
    """``items`` in order, produced up to ``depth`` ahead by a thread that starts at once.

    Starting at construction (not at the first ``next``) lets a caller begin the next epoch's
    batches before it needs them, e.g. while it validates. An exception in the producer is
    re-raised in the consumer at the point it occurred in the sequence. :meth:`close` (also
    called when the consumer reaches the end, or on garbage collection) stops the producer
    after at most one more item.
    """

    def __init__(self, items: Iterable[T], depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        # The thread holds the queue and the flag, not this object, so an abandoned Prefetch
        # is collected and its __del__ stops the thread.
        self._t = threading.Thread(
            target=_produce,
            args=(items, self._q, self._stop),
            name="ehrsurv-prefetch",
            daemon=True,
        )
        self._t.start()

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the producer (it finishes the item in hand, then exits) and wait for it."""
        self._done = True
        self._stop.set()
        if self._t.is_alive() and self._t is not threading.current_thread():
            self._t.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """``items`` produced up to ``depth`` ahead by a background thread (:class:`Prefetch`);
    ``depth <= 0`` iterates inline."""
    if depth <= 0:
        return iter(items)
    return Prefetch(items, depth)
