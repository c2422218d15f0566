"""`ehrsurv synth` then `ehrsurv validate`, as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ehrsurv_dist.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_synth_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "c"
    r = _cli("synth", "--preset", "smoke", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "oracle on held_out" in r.stdout
    rep = json.loads((out / "synth_report.json").read_text())
    assert rep["subjects"] == 200 and 0 < rep["events"] < 200
    for name in ("hazard", "hazard_observable"):
        for metric in ("c_index_td", "c_index_harrell"):
            assert 0.4 < rep["oracle_held_out"][name][metric] <= 1.0
        assert 0.05 < rep["oracle_held_out"][name]["ibs"] < 0.3
    # the frailty is information a model cannot have: the true hazards calibrate better
    assert (
        rep["oracle_held_out"]["hazard"]["ibs"] < rep["oracle_held_out"]["hazard_observable"]["ibs"]
    )
    assert sum(rep["split_sizes"].values()) == 200
    v = _cli("validate", str(out), "--json", str(tmp_path / "rep.json"))
    assert v.returncode == 0, v.stdout + v.stderr
    assert "OK: 0 error(s), 0 warning(s)" in v.stdout
    assert json.loads((tmp_path / "rep.json").read_text())["n_subjects"] == 200


def test_synth_refuses_non_empty_out_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    r = _cli("synth", "--preset", "smoke", "--quiet", "--out", str(tmp_path))
    assert r.returncode == 2
    assert "not empty" in r.stderr and "Traceback" not in r.stderr


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    r = _cli("synth", "--subjects", "0", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "positive integer" in r.stderr
    r = _cli("validate", str(tmp_path / "missing"))
    assert r.returncode == 1 and "empty_cohort" in r.stdout


def test_help_explains_every_option() -> None:
    import argparse

    from ehrsurv_dist.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert subs.choices, "no subcommands"
    for name, sub in subs.choices.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            assert action.help and len(action.help) > 10, f"{name} {action.dest} has no help"
        r = _cli(name, "--help")
        assert r.returncode == 0 and "usage: ehrsurv " + name in r.stdout


def test_synth_defaults_and_choices_are_synth_config_and_presets() -> None:
    import dataclasses
    from typing import get_args, get_type_hints

    from ehrsurv_dist.cli import build_parser
    from ehrsurv_dist.config import PRESETS, SynthConfig

    args = build_parser().parse_args(["synth", "--out", "x"])
    for f in dataclasses.fields(SynthConfig):
        assert getattr(args, f.name) == getattr(SynthConfig(), f.name), f.name
    choices = get_args(get_type_hints(SynthConfig)["preset"])
    assert choices == tuple(PRESETS)
    (preset,) = [
        a
        for a in build_parser()._subparsers._group_actions[0].choices["synth"]._actions
        if a.dest == "preset"
    ]  # type: ignore[union-attr]
    assert tuple(preset.choices or ()) == choices
