"""The job's prediction task: the visit axis, or a calendar-time MEDS task (pure; no Ray).

Turns the job file's ``task`` section into what the data layer runs
(:class:`~ehrsurv_dist.data.samples.TaskSpec`), settles the day bins (given, or fitted on the
train split's event times), and writes the resolved bins back into the job so that the run's
``config.yaml``, the workers, ``evaluate`` and ``predict`` all read the same edges.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from ehrsurv_dist import atomic
from ehrsurv_dist.bins import check_edges, fit_quantile_edges
from ehrsurv_dist.data import io
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.errors import ConfigError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.metrics.calendar import time_axis_dict
from ehrsurv_dist.rundir import TIME_AXIS


def is_calendar(spec: JobSpec) -> bool:
    """True when the job's task is on the calendar axis."""
    return spec.task.axis == "calendar"


def labels_path(spec: JobSpec) -> str | None:
    """``task.labels`` as an absolute path (URIs kept): a relative path is taken in the cohort
    when it exists there (``labels/death.parquet`` inside a MEDS cohort: the same file whatever
    the working directory, and a new cohort's own file for ``predict``), else as given."""
    return _cohort_path(spec, spec.task.labels, "labels", "label file")


def outcomes_path(spec: JobSpec) -> str | None:
    """``task.outcomes`` as an absolute path (URIs kept), looked up as ``task.labels`` is: in
    the cohort first, else as given."""
    return _cohort_path(spec, spec.task.outcomes, "outcomes", "outcome table")


def _cohort_path(spec: JobSpec, p: str | None, key: str, what: str) -> str | None:
    """``p`` (the value of ``task.<key>``) made absolute: in the cohort, else as given."""
    if p is None or "://" in p:
        return p
    if os.path.isabs(p):
        return p
    in_cohort = io.join(spec.data.cohort, p)
    fs, q = io.resolve(in_cohort)
    if io.exists(fs, q):
        return in_cohort if "://" in in_cohort else os.path.abspath(in_cohort)
    if os.path.exists(p):
        return os.path.abspath(p)
    raise ConfigError(
        f"task.{key}", f"no {what} {p!r} (looked for it as given and in {spec.data.cohort})"
    )


def task_spec(spec: JobSpec) -> TaskSpec | None:
    """The data layer's task of a job: None on the visit axis."""
    if not is_calendar(spec):
        return None
    t = spec.task
    return TaskSpec(
        event_codes=tuple(t.event_codes),
        horizon_days=float(t.horizon_days),
        labels=labels_path(spec),
        at_code=t.prediction_times.at_code,
        days_after_first_record=t.prediction_times.days_after_first_record,
        min_history_days=float(t.min_history_days),
        outcomes=outcomes_path(spec),
    )


def resolve_edges(spec: JobSpec, train_event_days: np.ndarray | None) -> list[float]:
    """The day-bin edges ``[0, …, horizon]``: ``task.bins.edges_days`` when given, else
    ``task.bins.quantiles`` bins at quantiles of the train split's event times."""
    t = spec.task
    given = t.edges()
    if given is not None:
        return [float(x) for x in check_edges(np.asarray(given), t.horizon_days)]
    days = np.zeros(0) if train_event_days is None else np.asarray(train_event_days, np.float64)
    edges = fit_quantile_edges(days, np.ones(len(days), bool), t.bins.quantiles, t.horizon_days)
    return [float(x) for x in check_edges(edges, t.horizon_days)]


def with_edges(spec: JobSpec, edges: list[float]) -> JobSpec:
    """The job with its bins fixed to ``edges`` (what the run saves and later commands read)."""
    bins = dataclasses.replace(spec.task.bins, edges_days=[float(x) for x in edges])
    return dataclasses.replace(spec, task=dataclasses.replace(spec.task, bins=bins))


def edges_of(spec: JobSpec) -> list[float] | None:
    """The resolved edges of a calendar job (``with_edges`` was applied), else None."""
    return spec.task.edges() if is_calendar(spec) else None


def num_bins(spec: JobSpec) -> int:
    """K, the hazards per sample of a calendar model; 0 on the visit axis."""
    edges = edges_of(spec)
    return 0 if edges is None else len(edges) - 1


def time_axis(spec: JobSpec) -> dict[str, Any]:
    """``predictions/time_axis.json``: the axis, its unit and (calendar) the bin edges."""
    edges = edges_of(spec)
    if edges is None:
        return {"axis": "visit", "unit": "visit"}
    return time_axis_dict(edges)


def save_time_axis(spec: JobSpec, path: str) -> None:
    """Write :func:`time_axis` of ``spec`` (bins resolved) as JSON, atomically."""
    atomic.write_json(time_axis(spec), path)


def with_run_edges(spec: JobSpec, run_dir: str) -> JobSpec:
    """A run's job with the bins the run was trained on (``RUN/time_axis.json``)."""
    p = os.path.join(run_dir, TIME_AXIS)
    if not is_calendar(spec) or not os.path.exists(p):
        return spec
    with open(p) as f:
        axis = json.load(f)
    return with_edges(spec, [float(x) for x in axis["edges"]])
