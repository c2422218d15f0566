"""Real Ray clusters for the integration tests that go through the `ray` CLIs, as a user would.

A head (`ehrsurv cluster up --block`, i.e. `ray start --head --block`) and extra nodes
(`ray start --address ... --block`) on this machine, each with its own free ports and its own
short temp dir, so that no `ray.init()` elsewhere on the machine finds and joins them. Each is
stopped by signalling the process the test started (its process group for a node); never
`ray stop`, which would stop every Ray on the machine. The tests never connect to the cluster
themselves (the pytest session may hold its own in-process Ray): they only run the CLIs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env() -> dict[str, str]:
    """This process's environment without the caller's own Ray address or auth settings, with
    this Python's `ray` first on PATH and token authentication on."""
    env = {
        k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_AUTH")
    }
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token")
    return env


def tail(temp: str, own_log: str) -> str:
    """What `ray start` said (``own_log`` in ``temp``), then any error lines of the session's
    logs under ``temp``."""
    try:
        lines = open(os.path.join(temp, own_log)).read().splitlines()
    except OSError:
        return ""
    own = [ln for ln in lines if "SubprocessModule" not in ln]
    bad = []
    for root, _, files in os.walk(temp):
        for f in files:
            if f.endswith((".out", ".err", ".log")) and f != own_log:
                with open(os.path.join(root, f), errors="replace") as fh:
                    bad += [f"{f}: {ln}" for ln in fh if "Check failed" in ln or "Error" in ln]
    return "\n".join(own[-30:] + bad[-10:])[-4000:]


@dataclass
class Head:
    port: int
    dashboard_port: int
    env: dict[str, str]
    temp: str

    @property
    def address(self) -> str:
        """The dashboard / job server, for `ray job ...` and `ray list ...`."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        """The GCS, for `ray start --address` and `ray status`."""
        return f"127.0.0.1:{self.port}"

    def ray(
        self, *args: str, timeout: float = 120, auth: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if not auth:
            env.pop("RAY_AUTH_MODE", None)
        return subprocess.run(
            [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def tail(self) -> str:
        return tail(self.temp, "head.log")

    def submit_finetune(self, job_id: str, cohort: str, run: str, *overrides: str) -> None:
        """`ray job submit --no-wait` of `ehrsurv finetune --config jobs/smoke_cpu.yaml`."""
        r = self.ray(
            "job",
            "submit",
            f"--address={self.address}",
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
            *overrides,
        )
        assert r.returncode == 0, r.stderr[-2000:]

    def job_status(self, job_id: str) -> str:
        """SUCCEEDED, FAILED or STOPPED once the job has ended, else ""."""
        r = self.ray("job", "status", f"--address={self.address}", job_id, timeout=60)
        said = (r.stdout + r.stderr).upper()  # "Job 'ID' succeeded", "... is currently RUNNING"
        return next((s for s in FINAL if s in said), "")

    def wait(self, job_id: str, timeout: float = 900) -> str:
        """The job's final status, or "" after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job_status(job_id)
            if status:
                return status
            time.sleep(5)
        return ""

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", f"--address={self.address}", job_id, timeout=60).stdout


def _stop(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM (`ray start --block` then stops the processes it started), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def local_head(num_cpus: int) -> Iterator[Head]:
    """A Ray head of ``num_cpus`` logical CPUs and no GPU in the foreground (`ehrsurv cluster
    up --block`), answering `ray job list`; stopped and its temp dir removed at the end."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("no ray CLI in this environment")
    port, dash, client, agent = free_ports(4)
    temp = tempfile.mkdtemp(prefix="ehrh", dir="/tmp")  # short: Ray's socket paths are capped
    env = cluster_env()
    cmd = [
        sys.executable,
        "-m",
        "ehrsurv_dist.cli",
        "cluster",
        "up",
        "--block",
        f"--port={port}",
        f"--dashboard-port={dash}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--temp-dir={temp}",
        "--",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
    ]
    log = open(os.path.join(temp, "head.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    h = Head(port, dash, env, temp)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the head exited ({proc.returncode}): {h.tail()}")
            r = h.ray("job", "list", f"--address={h.address}", timeout=60)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the head did not answer in 180 s: {r.stderr[-500:]} {h.tail()}")
            time.sleep(3)
        yield h
    finally:
        # `cluster up --block` exec'd `ray start --block`: SIGTERM makes it stop its processes
        _stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class Node:
    """A worker node joined to ``head`` (`ray start --address --block`) with ``num_cpus``
    logical CPUs, its own ports and temp dir, in a process group of its own: :meth:`kill`
    takes the whole node down at once, as a lost machine would; :meth:`stop` ends it cleanly."""

    def __init__(self, head: Head, num_cpus: int, name: str) -> None:
        self.head = head
        self.name = name
        self.temp = tempfile.mkdtemp(prefix=f"ehr{name}", dir="/tmp")
        (agent,) = free_ports(1)
        cmd = [
            str(BIN / "ray"),
            "start",
            f"--address={head.gcs}",
            "--block",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--temp-dir={self.temp}",
            f"--dashboard-agent-listen-port={agent}",
        ]
        self._log = open(os.path.join(self.temp, "node.log"), "w")
        self.proc = subprocess.Popen(
            cmd,
            env=head.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group: raylet, agents, workers
        )

    def tail(self) -> str:
        return f"node {self.name}:\n{tail(self.temp, 'node.log')}"

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: no clean shutdown, as a lost machine."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        try:
            _stop(self.proc, group=True)
        except ProcessLookupError:
            pass
        self._log.close()
        shutil.rmtree(self.temp, ignore_errors=True)
