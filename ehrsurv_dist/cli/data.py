"""``ehrsurv synth`` and ``ehrsurv validate``: write a synthetic cohort, check a real one."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any, get_args, get_type_hints

from ehrsurv_dist.cli.args import (
    EXIT_INVALID,
    EXIT_OK,
    Subparsers,
    add_quiet,
    nonneg_float,
    pick,
    positive_int,
)
from ehrsurv_dist.config import PRESETS, SynthConfig
from ehrsurv_dist.errors import EhrsurvError

# `synth`'s options after --preset, in --help order: SynthConfig field -> (type, help); the
# defaults are SynthConfig's, and a help text's {field} shows that default.
SYNTH_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "subjects": (positive_int, "number of subjects (overrides the preset)"),
    "seed": (int, "random seed; same seed, same cohort (default {seed})"),
    "shards": (
        positive_int,
        "number of data/ Parquet shards (default: the preset's, at least one per 250k subjects); "
        "the data do not depend on it",
    ),
    "signal": (
        float,
        "multiplier of the hazard's feature coefficients: 1 = the seed's values (a low "
        "ceiling), 3 = room to tell models apart (default {signal:g})",
    ),
    "frailty": (
        nonneg_float,
        "SD of the unobservable per-subject frailty on the logit scale (default {frailty:g})",
    ),
    "dropout": (
        float,
        "per-visit probability of drop-out (non-informative censoring) (default {dropout:g})",
    ),
}


def _positive_float(s: str) -> float:
    """argparse type: a number > 0."""
    v = nonneg_float(s)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s}")
    return v


def add_synth_parser(sub: Subparsers) -> None:
    """``ehrsurv synth``: its defaults and choices are :class:`SynthConfig`'s and the presets'."""
    d = SynthConfig()
    s = sub.add_parser(
        "synth",
        help="write a synthetic MEDS cohort with known hazards",
        description=(
            "Write a synthetic MEDS cohort (data/ shards, metadata/, outcomes.parquet) plus "
            "truth.parquet with the generator's true per-visit hazards, and print the "
            "ground-truth report (oracle C-indices on the held-out split)."
        ),
    )
    sizes = ", ".join(
        f"{name} {p.subjects:,} subjects / max {p.max_visits} visits"
        if i == 0
        else f"{name} {p.subjects:,} / {p.max_visits}"
        for i, (name, p) in enumerate(PRESETS.items())
        if name != "long"
    )
    sizes += (
        f"; long {PRESETS['long'].subjects:,} subjects on the calendar axis (implies --axis "
        "calendar): thousands of records per subject, lab values that enter the true rate"
    )
    s.add_argument(
        "--preset",
        choices=list(get_args(get_type_hints(SynthConfig)["preset"])),
        default=d.preset,
        help=f"size preset: {sizes} (default: {d.preset})",
    )
    defaults = dataclasses.asdict(d)
    for name, (tp, help_text) in SYNTH_OPTIONS.items():
        s.add_argument(
            f"--{name}", type=tp, default=defaults[name], help=help_text.format(**defaults)
        )
    s.add_argument(
        "--axis",
        choices=["visit", "calendar"],
        default=None,
        help="time axis of the survival: visit (a visit-index axis, outcomes.parquet and per-visit "
        "hazards; the default, except with --preset long) or calendar (one prediction time per subject in "
        "labels/TASK.parquet, death in days after it with a per-sample rate in truth.parquet; "
        "--signal and --frailty apply, --dropout does not)",
    )
    s.add_argument(
        "--horizon-days",
        type=_positive_float,
        default=None,
        help="calendar axis: the label file's boolean_value is death within this many days "
        "after the prediction time (default 730)",
    )
    s.add_argument(
        "--task",
        default=None,
        help="calendar axis: name of the label file labels/TASK.parquet (default death)",
    )
    s.add_argument("--out", required=True, help="output directory (must be new or empty)")
    s.add_argument("--no-report", action="store_true", help="skip the ground-truth report")
    add_quiet(s, "no progress bar")
    s.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    # tqdm and the generator are imported when the command runs, not when the parser is built
    from tqdm import tqdm

    from ehrsurv_dist.data.synth_report import format_synth_report, write_synth_report
    from ehrsurv_dist.data.synthetic import synthesize

    if not 0 <= args.dropout < 1:
        raise EhrsurvError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.signal <= 0:
        raise EhrsurvError(f"--signal must be > 0, got {args.signal}")
    if args.preset == "long":
        if args.axis == "visit":
            raise EhrsurvError(
                "--preset long is a calendar-axis cohort; drop --axis visit (it implies "
                "--axis calendar)"
            )
        args.axis = "calendar"
    if args.axis == "calendar":
        return _synth_calendar(args)
    if args.horizon_days is not None or args.task is not None:
        raise EhrsurvError("--horizon-days and --task apply to --axis calendar only")
    total = args.subjects or PRESETS[args.preset].subjects
    with tqdm(total=total, unit="subj", desc="synth", disable=args.quiet, file=sys.stderr) as bar:
        res = synthesize(
            args.out,
            progress=bar.update,
            **pick(args, *(f.name for f in dataclasses.fields(SynthConfig))),
        )
    print(
        f"wrote {res.subjects:,} subjects, {res.rows:,} rows in {res.shards} shard(s) to "
        f"{res.out} in {res.seconds:.1f} s ({res.subjects / max(res.seconds, 1e-9):,.0f} subjects/s)"
    )
    if not args.no_report:
        rep = write_synth_report(args.out)
        print(format_synth_report(rep))
        print(f"report written to {args.out}/synth_report.json")
    return EXIT_OK


def _synth_calendar(args: argparse.Namespace) -> int:
    """``ehrsurv synth --axis calendar``: the calendar-time generator and its summary."""
    from tqdm import tqdm

    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.data.synth_calendar import (
        CalendarParams,
        calendar_summary,
        synthesize_calendar,
    )

    if args.dropout != SynthConfig().dropout:
        raise EhrsurvError(
            "--dropout applies to --axis visit only (the calendar axis censors at a "
            "random end of follow-up)"
        )
    if args.signal <= 0:
        raise EhrsurvError(f"--signal must be > 0, got {args.signal}")
    horizon = 730.0 if args.horizon_days is None else args.horizon_days
    task = args.task or "death"
    params = CalendarParams(signal=args.signal, frailty_sd=args.frailty, horizon_days=horizon)
    total = args.subjects or PRESETS[args.preset].subjects
    with tqdm(total=total, unit="subj", desc="synth", disable=args.quiet, file=sys.stderr) as bar:
        try:
            res = synthesize_calendar(
                args.out,
                params=params,
                task=task,
                progress=bar.update,
                **pick(args, "preset", "subjects", "seed", "shards"),
            )
        except ValueError as e:
            raise EhrsurvError(str(e)) from None
    print(
        f"wrote {res.subjects:,} subjects, {res.rows:,} rows in {res.shards} shard(s) to "
        f"{res.out} in {res.seconds:.1f} s ({res.subjects / max(res.seconds, 1e-9):,.0f} "
        f"subjects/s, {res.rows / max(res.seconds, 1e-9):,.0f} rows/s)"
    )
    if not args.no_report:
        rep = calendar_summary(args.out, horizon, task)
        write_json_atomic(rep, f"{args.out}/synth_report.json")
        print(
            f"calendar axis, labels/{task}.parquet: death within {horizon:g} days "
            f"{rep['died_within_horizon']:.1%} (drawn, observed or not: "
            f"{rep['true_death_within_horizon']:.1%}), censored alive before it "
            f"{rep['censored_before_horizon']:.1%}"
        )
        o = rep["oracle_held_out"]
        if "observable" in o:
            print(
                f"oracle on held_out ({o['samples']:,} samples, day bins {o['edges_days']}): "
                f"td-C {o['observable']['c_index_td']:.4f} fair (observable rate), "
                f"{o['frailty']['c_index_td']:.4f} with frailty; IBS "
                f"{o['observable']['ibs']:.4f} / {o['frailty']['ibs']:.4f}"
            )
        print(f"report written to {args.out}/synth_report.json")
    return EXIT_OK


def add_validate_parser(sub: Subparsers) -> None:
    """``ehrsurv validate COHORT``."""
    v = sub.add_parser(
        "validate",
        help="check a MEDS cohort and its outcome table",
        description=(
            "Read every shard of a MEDS cohort and its outcome table and print a data-quality "
            "report: counts per problem with file, column and a few example subject ids. "
            "Exit code 0 = usable (warnings allowed), 1 = errors found, 2 = could not run."
        ),
    )
    v.add_argument("cohort", help="cohort directory (local path or pyarrow filesystem URI)")
    v.add_argument("--outcomes", help="outcome table (default: COHORT/outcomes.parquet)")
    v.add_argument(
        "--granularity",
        choices=["day", "hour", "minute", "second"],
        default="day",
        help="visit granularity: events sharing the truncated timestamp form one visit (default day)",
    )
    v.add_argument(
        "--require-outcomes",
        action="store_true",
        help="treat a missing outcome table as an error (default: a warning; pretraining needs none)",
    )
    v.add_argument("--json", help="also write the report as JSON to this path")
    v.add_argument(
        "--labels",
        help="also check a calendar-axis task's MEDS label file (subject_id, prediction_time): "
        "schema, nulls, duplicates, unknown subjects, prediction times before birth or after "
        "the last record (docs/tasks.md); the outcome table is then not checked",
    )
    v.add_argument(
        "--event-code",
        action="append",
        default=None,
        metavar="CODE",
        help="with --labels: the task's event code(s), checked to occur in the cohort "
        "(repeatable; PREFIX//* matches a family; default MEDS_DEATH); with --labels and "
        "--outcomes, the outcome table is checked as the task's explicit outcomes instead",
    )
    v.add_argument(
        "--no-cache",
        action="store_true",
        help="do not store the report in the validation cache (by default it is stored under "
        "the cohort's fingerprint, in COHORT/.ehrsurv/validation or the user cache, and later "
        "pretrain/finetune/evaluate/predict runs on the unchanged cohort reuse it; this command "
        "always scans; docs/data.md)",
    )
    v.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="processes that check the shards, whatever the cohort's size (default: one per "
        "CPU for cohorts of 256 MiB of shards or more, else one; 1 = one after another in "
        "this process)",
    )
    v.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    # the validator (pyarrow) is imported when the command runs, not when the parser is built
    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.data.validate import process_mapper, serial_mapper
    from ehrsurv_dist.data.validation_cache import validate_cached

    task = None
    if args.labels:
        from ehrsurv_dist.data.samples import TaskSpec

        codes = tuple(args.event_code or ("MEDS_DEATH",))
        labels = args.labels
        in_cohort = os.path.join(args.cohort, labels)
        if not os.path.exists(labels) and "://" not in args.cohort and os.path.exists(in_cohort):
            labels = in_cohort  # as task.labels: a relative path is also looked up in the cohort
        task = TaskSpec(event_codes=codes, horizon_days=1.0, labels=labels, outcomes=args.outcomes)
    elif args.event_code:
        raise EhrsurvError("--event-code needs --labels (the task whose outcome it names)")
    workers = args.workers
    mapper = None if workers is None else serial_mapper if workers == 1 else process_mapper(workers)
    rep = validate_cached(
        args.cohort,
        outcomes=args.outcomes,
        granularity=args.granularity,
        require_outcomes=args.require_outcomes or task is not None,
        task=task,
        mapper=mapper,
        cache="none" if args.no_cache else None,
        refresh=True,
    )
    print(rep.format())
    if args.json:
        write_json_atomic(rep.to_dict(), args.json)
    return EXIT_OK if rep.ok else EXIT_INVALID
