"""Validate a cohort once: its report kept under the cohort's fingerprint, reused until it changes.

Every command that reads a cohort (``pretrain``, ``finetune``, each Tune trial, ``evaluate``,
``predict``) needs its :class:`~ehrsurv_dist.data.validation_report.CohortReport`; scanning a
large cohort takes minutes. :func:`validate_cached` looks the report up by the cohort's
**fingerprint** and scans only when there is none.

The fingerprint (:func:`fingerprint`) is a hash of

- every file under ``COHORT/data`` (the shards, and the hidden and other files the report names
  as ignored) and ``COHORT/metadata`` (the split file): path, size and modification time in ns;
- the outcome table validation reads (``outcomes`` or ``COHORT/outcomes.parquet``; its absence
  counts too), or the calendar task's label file or folder and outcome table;
- the arguments that change the report: the cohort as written, ``outcomes``, ``granularity``,
  ``require_outcomes``, the task's event codes, labels and outcomes;
- :data:`~ehrsurv_dist.data.validate.VALIDATOR_VERSION` and the pyarrow and numpy versions.

So a shard rewritten, appended to, added, removed or renamed (its size or mtime changes), or a
new outcome table, gives a new fingerprint: the cohort is validated again. pyarrow's
``FileInfo`` has no ETag; on object stores the size and mtime of each object are used the same
way (an object rewritten gets a new mtime). A file whose mtime is missing (some stores) disables
the cache for that cohort.

**Racy files.** A file modified less than :data:`RACY_NS` before the scan could be modified again
within the same mtime tick without its mtime changing: the report is then not stored (the next
command scans again, and stores it).

**Where** (:func:`cache_dirs`): ``COHORT/.ehrsurv/validation/<fingerprint>.json`` when the cohort is
a local folder we may write; else the user cache, ``$EHRSURV_CACHE_DIR/validation`` (default
``$XDG_CACHE_HOME/ehrsurv`` or ``~/.cache/ehrsurv``). Both are looked in. The hidden folder is
never read as data (it is not under ``data/``, whose hidden paths are ignored anyway).
``$EHRSURV_VALIDATION_CACHE`` (or the ``cache`` argument) = ``none`` turns the cache off, a
folder puts it there. Files are written atomically (:mod:`ehrsurv_dist.atomic`); an unreadable
one is ignored with a warning and rewritten. At most :data:`MAX_ENTRIES` reports are kept per
folder (the oldest are removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.data import io
from ehrsurv_dist.data.meds_read import default_outcomes_path, short_error
from ehrsurv_dist.data.samples import TaskSpec
from ehrsurv_dist.data.validate import VALIDATOR_VERSION, Mapper, validate_cohort
from ehrsurv_dist.data.validation_report import (
    CohortReport,
    report_from_record,
    report_to_record,
)

log = logging.getLogger(__name__)

CACHE_ENV = "EHRSURV_VALIDATION_CACHE"  # none | auto | a folder
CACHE_HOME_ENV = "EHRSURV_CACHE_DIR"  # the user cache (default ~/.cache/ehrsurv)
COHORT_CACHE = ".ehrsurv"  # inside the cohort folder: one sub-folder per kind of entry
SUBDIR = "validation"  # this module's kind (the scan cache's is ``scan``)
OFF = ("none", "off", "false", "0")
RACY_NS = 2_000_000_000  # files modified this close to the scan: the report is not stored
MAX_ENTRIES = 64  # reports kept per cache folder
FORMAT = 1  # of the cache file itself


@dataclass(frozen=True)
class Fingerprint:
    """A cohort's identity for validation (see the module doc).

    Attributes:
        key: hex digest, the cache file's name.
        inputs: what was hashed (kept in the cache file, for people reading it).
        newest_mtime_ns: the latest mtime among the files.
    """

    key: str
    inputs: dict[str, Any]
    newest_mtime_ns: int


def fingerprint(
    cohort: str,
    outcomes: str | None = None,
    granularity: str = "day",
    require_outcomes: bool = False,
    task: TaskSpec | None = None,
) -> Fingerprint | None:
    """The fingerprint of what :func:`validate_cohort` with these arguments reads, or None when
    it cannot be taken (a listing fails, a file has no mtime): then nothing is cached."""
    try:
        fs, root = io.resolve(cohort)
        files: list[list[Any]] = []
        for sub in (S.DATA_SUBDIR, os.path.dirname(S.SUBJECT_SPLITS_PATH)):
            files.extend(_stat(fs, io.join(root, sub)))
        if task is None:
            files.extend(_stat_uri(outcomes or default_outcomes_path(cohort)))
        else:
            for p in (task.labels, task.outcomes):
                if p is not None:
                    files.extend(_stat_uri(p))
    except _NoMtime:
        return None
    except Exception as e:  # the scan will report what is wrong
        log.debug("no validation fingerprint for %s: %s", cohort, short_error(e))
        return None
    inputs = {
        "validator": VALIDATOR_VERSION,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "cohort": cohort,
        "outcomes": outcomes,
        "granularity": granularity,
        "require_outcomes": require_outcomes,
        "task": None
        if task is None
        else {
            "event_codes": list(task.event_codes),
            "labels": task.labels,
            "outcomes": task.outcomes,
        },
        "files": files,
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode("utf-8")
    newest = max((int(f[2]) for f in files if len(f) == 3), default=0)
    return Fingerprint(hashlib.sha256(blob).hexdigest()[:24], inputs, newest)


class _NoMtime(Exception):
    """A file without a modification time: the cohort cannot be fingerprinted."""


def _stat_uri(path: str) -> list[list[Any]]:
    fs, p = io.resolve(path)
    return _stat(fs, p)


def _stat(fs: pafs.FileSystem, path: str) -> list[list[Any]]:
    """[path, size, mtime_ns] of a file, or of every file below a folder; [path, None] when
    there is nothing there."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return [[path, None]]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        found = sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)
        return [_entry(i) for i in found] or [[path, "empty"]]
    return [_entry(info)]


def _entry(info: pafs.FileInfo) -> list[Any]:
    if info.mtime_ns is None:
        raise _NoMtime(info.path)
    return [info.path, info.size, info.mtime_ns]


def user_cache_dir() -> str:
    """``$EHRSURV_CACHE_DIR``, else ``$XDG_CACHE_HOME/ehrsurv``, else ``~/.cache/ehrsurv``."""
    env = os.environ.get(CACHE_HOME_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "ehrsurv")


def cache_dirs(
    cohort: str, cache: str | None = None, sub: str = SUBDIR
) -> tuple[list[str], str | None]:
    """(folders to look in, folder to write to) for ``cohort``'s entries of one kind.

    Args:
        cohort: the cohort.
        cache: ``auto`` (the cohort's ``.ehrsurv/<sub>`` when writable, else the user cache's
            ``<sub>``), ``none`` (off), or a folder (every kind in it, told apart by suffix);
            None: ``$EHRSURV_VALIDATION_CACHE``, else ``auto``.
        sub: the kind: ``validation`` (reports) or ``scan`` (:mod:`scan_cache`).
    """
    setting = (cache if cache is not None else os.environ.get(CACHE_ENV, "")).strip() or "auto"
    if setting.lower() in OFF:
        return [], None
    if setting.lower() != "auto":
        d = os.path.abspath(os.path.expanduser(setting))
        return [d], d
    user = os.path.join(user_cache_dir(), sub)
    if "://" in cohort:
        return [user], user
    local = os.path.join(os.path.abspath(cohort), COHORT_CACHE, sub)
    return [local, user], local if _writable(local) else user


def _writable(path: str) -> bool:
    """We may create or write ``path`` (its first existing ancestor is a writable folder)."""
    p = path
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent
    return os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK)


def validate_cached(
    cohort: str,
    outcomes: str | None = None,
    granularity: str = "day",
    require_outcomes: bool = False,
    task: TaskSpec | None = None,
    *,
    mapper: Mapper | None = None,
    parallel: Mapper | None = None,
    cache: str | None = None,
    refresh: bool = False,
) -> CohortReport:
    """:func:`validate_cohort` (same arguments and result), reusing a report cached under the
    cohort's fingerprint and caching a fresh one.

    Args:
        mapper, parallel: how the shards are checked when a scan is needed (see
            ``validate_cohort``).
        cache: where reports are cached (:func:`cache_dirs`): None (``$EHRSURV_VALIDATION_CACHE``
            or ``auto``), ``auto``, ``none`` or a folder.
        refresh: always scan (and store the fresh report): ``ehrsurv validate``.
    """
    look, write = cache_dirs(cohort, cache)
    fp = fingerprint(cohort, outcomes, granularity, require_outcomes, task) if look else None
    if fp is not None and not refresh:
        for d in look:
            path = os.path.join(d, fp.key + ".json")
            rep = _load(path, fp)
            if rep is not None:
                log.info(
                    "cohort validated earlier (fingerprint %s): reusing the report from %s",
                    fp.key,
                    path,
                )
                return rep
    start = time.time_ns()
    rep = validate_cohort(
        cohort,
        outcomes,
        granularity,
        require_outcomes=require_outcomes,
        task=task,
        mapper=mapper,
        parallel=parallel,
    )
    if fp is not None and write is not None and settled(fp, start, "validation report", cohort):
        _store(os.path.join(write, fp.key + ".json"), fp, rep)
    return rep


def settled(fp: Fingerprint, start_ns: int, what: str, cohort: str) -> bool:
    """Whether a result computed from ``start_ns`` on may be stored under ``fp`` (the racy-file
    rule: no file modified within :data:`RACY_NS` before it); says so when not."""
    if fp.newest_mtime_ns <= start_ns - RACY_NS:
        return True
    log.info(
        "%s of %s not cached: some of its files were modified in the last %g s (the next "
        "command computes it again)",
        what,
        cohort,
        RACY_NS / 1e9,
    )
    return False


def _load(path: str, fp: Fingerprint) -> CohortReport | None:
    """The report cached at ``path`` for ``fp``; None when there is none, or (with a warning)
    when the file cannot be used."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("format") != FORMAT or d.get("fingerprint") != fp.key:
            raise ValueError("written for another fingerprint or format")
        return report_from_record(d["report"])
    except Exception as e:
        log.warning(
            "ignoring the unreadable validation cache file %s (%s): validating the cohort again",
            path,
            short_error(e),
        )
        return None


def _store(path: str, fp: Fingerprint, rep: CohortReport) -> None:
    """Write the cache file atomically, then prune the folder; a failure is only a warning."""
    record = {
        "format": FORMAT,
        "fingerprint": fp.key,
        "inputs": fp.inputs,
        "report": report_to_record(rep),
    }
    try:
        atomic.write_json(record, path)
    except OSError as e:
        log.warning("could not cache the validation report at %s: %s", path, short_error(e))
        return
    log.info("validation report cached at %s", path)
    prune(os.path.dirname(path), ".json")


def prune(folder: str, suffix: str) -> None:
    """Keep the :data:`MAX_ENTRIES` most recently written ``*<suffix>`` entries of ``folder``."""
    try:
        entries = [
            e
            for e in os.scandir(folder)
            if e.is_file() and e.name.endswith(suffix) and not e.name.startswith(".")
        ]
        entries.sort(key=lambda e: e.stat().st_mtime_ns, reverse=True)
        for e in entries[MAX_ENTRIES:]:
            os.remove(e.path)
    except OSError as e:  # another process pruned first: harmless
        log.debug("pruning %s: %s", folder, short_error(e))
