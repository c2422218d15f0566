"""Config messages a new user meets: an unknown key suggests the key meant (``train.lr`` ->
``train.engine.lr``, not the section ``train``), the KEY=VALUE error's example is a valid key,
and the help the package cites is a command that exists (``ehrsurv config``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.config import load_config
from ehrsurv_dist.errors import ConfigError
from ehrsurv_dist.jobspec import JobSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "meant"),
    [
        ("train.lr=1e-3", "train.engine.lr"),  # the option lives one section deeper
        ("train.grad_clip=1", "train.engine.grad_clip"),
        ("lr=1e-3", "train.engine.lr"),  # no section at all
        ("train.epoch=2", "train.epochs"),  # a typo
        ("model.sizee=tiny", "model.size"),
    ],
)
def test_unknown_key_suggests_the_key_meant(override: str, meant: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobSpec, None, [override])
    assert f"did you mean '{meant}'?" in str(ei.value)
    load_config(JobSpec, None, [f"{meant}={override.split('=', 1)[1]}"])  # the suggestion works


def test_unknown_key_never_suggests_a_section_it_already_names() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(JobSpec, None, ["train.lr=1e-3"])
    assert "did you mean 'train'?" not in str(ei.value)


def test_key_value_example_is_a_valid_override() -> None:
    with pytest.raises(ConfigError, match="must look like KEY=VALUE") as ei:
        load_config(JobSpec, None, ["train.engine.lr"])
    example = re.search(r"e\.g\. (\S+=\S+)", str(ei.value))
    assert example, str(ei.value)
    spec = load_config(JobSpec, None, [example.group(1)])
    assert spec.train.engine.lr == pytest.approx(float(example.group(1).split("=")[1]))


def test_cited_config_help_is_a_real_command() -> None:
    """The package and its docs point to ``ehrsurv config``, a subcommand that exists; no flag
    ``--help-config`` (which never did) is cited anywhere."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "config" in sub.choices  # type: ignore[operator]
    cited = [
        str(p.relative_to(ROOT))
        for pattern in ("ehrsurv_dist/**/*.py", "docs/**/*.md", "*.md", "cluster/**/*.md")
        for p in ROOT.glob(pattern)
        if "--help-config" in p.read_text(encoding="utf-8")
    ]
    assert cited == []
    assert "``ehrsurv config``" in (ROOT / "ehrsurv_dist" / "jobspec.py").read_text()
