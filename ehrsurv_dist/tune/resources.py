"""What one trial of a sweep holds, and how many trials run at once (no Ray: plain arithmetic).

A trial's Train workers hold ``num_workers x cpus_per_worker`` CPUs, its Ray Data tasks need
``DATA_CPUS`` more CPU free (launch.py), and the driver itself does almost no work. Tune places
each driver in a placement group; a head bundle of 1 CPU (Tune's default) would make a 2-worker
trial need 4 CPUs, and 0.01 CPU would leave 0.99 free, on which Ray Data's 1-CPU tasks never
schedule, so on a 3-CPU local Ray both deadlock. By default the driver therefore reserves only a
little logical memory and no CPU (``tune.driver_cpus: 0``); ``max_concurrent_trials`` caps the
trials in flight at what the cluster's CPUs (and GPUs) fit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train.launch import DATA_CPUS
from ehrsurv_dist.tune.search_space import TuneSpec

log = logging.getLogger(__name__)

DRIVER_MEMORY = 64 * 1024**2  # the driver's logical reservation when it holds no CPU (bytes)


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
