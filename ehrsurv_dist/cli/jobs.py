"""The job commands: ``pretrain``, ``finetune``, ``evaluate``, ``predict``, ``tune``, ``config``.

Ray, torch and the trainers are imported when a command runs, not when the parser is built, so
that ``ehrsurv --help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ehrsurv_dist.cli.args import (
    EXIT_OK,
    Subparsers,
    add_job_args,
    add_log_level,
    add_quiet,
    add_task_args,
    job_overrides,
)
from ehrsurv_dist.errors import EhrsurvError, OutputError
from ehrsurv_dist.rundir import METRICS, PLOTS

TRAIN_MODES = (
    ("pretrain", "self-supervised MLM / next-visit pretraining of the BEHRT encoder"),
    ("finetune", "survival fine-tuning (frozen / LoRA / full), then evaluation"),
)


_SCORING_LOG_HELP = (
    "what the command prints on the console besides its result: INFO (default) adds what it "
    "does on the way (a cohort validation reused from the cache, the ingest plan); WARNING "
    "keeps warnings and errors only"
)


def add_train_parsers(sub: Subparsers) -> None:
    """``ehrsurv pretrain`` and ``ehrsurv finetune``."""
    for mode, help_text in TRAIN_MODES:
        t = sub.add_parser(
            mode,
            help=help_text,
            description=(
                f"{help_text[0].upper()}{help_text[1:]} as a Ray Train job (DeepSpeed or torch DDP "
                "workers) on an in-process local Ray, or on the cluster at RAY_ADDRESS. "
                "Re-running the same command resumes from the latest checkpoint."
            ),
        )
        add_job_args(t)
        if mode == "finetune":
            add_task_args(t)
            t.add_argument("--init", help="pretrained run directory to initialise the encoder from")
            t.add_argument(
                "--no-eval", action="store_true", help="skip the evaluation after training"
            )
        t.set_defaults(func=lambda a, m=mode: cmd_train(a, m))


@contextmanager
def ray_cleanup() -> Iterator[None]:
    """Shut down on exit the in-process Ray that the body started (not one already running)."""
    import ray  # at the edge: only the commands that train start Ray

    started = not ray.is_initialized()
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def cmd_train(args: argparse.Namespace, mode: str) -> int:
    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.jobspec import JobSpec
    from ehrsurv_dist.metrics import jsonable, plots
    from ehrsurv_dist.train.console import console_logging
    from ehrsurv_dist.train.launch import run_training

    console_logging(args.log_level)
    spec = load_config(JobSpec, args.config, job_overrides(args))
    with ray_cleanup():
        res = run_training(spec, mode, args.out)
        metrics: dict[str, Any] = {
            "train": {
                "mode": mode,
                "best_epoch": res.best_epoch,
                "best_val_score": res.best_score,
                "history": res.history,
            }
        }
        if res.history:
            plots.plot_training_curves(res.history, f"{args.out}/plots/training_curves.png")
        if mode == "finetune" and not args.no_eval:
            from ehrsurv_dist.evaluate import evaluate_run

            metrics.update(evaluate_run(args.out))
        write_json_atomic(jsonable(metrics), f"{args.out}/{METRICS}")
        from ehrsurv_dist.train.tracking import log_outputs

        log_outputs(args.out)  # train.tracking on: the final metrics and the plots
    print(summary(metrics, args.out))
    return EXIT_OK


def summary(metrics: dict[str, Any], out: str, header: str | None = None) -> str:
    """The lines printed after a run: best epoch and score (or ``header``), then the metrics of
    each split."""
    t = metrics["train"]
    lines = [
        header
        or f"run {out}: {t['mode']}, best epoch {t['best_epoch']}, "
        f"val score {t['best_val_score']:.4f}"
    ]
    for split in ("train", "tuning", "held_out", "all"):  # all: a new cohort's subjects
        m = metrics.get(split)
        if not m or not m.get("n_subjects"):
            continue
        if "horizon_days" in m:  # calendar axis: samples, and the day scale
            lines.extend(_calendar_lines(split, m))
            continue
        ci = m.get("c_index_td_ci") or [float("nan"), float("nan")]
        lines.append(
            f"  {split:9s} n={m['n_subjects']:5d} events={m.get('n_events', 0):5d}  "
            f"td-C {_f(m.get('c_index_td'))} [{_f(ci[0])}, {_f(ci[1])}]  "
            f"Harrell {_f(m.get('c_index_harrell'))}  Uno {_f(m.get('c_index_uno'))}  "
            f"IBS {_f(m.get('ibs'))}"
        )
    lines.append(f"metrics: {out}/{METRICS}   plots: {out}/{PLOTS}/")
    return "\n".join(lines)


def _calendar_lines(split: str, m: dict[str, Any]) -> list[str]:
    """A calendar-axis split's lines: counts, concordance with intervals, and the day scale."""
    ci = (m.get("ci") or {}).get("c_index_td") or [float("nan"), float("nan")]
    cal = m.get("calibration") or {}
    days = ", ".join(
        f"{d}d Brier {_f(b)} AUC {_f((m.get('td_auc') or {}).get(d))}"
        for d, b in (m.get("brier") or {}).items()
    )
    return [
        f"  {split:9s} samples={m.get('n_samples', 0):5d} subjects={m.get('n_subjects', 0):5d} "
        f"events={m.get('n_events', 0):5d} (within {float(m['horizon_days']):g} days)",
        f"            td-C {_f(m.get('c_index_td'))} [{_f(ci[0])}, {_f(ci[1])}]  "
        f"Harrell {_f(m.get('c_index_harrell'))}  Uno {_f(m.get('c_index_uno'))}  "
        f"IBS {_f(m.get('ibs'))}  ECE {_f(cal.get('ece'))}",
        f"            {days}",
        *(
            [
                f"            oracle (synthetic truth, fair / with frailty): td-C "
                f"{_f(o['observable']['c_index_td'])} / {_f(o['frailty']['c_index_td'])}"
            ]
            if (o := m.get("oracle"))
            else []
        ),
    ]


def _f(x: Any) -> str:
    return "  n/a " if x is None else f"{float(x):.4f}"


def _add_scoring_overrides(p: argparse.ArgumentParser) -> None:
    """KEY=VALUE overrides of how a trained run is scored (not of its model)."""
    from ehrsurv_dist.score_overrides import HELP

    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"{HELP} (list every key with `ehrsurv config`)",
    )


def add_evaluate_parser(sub: Subparsers) -> None:
    """``ehrsurv evaluate RUN [--cohort NEW --out DIR]``."""
    e = sub.add_parser(
        "evaluate",
        help="score a fine-tuned run on whole splits, or on a new cohort",
        description="Predict every subject of the given splits of the run's cohort with the best "
        "model and write metrics.json, predictions/ and plots/ in the run directory. With "
        "--cohort, score a new cohort instead (external validation): all its subjects (or its "
        "own MEDS splits with --split), written to --out DIR, never into the run directory. "
        "Outcomes of the new cohort: visit-axis runs read --outcomes (default "
        "COHORT/outcomes.parquet); calendar-axis runs take them from the event codes in the "
        "data (or --outcomes for a run trained with task.outcomes) at the run's prediction "
        "times, or at those of --labels. The censoring distribution of Uno's C and the IBS is "
        "then the new cohort's own.",
    )
    e.add_argument("run", help="run directory written by `ehrsurv finetune`")
    e.add_argument(
        "--split",
        action="append",
        choices=["train", "tuning", "held_out"],
        default=None,
        help="split to evaluate (repeatable; default tuning and held_out; with --cohort: the "
        "cohort's own metadata/subject_splits.parquet, default all its subjects)",
    )
    e.add_argument(
        "--n-boot",
        type=int,
        default=None,
        help="bootstrap resamples (default: the run's eval.n_boot)",
    )
    e.add_argument("--cohort", help="a new MEDS cohort to score instead of the run's own")
    e.add_argument(
        "--outcomes",
        help="with --cohort: its outcome table (subject_id, event, time); visit axis default "
        "COHORT/outcomes.parquet, calendar axis default the event codes in the data",
    )
    e.add_argument(
        "--labels",
        help="with --cohort, calendar-axis runs: a MEDS label file of COHORT with the "
        "prediction times to score at (default: the run's own rule or label path, in COHORT)",
    )
    e.add_argument(
        "--out",
        help="output directory for metrics.json, predictions/ and plots/ (default the run "
        "directory; required with --cohort, and then not the run directory)",
    )
    _add_scoring_overrides(e)
    add_log_level(e, _SCORING_LOG_HELP)
    e.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.evaluate import evaluate_run
    from ehrsurv_dist.train.console import console_logging

    console_logging(args.log_level)
    out = args.out or args.run
    res = evaluate_run(
        args.run,
        splits=tuple(args.split) if args.split else None,
        n_boot=args.n_boot,
        overrides=args.overrides,
        cohort=args.cohort,
        outcomes=args.outcomes,
        labels=args.labels,
        out=args.out,
    )
    path = os.path.join(out, METRICS)
    old: dict[str, Any] = {}
    if os.path.realpath(out) == os.path.realpath(args.run) and os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
    else:
        old = {"run": os.path.abspath(args.run), "cohort": args.cohort}
    old.update(res)
    write_json_atomic(old, path)
    if os.path.realpath(out) == os.path.realpath(args.run):
        from ehrsurv_dist.train.tracking import log_outputs

        log_outputs(args.run, status=None)  # a tracked run gets the new numbers and plots
    no_train = {"mode": "finetune", "best_epoch": -1, "best_val_score": float("nan")}
    header = f"run {args.run} scored on cohort {args.cohort}" if args.cohort else None
    print(summary({"train": old.get("train", no_train), **res}, out, header))
    return EXIT_OK


def add_predict_parser(sub: Subparsers) -> None:
    """``ehrsurv predict RUN --cohort COHORT --out FILE``."""
    pr = sub.add_parser(
        "predict",
        help="predict hazards and survival for a cohort with a trained run",
        description="Write per-subject hazards, survival and risk (no input codes) for every "
        "subject of COHORT to a Parquet file. No outcome table is needed (the run's own is not "
        "read). From Python: ehrsurv_dist.load_model(RUN).predict(COHORT) (docs/python.md).",
    )
    pr.add_argument("run", help="run directory written by `ehrsurv finetune`")
    pr.add_argument("--cohort", required=True, help="MEDS cohort to predict")
    pr.add_argument("--out", required=True, help="output Parquet file (written atomically)")
    pr.add_argument(
        "--labels",
        help="calendar-axis runs: a MEDS label file of COHORT with the prediction times to "
        "predict at (default: the run's own rule, or its label path taken in COHORT)",
    )
    _add_scoring_overrides(pr)
    add_log_level(pr, _SCORING_LOG_HELP)
    pr.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from ehrsurv_dist.evaluate import predict_cohort
    from ehrsurv_dist.train.console import console_logging

    console_logging(args.log_level)

    if os.path.isdir(args.out):  # refuse before the work, not at the final rename
        raise OutputError(f"--out {args.out} is a directory; give a Parquet file path")
    report = predict_cohort(
        args.run, args.cohort, args.out, labels=args.labels, overrides=args.overrides
    )
    print(report.summary(args.out))
    return EXIT_OK


def add_tune_parser(sub: Subparsers) -> None:
    """``ehrsurv tune``."""
    tu = sub.add_parser(
        "tune",
        help="Ray Tune sweep of fine-tuning runs (strategies, losses, learning rates)",
        description="Run the search space of the job's `tune:` section as a Ray Tune sweep: one "
        "Ray Train fine-tuning run per trial, ASHA on validation td-C, then a results table, a "
        "td-C vs trainable-parameters plot, best.yaml and the best model on held_out. "
        "Re-running the same command resumes the sweep. See docs/tuning.md.",
    )
    add_job_args(tu, out_required=False)
    add_task_args(tu)
    tu.add_argument("--init", help="pretrained run directory to initialise every trial from")
    tu.add_argument(
        "--dry-run", action="store_true", help="list the trials of the search space and exit"
    )
    add_quiet(tu, "no progress bar")
    tu.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.train.console import console_logging
    from ehrsurv_dist.tune import TuneJobSpec, expand_trials, format_trials, run_sweep

    console_logging(args.log_level)
    spec = load_config(TuneJobSpec, args.config, job_overrides(args))
    if args.dry_run:
        print(format_trials(expand_trials(spec)))
        return EXIT_OK
    if not args.out:
        raise EhrsurvError("tune: --out is required (only --dry-run runs without it)")
    with ray_cleanup():
        res = run_sweep(spec, args.out, progress=not args.quiet)
    print(res.summary())
    return EXIT_OK


def add_config_parser(sub: Subparsers) -> None:
    """``ehrsurv config``: every job key."""
    c = sub.add_parser(
        "config",
        help="list every job config key with its type, default and meaning",
        description="Print every dotted key a job YAML or a KEY=VALUE override can set.",
    )
    c.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from ehrsurv_dist.config import format_help
    from ehrsurv_dist.jobspec import JobSpec

    print(format_help(JobSpec))
    return EXIT_OK
