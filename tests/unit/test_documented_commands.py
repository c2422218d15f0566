"""Every documented training command resolves, and the docs are true to the tree.

- Every ``ehrsurv pretrain|finetune|tune ...`` command line (also as ``python -m
  ehrsurv_dist.cli ...`` after ``ray job submit ... --``) in README.md, docs/*.md,
  cluster/README.md and the comments of jobs/*.yaml is parsed by the real CLI parser and its
  config resolved as the command would (job file + overrides + --cohort/--init/task
  shortcuts; every trial of a sweep), without running anything: a job file that does not exist,
  an unknown key or a bad value fails here.
- A documented chain, ``pretrain --out P`` then ``finetune|tune --init P``, builds the same
  encoder at both ends (model architecture, size, sequence length), checked with the same
  function that refuses a mismatched ``--init`` before Ray starts.
- Every path README.md's layout section names exists, and it lists every guide in docs/.
- No doc names a file that is not in the repository (DESIGN.md, seed-spec, ../shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ehrsurv_dist.cli import build_parser
from ehrsurv_dist.cli.args import job_overrides
from ehrsurv_dist.config import load_config
from ehrsurv_dist.jobspec import JobSpec
from ehrsurv_dist.train import modeling
from ehrsurv_dist.tune import TuneJobSpec, expand_trials
from ehrsurv_dist.tune.search_space import job_spec, trial_spec

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
TRAIN = ("pretrain", "finetune", "tune")
CMD = re.compile(
    r"(?:^|[\s`(])(?:ehrsurv|python -m ehrsurv_dist\.cli)\s+(pretrain|finetune|tune)\b"
)
# a synopsis, not a command: [optional] parts, {a,b} choices, a|b, … or a glob
SYNOPSIS = re.compile(r"[\[\]{}|…*]")
VOCAB = 100  # any vocabulary: the chain check compares shapes at the same size


@dataclass
class Command:
    where: str  # file:line
    argv: list[str]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _joined(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Lines with shell continuations (a trailing backslash) joined; numbered by their first."""
    buf, first = "", 0
    for n, line in lines:
        if not buf:
            first = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
        else:
            yield first, buf + line
            buf = ""
    if buf:
        yield first, buf


def _texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) where commands live: Markdown code blocks and inline code, YAML comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".yaml":
        yield from _joined(
            [(i + 1, re.sub(r"^\s*#\s?", "", ln)) for i, ln in enumerate(lines) if "#" in ln]
        )
        return
    fenced: list[tuple[int, str]] = []
    inside = False
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            fenced.append((i + 1, ln))
        else:
            for span in re.findall(r"`([^`]+)`", ln):
                yield i + 1, span
    yield from _joined(fenced)


def _argv(text: str) -> Iterator[list[str]]:
    for m in CMD.finditer(text):
        rest = re.split(r"`|\s(?:\||&&|;|&|>|2>)\s|\)$|\s#\s", text[m.start(1) :])[0]
        if SYNOPSIS.search(rest) or " --" not in rest:  # a synopsis, or prose naming a command
            continue
        yield shlex.split(rest.replace("$(", "").replace(")", " "))


def documented_commands() -> list[Command]:
    found = []
    for path in [*DOCS, *JOBS]:
        for n, text in _texts(path):
            for argv in _argv(text):
                found.append(Command(f"{_rel(path)}:{n}", argv))
    return found


COMMANDS = documented_commands()


def test_the_docs_document_training_commands() -> None:
    """The scan finds what it is for (a broken scan would pass every check below)."""
    by_cmd = {c: [x for x in COMMANDS if x.argv[0] == c] for c in TRAIN}
    assert all(len(v) >= 3 for v in by_cmd.values()), {k: len(v) for k, v in by_cmd.items()}
    where = {c.where.split(":")[0] for c in COMMANDS}
    for f in ("cluster/README.md", "docs/training.md", "docs/tuning.md", "docs/cluster.md"):
        assert f in where, f
    assert {f"jobs/{p.name}" for p in JOBS if p.stem != "runtime_env"} <= where
    assert any("--init" in c.argv for c in COMMANDS)


def _resolve(cmd: Command) -> tuple[argparse.Namespace, list[JobSpec]]:
    """The command's job(s) as it would run them: one spec, or one per trial of a sweep."""
    try:
        args = build_parser().parse_args(cmd.argv)
    except SystemExit:
        pytest.fail(f"{cmd.where}: `ehrsurv {shlex.join(cmd.argv)}` does not parse")
    config = args.config
    if config is not None and (config.startswith("jobs/") or (ROOT / config).exists()):
        assert (ROOT / config).is_file(), f"{cmd.where}: --config {config} does not exist"
        config = ROOT / config
    elif config is not None:  # a file a run writes (a sweep's best.yaml): the overrides only
        config = None
    if args.command == "tune":
        tspec = load_config(TuneJobSpec, config, job_overrides(args))
        base = job_spec(tspec)
        return args, [trial_spec(base, t) for t in expand_trials(tspec)]
    return args, [load_config(JobSpec, config, job_overrides(args))]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c.where} {c.argv[0]}")
def test_documented_command_resolves(cmd: Command) -> None:
    _, specs = _resolve(cmd)
    assert specs and all(isinstance(s, JobSpec) for s in specs)


def _pretrained() -> dict[str, list[tuple[str, JobSpec]]]:
    """--out of every documented pretraining -> [(where, spec)]."""
    out: dict[str, list[tuple[str, JobSpec]]] = {}
    for c in COMMANDS:
        if c.argv[0] == "pretrain":
            args, (spec,) = _resolve(c)
            out.setdefault(args.out, []).append((c.where, spec))
    return out


def _chains() -> list[tuple[Command, str, JobSpec]]:
    """Each documented --init of a documented pretraining run: (command, where the
    pretraining is documented, its spec); one in the same file first."""
    pre = _pretrained()
    chains = []
    for c in COMMANDS:
        if c.argv[0] == "pretrain" or "--init" not in c.argv:
            continue
        init = c.argv[c.argv.index("--init") + 1]
        runs = pre.get(init, [])
        same_file = [r for r in runs if r[0].split(":")[0] == c.where.split(":")[0]]
        # the pretraining above it in the same file, else every documented one of that path
        for where, spec in same_file[-1:] or runs:
            chains.append((c, where, spec))
    return chains


CHAINS = _chains()


def _export_of(spec: JobSpec) -> dict[str, object]:
    """The config.json fields of what a pretraining run of ``spec`` exports."""
    cfg = modeling.model_config(spec, VOCAB)
    return {
        "model_type": type(cfg).__name__,
        "model_config": dataclasses.asdict(cfg),
        "job_model": dataclasses.asdict(spec.model),
    }


def test_the_cluster_chain_is_documented() -> None:
    """jobs/pretrain_mlm_nvp.yaml's run initialises the fine-tuning and tuning jobs."""
    users = {c.where.split(":")[0] for c, where, _ in CHAINS if "pretrain_mlm_nvp" in where}
    for f in ("finetune_lora", "finetune_full", "tune_losses", "tune_strategies"):
        assert f"jobs/{f}.yaml" in users, f


@pytest.mark.parametrize("chain", CHAINS, ids=lambda ch: f"{ch[0].where} <- {ch[1]}")
def test_documented_init_fits_its_pretraining(chain: tuple[Command, str, JobSpec]) -> None:
    cmd, where, pre = chain
    _, specs = _resolve(cmd)
    for spec in specs:
        why = modeling.init_mismatch(_export_of(pre), spec, VOCAB)
        assert why is None, f"{cmd.where}: --init of the run of {where}: {why}"


def test_the_chain_check_catches_another_size() -> None:
    small = load_config(JobSpec, None, ["model.size=small"])
    medium = load_config(JobSpec, None, ["model.size=medium"])
    why = modeling.init_mismatch(_export_of(medium), small, VOCAB)
    assert why is not None and "model.size=medium" in why


# --------------------------------------------------------------------------------------------
# README's layout, and references to files outside the repository


def _layout_paths() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```\n(.*?)```", section, flags=re.S)[0]
    paths: list[str] = []
    top = ""
    for line in block.splitlines():
        if line and not line[0].isspace():
            top, line = line.split(None, 1)[0], line.split(None, 1)[1] if " " in line else ""
            paths.append(top)
        # named files and folders: word.py, word.md, word/ (not inside a phrase like "a/b")
        for name in re.findall(r"(?<![\w/.`-])([\w-]+(?:\.py|\.md|/))(?![\w/])", line):
            paths.append(top + name)
    return paths


def test_readme_layout_is_true_to_the_tree() -> None:
    paths = _layout_paths()
    assert len(paths) > 30  # the parse found the section
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert missing == []
    listed = set(paths)
    guides = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert guides - listed == set(), "README's layout leaves out a guide in docs/"
    tests = {f"tests/{p.name}/" for p in (ROOT / "tests").iterdir() if p.is_dir()}
    assert tests - {"tests/__pycache__/"} <= listed, "README's layout leaves out a test tier"
    package = {
        f"ehrsurv_dist/{p.name}" + ("/" if p.is_dir() else "")
        for p in (ROOT / "ehrsurv_dist").iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
    }
    assert package - listed == set(), "README's layout leaves out a module of the package"


def test_readme_paths_exist() -> None:
    """Every repository path README.md names in code spans or links exists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\]\(([^)#]+)\)", text))  # links
    tops = tuple(f"{p.name}/" for p in ROOT.iterdir() if p.is_dir() and p.name != ".git")
    named |= {
        p
        for p in re.findall(r"[`(](\.?[\w-]+/[\w./-]*[\w])", text)
        if p.startswith(tops) and not p.startswith("jobs/X")
    }
    assert named
    assert [p for p in sorted(named) if not (ROOT / p).exists()] == []


FOREIGN = ("DESIGN.md", "seed-spec", "../shared")


CODE = sorted((ROOT / "ehrsurv_dist").rglob("*.py")) + sorted(
    p for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name
)


@pytest.mark.parametrize("path", [*DOCS, *JOBS, *CODE], ids=_rel)
def test_docs_name_no_file_outside_the_repository(path: Path) -> None:
    """Docs, job files and the code's docstrings and comments cite the repository's own pages
    (docs/design.md states the design decisions), never files a reader does not have."""
    text = path.read_text(encoding="utf-8")
    hits = [
        f"{_rel(path)}:{i + 1}: {ln.strip()}"
        for i, ln in enumerate(text.splitlines())
        if any(f in ln for f in FOREIGN)
    ]
    assert hits == []
