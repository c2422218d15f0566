"""The ``ehrsurv`` command line.

Each subcommand is a thin wrapper over a library function; its parser and its command live in
one module of this package (:mod:`~ehrsurv_dist.cli.data`: synth, validate;
:mod:`~ehrsurv_dist.cli.jobs`: pretrain, finetune, evaluate, predict, tune, config;
:mod:`~ehrsurv_dist.cli.bench`: bench; :mod:`~ehrsurv_dist.cli.cluster`: cluster). Errors caused by
the user's input (:class:`~ehrsurv_dist.errors.EhrsurvError`, config errors) are printed on one
line, naming the file, column, subject or key, and exit non-zero without a Python traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ehrsurv_dist.cli.args import EXIT_ERROR, EXIT_INVALID, EXIT_OK
from ehrsurv_dist.cli.bench import add_bench_parsers
from ehrsurv_dist.cli.cluster import add_cluster_parser
from ehrsurv_dist.cli.data import add_synth_parser, add_validate_parser
from ehrsurv_dist.cli.jobs import (
    add_config_parser,
    add_evaluate_parser,
    add_predict_parser,
    add_train_parsers,
    add_tune_parser,
)
from ehrsurv_dist.errors import ConfigError, EhrsurvError

__all__ = ["EXIT_ERROR", "EXIT_INVALID", "EXIT_OK", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ehrsurv`` parser with every subcommand, in ``--help`` order."""
    p = argparse.ArgumentParser(
        prog="ehrsurv",
        description=(
            "Discrete-time survival with BEHRT-style transformers on MEDS EHR cohorts, "
            "distributed on Ray. See docs/ for guides."
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        add_synth_parser,
        add_validate_parser,
        add_train_parsers,
        add_evaluate_parser,
        add_predict_parser,
        add_bench_parsers,
        add_tune_parser,
        add_cluster_parser,
        add_config_parser,
    ):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ehrsurv`` with ``argv`` (default: the process's); returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse gives a command's KEY=VALUE positional (nargs="*") nothing when another
        # positional (predict's and evaluate's RUN) comes first and options follow it; the
        # overrides that come after the options are taken here, anything else is refused.
        if isinstance(getattr(args, "overrides", None), list) and not any(
            a.startswith("-") or "=" not in a for a in extra
        ):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except EhrsurvError as e:
        print(f"ehrsurv {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except ConfigError as e:  # config and argument validation errors name the key
        print(f"ehrsurv {args.command}: config error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"ehrsurv {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:
        # the system refused a path the user gave (missing, a directory, no permission, no
        # space): one line naming it, as for any other bad input
        path = e.filename2 or e.filename
        print(
            f"ehrsurv {args.command}: error: {e.strerror or e}" + (f": {path}" if path else ""),
            file=sys.stderr,
        )
        return EXIT_ERROR
