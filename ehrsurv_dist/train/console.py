"""What a training job says on the console: the driver's lines and its Ray Train workers'.

The driver starts Ray with ``log_to_driver=True`` (``launch.init_ray``), so whatever a worker
writes to stdout or stderr reaches the driver's console, and through it ``ray job logs``. What
the workers write is kept to what a user needs:

- the package's own records (logger ``ehrsurv_dist``) at the job's level, one line each:
  ``LEVEL logger: message``. At INFO that is one summary line per epoch per rank (epoch, loss,
  steps, seconds: counts and timings, never a subject's data); warnings and errors always;
- Ray Data's execution plans and progress summaries stay off the console (warnings pass; the
  session's ``logs/ray-data`` files still get everything): :func:`quiet_ray_data_console`;
- DeepSpeed's INFO notices (its engine and config dumps) stay off; its warnings pass;
- Ray Train's own INFO lines (resources requested, each checkpoint and report) stay off; its
  warnings pass (:func:`ray_train_log_level`, for the run's ``RunConfig``).

Ray prefixes every forwarded line with its process, e.g. ``(RayTrainWorker pid=123)``, and by
default folds lines that differ only in numbers across workers into one ``[repeated Nx across
cluster]`` line (``RAY_DEDUP_LOGS=0`` shows every rank's line). Ray is imported in functions.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = [
    "FORMAT",
    "LEVELS",
    "PACKAGE_LOGGER",
    "console_logging",
    "job_log_level",
    "quiet_ray_data_console",
    "ray_train_log_level",
    "worker_logging",
]

PACKAGE_LOGGER = "ehrsurv_dist"
FORMAT = "%(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a
    redirect), not to the stream that was current when the handler was made."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        del value  # always sys.stderr


def console_logging(level: str | int = "INFO") -> None:
    """Show the package's records of ``level`` and above on stderr, one line each.

    Idempotent: one handler however often it is called; the level is the last one given.
    Records still propagate (a test's ``caplog``, an application's own handlers see them).
    """
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())


def job_log_level() -> int:
    """The level the driver logs the package at, for its workers to use too (WARNING when the
    driver's application configured nothing: warnings and errors only)."""
    return logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel()


def quiet_ray_data_console() -> None:
    """Keep Ray Data's INFO lines (execution plans and, without a terminal, a progress summary
    every few seconds: ~300 lines for one small sweep) and its progress bars out of the
    console; they still go to the session's ``logs/ray-data`` files, and warnings and errors
    still reach the console. ``RAY_DATA_LOG_LEVEL`` / ``RAY_DATA_LOGGING_CONFIG`` /
    ``RAY_DATA_DISABLE_PROGRESS_BARS`` users keep what they asked for."""
    import ray.data  # configures the "ray.data" logger on import

    # Progress bars and execution-start lines: off in this process and in the actors of the
    # datasets it makes (a dataset carries its context), e.g. Ray Train's split coordinator.
    ctx = ray.data.DataContext.get_current()
    if "RAY_DATA_DISABLE_PROGRESS_BARS" not in os.environ:
        ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not ctx.enable_progress_bars:
        from ray.util.debug import log_once

        # Ray Data says once per process, as a warning, that the bars are off: it is no news
        log_once("ray_data_progress_manager_disabled")
    if os.environ.get("RAY_DATA_LOG_LEVEL") or os.environ.get("RAY_DATA_LOGGING_CONFIG"):
        return
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":  # the console handler
            handler.setLevel(max(handler.level, logging.WARNING))


def worker_logging(level: str | int) -> None:
    """In a Ray Train worker: the package's records at ``level`` on stderr (which Ray forwards
    to the driver), Ray Data's and DeepSpeed's chatter off (their warnings pass)."""
    console_logging(level)
    # Ray Train's worker setup gives the root logger a console handler at INFO: the package's
    # records would print twice, and every other library's INFO (Ray Train's report of each
    # checkpoint with all its metrics, among them) would reach the console
    logging.getLogger(PACKAGE_LOGGER).propagate = False
    root = logging.getLogger()
    if logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel() > logging.DEBUG:
        root.setLevel(max(root.level, logging.WARNING))
    quiet_ray_data_console()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def ray_train_log_level(level: str | int) -> str:
    """Ray Train's console level for a job logging at ``level``: its INFO lines (resources,
    every checkpoint and report with all the metrics) repeat what the epoch lines say, so
    WARNING, unless the job asked for DEBUG."""
    n = level if isinstance(level, int) else logging.getLevelName(level)
    return "DEBUG" if isinstance(n, int) and n <= logging.DEBUG else "WARNING"
