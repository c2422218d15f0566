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
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides, e.g. train.epochs=3 model.size=tiny (list every key with "
        "`ehrsurv config`)",
    )


def job_overrides(args: argparse.Namespace) -> list[Any]:
    """The overrides of a job command, then --cohort and --init as (key, path) pairs.

    A pair's value is taken verbatim, not parsed as YAML (a path may look like YAML).
    """
    overrides: list[Any] = list(args.overrides)
    if args.cohort:
        overrides.append(("data.cohort", args.cohort))
    if getattr(args, "init", None):
        overrides.append(("finetune.init", args.init))
    return overrides


def add_quiet(p: argparse.ArgumentParser, help: str) -> None:
    """A --quiet flag that silences progress output."""
    p.add_argument("--quiet", action="store_true", help=help)
