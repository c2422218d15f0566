"""Argument types and option groups that several ``ehrsurv`` subcommands share."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

EXIT_OK = 0
EXIT_INVALID = 1  # the input was read and found invalid (validate)
EXIT_ERROR = 2  # the command could not run (bad arguments, unreadable input)

# What `add_subparsers()` returns; each subcommand module adds its parsers to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(s: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_float(s: str) -> float:
    """argparse type: a number >= 0."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s}")
    return v


def pick(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """Keyword arguments from parsed options: ``names`` as they are, ``renamed`` as kwarg=option."""
    out = {name: getattr(args, name) for name in names}
    out.update({kw: getattr(args, opt) for kw, opt in renamed.items()})
    return out


def add_job_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    """--config, --cohort, --out and KEY=VALUE overrides of a job command (train, tune)."""
    p.add_argument("--config", help="job YAML (jobs/NAME.yaml); its values override the defaults")
    p.add_argument("--cohort", help="MEDS cohort directory or URI (overrides data.cohort)")
    p.add_argument(
        "--out",
        required=out_required,
        help="run directory: new, or the same run to resume it"
        + ("" if out_required else " (required unless --dry-run)"),
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="what the job and its Ray Train workers print on the console (and so in `ray job "
        "logs`): INFO (default) adds one line per epoch and worker (loss, steps, seconds) to "
        "the warnings and errors; WARNING keeps only those",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.epochs=3 model.size=tiny (list every key with "
        "`ehrsurv config`)",
    )


def add_task_args(p: argparse.ArgumentParser) -> None:
    """Shortcuts for the calendar-axis task (``task.*``; docs/tasks.md)."""
    g = p.add_argument_group(
        "calendar-axis task (shortcuts for task.* keys; any of them selects task.axis=calendar)"
    )
    g.add_argument(
        "--labels",
        help="MEDS label file or folder (subject_id, prediction_time): the prediction times "
        "(task.labels); relative paths are also looked up in the cohort",
    )
    g.add_argument(
        "--event-code",
        action="append",
        default=None,
        metavar="CODE",
        help="code whose first occurrence after the prediction time is the event; repeatable; "
        "PREFIX//* matches a family (task.event_codes; default MEDS_DEATH)",
    )
    g.add_argument(
        "--horizon-days",
        type=float,
        default=None,
        help="follow-up after the prediction time in days, > 0 (task.horizon_days)",
    )


def job_overrides(args: argparse.Namespace) -> list[Any]:
    """The overrides of a job command, then --cohort, --init and the task shortcuts as
    (key, value) pairs.

    A pair's value is taken verbatim, not parsed as YAML (a path may look like YAML).
    """
    overrides: list[Any] = list(args.overrides)
    if args.cohort:
        overrides.append(("data.cohort", args.cohort))
    if getattr(args, "init", None):
        overrides.append(("finetune.init", args.init))
    task: list[Any] = []
    if getattr(args, "labels", None):
        task.append(("task.labels", args.labels))
    if getattr(args, "event_code", None):
        task.append(("task.event_codes", list(args.event_code)))
    if getattr(args, "horizon_days", None) is not None:
        task.append(("task.horizon_days", float(args.horizon_days)))
    if task:
        overrides.append(("task.axis", "calendar"))
    return overrides + task


def add_quiet(p: argparse.ArgumentParser, help: str) -> None:
    """A --quiet flag that silences progress output."""
    p.add_argument("--quiet", action="store_true", help=help)
