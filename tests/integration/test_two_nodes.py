"""Two Ray nodes on this machine, a fine-tuning job across them, and one node lost mid-run.

A head (`ehrsurv cluster up --block`, 3 CPUs) and a second node (`ray start --address`, 2 CPUs),
each with its own ports and temp dir. The smoke job is submitted with `ray job submit`, with 2
workers of 2 CPUs: one fits on each node (the head's third CPU is for Ray Data), so the workers
land on different nodes, which the test checks with `ray list actors`. Once the run's first
checkpoint is registered, the second node is killed (SIGKILL to its whole process group, as a
lost machine) and a replacement node joins, as an autoscaler would start one. The run must go
on: Ray Train replaces the worker group (train.max_failures) on the head and the new node, the
workers resume from the checkpoint, and the job succeeds: metrics.json holds every epoch once,
the epoch before the checkpoint as it was trained before the kill (not trained again), and the
model is exported. The driver's progress actor is on the head, out of the lost node's way. The run directory is on this machine's file system, which
every node here shares: on a real cluster it must be shared storage (docs/cluster.md).

Stopped by their own pids, never `ray stop`; see cluster_helpers.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Head, Node, local_head

from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.rundir import RAY_DIR, RUN_NAME
from ehrsurv_dist.train import manifest
from ehrsurv_dist.train.worker import LOOP_FILE

pytestmark = pytest.mark.integration

EPOCHS = 2  # one before the checkpoint the run resumes from, one after


def _listed(head: Head, kind: str, **filters: str) -> list[dict[str, Any]]:
    """`ray list KIND --detail --filter K=V ...` against the head, as JSON."""
    args = ["list", kind, f"--address={head.address}", "--format=json", "--detail"]
    for k, v in filters.items():
        args += ["--filter", f"{k}={v}"]
    r = head.ray(*args, timeout=60)
    assert r.returncode == 0, r.stderr[-1000:]
    if r.stdout.startswith("No resource"):  # what it prints instead of an empty list
        return []
    return list(json.loads(r.stdout))


def _diagnosis(head: Head, nodes: list[Node], job_id: str) -> str:
    return "\n".join([head.logs(job_id)[-4000:], head.tail(), *(n.tail() for n in nodes)])


def _until(
    what: str, check: Callable[[], Any], timeout: float, period: float, why: Callable[[], str]
) -> Any:
    """``check()``'s first truthy result, polled every ``period`` s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not in {timeout:.0f} s\n{why()}")
        time.sleep(period)


def _nodes_alive(head: Head, n: int) -> list[dict[str, Any]] | None:
    alive = _listed(head, "nodes", state="ALIVE")
    return alive if len(alive) == n else None


def _workers_up(head: Head, job_id: str) -> list[dict[str, Any]] | None:
    """The job's 2 Ray Train workers once both are alive; fails if the job ends first."""
    alive = _listed(head, "actors", class_name="RayTrainWorker", state="ALIVE")
    if len(alive) == 2:
        return alive
    status = head.job_status(job_id)
    assert not status, f"job {job_id} ended {status} before its workers started"
    return None


def _registered_checkpoint(run: str) -> Path | None:
    """The run's latest checkpoint once Ray Train has registered it (its checkpoint manager's
    snapshot names it; a worker group restarted after a failure resumes from that one) and
    every rank's files are in it (the manifests verify)."""
    root = Path(run) / RAY_DIR / RUN_NAME
    try:
        snap = json.loads((root / "checkpoint_manager_snapshot.json").read_text())
        latest = snap["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ck = root / latest
    return ck if manifest.verify_checkpoint(str(ck)) == [] else None


def test_job_survives_losing_a_worker_node(tmp_path: Path) -> None:
    cohort = str(tmp_path / "cohort")
    synthesize(cohort, "smoke", seed=17, signal=3.0)
    run = str(tmp_path / "run")
    job_id = f"ehrsurv_2nodes_{uuid.uuid4().hex[:8]}"
    nodes: list[Node] = []
    with local_head(num_cpus=3) as head:
        try:
            nodes.append(Node(head, num_cpus=2, name="b"))
            why = lambda: _diagnosis(head, nodes, job_id)  # noqa: E731
            alive = _until("node b joins the head", lambda: _nodes_alive(head, 2), 180, 2, why)
            (head_id,) = [n["node_id"] for n in alive if n["is_head_node"]]
            (b_id,) = [n["node_id"] for n in alive if not n["is_head_node"]]
            head.submit_finetune(
                job_id,
                cohort,
                run,
                "model.size=tiny",
                f"train.epochs={EPOCHS}",
                "train.patience=0",
                # one 2-CPU worker fits on each node: the head's third CPU is Ray Data's
                "train.cpus_per_worker=2",
                "train.max_failures=1",
                "eval.n_boot=10",
            )

            # both workers up, one on each node
            workers = _until(
                "two Ray Train workers alive", lambda: _workers_up(head, job_id), 600, 2, why
            )
            assert sorted(w["node_id"] for w in workers) == sorted([head_id, b_id]), (
                f"the 2 workers are not on the 2 nodes (head {head_id}, b {b_id}): {workers}"
            )
            # the driver's progress actor stays on the head, with the driver (progress.py)
            sinks = _listed(head, "actors", class_name="ProgressSink", state="ALIVE")
            assert [a["node_id"] for a in sinks] == [head_id], sinks
            # the first checkpoint, registered (file checks only: the kill lands in epoch 1)
            ck = _until(
                "a registered checkpoint", lambda: _registered_checkpoint(run), 600, 0.2, why
            )
            before = json.loads((ck / LOOP_FILE).read_text())["history"]
            nodes[0].kill()
            nodes.append(Node(head, num_cpus=2, name="c"))  # the replacement

            status = head.wait(job_id, timeout=600)
            assert status == "SUCCEEDED", f"job {job_id} ended {status or 'not in 600 s'}:\n{why()}"
            after = _listed(head, "nodes")
            actors = _listed(head, "actors", class_name="RayTrainWorker")
        finally:
            for n in nodes:
                n.stop()

    # node b died with the kill; the restarted worker group ran on the head and node c
    state = {n["node_id"]: n["state"] for n in after}
    assert state[b_id] == "DEAD" and state[head_id] == "ALIVE", after
    (c_id,) = [i for i in state if i not in (head_id, b_id)]
    placed = sorted(a["node_id"] for a in actors)
    assert placed == sorted([head_id, b_id, head_id, c_id]), (
        f"Ray Train workers by node (head {head_id}, b {b_id}, c {c_id}): {placed}"
    )
    # resumed from the checkpoint: every epoch once, the ones before it not trained again
    m = json.loads((Path(run) / "metrics.json").read_text())
    hist = m["train"]["history"]
    assert [h["epoch"] for h in hist] == list(range(EPOCHS)), hist
    assert before and hist[: len(before)] == before, (before, hist)
    assert len(before) < EPOCHS, f"the checkpoint at the kill already held every epoch: {before}"
    assert (Path(run) / "model" / "model.safetensors").is_file()
    assert 0.0 <= m["held_out"]["c_index_td"] <= 1.0
