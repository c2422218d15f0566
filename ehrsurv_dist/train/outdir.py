"""The run directory on the driver: claim it (new or resumed), check its free space, remove a
new run that failed before training, and check a resumed run's checkpoints first.

The names inside it come from :mod:`ehrsurv_dist.rundir`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from ehrsurv_dist import atomic
from ehrsurv_dist.config import ConfigError, dump_yaml, load_config
from ehrsurv_dist.errors import OutputError
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.rundir import CONFIG, MODE, RAY_DIR, RUN_FILES, RUN_NAME
from ehrsurv_dist.train import manifest

log = logging.getLogger(__name__)


def claim_output_dir(
    out: str,
    schema: type[Any],
    spec: Any,
    what: str,
    *,
    differs: str = "different config",
    same: Callable[[], bool] = lambda: True,
) -> bool:
    """Create ``out`` for a new ``what`` (run, sweep), or check that it holds this same one, which
    then resumes; True = resume. Its ``config.yaml`` (``spec`` of ``schema``) is its identity.

    Raises:
        OutputError: ``out`` holds another ``what`` (a different config, or ``same()`` false),
            an unreadable config, other files, or is not writable.
    """
    cfg_path = os.path.join(out, CONFIG)
    if os.path.exists(cfg_path):
        try:
            old = load_config(schema, cfg_path)
        except ConfigError as e:
            raise OutputError(f"{out} holds a {what} whose config cannot be read: {e}") from None
        if old != spec or not same():
            raise OutputError(
                f"{out} already holds another {what} ({differs}); "
                "choose a new --out, or re-run with the same config to resume it"
            )
        return True
    if os.path.isdir(out) and os.listdir(out):
        raise OutputError(f"{out} is not empty and holds no {what}; choose a new --out")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # a write probe, gone when closed
            pass
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None
    dump_yaml(spec, cfg_path)
    return False


def prepare_run_dir(out: str, spec: JobSpec, mode: str) -> bool:
    """Create ``out`` or check that it holds this same run (then it resumes); True = resume.

    Raises:
        OutputError: ``out`` holds another run, other files, is not writable, or its
            filesystem has less than ``train.min_free_gb`` free.
    """
    check_free_space(out, spec.train.min_free_gb)
    mode_file = os.path.join(out, MODE)

    def same_mode() -> bool:
        old_mode = open(mode_file).read().strip() if os.path.exists(mode_file) else "?"
        return old_mode == mode

    if claim_output_dir(
        out, JobSpec, spec, "run", differs="different config or mode", same=same_mode
    ):
        return True
    atomic.write_text(mode + "\n", mode_file)
    return False


def check_free_space(out: str, min_free_gb: float) -> None:
    """Refuse to start when ``out``'s filesystem (its nearest existing folder) is nearly full.

    A checkpoint that fails half-way for lack of space costs the epoch; better to say so first.

    Raises:
        OutputError: less than ``min_free_gb`` GB free.
    """
    if min_free_gb <= 0:
        return
    probe = os.path.abspath(out)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell (e.g. no permission to stat): the write probe reports real errors
    if free < min_free_gb * 1e9:
        raise OutputError(
            f"{out}: only {free / 1e9:.2f} GB free on its filesystem ({probe}), "
            f"train.min_free_gb={min_free_gb:g} needed; free some space, choose another --out, "
            "or lower train.min_free_gb"
        )


def discard_new_run(out: str, created: bool) -> None:
    """Remove what :func:`prepare_run_dir` and the vocabulary fit wrote for a run that never
    started training, so that a failed first attempt leaves no half-made run behind (and does
    not block the same ``--out`` for a corrected config). Only known files are removed."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(out)  # only if empty


def check_resume_checkpoints(out: str) -> None:
    """On resume, verify the run's latest checkpoint (local storage) before starting anything.

    A corrupted latest checkpoint is reported here, on the driver where the user sees it; the
    workers then skip it for the previous intact one (``train/worker.py``).

    Raises:
        manifest.CheckpointError: no checkpoint of the run is intact.
    """
    root = os.path.join(out, RAY_DIR, RUN_NAME)
    if not os.path.isdir(root):
        return
    names = [
        n
        for n in os.listdir(root)
        if n.startswith(manifest.CHECKPOINT_PREFIX) and os.path.isdir(os.path.join(root, n))
    ]
    if not names:
        return
    latest = max(names)
    try:  # Ray's own record of the latest checkpoint, when it is readable
        with open(os.path.join(root, "checkpoint_manager_snapshot.json")) as f:
            snap = json.load(f)
        latest = str(snap["latest_checkpoint_result"]["checkpoint_dir_name"]) or latest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    choice = manifest.choose_checkpoint(manifest.local_candidates(os.path.join(root, latest)))
    if choice.skipped:
        log.warning("%s: %s", out, choice.warning())
