"""``ehrsurv bench ingest | throughput | scale | models | losses``: benchmarks measured in one run.

Each writes bench.json (flat numbers) and SUMMARY.md to --out and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ehrsurv_dist.cli.args import EXIT_OK, Subparsers, add_quiet, pick, positive_int
from ehrsurv_dist.config import PRESETS

OUT_HELP = "output directory for bench.json and SUMMARY.md"
BATCH_SIZE: dict[str, Any] = {
    "type": positive_int,
    "default": 32,
    "help": "subjects per batch (default 32)",
}
MODEL_BENCHES = (
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
)

# `bench throughput`'s options in --help order: (option, add_argument keywords)
THROUGHPUT_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--out", {"required": True, "help": OUT_HELP}),
    (
        "--cohort",
        {
            "help": "MEDS cohort to train on (default: synthesise --subjects subjects into OUT/cohort)"
        },
    ),
    (
        "--subjects",
        {
            "type": positive_int,
            "default": 1000,
            "help": "subjects of the synthesised cohort when --cohort is not given (default 1000)",
        },
    ),
    (
        "--size",
        {
            "choices": ["tiny", "small", "medium", "large"],
            "default": "small",
            "help": "BEHRT preset of the training runs and of the attention shapes (default small)",
        },
    ),
    ("--batch-size", BATCH_SIZE),
    (
        "--max-seq-len",
        {"type": positive_int, "default": 128, "help": "data.max_seq_len (default 128)"},
    ),
    (
        "--epochs",
        {
            "type": positive_int,
            "default": 5,
            "help": "epochs per training run, >= 2; the first is a warm-up and not timed "
            "(default 5)",
        },
    ),
    (
        "--rounds",
        {
            "type": positive_int,
            "default": 3,
            "help": "1-worker Ray runs, each followed by a plain loop of the same epochs, so both "
            "paths get as many timed epochs and the same drift of the machine's load (default 3)",
        },
    ),
    (
        "--zero-stages",
        {
            "type": int,
            "nargs": "+",
            "default": [0, 1, 2],
            "help": "ZeRO stages of the 2-worker runs, each measured for memory (default 0 1 2)",
        },
    ),
    (
        "--one-worker-zero",
        {
            "type": int,
            "default": 0,
            "help": "ZeRO stage of the 1-worker run that train_overhead_ratio uses (default 0)",
        },
    ),
    (
        "--threads",
        {
            "type": positive_int,
            "default": 1,
            "help": "CPUs per Ray worker = torch threads of the plain loop (default 1)",
        },
    ),
    (
        "--attention-len",
        {
            "type": positive_int,
            "default": 512,
            "help": "sequence length L of the SDPA vs naive attention comparison (default 512)",
        },
    ),
    (
        "--repeats",
        {
            "type": positive_int,
            "default": 3,
            "help": "timed calls per attention kernel and per flat/hierarchical model (default 3)",
        },
    ),
    (
        "--visits",
        {"type": positive_int, "default": 50, "help": "V of flat vs hierarchical (default 50)"},
    ),
    (
        "--codes",
        {"type": positive_int, "default": 30, "help": "C of flat vs hierarchical (default 30)"},
    ),
    (
        "--hier-batch",
        {
            "type": positive_int,
            "default": 2,
            "help": "subjects per forward in flat vs hierarchical (default 2)",
        },
    ),
)


def add_bench_parsers(sub: Subparsers) -> None:
    """``ehrsurv bench`` and its benchmarks."""
    b = sub.add_parser(
        "bench",
        help="benchmarks, measured side by side in one run",
        description="Benchmarks; each writes bench.json (flat numbers) and SUMMARY.md to --out.",
    )
    bsub = b.add_subparsers(
        dest="bench",
        metavar="BENCH",
        required=True,
        help="which benchmark to run: ingest, throughput, scale, models, losses",
    )
    _add_ingest_parser(bsub)
    _add_throughput_parser(bsub)
    _add_scale_parser(bsub)
    for kind, desc in MODEL_BENCHES:
        _add_models_parser(bsub, kind, desc)


def _print_summary(out: str, split_json: bool = False) -> None:
    """Print OUT/SUMMARY.md (without its JSON appendix when ``split_json``)."""
    with open(f"{out}/SUMMARY.md") as f:
        text = f.read()
    print(text.split("```json")[0] if split_json else text)


def _progress(name: str, quiet: bool) -> Callable[[str], None]:
    """A note-taker that prints ``bench NAME: msg`` on stderr unless ``quiet``."""

    def note(msg: str) -> None:
        if not quiet:
            print(f"bench {name}: {msg}", file=sys.stderr, flush=True)

    return note


def _add_ingest_parser(bsub: Subparsers) -> None:
    bi = bsub.add_parser(
        "ingest",
        help="Ray Data ingest vs the single-process path vs a plain pyarrow read",
        description="Subjects/s and tokens/s of the Ray Data path (1 CPU and all CPUs), the "
        "single-process path and a plain pyarrow read of the same files and columns, the "
        "real-token fraction and the driver's peak memory.",
    )
    bi.add_argument("--cohort", required=True, help="MEDS cohort (e.g. from ehrsurv synth)")
    bi.add_argument("--out", required=True, help=OUT_HELP)
    bi.add_argument("--batch-size", **BATCH_SIZE)
    bi.add_argument(
        "--repeats", type=positive_int, default=5, help="timed repeats per path (default 5)"
    )
    bi.add_argument("--num-cpus", type=positive_int, help="CPUs of the local Ray (default: all)")
    bi.add_argument(
        "--pad-multiple",
        type=positive_int,
        help="round each batch's length up to a multiple of this (default: data.pad_multiple's "
        "CPU value, 1; the fractions at 1 and 8 are always reported)",
    )
    bi.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from ehrsurv_dist.bench.ingest import run_ingest_bench

    res = run_ingest_bench(
        args.cohort,
        args.out,
        args.batch_size,
        **pick(args, "repeats", "num_cpus", "pad_multiple"),
    )
    _print_summary(args.out)
    print(f"speedup (Ray / single process) {res['speedup']:.2f}; bench.json in {args.out}")
    return EXIT_OK


def _add_throughput_parser(bsub: Subparsers) -> None:
    bt = bsub.add_parser(
        "throughput",
        help="Ray Train + DeepSpeed vs a plain torch loop; data wait, ZeRO memory, attention",
        description="In one run: steady-state training tokens/s of Ray Train + DeepSpeed with 1 "
        "and 2 workers against a plain single-process torch loop on the same model and batches "
        "(train_overhead_ratio), the trainer's data-wait fraction, the peak memory of each "
        "worker per ZeRO stage (CPU), SDPA vs naive attention, and flat vs hierarchical BEHRT.",
    )
    for option, kwargs in THROUGHPUT_OPTIONS:
        bt.add_argument(option, **kwargs)
    add_quiet(bt, "no phase messages on stderr")
    bt.set_defaults(func=cmd_throughput)


def cmd_throughput(args: argparse.Namespace) -> int:
    from ehrsurv_dist.bench.throughput import run_throughput_bench

    res = run_throughput_bench(
        args.out,
        args.cohort,
        progress=_progress("throughput", args.quiet),
        **pick(
            args,
            "subjects",
            "size",
            "batch_size",
            "max_seq_len",
            "epochs",
            "rounds",
            "zero_stages",
            "threads",
            "attention_len",
            "visits",
            "codes",
            "hier_batch",
            one_worker_stage="one_worker_zero",
            attention_repeats="repeats",
        ),
    )
    _print_summary(args.out, split_json=True)
    print(
        f"train_overhead_ratio {res['train_overhead_ratio']:.2f}, data_wait_fraction "
        f"{res['data_wait_fraction']:.3f}; bench.json in {args.out}"
    )
    return EXIT_OK


SCALE_HELP = "the long preset at N and 10·N subjects: per-event cost and memory growth"
SCALE_DESCRIPTION = (
    "Synthesises the long preset at N and 10·N subjects and measures each size in a fresh "
    "driver process with its own local Ray: validation, vocabulary scan and train-split encoding "
    "in events/s, a bounded pretraining epoch in tokens/s, driver and worker peak RSS and the "
    "object store's spilled MB; per_event_cost_growth (goal <= 1.2) and the RSS growth (goal "
    "<= 10%) with PASS/FAIL in SUMMARY.md (docs/benchmarks.md)."
)
# `bench scale`'s options in --help order: (option, add_argument keywords)
SCALE_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--out", {"required": True, "help": OUT_HELP + " (and the cohorts while they are measured)"}),
    (
        "--subjects",
        {
            "type": positive_int,
            "default": 1000,
            "help": "N, the smaller size (>= 10); the larger is 10·N (default 1000: ~2M and "
            "~20M events)",
        },
    ),
    ("--seed", {"type": int, "default": 42, "help": "cohort and run seed (default 42)"}),
    (
        "--steps",
        {
            "type": positive_int,
            "default": 30,
            "help": "optimizer steps of the bounded pretraining epoch, the same at both sizes "
            "(default 30)",
        },
    ),
    ("--batch-size", {**BATCH_SIZE, "default": 16, "help": "subjects per batch (default 16)"}),
    (
        "--max-seq-len",
        {"type": positive_int, "default": 512, "help": "data.max_seq_len (default 512)"},
    ),
    (
        "--cache",
        {
            "choices": ["auto", "true", "false"],
            "default": "auto",
            "help": "data.cache of the training run (default auto: cached when the splits fit "
            "half of the object store)",
        },
    ),
    (
        "--object-store-mb",
        {
            "type": positive_int,
            "default": 1024,
            "help": "object store of each size's local Ray, MB (default 1024)",
        },
    ),
    (
        "--num-cpus",
        {"type": positive_int, "help": "CPUs of each size's local Ray (default: all, at least 2)"},
    ),
    (
        "--shard-subjects",
        {
            "type": int,
            "default": 500,
            "help": "subjects per Parquet shard of both cohorts, so 10·N has 10x the shards of "
            "the same size (default 500); 0: the generator's default (a shard per 5,000 "
            "subjects, at least 2: shards then grow with the cohort)",
        },
    ),
    (
        "--repeats",
        {
            "type": positive_int,
            "default": 3,
            "help": "rounds of validate, vocab and ingest per size; rates use each stage's best "
            "(default 3)",
        },
    ),
    ("--keep", {"action": "store_true", "help": "keep the cohorts (OUT/cohort_N)"}),
    (
        "--no-warmup",
        {
            "action": "store_true",
            "help": "time the stages cold (default: each size first runs them untimed on a "
            "20-subject cohort, so the rates leave out a fresh Ray's start-up)",
        },
    ),
    ("--quiet", {"action": "store_true", "help": "no progress lines"}),
)


def _add_scale_parser(bsub: Subparsers) -> None:
    bs = bsub.add_parser("scale", help=SCALE_HELP, description=SCALE_DESCRIPTION)
    for option, kwargs in SCALE_OPTIONS:
        bs.add_argument(option, **kwargs)
    bs.set_defaults(func=cmd_scale)


def cmd_scale(args: argparse.Namespace) -> int:
    from ehrsurv_dist.bench.scale import run_scale_bench

    kw = pick(args, "subjects", "seed", "steps", "batch_size", "max_seq_len", "cache", "keep")
    kw.update(pick(args, "object_store_mb", "num_cpus", "shard_subjects", "repeats", "quiet"))
    kw["warmup"] = not args.no_warmup
    res = run_scale_bench(args.out, progress=_progress("scale", args.quiet), **kw)
    _print_summary(args.out, split_json=True)
    print(
        f"per_event_cost_growth {res['per_event_cost_growth']:.2f}, driver RSS growth "
        f"{res['driver_rss_growth']:+.1%}, worker RSS growth {res['worker_rss_growth']:+.1%}; "
        f"bench.json in {args.out}"
    )
    return EXIT_OK


def _add_models_parser(bsub: Subparsers, kind: str, desc: str) -> None:
    bm = bsub.add_parser(
        kind,
        help=desc.split(":")[0],
        description=f"{desc[0].upper()}{desc[1:]}. Every row is a real fine-tuning run "
        "(Ray Train + DeepSpeed) and evaluation on the same cohort, splits and seed; the "
        "first row is the generator's oracle. Re-running with the same --out reuses the "
        "finished rows.",
    )
    bm.add_argument("--out", required=True, help="output directory (bench.json, SUMMARY.md)")
    bm.add_argument("--cohort", help="an existing `ehrsurv synth` cohort (default: synthesise one)")
    bm.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="local",
        help="synthetic preset when no --cohort (default local)",
    )
    bm.add_argument(
        "--subjects",
        type=positive_int,
        help="synthetic subjects (default: the preset's; 5000 with --axis calendar)",
    )
    bm.add_argument(
        "--signal",
        type=float,
        default=None,
        help="synthetic signal: 3 (default) separates models, 1 is the seed's; with --axis "
        "calendar the calendar generator's (default 1)",
    )
    bm.add_argument("--seed", type=int, default=42, help="cohort and job seed (default 42)")
    bm.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples (default 200)")
    bm.add_argument(
        "--pretrain-epochs",
        type=positive_int,
        default=4,
        help="epochs of the shared MLM+NVP pretraining (models; default 4)",
    )
    bm.add_argument(
        "--only", action="append", help="run only this row (repeatable; see SUMMARY.md)"
    )
    bm.add_argument(
        "--epochs",
        type=positive_int,
        help="train.epochs of every fine-tuning row (default: the job's; KEY=VALUE overrides win)",
    )
    if kind == "models":
        bm.add_argument(
            "--axis",
            choices=["visit", "calendar"],
            default="visit",
            help="visit (default): the seed's comparison above on a visit-axis cohort; "
            "calendar: a synthetic calendar cohort (OUT/cohort unless --cohort) and the job "
            "jobs/finetune_calendar.yaml, rows oracle, oracle_frailty (the generator's exact "
            "survival without / with frailty), cox_counts (ridge Cox on log1p code counts + "
            "age), behrt_scratch, behrt_pretrained (LoRA from MLM+NVP pretraining), "
            "hierarchical, lstm",
        )
    bm.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="job overrides of every row, e.g. model.size=small train.epochs=10 "
        "train.engine.lr=0.001 (see `ehrsurv config`)",
    )
    add_quiet(bm, "no progress messages")
    bm.set_defaults(func=lambda a, k=kind: cmd_models(a, k))


def cmd_models(args: argparse.Namespace, kind: str) -> int:
    from ehrsurv_dist.bench.models import run_bench

    res = run_bench(
        kind,
        args.out,
        common=[f"seed={args.seed}", *args.overrides],
        note=_progress(kind, args.quiet),
        **pick(
            args,
            "cohort",
            "preset",
            "subjects",
            "signal",
            "seed",
            "pretrain_epochs",
            "n_boot",
            "only",
            "epochs",
        ),
        axis=getattr(args, "axis", "visit"),
    )
    _print_summary(args.out)
    print(f"{res['rows']} rows in {res['wall_s']:.0f} s; bench.json in {args.out}")
    return EXIT_OK
