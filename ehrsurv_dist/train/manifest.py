"""Checkpoint manifests: sha256 and size of every file, so that a corrupted checkpoint is noticed.

A training checkpoint is the union of what every rank wrote (Ray Train uploads each rank's
directory into the same checkpoint directory). Each rank therefore writes its own manifest,
``MANIFEST.rank{r}.json``, covering the files *it* wrote, after all of them and atomically (temp
file, then rename). A checkpoint is intact when the manifests of ranks ``0 .. world_size - 1`` are
all present and every file they list exists with the recorded size and sha256.

Resuming (``train/worker.py``) verifies the latest checkpoint and, when it is corrupted (a
truncated or altered file, a missing shard, no manifest), falls back to the newest intact older
sibling with a warning; with none left it fails with :class:`CheckpointError`. Ray Train V2
names checkpoint directories ``checkpoint_<YYYY-MM-DD_HH-MM-SS.ffffff>`` in its run storage, so
their names sort in the order they were written.

Pure Python (no torch, no Ray): unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ehrsurv_dist import atomic
from ehrsurv_dist.errors import EhrsurvError

MANIFEST_FORMAT = 1
MANIFEST_PREFIX = "MANIFEST.rank"
_MANIFEST_RE = re.compile(r"^MANIFEST\.rank(\d+)\.json$")
CHECKPOINT_PREFIX = "checkpoint_"
_CHUNK = 1 << 20


class CheckpointError(EhrsurvError):
    """No intact checkpoint to resume from (every candidate failed its manifest check)."""


def manifest_name(rank: int) -> str:
    return f"{MANIFEST_PREFIX}{rank}.json"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: str) -> list[str]:
    """Relative paths ('/'-separated) of the regular files below ``directory``, sorted."""
    out = []
    for root, _, names in os.walk(directory):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), directory)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def write_manifest(
    directory: str, rank: int = 0, world_size: int = 1, meta: Mapping[str, Any] | None = None
) -> str:
    """Record every file under ``directory`` (manifests excluded) in this rank's manifest.

    Call it last, after the rank has written all its files: the manifest is what marks them
    complete. Written atomically, so a reader never sees half a manifest.

    Args:
        directory: the rank's checkpoint directory (Ray uploads it into the checkpoint).
        rank: this rank; the manifest is ``MANIFEST.rank{rank}.json``.
        world_size: number of ranks whose manifests make the checkpoint complete.
        meta: small JSON-able extras (epoch, ...), informational.

    Returns:
        The manifest's path.
    """
    files = {}
    for rel in _files(directory):
        if _MANIFEST_RE.match(os.path.basename(rel)):
            continue
        p = os.path.join(directory, rel)
        files[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
    doc = {
        "format": MANIFEST_FORMAT,
        "rank": rank,
        "world_size": world_size,
        "meta": dict(meta or {}),
        "files": files,
    }
    path = os.path.join(directory, manifest_name(rank))
    atomic.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", path)
    return path


def verify_checkpoint(directory: str) -> list[str]:
    """Check a checkpoint directory against its manifests; [] when intact.

    Returns:
        One short line per problem (missing or unreadable manifest, a rank's manifest missing,
        a listed file missing, of another size, or with another sha256). Sizes are compared
        before hashes, so a truncated file costs no hashing.
    """
    if not os.path.isdir(directory):
        return [f"{directory}: not a directory"]
    manifests = sorted(n for n in os.listdir(directory) if _MANIFEST_RE.match(n))
    if not manifests:
        return [f"{directory}: no {MANIFEST_PREFIX}*.json (incomplete or unverifiable checkpoint)"]
    problems: list[str] = []
    ranks: set[int] = set()
    world: set[int] = set()
    for name in manifests:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                doc = json.load(f)
            files: dict[str, dict[str, Any]] = doc["files"]
            ranks.add(int(doc["rank"]))
            world.add(int(doc["world_size"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{name}: unreadable manifest ({type(e).__name__})")
            continue
        for rel, rec in sorted(files.items()):
            p = os.path.join(directory, *rel.split("/"))
            if not os.path.isfile(p):
                problems.append(f"{rel}: missing")
            elif os.path.getsize(p) != int(rec["size"]):
                problems.append(f"{rel}: size {os.path.getsize(p)} != {rec['size']}")
            elif sha256_file(p) != rec["sha256"]:
                problems.append(f"{rel}: sha256 mismatch")
    if len(world) > 1:
        problems.append(f"manifests disagree on the world size: {sorted(world)}")
    elif world:
        missing = sorted(set(range(next(iter(world)))) - ranks)
        if missing:
            problems.append(f"no manifest from rank(s) {missing}")
    return problems


def older_siblings(names: Iterable[str], latest: str) -> list[str]:
    """Checkpoint directory names written before ``latest``, newest first.

    Ray Train V2's default names (``checkpoint_<timestamp>``) sort chronologically; other
    names are ignored.
    """
    return sorted(
        (n for n in names if n.startswith(CHECKPOINT_PREFIX) and n < latest), reverse=True
    )


@dataclass
class Choice:
    """The outcome of :func:`choose_checkpoint`.

    Attributes:
        path: the checkpoint to resume from.
        skipped: ``(path, problems)`` of the newer checkpoints that failed verification.
    """

    path: str
    skipped: list[tuple[str, list[str]]]

    def warning(self) -> str:
        """One line for the log (empty when the latest checkpoint was intact)."""
        if not self.skipped:
            return ""
        bad = "; ".join(f"{os.path.basename(p)} ({probs[0]})" for p, probs in self.skipped)
        return (
            f"corrupted checkpoint(s) skipped: {bad}; resuming from the previous intact one, "
            f"{os.path.basename(self.path)}"
        )


def choose_checkpoint(candidates: Sequence[str]) -> Choice:
    """The first intact checkpoint of ``candidates`` (the latest first, then older ones).

    Raises:
        CheckpointError: none is intact; the message names each one and its first problem.
    """
    skipped: list[tuple[str, list[str]]] = []
    for c in candidates:
        problems = verify_checkpoint(c)
        if not problems:
            return Choice(c, skipped)
        skipped.append((c, problems))
    detail = "; ".join(f"{p}: {probs[0]}" for p, probs in skipped) or "no checkpoint"
    raise CheckpointError(
        f"no intact checkpoint to resume from ({detail}). Start a new run with another --out, "
        "or keep more checkpoints (train.keep_checkpoints) so that an older one survives"
    )


def local_candidates(latest: str) -> list[str]:
    """``latest`` and its older sibling checkpoint directories on a local filesystem."""
    parent, name = os.path.split(os.path.normpath(latest))
    try:
        names = [n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n))]
    except OSError:
        names = []
    return [latest] + [os.path.join(parent, n) for n in older_siblings(names, name)]
