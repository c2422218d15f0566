"""Checkpoint manifests: every kind of corruption is caught, and resume falls back correctly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ehrsurv_dist.errors import EhrsurvError
from ehrsurv_dist.train.manifest import (
    CheckpointError,
    choose_checkpoint,
    local_candidates,
    manifest_name,
    older_siblings,
    verify_checkpoint,
    write_manifest,
)


def _rank_dir(root: Path, rank: int, world: int, files: dict[str, bytes]) -> Path:
    """What one rank writes into its temporary checkpoint directory, manifest last."""
    d = root / f"rank{rank}"
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    d.mkdir(parents=True, exist_ok=True)
    write_manifest(str(d), rank, world, meta={"epoch": 3})
    return d


def _merged(tmp_path: Path, name: str = "checkpoint_2026-01-01_00-00-00.000001") -> Path:
    """A 2-rank checkpoint as Ray Train assembles it: the union of both ranks' directories."""
    ck = tmp_path / "train" / name
    r0 = _rank_dir(
        tmp_path / name,
        0,
        2,
        {"engine.json": b'{"step": 3}', "engine/state.pt": os.urandom(5000), "model.pt": b"m" * 99},
    )
    r1 = _rank_dir(tmp_path / name, 1, 2, {"engine/zero_pp_rank_1.pt": os.urandom(3000)})
    for src in (r0, r1):
        for root, _, names in os.walk(src):
            for n in names:
                rel = os.path.relpath(os.path.join(root, n), src)
                (ck / rel).parent.mkdir(parents=True, exist_ok=True)
                (ck / rel).write_bytes((Path(root) / n).read_bytes())
    return ck


def test_intact_checkpoint_verifies(tmp_path: Path) -> None:
    ck = _merged(tmp_path)
    assert verify_checkpoint(str(ck)) == []
    doc = json.loads((ck / manifest_name(0)).read_text())
    assert doc["world_size"] == 2 and doc["meta"] == {"epoch": 3}
    assert set(doc["files"]) == {"engine.json", "engine/state.pt", "model.pt"}
    assert doc["files"]["model.pt"]["size"] == 99
    # no temp file is left next to the manifest
    assert not [n for n in os.listdir(tmp_path / ck.name / "rank0") if n.startswith(".tmp")]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate", "engine/state.pt: size"),
        ("flip", "engine/state.pt: sha256 mismatch"),
        ("delete_file", "engine/zero_pp_rank_1.pt: missing"),
        ("delete_rank_manifest", "no manifest from rank(s) [1]"),
        ("delete_all_manifests", "no MANIFEST.rank"),
        ("garble_manifest", "unreadable manifest"),
    ],
)
def test_corruption_is_detected(tmp_path: Path, damage: str, needle: str) -> None:
    ck = _merged(tmp_path)
    state = ck / "engine" / "state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one byte changed
        state.write_bytes(bytes(data))
    elif damage == "delete_file":
        (ck / "engine" / "zero_pp_rank_1.pt").unlink()
    elif damage == "delete_rank_manifest":
        (ck / manifest_name(1)).unlink()
    elif damage == "delete_all_manifests":
        (ck / manifest_name(0)).unlink()
        (ck / manifest_name(1)).unlink()
    else:
        (ck / manifest_name(0)).write_text("{not json")
    problems = verify_checkpoint(str(ck))
    assert problems and any(needle in p for p in problems), problems


def test_older_siblings_newest_first() -> None:
    names = [
        "checkpoint_2026-01-01_00-00-03.000000",
        "checkpoint_2026-01-01_00-00-01.000000",
        "checkpoint_manager_snapshot.json",
        "checkpoint_2026-01-01_00-00-02.500000",
        "other",
    ]
    assert older_siblings(names, "checkpoint_2026-01-01_00-00-03.000000") == [
        "checkpoint_2026-01-01_00-00-02.500000",
        "checkpoint_2026-01-01_00-00-01.000000",
    ]


def test_fallback_to_previous_intact_checkpoint(tmp_path: Path) -> None:
    old = _merged(tmp_path, "checkpoint_2026-01-01_00-00-01.000000")
    new = _merged(tmp_path, "checkpoint_2026-01-01_00-00-02.000000")
    (tmp_path / "train" / "checkpoint_manager_snapshot.json").write_text("{}")
    cands = local_candidates(str(new))
    assert cands == [str(new), str(old)]
    assert choose_checkpoint(cands).path == str(new)  # intact: no fallback, no warning
    assert choose_checkpoint(cands).warning() == ""
    (new / "model.pt").write_bytes(b"x" * 99)  # same size, other content
    choice = choose_checkpoint(cands)
    assert choice.path == str(old)
    assert [p for p, _ in choice.skipped] == [str(new)]
    w = choice.warning()
    assert new.name in w and old.name in w and "sha256" in w and "\n" not in w


def test_no_intact_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    only = _merged(tmp_path)  # keep_checkpoints=1: no previous one
    (only / "engine.json").write_text("")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*engine.json: size") as e:
        choose_checkpoint(local_candidates(str(only)))
    assert isinstance(e.value, EhrsurvError)  # the CLI prints it on one line
    assert "\n" not in str(e.value) and "keep_checkpoints" in str(e.value)
