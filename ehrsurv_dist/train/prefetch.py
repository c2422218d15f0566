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


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Yield ``items`` in order, produced up to ``depth`` ahead by a background thread.

    An exception in the producer is re-raised in the consumer at the point it occurred in the
    sequence. Closing the generator early (``break``, garbage collection) stops the producer
    after at most one more item. ``depth <= 0`` iterates inline.
    """
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failure(e))
            return
        put(_END)

    t = threading.Thread(target=produce, name="ehrsurv-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        t.join(timeout=5)
