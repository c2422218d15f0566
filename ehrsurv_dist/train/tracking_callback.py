"""The Ray Train callback that logs every epoch to MLflow / TensorBoard (an edge: Ray imported).

Ray Train runs a ``UserCallback``'s ``after_report`` in the Train controller, an actor that Ray
places on the driver's node, each time all workers have reported an epoch: the rows the workers
report (``worker.py``'s metrics; every rank reports the same numbers) reach the tracking store
from there (:class:`~ehrsurv_dist.train.tracking.EpochLogger`), never from the workers. The
logic lives in :mod:`ehrsurv_dist.train.tracking` (no Ray); this module only adapts it.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import UserCallback

from ehrsurv_dist.train.tracking import EpochLogger, Target

log = logging.getLogger(__name__)


class TrackingCallback(UserCallback):  # type: ignore[misc]
    """Logs rank 0's reported metrics of every epoch to ``target``.

    A failing store costs the tracking, not the training: the first error is logged as a
    warning and later epochs are tried again.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._logger: EpochLogger | None = None
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:  # the writer / client is made where it runs
        return {**self.__dict__, "_logger": None}

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        del run_context, checkpoint
        if not metrics:
            return
        try:
            if self._logger is None:
                self._logger = EpochLogger(self.target)
            self._logger.log(metrics[0])
        except Exception as e:
            if not self._warned:
                self._warned = True
                log.warning("tracking: could not log an epoch to %s: %s", self.target.uri, e)
