"""The ``ehrsurv`` command line.

Each subcommand is a thin wrapper over a library function. Errors caused by the user's input
(:class:`~ehrsurv_dist.errors.EhrsurvError`, config errors) are printed on one line, naming the
file, column, subject or key, and exit non-zero without a Python traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ehrsurv_dist.errors import EhrsurvError

if TYPE_CHECKING:
    from ehrsurv_dist.jobspec import JobSpec as JobSpecT

EXIT_OK = 0
EXIT_INVALID = 1  # the input was read and found invalid (validate)
EXIT_ERROR = 2  # the command could not run (bad arguments, unreadable input)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s}")
    return v


def _cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ehrsurv_dist.data.synth_report import format_synth_report, write_synth_report
    from ehrsurv_dist.data.synthetic import PRESETS, synthesize

    if not 0 <= args.dropout < 1:
        raise EhrsurvError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.signal <= 0:
        raise EhrsurvError(f"--signal must be > 0, got {args.signal}")
    total = args.subjects or PRESETS[args.preset].subjects
    with tqdm(total=total, unit="subj", desc="synth", disable=args.quiet, file=sys.stderr) as bar:
        res = synthesize(
            args.out,
            preset=args.preset,
            subjects=args.subjects,
            seed=args.seed,
            shards=args.shards,
            signal=args.signal,
            frailty=args.frailty,
            dropout=args.dropout,
            progress=bar.update,
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


def _cmd_validate(args: argparse.Namespace) -> int:
    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.data.meds import validate_cohort

    rep = validate_cohort(
        args.cohort,
        outcomes=args.outcomes,
        granularity=args.granularity,
        require_outcomes=args.require_outcomes,
    )
    print(rep.format())
    if args.json:
        write_json_atomic(rep.to_dict(), args.json)
    return EXIT_OK if rep.ok else EXIT_INVALID


def _job_spec(args: argparse.Namespace) -> JobSpecT:
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.jobspec import JobSpec

    overrides: list[Any] = list(args.overrides)
    if args.cohort:
        overrides.append(("data.cohort", args.cohort))  # a pair: the path is taken verbatim
    if getattr(args, "init", None):
        overrides.append(("finetune.init", args.init))
    return load_config(JobSpec, args.config, overrides)


def _cmd_train(args: argparse.Namespace, mode: str) -> int:
    import ray

    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.metrics import plots
    from ehrsurv_dist.metrics.survival import jsonable
    from ehrsurv_dist.train.launch import run_training

    spec = _job_spec(args)
    started = not ray.is_initialized()
    try:
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
        write_json_atomic(jsonable(metrics), f"{args.out}/metrics.json")
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    print(_summary(metrics, args.out))
    return EXIT_OK


def _summary(metrics: dict[str, Any], out: str) -> str:
    t = metrics["train"]
    lines = [
        f"run {out}: {t['mode']}, best epoch {t['best_epoch']}, val score {t['best_val_score']:.4f}"
    ]
    for split in ("tuning", "held_out"):
        m = metrics.get(split)
        if not m or not m.get("n_subjects"):
            continue
        ci = m.get("c_index_td_ci") or [float("nan"), float("nan")]
        lines.append(
            f"  {split:9s} n={m['n_subjects']:5d} events={m.get('n_events', 0):5d}  "
            f"td-C {_f(m.get('c_index_td'))} [{_f(ci[0])}, {_f(ci[1])}]  "
            f"Harrell {_f(m.get('c_index_harrell'))}  Uno {_f(m.get('c_index_uno'))}  "
            f"IBS {_f(m.get('ibs'))}"
        )
    lines.append(f"metrics: {out}/metrics.json   plots: {out}/plots/")
    return "\n".join(lines)


def _f(x: Any) -> str:
    return "  n/a " if x is None else f"{float(x):.4f}"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ehrsurv_dist.atomic import write_json as write_json_atomic
    from ehrsurv_dist.evaluate import evaluate_run

    res = evaluate_run(
        args.run, splits=tuple(args.split or ("tuning", "held_out")), n_boot=args.n_boot
    )
    path = f"{args.run}/metrics.json"
    import json
    import os

    old: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
    old.update(res)
    write_json_atomic(old, path)
    print(
        _summary(
            {
                "train": old.get(
                    "train", {"mode": "finetune", "best_epoch": -1, "best_val_score": float("nan")}
                ),
                **res,
            },
            args.run,
        )
    )
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    import os

    from ehrsurv_dist.errors import OutputError
    from ehrsurv_dist.evaluate import predict_cohort

    if os.path.isdir(args.out):  # refuse before the work, not at the final rename
        raise OutputError(f"--out {args.out} is a directory; give a Parquet file path")
    report = predict_cohort(args.run, args.cohort, args.out)
    print(report.summary(args.out))
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from ehrsurv_dist.config import load_config
    from ehrsurv_dist.tune import TuneJobSpec, expand_trials, format_trials, run_sweep

    overrides: list[Any] = list(args.overrides)
    if args.cohort:
        overrides.append(("data.cohort", args.cohort))
    if args.init:
        overrides.append(("finetune.init", args.init))
    spec = load_config(TuneJobSpec, args.config, overrides)
    if args.dry_run:
        print(format_trials(expand_trials(spec)))
        return EXIT_OK
    if not args.out:
        raise EhrsurvError("tune: --out is required (only --dry-run runs without it)")
    import ray

    started = not ray.is_initialized()
    try:
        res = run_sweep(spec, args.out, progress=not args.quiet)
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    print(res.summary())
    return EXIT_OK


def _add_job_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
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


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from ehrsurv_dist.bench.ingest import run_ingest_bench

    res = run_ingest_bench(
        args.cohort,
        args.out,
        args.batch_size,
        repeats=args.repeats,
        num_cpus=args.num_cpus,
        pad_multiple=args.pad_multiple,
    )
    print(open(f"{args.out}/SUMMARY.md").read())
    print(f"speedup (Ray / single process) {res['speedup']:.2f}; bench.json in {args.out}")
    return EXIT_OK


def _cmd_bench_throughput(args: argparse.Namespace) -> int:
    from ehrsurv_dist.bench.throughput import run_throughput_bench

    def note(msg: str) -> None:
        if not args.quiet:
            print(f"bench throughput: {msg}", file=sys.stderr, flush=True)

    res = run_throughput_bench(
        args.out,
        args.cohort,
        subjects=args.subjects,
        size=args.size,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        epochs=args.epochs,
        rounds=args.rounds,
        zero_stages=args.zero_stages,
        one_worker_stage=args.one_worker_zero,
        threads=args.threads,
        attention_len=args.attention_len,
        attention_repeats=args.repeats,
        visits=args.visits,
        codes=args.codes,
        hier_batch=args.hier_batch,
        progress=note,
    )
    print(open(f"{args.out}/SUMMARY.md").read().split("```json")[0])
    print(
        f"train_overhead_ratio {res['train_overhead_ratio']:.2f}, data_wait_fraction "
        f"{res['data_wait_fraction']:.3f}; bench.json in {args.out}"
    )
    return EXIT_OK


def _cmd_bench_models(args: argparse.Namespace, kind: str) -> int:
    from ehrsurv_dist.bench.models import run_bench

    def note(msg: str) -> None:
        if not args.quiet:
            print(f"bench {kind}: {msg}", file=sys.stderr, flush=True)

    res = run_bench(
        kind,
        args.out,
        cohort=args.cohort,
        preset=args.preset,
        subjects=args.subjects,
        signal=args.signal,
        seed=args.seed,
        common=[f"seed={args.seed}", *args.overrides],
        pretrain_epochs=args.pretrain_epochs,
        n_boot=args.n_boot,
        only=args.only,
        note=note,
    )
    print(open(f"{args.out}/SUMMARY.md").read())
    print(f"{res['rows']} rows in {res['wall_s']:.0f} s; bench.json in {args.out}")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    from ehrsurv_dist.config import format_help
    from ehrsurv_dist.jobspec import JobSpec

    print(format_help(JobSpec))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ehrsurv",
        description=(
            "Discrete-time survival with BEHRT-style transformers on MEDS EHR cohorts, "
            "distributed on Ray. See docs/ for guides."
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "synth",
        help="write a synthetic MEDS cohort with known hazards",
        description=(
            "Write a synthetic MEDS cohort (data/ shards, metadata/, outcomes.parquet) plus "
            "truth.parquet with the generator's true per-visit hazards, and print the "
            "ground-truth report (oracle C-indices on the held-out split)."
        ),
    )
    s.add_argument(
        "--preset",
        choices=["smoke", "local", "pod"],
        default="smoke",
        help="size preset: smoke 200 subjects / max 25 visits, local 2,000 / 50, "
        "pod 20,000 / 80 (default: smoke)",
    )
    s.add_argument(
        "--subjects", type=_positive_int, help="number of subjects (overrides the preset)"
    )
    s.add_argument(
        "--seed", type=int, default=42, help="random seed; same seed, same cohort (default 42)"
    )
    s.add_argument(
        "--shards",
        type=_positive_int,
        help="number of data/ Parquet shards (default: the preset's, at least one per 250k subjects); "
        "the data do not depend on it",
    )
    s.add_argument(
        "--signal",
        type=float,
        default=1.0,
        help="multiplier of the hazard's feature coefficients: 1 = the seed's values (a low "
        "ceiling), 3 = room to tell models apart (default 1)",
    )
    s.add_argument(
        "--frailty",
        type=_nonneg_float,
        default=0.5,
        help="SD of the unobservable per-subject frailty on the logit scale (default 0.5)",
    )
    s.add_argument(
        "--dropout",
        type=float,
        default=0.04,
        help="per-visit probability of drop-out (non-informative censoring) (default 0.04)",
    )
    s.add_argument("--out", required=True, help="output directory (must be new or empty)")
    s.add_argument("--no-report", action="store_true", help="skip the ground-truth report")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

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
    v.set_defaults(func=_cmd_validate)

    for mode, help_text in (
        ("pretrain", "self-supervised MLM / next-visit pretraining of the BEHRT encoder"),
        ("finetune", "survival fine-tuning (frozen / LoRA / full), then evaluation"),
    ):
        t = sub.add_parser(
            mode,
            help=help_text,
            description=(
                f"{help_text[0].upper()}{help_text[1:]} as a Ray Train job (DeepSpeed or torch DDP "
                "workers) on an in-process local Ray, or on the cluster at RAY_ADDRESS. "
                "Re-running the same command resumes from the latest checkpoint."
            ),
        )
        _add_job_args(t)
        if mode == "finetune":
            t.add_argument("--init", help="pretrained run directory to initialise the encoder from")
            t.add_argument(
                "--no-eval", action="store_true", help="skip the evaluation after training"
            )
        t.set_defaults(func=lambda a, m=mode: _cmd_train(a, m))

    e = sub.add_parser(
        "evaluate",
        help="score a fine-tuned run on whole splits",
        description="Predict every subject of the given splits of the run's cohort with the best "
        "model and write metrics.json, predictions/ and plots/ in the run directory.",
    )
    e.add_argument("run", help="run directory written by `ehrsurv finetune`")
    e.add_argument(
        "--split",
        action="append",
        choices=["train", "tuning", "held_out"],
        default=None,
        help="split to evaluate (repeatable; default tuning and held_out)",
    )
    e.add_argument(
        "--n-boot",
        type=int,
        default=None,
        help="bootstrap resamples (default: the run's eval.n_boot)",
    )
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser(
        "predict",
        help="predict hazards and survival for a cohort with a trained run",
        description="Write per-subject hazards, survival and risk (no input codes) for every "
        "subject of COHORT to a Parquet file.",
    )
    pr.add_argument("run", help="run directory written by `ehrsurv finetune`")
    pr.add_argument("--cohort", required=True, help="MEDS cohort to predict")
    pr.add_argument("--out", required=True, help="output Parquet file (written atomically)")
    pr.set_defaults(func=_cmd_predict)

    b = sub.add_parser(
        "bench",
        help="benchmarks, measured side by side in one run",
        description="Benchmarks; each writes bench.json (flat numbers) and SUMMARY.md to --out.",
    )
    bsub = b.add_subparsers(
        dest="bench",
        metavar="BENCH",
        required=True,
        help="which benchmark to run: ingest, throughput, models, losses",
    )
    bi = bsub.add_parser(
        "ingest",
        help="Ray Data ingest vs the single-process path vs a plain pyarrow read",
        description="Subjects/s and tokens/s of the Ray Data path (1 CPU and all CPUs), the "
        "single-process path and a plain pyarrow read of the same files and columns, the "
        "real-token fraction and the driver's peak memory.",
    )
    bi.add_argument("--cohort", required=True, help="MEDS cohort (e.g. from ehrsurv synth)")
    bi.add_argument("--out", required=True, help="output directory for bench.json and SUMMARY.md")
    bi.add_argument(
        "--batch-size", type=_positive_int, default=32, help="subjects per batch (default 32)"
    )
    bi.add_argument(
        "--repeats", type=_positive_int, default=5, help="timed repeats per path (default 5)"
    )
    bi.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    bi.add_argument(
        "--pad-multiple",
        type=_positive_int,
        help="round each batch's length up to a multiple of this (default: data.pad_multiple's "
        "CPU value, 1; the fractions at 1 and 8 are always reported)",
    )
    bi.set_defaults(func=_cmd_bench_ingest)

    bt = bsub.add_parser(
        "throughput",
        help="Ray Train + DeepSpeed vs a plain torch loop; data wait, ZeRO memory, attention",
        description="In one run: steady-state training tokens/s of Ray Train + DeepSpeed with 1 "
        "and 2 workers against a plain single-process torch loop on the same model and batches "
        "(train_overhead_ratio), the trainer's data-wait fraction, the peak memory of each "
        "worker per ZeRO stage (CPU), SDPA vs naive attention, and flat vs hierarchical BEHRT.",
    )
    bt.add_argument("--out", required=True, help="output directory for bench.json and SUMMARY.md")
    bt.add_argument(
        "--cohort",
        help="MEDS cohort to train on (default: synthesise --subjects subjects into OUT/cohort)",
    )
    bt.add_argument(
        "--subjects",
        type=_positive_int,
        default=1000,
        help="subjects of the synthesised cohort when --cohort is not given (default 1000)",
    )
    bt.add_argument(
        "--size",
        choices=["tiny", "small", "medium", "large"],
        default="small",
        help="BEHRT preset of the training runs and of the attention shapes (default small)",
    )
    bt.add_argument(
        "--batch-size", type=_positive_int, default=32, help="subjects per batch (default 32)"
    )
    bt.add_argument(
        "--max-seq-len", type=_positive_int, default=128, help="data.max_seq_len (default 128)"
    )
    bt.add_argument(
        "--epochs",
        type=_positive_int,
        default=5,
        help="epochs per training run, >= 2; the first is a warm-up and not timed (default 5)",
    )
    bt.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        help="1-worker Ray runs, each followed by a plain loop of the same epochs, so both paths "
        "get as many timed epochs and the same drift of the machine's load (default 3)",
    )
    bt.add_argument(
        "--zero-stages",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="ZeRO stages of the 2-worker runs, each measured for memory (default 0 1 2)",
    )
    bt.add_argument(
        "--one-worker-zero",
        type=int,
        default=0,
        help="ZeRO stage of the 1-worker run that train_overhead_ratio uses (default 0)",
    )
    bt.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="CPUs per Ray worker = torch threads of the plain loop (default 1)",
    )
    bt.add_argument(
        "--attention-len",
        type=_positive_int,
        default=512,
        help="sequence length L of the SDPA vs naive attention comparison (default 512)",
    )
    bt.add_argument(
        "--repeats",
        type=_positive_int,
        default=3,
        help="timed calls per attention kernel and per flat/hierarchical model (default 3)",
    )
    bt.add_argument(
        "--visits", type=_positive_int, default=50, help="V of flat vs hierarchical (default 50)"
    )
    bt.add_argument(
        "--codes", type=_positive_int, default=30, help="C of flat vs hierarchical (default 30)"
    )
    bt.add_argument(
        "--hier-batch",
        type=_positive_int,
        default=2,
        help="subjects per forward in flat vs hierarchical (default 2)",
    )
    bt.add_argument("--quiet", action="store_true", help="no phase messages on stderr")
    bt.set_defaults(func=_cmd_bench_throughput)

    for kind, desc in (
        (
            "models",
            "the seed's model comparison: BEHRT frozen / LoRA r=16 / full, each pretrained and "
            "from scratch, bidirectional attention, hierarchical BEHRT and the LSTM baseline",
        ),
        (
            "losses",
            "the seed's loss comparison: NLL, rank (hinge, logistic), hybrid at lambda_rank "
            "0.01-0.5 and Cox, same model",
        ),
    ):
        bm = bsub.add_parser(
            kind,
            help=desc.split(":")[0],
            description=f"{desc[0].upper()}{desc[1:]}. Every row is a real fine-tuning run "
            "(Ray Train + DeepSpeed) and evaluation on the same cohort, splits and seed; the "
            "first row is the generator's oracle. Re-running with the same --out reuses the "
            "finished rows.",
        )
        bm.add_argument("--out", required=True, help="output directory (bench.json, SUMMARY.md)")
        bm.add_argument(
            "--cohort", help="an existing `ehrsurv synth` cohort (default: synthesise one)"
        )
        bm.add_argument(
            "--preset",
            choices=["smoke", "local", "pod"],
            default="local",
            help="synthetic preset when no --cohort (default local)",
        )
        bm.add_argument("--subjects", type=_positive_int, help="synthetic subjects (overrides)")
        bm.add_argument(
            "--signal",
            type=float,
            default=3.0,
            help="synthetic signal: 3 (default) separates models, 1 is the seed's",
        )
        bm.add_argument("--seed", type=int, default=42, help="cohort and job seed (default 42)")
        bm.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200)")
        bm.add_argument(
            "--pretrain-epochs",
            type=_positive_int,
            default=4,
            help="epochs of the shared MLM+NVP pretraining (models; default 4)",
        )
        bm.add_argument(
            "--only", action="append", help="run only this row (repeatable; see SUMMARY.md)"
        )
        bm.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="job overrides of every row, e.g. model.size=small train.epochs=10 "
            "train.engine.lr=0.001 (see `ehrsurv config`)",
        )
        bm.add_argument("--quiet", action="store_true", help="no progress messages")
        bm.set_defaults(func=lambda a, k=kind: _cmd_bench_models(a, k))

    tu = sub.add_parser(
        "tune",
        help="Ray Tune sweep of fine-tuning runs (strategies, losses, learning rates)",
        description="Run the search space of the job's `tune:` section as a Ray Tune sweep: one "
        "Ray Train fine-tuning run per trial, ASHA on validation td-C, then a results table, a "
        "td-C vs trainable-parameters plot, best.yaml and the best model on held_out. "
        "Re-running the same command resumes the sweep. See docs/tuning.md.",
    )
    _add_job_args(tu, out_required=False)
    tu.add_argument("--init", help="pretrained run directory to initialise every trial from")
    tu.add_argument(
        "--dry-run", action="store_true", help="list the trials of the search space and exit"
    )
    tu.add_argument("--quiet", action="store_true", help="no progress bar")
    tu.set_defaults(func=_cmd_tune)

    from ehrsurv_dist import cluster

    cluster.add_parser(sub)

    c = sub.add_parser(
        "config",
        help="list every job config key with its type, default and meaning",
        description="Print every dotted key a job YAML or a KEY=VALUE override can set.",
    )
    c.set_defaults(func=_cmd_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EhrsurvError as e:
        print(f"ehrsurv {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        # config and argument validation errors are ValueErrors that name the key
        from ehrsurv_dist.config import ConfigError

        if isinstance(e, ConfigError):
            print(f"ehrsurv {args.command}: config error: {e}", file=sys.stderr)
            return EXIT_ERROR
        raise
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
