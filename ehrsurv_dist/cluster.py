"""A local Ray head for ``ray job submit``: the ``ray`` command lines that ``ehrsurv cluster`` runs.

The subcommand itself (``up``, ``down``, ``status``) is :mod:`ehrsurv_dist.cli.cluster`.

Token authentication stays on (Ray 2.59+ turns it on for local clusters): ``ray start --head``
writes the token to ``~/.ray/auth_token``, and a client on this machine uses it when
``RAY_AUTH_MODE=token`` is set in its environment; this module sets it for the commands it runs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from ehrsurv_dist.errors import EhrsurvError

DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (next to ``sys.executable``), else PATH's.

    Raises:
        EhrsurvError: no ``ray`` command is installed.
    """
    local = os.path.join(os.path.dirname(sys.executable), "ray")
    if os.access(local, os.X_OK):
        return local
    found = shutil.which("ray")
    if found is None:
        raise EhrsurvError("no `ray` command found: install ray[default] in this environment")
    return found


def auth_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``RAY_AUTH_MODE=token`` unless already set."""
    out = dict(os.environ if env is None else env)
    out.setdefault("RAY_AUTH_MODE", "token")
    return out


def head_command(
    *,
    port: int = DEFAULT_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    temp_dir: str | None = None,
    block: bool = False,
    extra: Sequence[str] = (),
    ray: str | None = None,
) -> list[str]:
    """The ``ray start --head`` command line for these settings.

    The dashboard listens on 127.0.0.1 only: jobs are submitted from this machine (reach it
    from another through an SSH tunnel, docs/cluster.md).
    """
    cmd = [
        ray or ray_executable(),
        "start",
        "--head",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if temp_dir:
        cmd.append(f"--temp-dir={os.path.abspath(temp_dir)}")
    if block:
        cmd.append("--block")
    return [*cmd, *extra]


def submit_hint(dashboard_port: int) -> str:
    """How to submit a job to the head (printed by ``up``)."""
    addr = f"http://127.0.0.1:{dashboard_port}"
    return "\n".join(
        [
            f"dashboard and job server: {addr}",
            "submit a job (token authentication on):",
            f"  RAY_AUTH_MODE=token ray job submit --address {addr} --working-dir . \\",
            "    --runtime-env jobs/runtime_env.yaml -- \\",
            "    python -m ehrsurv_dist.cli finetune --config jobs/smoke_cpu.yaml "
            "--cohort COHORT --out runs/smoke",
            f"watch: RAY_AUTH_MODE=token ray job logs --address {addr} --follow JOB_ID",
        ]
    )
