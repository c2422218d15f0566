"""The real local-cluster path: `ehrsurv cluster up --block` (a `ray start --head`), then
`ray job submit` of the smoke_cpu job with token authentication on, as a user would type it.

A second job shows that what the Ray Train workers say reaches `ray job logs`: a warning a user
can meet (an epoch without a training step: train.engine.grad_accum larger than a rank's
batches), the per-epoch lines, and no subject id, code or date of the cohort.

This test process never connects to the head (the session may hold its own in-process Ray): it
only runs the CLIs. The head gets its own ports and temp dir (so that no `ray.init()` on this
machine finds and joins it) and is stopped by signalling the process this test started; never
`ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ehrsurv_dist.data.synthetic import synthesize
from ehrsurv_dist.testing import distinctive_cohort

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    port: int
    dashboard_port: int
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(
        self, *args: str, timeout: float = 120, auth: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if not auth:
            env.pop("RAY_AUTH_MODE", None)
        return subprocess.run(
            [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A 3-CPU Ray head in the foreground (`ehrsurv cluster up --block`), stopped at the end."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("no ray CLI in this environment")
    port, dash, client, agent = _free_ports(4)
    temp = tempfile.mkdtemp(prefix="ehrh", dir="/tmp")  # short: Ray's socket paths are capped
    # no address or auth settings of the caller's own Ray leak into the head or the clients
    env = {
        k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH")
    }
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token")
    cmd = [
        sys.executable,
        "-m",
        "ehrsurv_dist.cli",
        "cluster",
        "up",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--num-cpus=3",
        "--num-gpus=0",
        f"--temp-dir={temp}",
        "--",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
    ]
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    h = Head(port, dash, env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the head exited ({proc.returncode}): {_tail(temp)}")
            r = h.ray("job", "list", f"--address={h.address}", timeout=60)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the head did not answer in 180 s: {r.stderr[-500:]} {_tail(temp)}")
            time.sleep(3)
        yield h
    finally:
        # `cluster up --block` exec'd `ray start --block`: SIGTERM makes it stop its processes
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _tail(temp: str) -> str:
    """What `ray start` said: its own lines, then any error lines of the session's logs."""
    try:
        lines = open(os.path.join(temp, "head.log")).read().splitlines()
    except OSError:
        return ""
    own = [ln for ln in lines if "SubprocessModule" not in ln]
    bad = []
    for root, _, files in os.walk(temp):
        for f in files:
            if f.endswith((".out", ".err", ".log")) and f != "head.log":
                with open(os.path.join(root, f), errors="replace") as fh:
                    bad += [f"{f}: {ln}" for ln in fh if "Check failed" in ln or "Error" in ln]
    return "\n".join(own[-30:] + bad[-10:])[-4000:]


def test_token_authentication_is_on(head: Head) -> None:
    refused = head.ray("job", "list", f"--address={head.address}", auth=False, timeout=60)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()


def test_submit_smoke_job_to_local_head(head: Head, tmp_path: Path) -> None:
    cohort = str(tmp_path / "cohort")
    synthesize(cohort, "smoke", seed=11, signal=3.0)
    run = str(tmp_path / "run")
    job_id = f"ehrsurv_smoke_{uuid.uuid4().hex[:8]}"
    submit = head.ray(
        "job",
        "submit",
        f"--address={head.address}",
        f"--submission-id={job_id}",
        "--working-dir=.",
        "--runtime-env=jobs/runtime_env.yaml",
        "--no-wait",
        "--",
        "python",
        "-m",
        "ehrsurv_dist.cli",
        "finetune",
        "--config",
        "jobs/smoke_cpu.yaml",
        "--cohort",
        cohort,
        "--out",
        run,
        "model.size=tiny",
        "train.epochs=1",
        "eval.n_boot=10",
    )
    assert submit.returncode == 0, submit.stderr[-2000:]

    status = ""
    deadline = time.monotonic() + 900  # minutes on an idle 2-core machine; slower under load
    while time.monotonic() < deadline:
        r = head.ray("job", "status", f"--address={head.address}", job_id, timeout=60)
        said = (r.stdout + r.stderr).upper()  # "Job 'ID' succeeded", "... is currently RUNNING"
        status = next((s for s in ("SUCCEEDED", "FAILED", "STOPPED") if s in said), "")
        if status:
            break
        time.sleep(5)
    if status != "SUCCEEDED":
        logs = head.ray("job", "logs", f"--address={head.address}", job_id, timeout=60).stdout
        pytest.fail(f"job {job_id} ended {status or 'not in 900 s'}:\n{logs[-3000:]}")

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
    logs = head.ray("job", "logs", f"--address={head.address}", job_id, timeout=60).stdout
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


def _wait(head: Head, job_id: str, timeout: float = 900) -> str:
    """The job's final status (SUCCEEDED, FAILED, STOPPED), or "" after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = head.ray("job", "status", f"--address={head.address}", job_id, timeout=60)
        said = (r.stdout + r.stderr).upper()
        status = next((s for s in ("SUCCEEDED", "FAILED", "STOPPED") if s in said), "")
        if status:
            return status
        time.sleep(5)
    return ""


def test_worker_warnings_reach_ray_job_logs_without_patient_data(
    head: Head, tmp_path: Path
) -> None:
    cohort, secrets = distinctive_cohort(tmp_path / "cohort", n=80)
    run = str(tmp_path / "run")
    job_id = f"ehrsurv_logs_{uuid.uuid4().hex[:8]}"
    submit = head.ray(
        "job",
        "submit",
        f"--address={head.address}",
        f"--submission-id={job_id}",
        "--working-dir=.",
        "--runtime-env=jobs/runtime_env.yaml",
        "--no-wait",
        "--",
        "python",
        "-m",
        "ehrsurv_dist.cli",
        "finetune",
        "--config",
        "jobs/smoke_cpu.yaml",
        "--cohort",
        cohort,
        "--out",
        run,
        "model.size=tiny",
        "train.epochs=1",
        "eval.n_boot=10",
        "train.use_gpu=auto",
        # ~56 train subjects: 2 batches of 16 per rank, fewer than one step's 8
        "train.engine.grad_accum=8",
    )
    assert submit.returncode == 0, submit.stderr[-2000:]
    status = _wait(head, job_id)
    logs = head.ray("job", "logs", f"--address={head.address}", job_id, timeout=60).stdout
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
