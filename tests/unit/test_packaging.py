"""Packaging: Ray is a range whose floor is the version tested here (so the package installs
beside a cluster on a later Ray 2.x), safetensors is a declared dependency, and the image's
``COPY .`` leaves local state out (.dockerignore) while keeping what ``pip install /app`` and
the jobs need."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> dict[str, Requirement]:
    if sys.version_info < (3, 11):  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name: r for d in deps}


def test_ray_is_a_2x_range_whose_floor_is_installed() -> None:
    ray = _requirements()["ray"]
    assert {"default", "train", "data", "tune"} <= set(ray.extras)
    floor = next(Version(s.version) for s in ray.specifier if s.operator == ">=")
    assert not any(s.operator == "==" for s in ray.specifier)
    assert Version("2.99") in ray.specifier and Version("3.0") not in ray.specifier
    installed = Version(importlib.metadata.version("ray"))
    assert installed in ray.specifier
    assert installed.release[:2] == floor.release[:2], "the floor is the Ray version tested"


def test_safetensors_is_declared() -> None:
    assert "safetensors" in _requirements()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: the last matching pattern wins, and a pattern
    excludes a folder with everything under it."""
    out = False
    parts = path.split("/")
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        pat = pat[3:] if pat.startswith("**/") else pat
        hit = any(
            fnmatch.fnmatch("/".join(parts[i:j]), pat)
            for i in range(len(parts))
            for j in range(i + 1, len(parts) + 1)
            if i == 0 or not pat.startswith("/")
        )
        if hit:
            out = not neg
    return out


def test_dockerignore_keeps_the_package_and_drops_local_state() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    needed = [
        "pyproject.toml",
        "README.md",
        "ehrsurv_dist/__init__.py",
        "ehrsurv_dist/train/modeling.py",
        "jobs/finetune_lora.yaml",
        "jobs/runtime_env.yaml",
        "scripts/demo.sh",
        "cluster/Dockerfile",
    ]
    assert [p for p in needed if _ignored(p, patterns)] == []
    local = [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/ft/model/model.safetensors",
        "demo_out/cohort/data/train/0.parquet",
        "ehrsurv_dist/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        "tests/out/predictions.parquet",
    ]
    assert [p for p in local if not _ignored(p, patterns)] == []
