"""Workaround: release the worker placement groups of stopped trials (Ray internals, one file).

Upstream problem: ray-project/ray#54305, "[Ray Tune + Train V2] Broken resource sharing among
Tune trials". When Tune stops a trial whose function drives a Ray Train V2 run, Tune ends the
trial's actor and with it the Train controller it owns; the workers' placement group outlives
them (placement groups belong to the job, not to the actor that made them), so it holds its CPUs
until the sweep ends and later trials wait forever. Ray's fix, ray-project/ray#58515 ("Add a
placement group cleaner for Ray Train"), runs a detached ``PlacementGroupCleaner`` that asks the
dashboard's state API whether the controller is alive; that fails on an in-process Ray without a
dashboard (how ``ehrsurv`` starts one) or with several Rays on one machine.

What this module does instead: a Train callback records ``controller_actor_id placement_group_id``
in each trial's run directory when its worker group starts; the sweep's Tune callback asks the
GCS (not the dashboard) for each recorded controller's state and removes the groups of dead ones.

Checked on Ray 2.60.0 (``pyproject.toml`` pins it). It uses private Ray APIs:
``ray.train.v2._internal.execution.callback.WorkerGroupCallback``, the worker group's
``get_worker_group_state().placement_group_handle``, ``ray._private.state.actors`` and
``ray._raylet.PlacementGroupID``; re-check them (and whether the upstream cleaner now works
without a dashboard, so that this file can go) when Ray is upgraded.

Ray is imported inside the functions: the package ``__init__`` re-exports names from here, and
importing :mod:`ehrsurv_dist.tune` (``ehrsurv tune --dry-run``, unit tests) must not start Ray's
import machinery.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

PG_FILE = ".train_placement_groups"  # "controller_actor_id placement_group_id" lines


def placement_group_recorder(path: str) -> Any:
    """A Train callback that appends (controller actor, worker placement group) to ``path``.

    Args:
        path: the record file, ``RUN/PG_FILE`` of the trial's run directory.

    Returns:
        A ``WorkerGroupCallback`` for ``run_training(callbacks=...)``.
    """
    # Ray Train V2's callback interface is internal (see the module comment).
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    class _Recorder(WorkerGroupCallback):  # type: ignore[misc]
        def after_worker_group_start(self, worker_group: Any) -> None:
            import ray  # in the Train controller's process, where Ray is running already

            state = worker_group.get_worker_group_state()
            pg = state.placement_group_handle.placement_group
            controller = ray.get_runtime_context().get_actor_id()
            with open(path, "a") as fh:  # one short line per (re)start of the worker group
                fh.write(f"{controller} {pg.id.hex()}\n")

    return _Recorder()


def recorded_groups(root: str) -> list[tuple[str, str, str]]:
    """Every recorded ``(record file, controller actor id, placement group id)`` under ``root``.

    Args:
        root: the sweep's ``trials`` folder (reads ``root/*/PG_FILE``).
    """
    found: list[tuple[str, str, str]] = []
    for path in glob.glob(os.path.join(root, "*", PG_FILE)):
        with open(path) as fh:
            pairs = [ln.split() for ln in fh if len(ln.split()) == 2]
        found.extend((path, controller, pg_hex) for controller, pg_hex in pairs)
    return found


def release_orphaned_placement_groups(root: str, done: set[str]) -> int:
    """Remove the recorded worker placement groups whose Train controller is dead.

    Asks the GCS (not the dashboard) for each controller's state. Groups of live controllers,
    and records of another Ray session, are left alone.

    Args:
        root: the sweep's ``trials`` folder.
        done: placement group ids already handled (updated).

    Returns:
        The number of groups removed.
    """
    # Private Ray APIs (see the module comment): the GCS actor table and placement group ids.
    from ray._private.state import actors
    from ray.util.placement_group import placement_group_table, remove_placement_group

    removed = 0
    for path, controller, pg_hex in recorded_groups(root):
        if pg_hex in done:
            continue
        try:
            state = actors(actor_id=controller).get("State")
        except Exception:  # an actor of another session: not ours to judge
            state = None
        if state != "DEAD":
            continue
        done.add(pg_hex)
        pg = _placement_group(pg_hex)
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)
            removed += 1
            log.info("removed placement group %s of a stopped trial (%s)", pg_hex, path)
    return removed


def wait_for_release(root: str, seconds: float = 60.0) -> None:
    """After the sweep: release every stopped trial's placement group (their controllers die
    within seconds of the trial), so that the evaluation finds the cluster's CPUs free.

    Args:
        root: the sweep's ``trials`` folder.
        seconds: how long to wait for groups still held before warning and going on.
    """
    from ray.util.placement_group import placement_group_table

    done: set[str] = set()
    deadline = time.monotonic() + seconds
    while True:
        release_orphaned_placement_groups(root, done)
        held = [
            pg_hex
            for _, _, pg_hex in recorded_groups(root)
            if placement_group_table(_placement_group(pg_hex)).get("state") == "CREATED"
        ]
        if not held or time.monotonic() > deadline:
            if held:
                log.warning("placement groups still held after the sweep: %s", held)
            return
        time.sleep(1.0)


def _placement_group(pg_hex: str) -> Any:
    """A handle on the placement group with this hex id (made by another process)."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID(bytes.fromhex(pg_hex)))
