"""``ehrsurv cluster up|down|status``: a local Ray head for ``ray job submit`` (wraps the ray CLI).

``up`` runs ``ray start --head`` with a dashboard (the job server) on this machine and prints the
``ray job submit`` command for it; ``--block`` replaces this process with ``ray start --block``,
so Ctrl-C or SIGTERM stops exactly that head and nothing else. ``down`` runs ``ray stop``, which
stops **every** Ray on the machine (other users' heads and any in-process ``ray.init``), so it
asks for ``--yes``. ``status`` shows the head's resources and its jobs. The command lines
themselves are built by :mod:`ehrsurv_dist.cluster`.
"""

from __future__ import annotations

import argparse
import os
import subprocess

from ehrsurv_dist.cli.args import Subparsers, pick
from ehrsurv_dist.cluster import (
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_PORT,
    auth_env,
    head_command,
    ray_executable,
    submit_hint,
)
from ehrsurv_dist.errors import EhrsurvError


def add_cluster_parser(sub: Subparsers) -> None:
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


def cmd_up(args: argparse.Namespace) -> int:
    """``ehrsurv cluster up``: start a head (``--block``: in the foreground, exec'd)."""
    extra = list(args.ray_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    cmd = head_command(
        extra=extra,
        **pick(args, "port", "dashboard_port", "num_cpus", "num_gpus", "temp_dir", "block"),
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
