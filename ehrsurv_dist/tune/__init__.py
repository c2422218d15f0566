"""``ehrsurv tune``: Ray Tune sweeps over fine-tuning jobs.

One module per job; importing the package does not import Ray (run.py and placement_groups.py
import it inside their functions):

- :mod:`~ehrsurv_dist.tune.search_space`: the job file's ``tune:`` section and its expansion
  into trials (before Ray starts, so ``--dry-run`` lists them and a bad key fails at load time).
- :mod:`~ehrsurv_dist.tune.resources`: what one trial holds and how many run at once.
- :mod:`~ehrsurv_dist.tune.run`: :func:`run_sweep`, the trial driver and the sweep's callback.
- :mod:`~ehrsurv_dist.tune.placement_groups`: the workaround for stopped trials' placement
  groups (Ray internals, all in that one file).
- :mod:`~ehrsurv_dist.tune.results`: one row per trial, the finish of a sweep, the best trial.
- :mod:`~ehrsurv_dist.tune.report`: the tables, the plot and ``best.yaml``.

Sweep directory (``--out``)::

    OUT/config.yaml             resolved tune job (the sweep's identity: resume needs the same)
    OUT/trials.json             the expanded trials: index, sub-space, overrides
    OUT/tune/                   Ray Tune experiment state (``Tuner.restore`` resumes from it)
    OUT/trials/tNNN_NAME/       one ordinary finetune run directory per trial
    OUT/results.csv, .md, .json per-trial table (strategy, trainable parameters, td-C, IBS, ...)
    OUT/plots/tdc_vs_params.png validation td-C against trainable parameters, per strategy
    OUT/best.yaml               the best trial as a job file for ``ehrsurv finetune --config``
    OUT/held_out.json           the best trial's model on ``held_out`` (never used to select)
"""

from ehrsurv_dist.tune.placement_groups import PG_FILE, release_orphaned_placement_groups
from ehrsurv_dist.tune.report import (
    markdown_table,
    plot_tdc_vs_params,
    write_best_yaml,
    write_results,
)
from ehrsurv_dist.tune.resources import DRIVER_MEMORY, ResourcePlan, plan_resources
from ehrsurv_dist.tune.results import (
    METRIC,
    TRIALS_DIR,
    SweepResult,
    collect_trial,
    count_parameters,
    export_best_checkpoint,
    finish_sweep,
    pick_best,
    run_history,
    run_state,
)
from ehrsurv_dist.tune.run import TUNE_DIR, prepare_sweep_dir, run_sweep
from ehrsurv_dist.tune.search_space import (
    SubSpace,
    Trial,
    TuneJobSpec,
    TuneSpec,
    expand_trials,
    format_trials,
    job_spec,
    trial_spec,
)

__all__ = [
    "DRIVER_MEMORY",
    "METRIC",
    "PG_FILE",
    "TRIALS_DIR",
    "TUNE_DIR",
    "ResourcePlan",
    "SubSpace",
    "SweepResult",
    "Trial",
    "TuneJobSpec",
    "TuneSpec",
    "collect_trial",
    "count_parameters",
    "expand_trials",
    "export_best_checkpoint",
    "finish_sweep",
    "format_trials",
    "job_spec",
    "markdown_table",
    "pick_best",
    "plan_resources",
    "plot_tdc_vs_params",
    "prepare_sweep_dir",
    "release_orphaned_placement_groups",
    "run_history",
    "run_sweep",
    "run_state",
    "trial_spec",
    "write_best_yaml",
    "write_results",
]
