"""Running a sweep on Ray Tune: the trial driver, the sweep's callback and :func:`run_sweep`.

One Tune trial = one fine-tuning run. The trial's function is a *driver* (Ray Train V2 pattern):
it builds and fits a ``TorchTrainer`` through :func:`~ehrsurv_dist.train.launch.run_training`,
whose ``RunConfig`` carries Tune's ``TuneReportCallback``, so every epoch's ``val_score``
(validation td-C on the ``tuning`` split) reaches Tune and its ASHA scheduler. Tune never wraps
the trainer itself (``Tuner(trainer)`` is gone in Train V2). Tune runs a grid over the trial
indices of :func:`~ehrsurv_dist.tune.search_space.expand_trials`; the overrides travel with the
trainable.

Ray is imported inside the functions (the edge of the package): ``ehrsurv_dist.tune`` re-exports
:func:`run_sweep`, and importing the package (``ehrsurv tune --dry-run``, unit tests) must not
import Ray Tune.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import Any

from tqdm import tqdm

from ehrsurv_dist import atomic
from ehrsurv_dist import task as T
from ehrsurv_dist.config import ConfigError, load_config, to_dict
from ehrsurv_dist.data.validation_cache import validate_cached
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import tracking
from ehrsurv_dist.train.console import PACKAGE_LOGGER
from ehrsurv_dist.train.launch import (
    absolute_paths,
    check_init,
    init_ray,
    resolve_use_gpu,
    run_training,
)
from ehrsurv_dist.train.outdir import claim_output_dir
from ehrsurv_dist.tune.placement_groups import (
    PG_FILE,
    placement_group_recorder,
    release_orphaned_placement_groups,
    wait_for_release,
)
from ehrsurv_dist.tune.resources import ResourcePlan, plan_resources
from ehrsurv_dist.tune.results import METRIC, TRIALS_DIR, SweepResult, collect_trial, finish_sweep
from ehrsurv_dist.tune.search_space import Trial, TuneJobSpec, expand_trials, job_spec, trial_spec

log = logging.getLogger(__name__)

TUNE_DIR = "tune"  # Ray Tune experiment name under OUT


def prepare_sweep_dir(out: str, spec: TuneJobSpec) -> bool:
    """Create ``out`` or check that it holds this same sweep; True = resume.

    Raises:
        OutputError: ``out`` holds another sweep or other files, or is not writable.
    """
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
    import ray  # the edge: the sweep asks the cluster what it has

    if not spec.data.cohort:
        raise ConfigError("data.cohort", "no cohort: pass --cohort DIR or set data.cohort")
    out = os.path.abspath(out)
    base = absolute_paths(job_spec(spec))  # trials run in Tune's trial directories
    spec = dataclasses.replace(spec, data=base.data, finetune=base.finetune)
    trials = expand_trials(spec)
    specs = [trial_spec(base, t) for t in trials]
    check_init(specs)  # an --init that does not fit a trial's model: refused before Ray starts
    tracking.check_installed(spec.train.tracking)  # a missing package: before Ray starts
    _validate_once(specs)
    root = _prepare_trials(out, spec, trials)
    # train.tracking: the sweep's parent run (MLflow) or log folder; each trial's run joins it
    target = tracking.open_sweep(spec, out)

    init_ray(base)
    cluster = ray.cluster_resources()
    # train.use_gpu=auto decided once for the sweep (said once); the trials get the result
    base = resolve_use_gpu(base, cluster)
    specs = [resolve_use_gpu(trial_spec(base, t), cluster, say=False) for t in trials]
    plan = plan_resources(specs, spec.tune, cluster)
    log.info("%d trials, %d at a time (%s)", len(trials), plan.max_concurrent, plan)
    grid = _tuner(out, spec, base, trials, specs, plan, progress, target).fit()
    wait_for_release(root)

    by_index = _results_by_trial(grid)
    rows = [
        collect_trial(os.path.join(root, t.name), t, s, by_index.get(t.index))
        for t, s in zip(trials, specs, strict=True)
    ]
    ran = [(os.path.join(root, t.name), r["status"]) for t, r in zip(trials, rows, strict=True)]
    try:
        res = finish_sweep(out, spec, trials, specs, rows)
    except BaseException:
        tracking.log_sweep(out, target, ran, None)
        raise
    tracking.log_sweep(out, target, ran, res.best)
    return res


def _validate_once(specs: list[JobSpec]) -> None:
    """Validate each distinct cohort setting of the trials once, here, so that the cached
    report (``data/validation_cache.py``) serves every trial: concurrent trials would each
    miss an empty cache and scan the cohort themselves. A cohort with errors is refused here,
    before Ray starts, as a single run would be."""
    seen: set[tuple[Any, ...]] = set()
    for s in specs:
        task = T.task_spec(s)
        key = (s.data.cohort, s.data.outcomes, s.data.granularity, repr(task))
        if key in seen:
            continue
        seen.add(key)
        report = validate_cached(
            s.data.cohort, s.data.outcomes, s.data.granularity, require_outcomes=True, task=task
        )
        report.raise_if_unusable(s.data.drop_bad_subjects)


def _prepare_trials(out: str, spec: TuneJobSpec, trials: list[Trial]) -> str:
    """Claim ``out`` for this sweep, write ``trials.json``, make the trials' folder (returned)."""
    prepare_sweep_dir(out, spec)
    atomic.write_json([dataclasses.asdict(t) for t in trials], os.path.join(out, "trials.json"))
    root = os.path.join(out, TRIALS_DIR)
    os.makedirs(root, exist_ok=True)
    return root


def _tuner(
    out: str,
    spec: TuneJobSpec,
    base: JobSpec,
    trials: list[Trial],
    specs: list[JobSpec],
    plan: ResourcePlan,
    progress: bool,
    target: tracking.Target | None = None,
) -> Any:
    """The ``Tuner`` of the sweep: restored from ``OUT/tune`` if it is there, else a new one."""
    from ray import tune  # the edge: Ray Tune runs the trials

    root = os.path.join(out, TRIALS_DIR)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial_driver,
            base=to_dict(base),
            trials=[dataclasses.asdict(t) for t in trials],
            root=root,
            tracking_target=target.to_dict() if target is not None else None,
        ),
        plan.driver_resources,
    )
    param_space = {"trial": tune.grid_search(list(range(len(trials))))}
    exp = os.path.join(out, TUNE_DIR)
    if tune.Tuner.can_restore(exp):
        # the saved RunConfig comes back with its callbacks (the bar and the PG janitor)
        return tune.Tuner.restore(
            exp,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            scheduler=_scheduler(spec, specs),
            max_concurrent_trials=plan.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=out,
            failure_config=tune.FailureConfig(max_failures=spec.tune.max_failures),
            callbacks=[_sweep_callback(root, len(trials), progress)],
            verbose=0,  # the bar, or nothing in tests; errors land in the table
        ),
    )


def _scheduler(spec: TuneJobSpec, specs: list[JobSpec]) -> Any:
    """ASHA on the epoch count (``tune.scheduler: asha``), or None: Tune's FIFO."""
    from ray import tune  # the edge: Ray Tune's schedulers

    if spec.tune.scheduler != "asha":
        return None
    return tune.schedulers.ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(s.train.epochs for s in specs),
        grace_period=spec.tune.grace_period,
        reduction_factor=spec.tune.reduction_factor,
    )


def _results_by_trial(grid: Any) -> dict[int, Any]:
    """Tune's ``ResultGrid`` as trial index -> ``Result`` (results without an index left out)."""
    by_index = {}
    for k in range(len(grid)):
        r = grid[k]
        idx = (r.config or {}).get("trial")
        if idx is not None:
            by_index[int(idx)] = r
    return by_index


# --------------------------------------------------------------------------------------------
# In the Tune trial actor and the Tune driver
# --------------------------------------------------------------------------------------------


def _trial_driver(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    trials: list[dict[str, Any]],
    root: str,
    tracking_target: dict[str, str] | None = None,
) -> None:
    """Tune's trainable: one fine-tuning run with the trial's overrides, epochs sent to Tune.

    The run directory is named after the trial's index, which is stable across
    ``Tuner.restore``: a restored trial re-enters the same directory and Ray Train resumes it
    from its latest checkpoint. With ``tracking_target`` (the sweep's, ``train/tracking.py``)
    the run logs as one of the sweep's runs: nested in its MLflow run, or in a sub-folder
    ``trial.name`` of its TensorBoard folder.
    """
    from ray.tune.integration.ray_train import TuneReportCallback  # the edge: Train -> Tune

    t = trials[config["trial"]]
    trial = Trial(t["index"], t["space"], t["overrides"], t["select"])
    spec = trial_spec(load_config(JobSpec, base=base), trial)
    out = os.path.join(root, trial.name)
    callbacks = [TuneReportCallback(), placement_group_recorder(os.path.join(out, PG_FILE))]
    # The trial's workers say warnings and errors only: Tune's results carry every epoch, and
    # one line per epoch, rank and trial would bury the sweep's console (train/console.py)
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.WARNING)
    # What follows fit() (the export) may not run: Tune ends the trial as soon as the
    # scheduler says stop, which it may say after the last epoch too. The sweep therefore
    # reads everything it reports from the run's checkpoints (collect_trial).
    within = tracking.Target.from_dict(tracking_target) if tracking_target else None
    run_training(spec, "finetune", out, progress=False, callbacks=callbacks, tracking_within=within)


def _sweep_callback(root: str, total: int, progress: bool) -> Any:
    """The Tune callback of a sweep: releases stopped trials' placement groups, draws the bar.

    Picklable (Tune saves it with the experiment and restores it on resume): the bar is made
    in ``setup`` and not pickled.
    """
    from ray.tune import Callback  # the edge: a Tune callback

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
