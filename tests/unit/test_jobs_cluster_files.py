"""jobs/ and cluster/: every file parses, every job loads, every command they name exists.

Commands are found in the files' comments and string values (and in the cluster docs): each
``ehrsurv ...`` or ``python -m ehrsurv_dist.cli ...`` command line is parsed by the real CLI
parser, so a renamed subcommand or option fails here; every ``jobs/``, ``scripts/`` or
``cluster/`` path they mention must exist.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.tune import TuneJobSpec, expand_trials

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
CLUSTER_YAML = sorted((ROOT / "cluster").rglob("*.yaml"))
RUNTIME_ENV = ROOT / "jobs" / "runtime_env.yaml"
DOCS = [ROOT / "cluster" / "README.md", ROOT / "docs" / "cluster.md", ROOT / "docs" / "tuning.md"]
REQUIRED_JOBS = {
    "smoke_cpu",
    "pretrain_mlm_nvp",
    "finetune_lora",
    "finetune_full",
    "tune_strategies",
    "tune_losses",
    "benchmark",
    "runtime_env",
}
CMD = re.compile(r"(?:^|[\s`(])(ehrsurv|python -m ehrsurv_dist\.cli)\s+(?=[a-z])")
PATH = re.compile(r"(?<![\w/.~-])((?:jobs|scripts|cluster)/[\w./-]*[\w])")


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_required_job_files_exist() -> None:
    assert REQUIRED_JOBS <= {p.stem for p in JOBS}
    assert (ROOT / "cluster" / "README.md").exists()
    kinds = {d.get("kind") for p in CLUSTER_YAML for d in yaml.safe_load_all(p.read_text()) if d}
    assert {"RayCluster", "RayJob"} <= kinds
    assert any(
        "available_node_types" in (yaml.safe_load(p.read_text()) or {}) for p in CLUSTER_YAML
    )


@pytest.mark.parametrize("path", [p for p in JOBS if p != RUNTIME_ENV], ids=_ids)
def test_every_job_file_loads_and_opens_with_its_command(path: Path) -> None:
    raw = yaml.safe_load(path.read_text()) or {}
    if "tune" in raw:
        spec = load_config(TuneJobSpec, path)
        assert expand_trials(spec)  # every trial is a valid job
    else:
        load_config(JobSpec, path)
    text = path.read_text()
    assert text.startswith("#"), "a job file opens with a comment giving its command"
    header = text.split("\n" + raw_first_key(text), 1)[0]
    assert f"--config jobs/{path.name}" in header, "the header names the command that runs it"
    assert "Why each value differs from the defaults" in header


def raw_first_key(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln and not ln.startswith("#"))


def test_runtime_env_is_a_ray_runtime_env() -> None:
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    allowed = {"env_vars", "pip", "conda", "py_modules", "working_dir", "excludes", "uv"}
    assert set(env) <= allowed and all(isinstance(v, str) for v in env["env_vars"].values())


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _logical_lines(lines: list[str]) -> Iterator[str]:
    """Lines with shell continuations (a trailing backslash) joined."""
    buf = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
        else:
            yield buf + line
            buf = ""
    if buf:
        yield buf


def _texts(path: Path) -> Iterator[str]:
    """Where commands live: comments and string values of YAML; Markdown code blocks."""
    text = path.read_text()
    if path.suffix == ".yaml":
        comments = [
            re.sub(r"^\s*#\s?", "", ln) for ln in text.splitlines() if ln.lstrip().startswith("#")
        ]
        yield from _logical_lines(comments)
        for doc in yaml.safe_load_all(text):
            yield from _strings(doc)
    else:  # Markdown: the fenced code blocks
        blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)
        yield from _logical_lines("\n".join(blocks).splitlines())


def _commands(text: str) -> Iterator[list[str]]:
    """The argument lists of the ehrsurv commands in ``text`` (up to a shell operator)."""
    for m in CMD.finditer(text):
        rest = re.split(r"`|\s(?:\||&&|;|&|>|2>)\s|\)$|\s#\s", text[m.end() :])[0]
        yield shlex.split(rest.replace("$(", "").replace(")", " "))


ALL_FILES = JOBS + CLUSTER_YAML + [p for p in DOCS if p.exists()]


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids)
def test_commands_parse_and_named_files_exist(path: Path) -> None:
    parser = build_parser()
    n = 0
    for text in _texts(path):
        for argv in _commands(text):
            n += 1
            try:
                parser.parse_args(argv)
            except (SystemExit, argparse.ArgumentError):
                pytest.fail(f"{path.name}: `ehrsurv {' '.join(argv)}` does not parse")
        for p in PATH.findall(text):
            target = ROOT / p
            assert target.exists(), f"{path.name} names {p}, which does not exist"
    if path.parent.name == "jobs" and path != RUNTIME_ENV:
        assert n >= 1, f"{path.name} gives no ehrsurv command"
    if path.name in ("rayjob-pretrain.yaml", "ray-cluster.yaml", "raycluster.yaml"):
        assert n >= 1, f"{path.name} names no entrypoint"
