"""``ehrsurv tune``: Ray Tune sweeps over fine-tuning jobs (edge module: Ray imported in functions).

One Tune trial = one fine-tuning run. The trial's function is a *driver* (Ray Train V2 pattern):
it builds and fits a ``TorchTrainer`` through :func:`~ehrsurv_dist.train.launch.run_training`,
whose ``RunConfig`` carries Tune's ``TuneReportCallback``, so every epoch's ``val_score``
(validation td-C on the ``tuning`` split) reaches Tune and its ASHA scheduler. Tune never wraps
the trainer itself (``Tuner(trainer)`` is gone in Train V2).

The search space is data: the ``tune.space`` section of the job file, a list of *sub-spaces*
(one per branch of a conditional space: LoRA's rank only exists in the LoRA branch). Each
sub-space crosses ``cases`` (whole override dicts, for values that move together such as LoRA
rank and alpha) with a ``grid`` (every combination), holds ``fixed`` values, and draws
``choice`` / ``uniform`` / ``loguniform`` keys ``tune.num_samples`` times per grid point from a
generator seeded by the job's ``seed``. The expansion happens here, before Ray starts, so
``ehrsurv tune --dry-run`` lists every trial and a bad key fails at load time; Tune then runs a
grid over the expanded trials (index only; the overrides travel with the trainable).

Sweep directory (``--out``)::

    OUT/config.yaml             resolved tune job (the sweep's identity: resume needs the same)
    OUT/trials.json             the expanded trials: index, sub-space, overrides
    OUT/tune/                   Ray Tune experiment state (``Tuner.restore`` resumes from it)
    OUT/trials/tNNN_NAME/       one ordinary finetune run directory per trial
    OUT/results.csv, .md, .json per-trial table (strategy, trainable parameters, td-C, IBS, ...)
    OUT/plots/tdc_vs_params.png validation td-C against trainable parameters, per strategy
    OUT/best.yaml               the best trial as a job file for ``ehrsurv finetune --config``
    OUT/held_out.json           the best trial's model on ``held_out`` (never used to select)

Resources: a trial's Train workers hold ``num_workers x cpus_per_worker`` CPUs, its Ray Data
tasks need ``DATA_CPUS`` more CPU free (launch.py), and the driver itself does almost no work.
Tune places each driver in a placement group; a head bundle of 1 CPU (Tune's default) would make
a 2-worker trial need 4 CPUs, and 0.01 CPU would leave 0.99 free, on which Ray Data's 1-CPU tasks
never schedule, so on a 3-CPU local Ray both deadlock. By default the driver therefore reserves
only a little logical memory and no CPU (``tune.driver_cpus: 0``); ``max_concurrent_trials``
caps the trials in flight at what the cluster's CPUs (and GPUs) fit.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ehrsurv_dist import atomic
from ehrsurv_dist.config import (
    ConfigError,
    apply_overrides,
    load_config,
    option,
    require,
    section,
    to_dict,
)
from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec

log = logging.getLogger(__name__)

TUNE_DIR = "tune"  # Ray Tune experiment name under OUT
TRIALS_DIR = "trials"
PG_FILE = ".train_placement_groups"  # "controller_actor_id placement_group_id" lines
DRIVER_MEMORY = 64 * 1024**2  # the driver's logical reservation when it holds no CPU (bytes)
METRIC = "val_score"  # validation td-C of a finetune run (worker.py reports it every epoch)


# --------------------------------------------------------------------------------------------
# The job file's `tune:` section
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SubSpace:
    """One branch of the search space: cases x grid x random draws, plus fixed values.

    Every key is a dotted key of the fine-tuning job (``finetune.lora_rank``, ``train.engine.lr``,
    ``model.attention``; see ``ehrsurv config``).
    """

    name: str = option("", "Label of this branch in trial names and tables (default space<i>).")
    fixed: dict[str, Any] = option({}, "Keys held at one value in every trial of this branch.")
    cases: list[dict[str, Any]] = option(
        [],
        "Whole override dicts, one grid point each, crossed with `grid` (values that move "
        "together, e.g. LoRA rank with alpha = 2 x rank).",
    )
    grid: dict[str, list[Any]] = option(
        {}, "Key -> values; every combination is a trial (grid search)."
    )
    choice: dict[str, list[Any]] = option(
        {}, "Key -> values; one drawn at random per sample (tune.num_samples)."
    )
    uniform: dict[str, list[float]] = option({}, "Key -> [low, high]; drawn uniformly per sample.")
    loguniform: dict[str, list[float]] = option(
        {}, "Key -> [low, high] (> 0); drawn log-uniformly per sample (learning rates)."
    )
    select: bool = option(
        True,
        "false: run and report this branch but never pick it as the best (e.g. bidirectional "
        "attention, whose validation td-C the sequence-end leak inflates, DESIGN.md §3).",
    )

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        kinds: list[tuple[str, Mapping[str, Any]]] = [
            ("fixed", self.fixed),
            ("grid", self.grid),
            ("choice", self.choice),
            ("uniform", self.uniform),
            ("loguniform", self.loguniform),
        ]
        for kind, keys in [*kinds, *(("cases", c) for c in self.cases)]:
            for key in keys:
                require(
                    not key.startswith("tune.") and key != "tune",
                    kind,
                    f"'{key}': a sub-space sets job keys, not tune.* keys",
                )
                other = seen.get(key)
                require(
                    other is None or other == kind == "cases",
                    kind,
                    f"'{key}' is also set in {other}; set each key in one place",
                )
                seen[key] = kind
        for kind, keys in (("grid", self.grid), ("choice", self.choice)):
            for key, values in keys.items():
                require(len(values) > 0, f"{kind}.{key}", "needs at least one value")
        for kind, keys in (("uniform", self.uniform), ("loguniform", self.loguniform)):
            for key, bounds in keys.items():
                require(
                    len(bounds) == 2 and bounds[0] <= bounds[1],
                    f"{kind}.{key}",
                    f"must be [low, high] with low <= high, got {bounds}",
                )
                require(
                    kind == "uniform" or bounds[0] > 0,
                    f"{kind}.{key}",
                    f"bounds must be > 0, got {bounds}",
                )

    @property
    def random_keys(self) -> bool:
        return bool(self.choice or self.uniform or self.loguniform)


@dataclass(kw_only=True)
class TuneSpec:
    """The sweep: search space, scheduler, concurrency and what to do with the winner."""

    space: list[SubSpace] = option(
        [], "Branches of the search space (empty: one trial with the job's own values)."
    )
    num_samples: int = option(
        1, "Random draws per grid point, for branches with choice/uniform/loguniform keys (>= 1)."
    )
    scheduler: Literal["asha", "fifo"] = option(
        "asha", "asha: stop trials whose validation td-C trails at each rung; fifo: run all."
    )
    grace_period: int = option(
        1, "ASHA: epochs every trial runs before it can be stopped (>= 1, <= train.epochs)."
    )
    reduction_factor: float = option(
        2.0, "ASHA: about 1/reduction_factor of the trials reaching a rung go on (> 1)."
    )
    max_concurrent_trials: int | None = option(
        None,
        "Trials in flight at once (> 0); null = as many as the cluster's CPUs and GPUs fit now "
        "(set it on an autoscaling cluster, whose nodes arrive only on demand).",
    )
    driver_cpus: float = option(
        0.0,
        "CPUs reserved for each trial's driver (>= 0). 0: it reserves a little memory instead, "
        "so that a trial needs exactly its workers' CPUs plus one for Ray Data.",
    )
    max_failures: int = option(
        0, "Tune-level retries of a failed trial (>= 0); Train already retries dead workers."
    )
    evaluate_held_out: bool = option(
        True, "Score the best trial's model on held_out once (never used for selection)."
    )

    def __post_init__(self) -> None:
        require(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        require(
            self.reduction_factor > 1,
            "reduction_factor",
            f"must be > 1, got {self.reduction_factor}",
        )
        require(
            self.max_concurrent_trials is None or self.max_concurrent_trials > 0,
            "max_concurrent_trials",
            f"must be > 0 or null, got {self.max_concurrent_trials}",
        )
        require(self.driver_cpus >= 0, "driver_cpus", f"must be >= 0, got {self.driver_cpus}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        names = [s.name for s in self.space if s.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "space", f"sub-space names must be unique, repeated: {dup}")


@dataclass(kw_only=True)
class TuneJobSpec(JobSpec):
    """A fine-tuning job plus a ``tune:`` section; every trial is the job with its overrides."""

    tune: TuneSpec = section(TuneSpec, "Search space, scheduler and concurrency of `ehrsurv tune`.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.tune.grace_period <= self.train.epochs,
            "tune.grace_period",
            f"must be <= train.epochs ({self.train.epochs}), got {self.tune.grace_period}",
        )
        expand_trials(self)  # every trial must be a valid job: fail at load time, not in Ray


# --------------------------------------------------------------------------------------------
# Expanding the space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One point of the search space."""

    index: int
    space: str
    overrides: dict[str, Any]
    select: bool = True  # may be chosen as the best (SubSpace.select)

    @property
    def name(self) -> str:
        """Directory name of the trial's run: ``t003_lora``."""
        return f"t{self.index:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.space)}"


def job_spec(spec: TuneJobSpec) -> JobSpec:
    """The fine-tuning job without its ``tune`` section (what every trial starts from)."""
    return JobSpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(JobSpec)})


def trial_spec(base: JobSpec, trial: Trial) -> JobSpec:
    """``base`` with the trial's overrides applied and validated."""
    return apply_overrides(base, list(trial.overrides.items()))


def expand_trials(spec: TuneJobSpec) -> list[Trial]:
    """Every trial of the search space, in a fixed order, random draws seeded by ``spec.seed``.

    Raises:
        ConfigError: a trial's overrides name an unknown key or an invalid value
            (key ``tune.space[i]``).
    """
    base = job_spec(spec)
    tune = spec.tune
    trials: list[Trial] = []
    for i, sub in enumerate(tune.space or [SubSpace(name="base")]):
        name = sub.name or f"space{i}"
        rng = np.random.default_rng([spec.seed, i])  # per branch: adding one leaves others
        keys = list(sub.grid)
        for case in sub.cases or [{}]:
            for combo in itertools.product(*(sub.grid[k] for k in keys)):
                for _ in range(tune.num_samples if sub.random_keys else 1):
                    ov: dict[str, Any] = {
                        **sub.fixed,
                        **case,
                        **dict(zip(keys, combo, strict=True)),
                    }
                    for k, values in sub.choice.items():
                        ov[k] = values[int(rng.integers(len(values)))]
                    for k, (lo, hi) in sub.uniform.items():
                        ov[k] = float(rng.uniform(lo, hi))
                    for k, (lo, hi) in sub.loguniform.items():
                        ov[k] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                    trial = Trial(len(trials), name, ov, sub.select)
                    try:
                        trial_spec(base, trial)
                    except ConfigError as e:
                        raise ConfigError(
                            f"tune.space[{i}]", f"trial {trial.name} {ov}: {e}"
                        ) from None
                    trials.append(trial)
    return trials


def format_trials(trials: Sequence[Trial]) -> str:
    """One line per trial: name and overrides (``ehrsurv tune --dry-run``)."""
    lines = [f"{len(trials)} trial(s):"]
    for t in trials:
        ov = " ".join(f"{k}={_short(v)}" for k, v in t.overrides.items()) or "(job values)"
        lines.append(f"  {t.name:<18} {ov}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourcePlan:
    """What one trial holds, and how many trials run at once."""

    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    driver_resources: dict[str, float]


def plan_resources(
    specs: Sequence[JobSpec], tune: TuneSpec, cluster: Mapping[str, float]
) -> ResourcePlan:
    """Per-trial resources and the number of trials in flight for a cluster's resources.

    A trial holds its Train workers' CPUs (and GPUs), needs ``DATA_CPUS`` more CPU free for
    Ray Data, plus the driver's ``tune.driver_cpus``; the largest trial of the sweep sets the
    size. ``tune.max_concurrent_trials`` caps the result; when set, it is trusted even beyond
    what the cluster has now (an autoscaler adds nodes for pending trials).

    Raises:
        EhrsurvError: not even one trial fits and ``tune.max_concurrent_trials`` is unset.
    """
    from ehrsurv_dist.train.launch import DATA_CPUS

    cpus = max(max(s.train.num_workers, 1) * s.train.cpus_per_worker for s in specs)
    cpus += DATA_CPUS + tune.driver_cpus
    gpus = float(max((s.train.num_workers if s.train.use_gpu else 0) for s in specs))
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    fit = math.floor(have_cpu / cpus + 1e-9)
    if gpus:
        fit = min(fit, math.floor(have_gpu / gpus + 1e-9))
    if tune.max_concurrent_trials is not None:
        n = tune.max_concurrent_trials
        if fit < n:
            log.warning(
                "tune.max_concurrent_trials=%d but the cluster fits %d trial(s) now; the rest "
                "wait for resources (an autoscaler adds nodes)",
                n,
                fit,
            )
    elif fit < 1:
        raise EhrsurvError(
            f"one trial needs {cpus:g} CPUs (train workers + {DATA_CPUS} for Ray Data + "
            f"tune.driver_cpus) and {gpus:g} GPUs; the cluster has {have_cpu:g} CPUs and "
            f"{have_gpu:g} GPUs (on an autoscaling cluster set tune.max_concurrent_trials)"
        )
    else:
        n = fit
    n = max(1, min(n, len(specs)))
    driver: dict[str, float] = (
        {"CPU": tune.driver_cpus} if tune.driver_cpus > 0 else {"memory": DRIVER_MEMORY}
    )
    return ResourcePlan(cpus, gpus, n, driver)


# --------------------------------------------------------------------------------------------
# The trial driver (runs in a Tune trial actor)
# --------------------------------------------------------------------------------------------


def _trial_driver(
    config: dict[str, Any], *, base: dict[str, Any], trials: list[dict[str, Any]], root: str
) -> None:
    """Tune's trainable: one fine-tuning run with the trial's overrides, epochs sent to Tune.

    The run directory is named after the trial's index, which is stable across
    ``Tuner.restore``: a restored trial re-enters the same directory and Ray Train resumes it
    from its latest checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from ehrsurv_dist.train.launch import run_training

    t = trials[config["trial"]]
    trial = Trial(t["index"], t["space"], t["overrides"], t["select"])
    spec = trial_spec(load_config(JobSpec, base=base), trial)
    out = os.path.join(root, trial.name)
    callbacks = [TuneReportCallback(), _placement_group_recorder(os.path.join(out, PG_FILE))]
    # What follows fit() (the export) may not run: Tune ends the trial as soon as the
    # scheduler says stop, which it may say after the last epoch too. The sweep therefore
    # reads everything it reports from the run's checkpoints (collect_trial).
    run_training(spec, "finetune", out, progress=False, callbacks=callbacks)


def _placement_group_recorder(path: str) -> Any:
    """A Train callback that notes (controller actor, worker placement group) in ``path``.

    Why: when the scheduler stops a trial, Tune ends the trial's actor, and with it the Train
    controller it owns; the workers' placement group outlives them (placement groups belong
    to the job, not to the actor that made them). Ray Train's own cleaner asks the dashboard's
    state API whether the controller died, which fails on an in-process Ray without a
    dashboard (how ``ehrsurv`` starts one) or with several Rays on one machine, so the group
    would hold its CPUs until the sweep ends and later trials would wait forever.
    :class:`_SweepCallback` removes the recorded groups of dead controllers instead.
    """
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class _Recorder(WorkerGroupCallback):  # type: ignore[misc]
        def after_worker_group_start(self, worker_group: Any) -> None:
            import ray

            state = worker_group.get_worker_group_state()
            pg = state.placement_group_handle.placement_group
            controller = ray.get_runtime_context().get_actor_id()
            with open(path, "a") as fh:  # one short line per (re)start of the worker group
                fh.write(f"{controller} {pg.id.hex()}\n")

    return _Recorder()


def release_orphaned_placement_groups(root: str, done: set[str]) -> int:
    """Remove the recorded worker placement groups whose Train controller is dead.

    Reads ``root/*/PG_FILE``; asks the GCS (not the dashboard) for each controller's state.
    Groups of live controllers, and records of another Ray session, are left alone.

    Args:
        root: the sweep's ``trials`` folder.
        done: placement group ids already handled (updated).

    Returns:
        The number of groups removed.
    """
    import glob

    from ray._private.state import actors
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    removed = 0
    for path in glob.glob(os.path.join(root, "*", PG_FILE)):
        with open(path) as fh:
            pairs = [ln.split() for ln in fh if len(ln.split()) == 2]
        for controller, pg_hex in pairs:
            if pg_hex in done:
                continue
            try:
                state = actors(actor_id=controller).get("State")
            except Exception:  # an actor of another session: not ours to judge
                state = None
            if state != "DEAD":
                continue
            done.add(pg_hex)
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                remove_placement_group(pg)
                removed += 1
                log.info("removed placement group %s of a stopped trial (%s)", pg_hex, path)
    return removed


def _sweep_callback(root: str, total: int, progress: bool) -> Any:
    """The Tune callback of a sweep: releases stopped trials' placement groups, draws the bar.

    Picklable (Tune saves it with the experiment and restores it on resume): the bar is made
    in ``setup`` and not pickled.
    """
    import sys

    from ray.tune import Callback

    class _SweepCallback(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.done: set[str] = set()
            self.last = 0.0
            self.best = -math.inf
            self.bar: Any = None

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "bar": None}

        def setup(self, *args: Any, **kw: Any) -> None:
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="trial", desc="tune", file=sys.stderr)

        def on_step_begin(self, iteration: int, trials: Any, **kw: Any) -> None:
            now = time.monotonic()
            if now - self.last >= 2.0:  # a few GCS lookups, every 2 s at most
                self.last = now
                release_orphaned_placement_groups(root, self.done)

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: Any, **kw: Any
        ) -> None:
            score = result.get(METRIC)
            if self.bar is not None and score is not None and score > self.best:
                self.best = float(score)
                self.bar.set_postfix_str(f"best val td-C {self.best:.4f}")

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_experiment_end(self, trials: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return _SweepCallback()


def _wait_for_release(root: str, seconds: float = 60.0) -> None:
    """After the sweep: release every stopped trial's placement group (their controllers die
    within seconds of the trial), so that the evaluation finds the cluster's CPUs free."""
    import glob

    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table

    done: set[str] = set()
    deadline = time.monotonic() + seconds
    while True:
        release_orphaned_placement_groups(root, done)
        held = []
        for path in glob.glob(os.path.join(root, "*", PG_FILE)):
            with open(path) as fh:
                for ln in fh:
                    parts = ln.split()
                    if len(parts) == 2:
                        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(parts[1])))
                        if placement_group_table(pg).get("state") == "CREATED":
                            held.append(parts[1])
        if not held or time.monotonic() > deadline:
            if held:
                log.warning("placement groups still held after the sweep: %s", held)
            return
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: str
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    held_out: dict[str, Any] | None

    def summary(self) -> str:
        lines = [markdown_table(self.rows)]
        if self.best is not None:
            lines.append(
                f"best: {self.best['trial']} (validation td-C {_num(self.best['val_td_c'])}) -> "
                f"{self.out}/best.yaml"
            )
        if self.held_out:
            lines.append(
                f"best trial on held_out (n={self.held_out.get('n_subjects')}): "
                f"td-C {_num(self.held_out.get('c_index_td'))}  IBS {_num(self.held_out.get('ibs'))}"
            )
        lines.append(f"results: {self.out}/results.md  plot: {self.out}/plots/tdc_vs_params.png")
        return "\n".join(lines)


def prepare_sweep_dir(out: str, spec: TuneJobSpec) -> bool:
    """Create ``out`` or check that it holds this same sweep; True = resume.

    Raises:
        OutputError: ``out`` holds another sweep or other files, or is not writable.
    """
    from ehrsurv_dist.train.launch import claim_output_dir

    return claim_output_dir(out, TuneJobSpec, spec, "sweep")


def run_sweep(spec: TuneJobSpec, out: str, *, progress: bool = True) -> SweepResult:
    """Run (or resume) the sweep, then write the results table, plot, best.yaml, held-out.

    Connects to ``ray.address`` / ``RAY_ADDRESS`` or starts an in-process Ray if none is
    initialised (the caller shuts it down). Re-running with the same ``out`` and config resumes:
    finished trials are kept, unfinished and errored ones continue from their checkpoints.

    Raises:
        ConfigError: no cohort.
        OutputError: ``out`` holds something else.
        EhrsurvError: the cluster cannot fit one trial; every trial failed.
    """
    import ray
    from ray import tune

    from ehrsurv_dist.train.launch import _absolute_paths, init_ray

    if not spec.data.cohort:
        raise ConfigError("data.cohort", "no cohort: pass --cohort DIR or set data.cohort")
    out = os.path.abspath(out)
    base = _absolute_paths(job_spec(spec))  # trials run in Tune's trial directories
    spec = dataclasses.replace(spec, data=base.data, finetune=base.finetune)
    trials = expand_trials(spec)
    specs = [trial_spec(base, t) for t in trials]
    prepare_sweep_dir(out, spec)
    atomic.write_json([dataclasses.asdict(t) for t in trials], os.path.join(out, "trials.json"))
    root = os.path.join(out, TRIALS_DIR)
    os.makedirs(root, exist_ok=True)

    init_ray(base)
    plan = plan_resources(specs, spec.tune, ray.cluster_resources())
    log.info("%d trials, %d at a time (%s)", len(trials), plan.max_concurrent, plan)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial_driver,
            base=to_dict(base),
            trials=[dataclasses.asdict(t) for t in trials],
            root=root,
        ),
        plan.driver_resources,
    )
    param_space = {"trial": tune.grid_search(list(range(len(trials))))}
    exp = os.path.join(out, TUNE_DIR)
    callbacks = [_sweep_callback(root, len(trials), progress)]
    if tune.Tuner.can_restore(exp):
        tuner = tune.Tuner.restore(
            exp,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
        # the saved RunConfig comes back with its callbacks (the bar and the PG janitor)
    else:
        scheduler: Any = None
        if spec.tune.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="training_iteration",
                max_t=max(s.train.epochs for s in specs),
                grace_period=spec.tune.grace_period,
                reduction_factor=spec.tune.reduction_factor,
            )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=scheduler,
                max_concurrent_trials=plan.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=out,
                failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures),
                callbacks=callbacks,
                verbose=0,  # the bar, or nothing in tests; errors land in the table
            ),
        )
    grid = tuner.fit()
    _wait_for_release(root)

    tune_results = {}
    for k in range(len(grid)):
        r = grid[k]
        idx = (r.config or {}).get("trial")
        if idx is not None:
            tune_results[int(idx)] = r
    rows = [
        collect_trial(os.path.join(root, t.name), t, s, tune_results.get(t.index))
        for t, s in zip(trials, specs, strict=True)
    ]
    return finish_sweep(out, spec, trials, specs, rows)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def collect_trial(run_dir: str, trial: Trial, spec: JobSpec, result: Any | None) -> dict[str, Any]:
    """One results row from the trial's run directory and its Tune result (may be None).

    History, best epoch and status come from the run's latest checkpoint (they survive
    resumes): ``completed`` when the run trained to its end (last epoch, or patience ran out),
    ``stopped`` when the scheduler ended it earlier, ``error`` when Tune reports an error.
    """
    f = spec.finetune
    row: dict[str, Any] = {
        "trial": trial.name,
        "space": trial.space,
        "selectable": trial.select,
        "strategy": f.strategy,
        "loss": f.loss,
        "params": " ".join(
            f"{k.rsplit('.', 1)[-1]}={_short(v)}"
            for k, v in trial.overrides.items()
            if k not in ("finetune.strategy", "finetune.loss")
        ),
        "trainable_params": None,
        "total_params": None,
        "val_td_c": None,
        "best_epoch": None,
        "epochs": 0,
        "status": "not started",
        "tuning_td_c": None,
        "tuning_ibs": None,
        "wall_s": None,
    }
    state = run_state(run_dir)
    history = state.get("history", [])
    if history:
        best = max(history, key=lambda h: h.get(METRIC, -math.inf))
        row["val_td_c"] = best.get("val_c_index_td")
        row["best_epoch"] = int(best["epoch"])
        row["epochs"] = len(history)
    patience = spec.train.patience
    finished = bool(history) and (
        state.get("epoch", 0) >= spec.train.epochs
        or (patience > 0 and state.get("bad_epochs", 0) >= patience)
    )
    if finished:
        row["status"] = "completed"
    elif result is not None and result.error is not None:
        row["status"] = "error"
        row["error"] = str(result.error).strip().splitlines()[-1][:200]
    elif history:
        row["status"] = "stopped"  # by the scheduler (ASHA) before the run's end
    if result is not None and result.metrics:
        row["wall_s"] = result.metrics.get("time_total_s")
    vocab_path = os.path.join(run_dir, "vocab.json")
    if os.path.exists(vocab_path):
        from ehrsurv_dist.data.vocab import Vocabulary

        row["trainable_params"], row["total_params"] = count_parameters(
            spec, Vocabulary.load(vocab_path).size
        )
    return row


def run_state(run_dir: str) -> dict[str, Any]:
    """The loop state (epoch, bad_epochs, history) of a possibly unfinished run: that of its
    latest checkpoint, the one with the longest history ({} without checkpoints)."""
    from ehrsurv_dist.train.launch import RAY_DIR, RUN_NAME
    from ehrsurv_dist.train.worker import LOOP_FILE

    latest: dict[str, Any] = {}
    root = os.path.join(run_dir, RAY_DIR, RUN_NAME)
    if not os.path.isdir(root):
        return latest
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d, LOOP_FILE)
        if d.startswith("checkpoint_") and os.path.exists(path):
            try:
                with open(path) as fh:
                    state = dict(json.load(fh))
            except (OSError, ValueError):
                continue  # a checkpoint cut short by a stopped trial
            if len(state.get("history", [])) > len(latest.get("history", [])):
                latest = state
    return latest


def run_history(run_dir: str) -> list[dict[str, Any]]:
    """Per-epoch metrics of a (possibly unfinished) run, from its latest checkpoint."""
    return list(run_state(run_dir).get("history", []))


def count_parameters(spec: JobSpec, vocab_size: int) -> tuple[int, int]:
    """(trainable, total) parameters of the job's survival model under its strategy."""
    from ehrsurv_dist.models.lora import trainable_parameters
    from ehrsurv_dist.train import modeling

    model = modeling.build_model(spec, vocab_size, "finetune")
    modeling.prepare_finetune(model, spec)
    rep = trainable_parameters(model)
    return rep.trainable, rep.total


def export_best_checkpoint(run_dir: str, spec: JobSpec, *, fresh: bool = False) -> bool:
    """Give a run stopped by the scheduler the export a finished run has; False if none.

    A finished run already has ``checkpoints/best/model.pt``; a stopped one has only Ray
    Train's checkpoints, each with its epoch's consolidated weights and history: the one with
    the best validation score becomes the export (what ``run_training`` does at the end).
    ``fresh`` rebuilds an existing export (a run that errored, was exported, then resumed).
    """
    import torch

    from ehrsurv_dist.data.vocab import Vocabulary
    from ehrsurv_dist.train import modeling
    from ehrsurv_dist.train.launch import EXPORT, RAY_DIR, RUN_NAME
    from ehrsurv_dist.train.worker import LOOP_FILE, MODEL_FILE

    export = os.path.join(run_dir, EXPORT)
    if os.path.exists(export) and not fresh:
        return True
    root = os.path.join(run_dir, RAY_DIR, RUN_NAME)
    best: tuple[float, str] | None = None
    for d in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        ck = os.path.join(root, d)
        try:
            with open(os.path.join(ck, LOOP_FILE)) as fh:
                last = json.load(fh)["history"][-1]
        except (OSError, ValueError, KeyError, IndexError):
            continue
        if os.path.exists(os.path.join(ck, MODEL_FILE)):
            score = float(last.get(METRIC, -math.inf))
            if best is None or score > best[0]:
                best = (score, ck)
    if best is None:
        return False
    payload = torch.load(os.path.join(best[1], MODEL_FILE), map_location="cpu", weights_only=False)
    vocab = Vocabulary.load(os.path.join(run_dir, "vocab.json"))
    modeling.save_export(
        export,
        payload["state_dict"],
        modeling.model_config(spec, vocab.size),
        spec,
        "finetune",
        vocab.hash,
        extra={"epoch": payload["epoch"]},
    )
    return True


def finish_sweep(
    out: str,
    spec: TuneJobSpec,
    trials: Sequence[Trial],
    specs: Sequence[JobSpec],
    rows: list[dict[str, Any]],
) -> SweepResult:
    """Evaluate every trial's best model on ``tuning`` (IBS), write tables, plot, best.yaml,
    and score the best trial on ``held_out`` once."""
    from ehrsurv_dist.evaluate import evaluate_run
    from ehrsurv_dist.metrics.survival import jsonable

    root = os.path.join(out, TRIALS_DIR)
    for t, s, row in zip(trials, specs, rows, strict=True):
        run_dir = os.path.join(root, t.name)
        if row["val_td_c"] is None:
            continue
        cached = _cached_metrics(run_dir, row["epochs"])
        if cached is not None and "tuning" in cached:  # a resumed sweep: scored already
            m = cached["tuning"]
        else:
            # the driver may have been ended before its export: build it from the checkpoints
            if not export_best_checkpoint(run_dir, s, fresh=True):
                continue
            m = evaluate_run(run_dir, splits=("tuning",), n_boot=0)["tuning"]
            _write_run_metrics(run_dir, row, m, None)
        row["tuning_td_c"] = m.get("c_index_td")
        row["tuning_ibs"] = m.get("ibs")
    best = pick_best(rows)
    if best is None:
        errors = "; ".join(f"{r['trial']}: {r.get('error', r['status'])}" for r in rows[:3])
        write_results(out, rows)
        raise EhrsurvError(f"no selectable trial produced a validation score ({errors})")
    i = [r["trial"] for r in rows].index(best["trial"])
    best_dir = os.path.join(root, trials[i].name)
    held: dict[str, Any] | None = None
    if spec.tune.evaluate_held_out:
        cached = _cached_metrics(best_dir, best["epochs"])
        if cached is not None and "held_out" in cached:
            held = cached["held_out"]
        else:  # once per sweep: the held-out split never takes part in the selection
            res = evaluate_run(best_dir, splits=("tuning", "held_out"))
            held = jsonable(res["held_out"])
            _write_run_metrics(best_dir, best, res["tuning"], held)
        atomic.write_json(
            {"trial": best["trial"], "run_dir": best_dir, "held_out": held},
            os.path.join(out, "held_out.json"),
        )
    write_best_yaml(specs[i], os.path.join(out, "best.yaml"), out, best)
    write_results(out, rows, best["trial"])
    return SweepResult(out, rows, best, held)


def pick_best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The selectable row with the highest validation td-C (None if no row has one).

    Selection uses the validation score only; ``held_out`` is scored afterwards, once.
    """
    scored = [r for r in rows if r["selectable"] and _ok(r["val_td_c"])]
    return max(scored, key=lambda r: r["val_td_c"]) if scored else None


def _cached_metrics(run_dir: str, epochs: int) -> dict[str, Any] | None:
    """The trial's ``metrics.json`` if it scored the same history (same number of epochs)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        m: dict[str, Any] = json.load(fh)
    return m if len(m.get("train", {}).get("history", [])) == epochs else None


def _write_run_metrics(
    run_dir: str, row: Mapping[str, Any], tuning: dict[str, Any], held: dict[str, Any] | None
) -> None:
    """The trial's ``metrics.json``, as ``ehrsurv finetune`` would write it."""
    from ehrsurv_dist.metrics.survival import jsonable

    metrics: dict[str, Any] = {
        "train": {
            "mode": "finetune",
            "best_epoch": row["best_epoch"],
            "best_val_score": row["val_td_c"],
            "history": run_history(run_dir),
            "tune_status": row["status"],
        },
        "tuning": tuning,
    }
    if held is not None:
        metrics["held_out"] = held
    atomic.write_json(jsonable(metrics), os.path.join(run_dir, "metrics.json"))


COLUMNS = [
    ("trial", "trial"),
    ("strategy", "strategy"),
    ("loss", "loss"),
    ("params", "other values"),
    ("trainable_params", "trainable params"),
    ("val_td_c", "val td-C (best)"),
    ("best_epoch", "best epoch"),
    ("epochs", "epochs"),
    ("status", "status"),
    ("tuning_ibs", "tuning IBS"),
    ("wall_s", "wall s"),
]


def markdown_table(rows: Sequence[Mapping[str, Any]], best: str | None = None) -> str:
    """The results as a Markdown table, best validation td-C first; ``best`` row in bold."""
    order = sorted(rows, key=lambda r: -(r["val_td_c"] if _ok(r["val_td_c"]) else -math.inf))
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = []
    for r in order:
        cells = [_cell(k, r.get(k)) for k, _ in COLUMNS]
        if best is not None and r["trial"] == best:
            cells = [f"**{c}**" if c else c for c in cells]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_results(out: str, rows: Sequence[Mapping[str, Any]], best: str | None = None) -> None:
    """``results.csv`` / ``.md`` / ``.json`` and the td-C vs parameters plot, atomically."""
    keys = [*dict.fromkeys(k for r in rows for k in r)]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
    atomic.write_text(buf.getvalue(), os.path.join(out, "results.csv"))
    md = [
        "# Sweep results",
        "",
        "Validation td-C: the best epoch's time-dependent concordance on the `tuning` split "
        "(the score ASHA and the selection use). IBS: that epoch's model on `tuning`. "
        "status: completed, stopped (by the scheduler), error.",
        "",
        markdown_table(rows, best),
        "",
    ]
    atomic.write_text("\n".join(md), os.path.join(out, "results.md"))
    atomic.write_json({"best": best, "trials": list(rows)}, os.path.join(out, "results.json"))
    plot_tdc_vs_params(rows, os.path.join(out, "plots", "tdc_vs_params.png"))


def plot_tdc_vs_params(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Validation td-C against trainable parameters (log scale), one colour per strategy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, strategy in enumerate(("frozen", "lora", "full")):
        pts = [
            (r["trainable_params"], r["val_td_c"])
            for r in rows
            if r["strategy"] == strategy and _ok(r["val_td_c"]) and r["trainable_params"]
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=28, alpha=0.8, color=f"C{j}", label=f"{strategy} ({len(pts)})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation td-C (best epoch)")
    ax.set_title("td-C vs trainable parameters per strategy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    fig.tight_layout()
    atomic.write_png(fig, path, 110)


def write_best_yaml(spec: JobSpec, path: str, out: str, row: Mapping[str, Any]) -> None:
    """The best trial as a job file holding only what differs from the defaults."""
    diff = _diff(to_dict(spec), to_dict(JobSpec()))
    header = (
        f"Best trial {row['trial']} of the sweep in {out} "
        f"(validation td-C {_num(row['val_td_c'])}, {row['trainable_params']} trainable "
        "parameters).\n"
        f"  ehrsurv finetune --config {path} --cohort COHORT --out RUN_DIR\n"
        "Every value below differs from the defaults; the sweep chose the tuned ones."
    )
    import yaml

    text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    text += yaml.safe_dump(diff, sort_keys=False, default_flow_style=False)
    atomic.write_text(text, path)


def _diff(value: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        d = default.get(k)
        if isinstance(v, Mapping) and isinstance(d, Mapping):
            sub = _diff(v, d)
            if sub:
                out[k] = sub
        elif v != d:
            out[k] = v
    return out


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _num(x: Any) -> str:
    return f"{float(x):.4f}" if _ok(x) else "n/a"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _cell(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key in ("val_td_c", "tuning_ibs", "tuning_td_c"):
        return _num(v)
    if key == "trainable_params":
        return f"{int(v):,}"
    if key == "wall_s":
        return f"{float(v):.0f}"
    return str(v)
