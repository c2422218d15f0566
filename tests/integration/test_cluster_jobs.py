"""The real local-cluster path: `ehrsurv cluster up --block` (a `ray start --head`), then
`ray job submit` of the smoke_cpu job with token authentication on, as a user would type it.

A second job shows that what the Ray Train workers say reaches `ray job logs`: a warning a user
can meet (an epoch without a training step: train.engine.grad_accum larger than a rank's
batches), the per-epoch lines, and no subject id, code or date of the cohort.

This test process never connects to the head (the session may hold its own in-process Ray): it
only runs the CLIs. The head gets its own ports and temp dir (so that no `ray.init()` on this
machine finds and joins it) and is stopped by signalling the process this test started; never
`ray stop`, which would stop every Ray on the machine (cluster_helpers.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import ROOT, Head, local_head

from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.testing import distinctive_cohort

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A 3-CPU Ray head in the foreground (`ehrsurv cluster up --block`), stopped at the end."""
    with local_head(num_cpus=3) as h:
        yield h


def test_token_authentication_is_on(head: Head) -> None:
    refused = head.ray("job", "list", f"--address={head.address}", auth=False, timeout=60)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()


def test_submit_smoke_job_to_local_head(head: Head, tmp_path: Path) -> None:
    cohort = str(tmp_path / "cohort")
    synthesize(cohort, "smoke", seed=11, signal=3.0)
    run = str(tmp_path / "run")
    job_id = f"ehrsurv_smoke_{uuid.uuid4().hex[:8]}"
    head.submit_finetune(job_id, cohort, run, "model.size=tiny", "train.epochs=1", "eval.n_boot=10")
    status = head.wait(job_id)  # minutes on an idle 2-core machine; slower under load
    if status != "SUCCEEDED":
        pytest.fail(f"job {job_id} ended {status or 'not in 900 s'}:\n{head.logs(job_id)[-3000:]}")

    # the run directory of docs/design.md §5, written by the job on the head
    for name in ("config.yaml", "vocab.json", "metrics.json", "model/model.safetensors"):
        assert os.path.exists(os.path.join(run, name)), name
    assert os.path.exists(os.path.join(run, "plots", "training_curves.png"))
    m = json.load(open(os.path.join(run, "metrics.json")))
    assert m["train"]["mode"] == "finetune" and len(m["train"]["history"]) == 1
    for split in ("tuning", "held_out"):
        assert m[split]["n_subjects"] > 0
        assert 0.0 <= m[split]["c_index_td"] <= 1.0
        assert 0.0 < m[split]["ibs"] < 1.0
    logs = head.logs(job_id)
    assert f"run {run}: finetune" in logs  # the CLI's summary, from the job's own output

    # `ehrsurv cluster status` sees the head and the job
    st = subprocess.run(
        [
            sys.executable,
            "-m",
            "ehrsurv_dist.cli",
            "cluster",
            "status",
            f"--port={head.port}",
            f"--dashboard-port={head.dashboard_port}",
        ],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert st.returncode == 0, st.stderr[-1000:]
    assert "3.0 CPU" in st.stdout or "/3.0 CPU" in st.stdout
    assert job_id in st.stdout


def test_worker_warnings_reach_ray_job_logs_without_patient_data(
    head: Head, tmp_path: Path
) -> None:
    cohort, secrets = distinctive_cohort(tmp_path / "cohort", n=80)
    run = str(tmp_path / "run")
    job_id = f"ehrsurv_logs_{uuid.uuid4().hex[:8]}"
    head.submit_finetune(
        job_id,
        cohort,
        run,
        "model.size=tiny",
        "train.epochs=1",
        "eval.n_boot=10",
        "train.use_gpu=auto",
        # ~56 train subjects: 2 batches of 16 per rank, fewer than one step's 8
        "train.engine.grad_accum=8",
    )
    status = head.wait(job_id)
    logs = head.logs(job_id)
    assert status == "SUCCEEDED", f"job {job_id} ended {status or 'not in 900 s'}:\n{logs[-3000:]}"

    # the workers' warning, from both ranks (Ray may fold the second into "[repeated ...]")
    warned = [ln for ln in logs.splitlines() if "no training step" in ln]
    assert warned and all("RayTrainWorker" in ln for ln in warned), logs[-3000:]
    assert "WARNING ehrsurv_dist.train.worker: epoch 0, rank" in warned[0]
    assert "train.engine.grad_accum=8" in warned[0]
    # INFO: one line per epoch and rank, counts and timings
    assert re.search(r"INFO ehrsurv_dist\.train\.worker: epoch 0, rank [01]/2: train loss", logs)
    # the driver's own line: auto resolved on this CPU-only head, and recorded in the run
    assert "train.use_gpu=auto: the cluster has 0 GPU(s), so use_gpu=false" in logs
    assert "use_gpu: false" in open(os.path.join(run, "config.yaml")).read()
    # Ray Data's progress bars and execution lines stay off the console
    assert "Running Dataset" not in logs and "Execution plan" not in logs
    assert f"run {run}: finetune" in logs
    # no patient data in anything the job printed (driver, workers, evaluation)
    leaked = [s for s in secrets if s in logs]
    assert leaked == [], leaked
