"""Experiment tracking of training runs and sweeps: MLflow or TensorBoard (``train.tracking``).

Who logs what, and where it runs:

* **The driver** opens the run before training (:func:`open_run`, from
  ``launch.run_training``): an MLflow run in the experiment ``train.tracking_experiment`` (the
  job's name by default), with the resolved job config flattened to dotted keys as parameters
  and ``config.yaml`` as an artifact; or a TensorBoard log folder with the config as text. What
  it opened is recorded in ``RUN/tracking.json``, so that a resumed run (the same command
  again) logs on into the same MLflow run, and so that later steps find it.
* **Every epoch**, the metrics the workers report (``worker.py``: losses, validation td-C or
  loss, throughput, the selection score) are logged by a Ray Train callback
  (``train/tracking_callback.py``, :class:`EpochLogger`). Ray runs such callbacks in the Train
  controller, an actor that Ray pins to the node of the driver: the workers, wherever they run,
  never touch the tracking store, so it only has to be reachable (or, for a file store, mounted)
  where the job was launched, and the workers need no tracking package.
* **After evaluation** (``ehrsurv finetune``, the finish of ``ehrsurv tune``),
  :func:`log_outputs` adds the final numbers of ``metrics.json`` and the run's plots
  (``RUN/plots/*.png``) and ends the run.

A sweep (:func:`open_sweep`) is one MLflow parent run with one nested run per trial (or one
TensorBoard sub-folder per trial); its results table, plot and best config go to the parent.

No Ray here. ``mlflow`` and ``tensorboardX`` are imported when used: they come with the
optional extra ``pip install 'ehrsurv_dist[tracking]'`` (:func:`check_installed` says so before
anything starts).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist.errors import EhrsurvError

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "EpochLogger",
    "Target",
    "check_installed",
    "end_run",
    "epoch_metrics",
    "final_metrics",
    "log_sweep",
    "flatten_params",
    "load_target",
    "log_outputs",
    "open_run",
    "open_sweep",
    "resolve_uri",
]

log = logging.getLogger(__name__)

BACKENDS = ("none", "mlflow", "tensorboard")
INSTALL_HINT = "pip install 'ehrsurv_dist[tracking]'"
# backend -> (module imported, the package that provides it)
_MODULES = {"mlflow": ("mlflow", "mlflow-skinny"), "tensorboard": ("tensorboardX", "tensorboardX")}
MAX_PARAM_CHARS = 6000  # MLflow refuses longer parameter values; config.yaml holds them whole
_BATCH = 100  # MLflow's most parameters per log_batch call (metrics: 1000)
_EPOCH_KEY = "val_score"  # in every reported epoch (worker.record_epoch)
# A sweep's trial status (tune/results.py) -> the MLflow status of the trial's run
TRIAL_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "error": "FAILED"}


def check_installed(backend: str) -> None:
    """Refuse a tracking backend whose package is missing, before anything starts.

    Raises:
        EhrsurvError: one line naming the setting, the package and the pip command.
    """
    if backend not in BACKENDS:
        raise EhrsurvError(f"train.tracking must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "none":
        return
    module, package = _MODULES[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        found = False
    if not found:
        raise EhrsurvError(
            f"train.tracking={backend} needs the {package} package, which is not installed: "
            f"run {INSTALL_HINT}"
        )


# --------------------------------------------------------------------------------------------
# Where a run logs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where one run (or sweep) logs; small and picklable (it travels to the Train controller).

    Attributes:
        backend: ``mlflow`` or ``tensorboard``.
        uri: the MLflow tracking URI, or the TensorBoard log folder (absolute).
        experiment_id: MLflow: the experiment of the run.
        run_id: MLflow: the run.
    """

    backend: str
    uri: str
    experiment_id: str = ""
    run_id: str = ""

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Target:
        return cls(**{f.name: str(d.get(f.name, "")) for f in dataclasses.fields(cls)})


def resolve_uri(backend: str, given: str | None, out: str) -> str:
    """Where ``backend`` logs for the run (or sweep) in ``out``.

    mlflow: ``given``, else ``$MLFLOW_TRACKING_URI``, else the file store ``out/mlruns``;
    tensorboard: ``given``, else ``out/tensorboard``. A local folder becomes absolute (taken
    from where the job is launched); a URI with a scheme (``http://``, ``file:``) is kept.
    """
    if backend == "mlflow":
        uri = given or os.environ.get("MLFLOW_TRACKING_URI") or os.path.join(out, rundir.MLRUNS)
    else:
        uri = given or os.path.join(out, rundir.TENSORBOARD)
    return uri if _has_scheme(uri) else os.path.abspath(uri)


def _has_scheme(uri: str) -> bool:
    """A URI (``http://``, ``sqlite:///``, ``file:``, MLflow's ``databricks``), not a folder."""
    return uri == "databricks" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) is not None


def load_target(out: str) -> Target | None:
    """The target recorded in ``out/tracking.json``, or None (tracking was off)."""
    path = os.path.join(out, rundir.TRACKING)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return Target.from_dict(json.load(fh))


def _save_target(out: str, target: Target) -> None:
    atomic.write_json(target.to_dict(), os.path.join(out, rundir.TRACKING))


# --------------------------------------------------------------------------------------------
# What is logged
# --------------------------------------------------------------------------------------------


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A config tree (``to_dict`` of a job) as dotted keys -> text values, for MLflow params.

    Nested mappings become dotted keys (``train.engine.lr``); lists are written as JSON (a
    ``tune.space`` whole), None as ``null`` and booleans as ``true``/``false`` (the YAML
    spelling); a value longer than MLflow takes is cut, marked with ``...``.
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
            continue
        out[name] = _param_text(value)
    return out


def _param_text(value: Any) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def epoch_metrics(row: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, metrics) of one reported epoch: the step is its ``epoch``, the metrics every
    other number (booleans and text left out)."""
    step = int(row.get("epoch", 0))
    values = {
        _metric_name(k): float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }
    return step, values


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a run's ``metrics.json`` as slash-joined names (``held_out/c_index_td``,
    ``tuning/brier/30.0``, ``train/best_val_score``); the per-epoch history (logged per epoch
    already) and lists other than [low, high] intervals (``.../c_index_td_ci/low``) left out."""
    out: dict[str, float] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if path == ("train",) and k == "history":
                    continue
                walk(v, (*path, str(k)))
        elif isinstance(node, bool):
            return
        elif isinstance(node, int | float):
            out[_metric_name("/".join(path))] = float(node)
        elif isinstance(node, list) and len(node) == 2 and _is_interval(path, node):
            walk({"low": node[0], "high": node[1]}, path)

    walk(metrics, ())
    return out


def _is_interval(path: tuple[str, ...], node: list[Any]) -> bool:
    """A 95% interval: [low, high] numbers under a key ending in ``_ci`` or inside ``ci``."""
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in node)
    return numeric and (path[-1].endswith("_ci") or "ci" in path[:-1])


def _metric_name(name: str) -> str:
    """A name MLflow accepts (letters, digits, ``_ - . / : `` and space)."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)


def _plots(out: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(out), rundir.PLOTS, "*.png")))


# --------------------------------------------------------------------------------------------
# The backends
# --------------------------------------------------------------------------------------------


def _mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``. A local folder is an MLflow file store, which MLflow 3
    keeps in maintenance mode and refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is set: it is the
    store that works on a shared filesystem without a database or a server, so it is allowed
    here (for this process) when the URI is a folder."""
    if not _has_scheme(uri) or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    """The id of the experiment ``name``, created if missing (two trials may race to it)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:
        exp = client.get_experiment_by_name(name)  # created by someone else meanwhile
        if exp is None:
            raise
        return str(exp.experiment_id)


def _mlflow_log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[i : i + _BATCH])


def _mlflow_log_metrics(client: Any, run_id: str, values: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v in values.items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _tb_writer(logdir: str, purpose: str) -> Any:
    """A writer of a new event file in ``logdir``. tensorboardX names files by the second and
    the host only, so two writers in one second would write the same file: a unique suffix
    (``purpose`` and a random tag) keeps the config, the epochs and the final numbers apart."""
    from tensorboardX import SummaryWriter

    suffix = f".{purpose}.{uuid.uuid4().hex[:8]}"
    return SummaryWriter(logdir=logdir, flush_secs=30, filename_suffix=suffix)


def _tb_scalars(writer: Any, values: Mapping[str, float], step: int, prefix: str = "") -> None:
    for k, v in values.items():
        if math.isfinite(v):  # TensorBoard draws no infinities; the history keeps them
            writer.add_scalar(prefix + k, v, step)


# --------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------


def open_run(
    spec: Any,
    out: str,
    mode: str,
    *,
    within: Target | None = None,
    run_name: str | None = None,
) -> Target | None:
    """Open (or, on resume, re-open) the tracking run of the run directory ``out``; None when
    ``train.tracking`` is none. On the driver, before training.

    Args:
        spec: the run's resolved :class:`~ehrsurv_dist.jobspec.JobSpec`.
        out: the run directory (``tracking.json`` is written there).
        mode: ``pretrain`` or ``finetune`` (a tag of the run).
        within: a sweep's target (:func:`open_sweep`): the run is nested in its MLflow run, or
            logs into a sub-folder ``run_name`` of its TensorBoard folder.
        run_name: the run's name (default: the run directory's name).

    Raises:
        EhrsurvError: the tracking package is missing, or the store cannot be used.
    """
    from ehrsurv_dist.config import to_dict

    backend = spec.train.tracking
    check_installed(backend)
    if backend == "none":
        return None
    name = run_name or os.path.basename(os.path.normpath(out))
    if within is not None:
        uri = within.uri if backend == "mlflow" else os.path.join(within.uri, name)
    else:
        uri = resolve_uri(backend, spec.train.tracking_uri, out)
    old = load_target(out)
    params = flatten_params(to_dict(spec))
    try:
        if backend == "tensorboard":
            target = Target("tensorboard", uri)
            if old != target:
                writer = _tb_writer(uri, "config")
                yaml_text = "\n".join(f"    {k}: {v}" for k, v in params.items())
                writer.add_text("config", f"mode: {mode}\n\n{yaml_text}", 0)
                writer.close()
        else:
            client = _mlflow_client(uri)
            target = _mlflow_run(client, spec, uri, mode, name, within, old)
            if old is None or old.run_id != target.run_id:  # a new run: its parameters
                _mlflow_log_params(client, target.run_id, params)
                cfg = os.path.join(out, rundir.CONFIG)  # written when the run was claimed
                if os.path.exists(cfg):
                    client.log_artifact(target.run_id, cfg)
    except EhrsurvError:
        raise
    except Exception as e:  # a bad URI, an unreachable server, a store it cannot write
        raise EhrsurvError(
            f"train.tracking={backend}: cannot log to {uri}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    _save_target(out, target)
    return target


def _mlflow_run(
    client: Any,
    spec: Any,
    uri: str,
    mode: str,
    name: str,
    within: Target | None,
    old: Target | None,
) -> Target:
    """The MLflow run of a run directory: the recorded one on resume (same store, still
    there), else a new one (nested in ``within``'s run when given)."""
    if old is not None and old.backend == "mlflow" and old.uri == uri and old.run_id:
        try:
            run = client.get_run(old.run_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(old.run_id, status="RUNNING")
                return old
        except Exception:  # deleted from the store: start a new one
            log.warning("MLflow run %s of %s is gone; logging to a new run", old.run_id, uri)
    if within is not None:
        exp_id = within.experiment_id
    else:
        exp_id = _experiment_id(client, spec.train.tracking_experiment or spec.name)
    tags = {"ehrsurv.mode": mode, "ehrsurv.job": spec.name}
    if within is not None and within.run_id:
        tags["mlflow.parentRunId"] = within.run_id
    run = client.create_run(exp_id, run_name=name, tags=tags)
    return Target("mlflow", uri, str(exp_id), str(run.info.run_id))


def end_run(target: Target | None, status: str) -> None:
    """Mark the MLflow run ``status`` (FINISHED, FAILED, KILLED); a warning if it cannot be."""
    if target is None or target.backend != "mlflow":
        return
    try:
        _mlflow_client(target.uri).set_terminated(target.run_id, status=status)
    except Exception as e:
        log.warning("could not mark MLflow run %s %s: %s", target.run_id, status, e)


class EpochLogger:
    """Logs one run's per-epoch metrics; made where the epochs arrive (the Train controller).

    ``log`` takes one reported row (``worker.py``'s metrics: ``epoch`` and numbers) and writes
    it at step ``epoch``. TensorBoard: one small event file per epoch, closed at once, since
    tensorboardX's writer only writes its queue out when closed and Ray may end the controller
    without warning right after the last epoch (TensorBoard reads every file of the folder).
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._client: Any = None

    def log(self, row: Mapping[str, Any]) -> None:
        step, values = epoch_metrics(row)
        if self.target.backend == "mlflow":
            if self._client is None:
                self._client = _mlflow_client(self.target.uri)
            _mlflow_log_metrics(self._client, self.target.run_id, values, step)
        else:
            writer = _tb_writer(self.target.uri, f"epoch{step}")
            _tb_scalars(writer, values, step)
            writer.close()


def log_outputs(out: str, status: str | None = "FINISHED") -> bool:
    """Log the finished run's ``metrics.json`` numbers (:func:`final_metrics`), that file, and
    its plots (``RUN/plots/*.png``: MLflow artifacts under ``plots/``, TensorBoard images), then
    mark the MLflow run ``status`` (None: leave it). False when the run has no tracking.

    Epochs of the ``metrics.json`` history that never reached the store are logged too: a Tune
    trial that the scheduler stops is ended as soon as Tune has the epoch it stops on, while its
    workers may have checkpointed one more, which the sweep's history (read from the
    checkpoints) holds. A store that fails here is reported as a warning: the run's own files
    are written already.
    """
    target = load_target(out)
    if target is None:
        return False
    metrics: dict[str, Any] = {}
    mpath = os.path.join(out, rundir.METRICS)
    if os.path.exists(mpath):
        with open(mpath) as fh:
            metrics = json.load(fh)
    values = final_metrics(metrics)
    history = list(metrics.get("train", {}).get("history", []))
    step = int(metrics.get("train", {}).get("best_epoch", 0) or 0)
    try:
        if target.backend == "mlflow":
            client = _mlflow_client(target.uri)
            logged = {m.step for m in client.get_metric_history(target.run_id, _EPOCH_KEY)}
            for row in history:
                epoch, numbers = epoch_metrics(row)
                if epoch not in logged:
                    _mlflow_log_metrics(client, target.run_id, numbers, epoch)
            _mlflow_log_metrics(client, target.run_id, values, max(step, 0))
            if os.path.exists(mpath):
                client.log_artifact(target.run_id, mpath)
            for png in _plots(out):
                client.log_artifact(target.run_id, png, rundir.PLOTS)
            if status is not None:
                client.set_terminated(target.run_id, status=status)
        else:
            missing = [r for r in history if not _tb_has_epoch(target.uri, int(r["epoch"]))]
            for row in missing:
                EpochLogger(target).log(row)
            writer = _tb_writer(target.uri, "final")
            _tb_scalars(writer, values, max(step, 0), prefix="final/")
            for png in _plots(out):
                writer.add_image(
                    f"plots/{os.path.splitext(os.path.basename(png))[0]}",
                    _png_array(png),
                    0,
                    dataformats="HWC",
                )
            writer.close()
    except Exception as e:
        log.warning("tracking: could not log the outputs of %s to %s: %s", out, target.uri, e)
        return False
    return True


def _tb_has_epoch(logdir: str, epoch: int) -> bool:
    """Whether :class:`EpochLogger` wrote ``epoch`` in ``logdir`` (its event files name it)."""
    return bool(glob.glob(os.path.join(glob.escape(logdir), f"*tfevents*.epoch{epoch}.*")))


def _png_array(path: str) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------------------------
# A sweep
# --------------------------------------------------------------------------------------------


def open_sweep(spec: Any, out: str) -> Target | None:
    """Open (or re-open) the sweep's tracking; None when ``train.tracking`` is none.

    mlflow: a parent run named after the sweep folder, with the sweep's config (``tune.*``
    included) as parameters; each trial's run is nested in it (:func:`open_run` with
    ``within``). tensorboard: the sweep's log folder; each trial writes a sub-folder.
    """
    return open_run(spec, out, "tune")


def log_sweep(
    out: str,
    sweep: Target | None,
    trial_dirs: Iterable[tuple[str, str]],
    best: Mapping[str, Any] | None,
) -> None:
    """After the sweep's finish: each trial's outputs (:func:`log_outputs`, its status from the
    table: completed -> FINISHED, stopped -> KILLED, error -> FAILED), then the sweep's
    results table, plot, best.yaml and scores (the best trial's validation td-C as
    ``best/val_td_c``, its held-out metrics) on the parent run, which ends FINISHED (FAILED
    without a best trial).

    Args:
        trial_dirs: (run directory, status) of every trial that started.
        best: the best trial's results row (``tune/results.py``), None if none was picked.
    """
    for run_dir, status in trial_dirs:
        if os.path.exists(os.path.join(run_dir, rundir.TRACKING)):
            log_outputs(run_dir, TRIAL_STATUS.get(status))
    if sweep is None or sweep.backend != "mlflow":
        return
    try:
        client = _mlflow_client(sweep.uri)
        if best is not None:
            client.set_tag(sweep.run_id, "ehrsurv.best_trial", str(best.get("trial")))
            score = best.get("val_td_c")
            if isinstance(score, int | float):
                _mlflow_log_metrics(client, sweep.run_id, {"best/val_td_c": float(score)}, 0)
        held = os.path.join(out, "held_out.json")
        if os.path.exists(held):
            with open(held) as fh:
                values = final_metrics({"held_out": json.load(fh).get("held_out") or {}})
            _mlflow_log_metrics(client, sweep.run_id, values, 0)
        for path in sorted(glob.glob(os.path.join(glob.escape(out), "*"))):
            name = os.path.basename(path)
            if os.path.isfile(path) and name != rundir.TRACKING and name.endswith(_SWEEP_FILES):
                client.log_artifact(sweep.run_id, path)
        for png in _plots(out):  # the td-C against trainable parameters plot
            client.log_artifact(sweep.run_id, png, rundir.PLOTS)
        client.set_terminated(sweep.run_id, status="FINISHED" if best is not None else "FAILED")
    except Exception as e:
        log.warning("tracking: could not log the sweep %s to %s: %s", out, sweep.uri, e)


_SWEEP_FILES = (".csv", ".md", ".json", ".yaml", ".png")
