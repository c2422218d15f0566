"""``ehrsurv cluster up|down|status``: a local Ray head for ``ray job submit`` (wraps the ray CLI).

``up`` runs ``ray start --head`` with a dashboard (the job server) on this machine and prints the
``ray job submit`` command for it; ``--block`` replaces this process with ``ray start --block``,
so Ctrl-C or SIGTERM stops exactly that head and nothing else. ``down`` runs ``ray stop``, which
stops **every** Ray on the machine (other users' heads and any in-process ``ray.init``), so it
asks for ``--yes``. ``status`` shows the head's resources and its jobs.

Token authentication stays on (Ray 2.59+ turns it on for local clusters): ``ray start --head``
writes the token to ``~/.ray/auth_token``, and a client on this machine uses it when
``RAY_AUTH_MODE=token`` is set in its environment; this module sets it for the commands it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


def cmd_up(args: argparse.Namespace) -> int:
    """``ehrsurv cluster up``: start a head (``--block``: in the foreground, exec'd)."""
    extra = list(args.ray_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = head_command(
        port=args.port,
        dashboard_port=args.dashboard_port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        temp_dir=args.temp_dir,
        block=args.block,
        extra=extra,
    )
    print(" ".join(cmd), flush=True)
    if args.block:
        print(submit_hint(args.dashboard_port), flush=True)
        # Become `ray start --block`: a signal to this process reaches the head directly.
        os.execve(cmd[0], cmd, auth_env())
    rc = subprocess.run(cmd, env=auth_env(), check=False).returncode
    if rc != 0:
        raise EhrsurvError(f"`ray start --head` failed with exit code {rc} (see its output)")
    print(submit_hint(args.dashboard_port))
    print("stop it with: ehrsurv cluster down --yes   (this stops every Ray on this machine)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``ehrsurv cluster down --yes``: ``ray stop`` (every Ray on this machine)."""
    if not args.yes:
        raise EhrsurvError(
            "`ray stop` stops every Ray on this machine, other heads and in-process ray.init() "
            "sessions included; re-run with --yes if that is what you want (a head started with "
            "`ehrsurv cluster up --block` stops with Ctrl-C instead)"
        )
    cmd = [ray_executable(), "stop", *(["--force"] if args.force else [])]
    return subprocess.run(cmd, env=auth_env(), check=False).returncode


def cmd_status(args: argparse.Namespace) -> int:
    """``ehrsurv cluster status``: the head's resources (``ray status``) and its jobs."""
    ray = ray_executable()
    env = auth_env()
    rc = subprocess.run(
        [ray, "status", f"--address=127.0.0.1:{args.port}"], env=env, check=False
    ).returncode
    if rc != 0:
        raise EhrsurvError(f"no Ray head answers at 127.0.0.1:{args.port} (`ray status` failed)")
    addr = f"http://127.0.0.1:{args.dashboard_port}"
    return subprocess.run(
        [ray, "job", "list", f"--address={addr}"], env=env, check=False
    ).returncode


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``cluster`` subcommand and its ``up`` / ``down`` / ``status`` actions."""
    c = sub.add_parser(
        "cluster",
        help="start, inspect or stop a local Ray head for `ray job submit`",
        description="A local Ray head (dashboard and job server on 127.0.0.1) for submitting "
        "jobs with `ray job submit`; token authentication stays on. See docs/cluster.md.",
    )
    csub = c.add_subparsers(
        dest="cluster",
        metavar="ACTION",
        required=True,
        help="up: start a local head; down: stop it; status: show it",
    )

    def ports(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--port", type=int, default=DEFAULT_PORT, help=f"GCS port (default {DEFAULT_PORT})"
        )
        p.add_argument(
            "--dashboard-port",
            type=int,
            default=DEFAULT_DASHBOARD_PORT,
            help=f"dashboard / job server port (default {DEFAULT_DASHBOARD_PORT})",
        )

    up = csub.add_parser(
        "up",
        help="ray start --head",
        description="Start a Ray head on this machine and print the `ray job submit` command. "
        "Arguments after `--` go to `ray start` unchanged.",
    )
    ports(up)
    up.add_argument("--num-cpus", type=int, help="logical CPUs of the head (default: all)")
    up.add_argument("--num-gpus", type=int, help="GPUs of the head (default: all detected)")
    up.add_argument(
        "--temp-dir",
        help="Ray's session folder (default /tmp/ray); a separate one keeps `ray.init()` "
        "elsewhere on this machine from finding and joining this head",
    )
    up.add_argument(
        "--block",
        action="store_true",
        help="stay in the foreground; Ctrl-C or SIGTERM stops this head only",
    )
    up.add_argument(
        "ray_args", nargs=argparse.REMAINDER, help="-- then extra `ray start` arguments"
    )
    up.set_defaults(func=cmd_up)

    down = csub.add_parser(
        "down",
        help="ray stop (stops EVERY Ray on this machine)",
        description="Run `ray stop`. It stops every Ray on this machine, not only the head "
        "started by `ehrsurv cluster up`; --yes confirms.",
    )
    down.add_argument("--yes", action="store_true", help="confirm: stop every Ray on this machine")
    down.add_argument("--force", action="store_true", help="SIGKILL instead of SIGTERM")
    down.set_defaults(func=cmd_down)

    st = csub.add_parser(
        "status",
        help="resources and jobs of the local head",
        description="`ray status` and `ray job list` against the local head.",
    )
    ports(st)
    st.set_defaults(func=cmd_status)
