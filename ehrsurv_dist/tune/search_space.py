"""The ``tune:`` section of a job file and its expansion into trials (no Ray: runs before it).

The search space is data: the ``tune.space`` section of the job file, a list of *sub-spaces*
(one per branch of a conditional space: LoRA's rank only exists in the LoRA branch). Each
sub-space crosses ``cases`` (whole override dicts, for values that move together such as LoRA
rank and alpha) with a ``grid`` (every combination), holds ``fixed`` values, and draws
``choice`` / ``uniform`` / ``loguniform`` keys ``tune.num_samples`` times per grid point from a
generator seeded by the job's ``seed``. The expansion happens here, before Ray starts, so
``ehrsurv tune --dry-run`` lists every trial and a bad key fails at load time; Tune then runs a
grid over the expanded trials (index only; the overrides travel with the trainable).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ehrsurv_dist.config import ConfigError, apply_overrides, option, require, section
from ehrsurv_dist.jobspec import JobSpec

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
        "attention, whose validation td-C the sequence-end leak inflates, docs/design.md §3).",
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
        concurrent = self.max_concurrent_trials
        bounds: list[tuple[str, bool, str]] = [  # key, holds, the bound it breaks
            ("num_samples", self.num_samples >= 1, "must be >= 1"),
            ("grace_period", self.grace_period >= 1, "must be >= 1"),
            ("reduction_factor", self.reduction_factor > 1, "must be > 1"),
            ("max_concurrent_trials", concurrent is None or concurrent > 0, "must be > 0 or null"),
            ("driver_cpus", self.driver_cpus >= 0, "must be >= 0"),
            ("max_failures", self.max_failures >= 0, "must be >= 0"),
        ]
        for key, holds, bound in bounds:
            require(holds, key, f"{bound}, got {getattr(self, key)}")
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
    trials: list[Trial] = []
    for i, sub in enumerate(spec.tune.space or [SubSpace(name="base")]):
        name = sub.name or f"space{i}"
        rng = np.random.default_rng([spec.seed, i])  # per branch: adding one leaves others
        for ov in _branch_overrides(sub, spec.tune.num_samples, rng):
            trial = Trial(len(trials), name, ov, sub.select)
            try:
                trial_spec(base, trial)
            except ConfigError as e:
                raise ConfigError(f"tune.space[{i}]", f"trial {trial.name} {ov}: {e}") from None
            trials.append(trial)
    return trials


def _branch_overrides(
    sub: SubSpace, num_samples: int, rng: np.random.Generator
) -> Iterator[dict[str, Any]]:
    """The overrides of one branch's trials: cases x grid, each drawn ``num_samples`` times
    when the branch has random keys (draws in key order: choice, uniform, loguniform)."""
    keys = list(sub.grid)
    for case in sub.cases or [{}]:
        for combo in itertools.product(*(sub.grid[k] for k in keys)):
            for _ in range(num_samples if sub.random_keys else 1):
                ov: dict[str, Any] = {**sub.fixed, **case, **dict(zip(keys, combo, strict=True))}
                for k, values in sub.choice.items():
                    ov[k] = values[int(rng.integers(len(values)))]
                for k, (lo, hi) in sub.uniform.items():
                    ov[k] = float(rng.uniform(lo, hi))
                for k, (lo, hi) in sub.loguniform.items():
                    ov[k] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                yield ov


def format_trials(trials: Sequence[Trial]) -> str:
    """One line per trial: name and overrides (``ehrsurv tune --dry-run``)."""
    lines = [f"{len(trials)} trial(s):"]
    for t in trials:
        ov = " ".join(f"{k}={short_value(v)}" for k, v in t.overrides.items()) or "(job values)"
        lines.append(f"  {t.name:<18} {ov}")
    return "\n".join(lines)


def short_value(v: Any) -> str:
    """A value as a trial's name or table shows it: floats to 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)
