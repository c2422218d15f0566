"""Every output file appears complete or not at all (temp file in the same folder, then rename).

Two kinds of test:

- a static check over ``ehrsurv_dist/``: every call that writes a file (``open(..., "w")``,
  ``torch.save``, ``pq.write_table``, ``.savefig``, ``json.dump``, ``.write_text``, ...) sits in a
  function that renames a temporary file into place (``os.replace`` / ``io.atomic_path``), or is
  on a short list of reviewed exceptions. A plain write reintroduced anywhere fails it.
- interruption tests: a write killed half-way (``KeyboardInterrupt`` after some bytes are on
  disk) leaves no file that looks finished, and an older complete file stays as it was.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrsurv_dist import atomic

PKG = Path(__file__).resolve().parents[2] / "ehrsurv_dist"

WRITE_ATTRS = {
    "savefig",
    "write_table",
    "write_text",
    "write_bytes",
    "to_parquet",
    "to_csv",
    "ParquetWriter",
    "write_dataset",
    "write_feather",
}
WRITE_FUNCS = {("torch", "save"), ("json", "dump"), ("np", "save"), ("yaml", "safe_dump")}
ATOMIC_MARKERS = ("os.replace(", "atomic_path(")
ATOMIC_MODULE = "atomic.py"

# (file, function): why a plain write is fine there.
REVIEWED = {
    ("testing.py", "write_cohort"): "builds input cohorts for tests, not a command output",
    ("testing.py", "drift_shards"): "rewrites input cohorts for tests, not a command output",
    ("tune/placement_groups.py", "after_worker_group_start"): (
        "an internal append-only record of placement groups (one short line per worker-group "
        "start), not an output a user reads"
    ),
}


def _mode(call: ast.Call) -> str | None:
    args = call.args[1:2] + [k.value for k in call.keywords if k.arg == "mode"]
    for a in args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            return a.value
    return None


def _is_write(call: ast.Call) -> str | None:
    f = call.func
    if (
        isinstance(f, ast.Name)
        and f.id == "open"
        or (isinstance(f, ast.Attribute) and f.attr == "fdopen")
    ):
        mode = _mode(call)
        return f"open(mode={mode!r})" if mode and set(mode) & set("wax") else None
    if isinstance(f, ast.Attribute):
        if isinstance(f.value, ast.Name) and f.value.id == "atomic":
            return None  # the package's one atomic writer (ehrsurv_dist/atomic.py)
        if isinstance(f.value, ast.Name) and (f.value.id, f.attr) in WRITE_FUNCS:
            has_stream = len(call.args) >= 2 or any(k.arg == "stream" for k in call.keywords)
            if f.attr == "safe_dump" and not has_stream:
                return None  # no stream: returns a string
            return f"{f.value.id}.{f.attr}"
        if f.attr in WRITE_ATTRS:
            return f".{f.attr}"
    if isinstance(f, ast.Name) and f.id in WRITE_ATTRS:
        return f.id
    return None


def plain_writes(root: Path = PKG) -> list[str]:
    """``file:line function: call`` for every write not in an atomic function or REVIEWED."""
    found: list[tuple[str, int, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == ATOMIC_MODULE:
            continue  # the writer itself: everything in it writes to a temporary path
        src = path.read_text(encoding="utf-8")
        tree = ast.parse(src)
        funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or (what := _is_write(node)) is None:
                continue
            owner = min(
                (f for f in funcs if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)),
                key=lambda f: (f.end_lineno or f.lineno) - f.lineno,
                default=None,
            )
            name = owner.name if owner else "<module>"
            body = ast.get_source_segment(src, owner) or "" if owner else ""
            if any(m in body for m in ATOMIC_MARKERS) or (rel, name) in REVIEWED:
                continue
            found.append((rel, node.lineno, node.col_offset, f"{rel}:{node.lineno} {name}: {what}"))
    return [f[-1] for f in sorted(found)]


def test_no_plain_writes_in_the_package() -> None:
    assert plain_writes() == []


def test_every_reviewed_exception_still_exists() -> None:
    """A stale entry would silently exempt whatever later takes that name."""
    for rel, func in REVIEWED:
        tree = ast.parse((PKG / rel).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert func in names, (rel, func)


def test_the_static_check_catches_a_plain_write(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import json, torch\n"
        "def export(obj, path):\n    torch.save(obj, path)\n"
        "def report(d, path):\n    with open(path, 'w') as f:\n        json.dump(d, f)\n"
        "def plot(fig, path):\n    fig.savefig(path)\n"
        "def fine(obj, path):\n"
        "    tmp = path + '.tmp'\n    torch.save(obj, tmp)\n    os.replace(tmp, path)\n"
        "def read(path):\n    return open(path).read()\n"
    )
    assert [w.split(" ", 1)[1] for w in plain_writes(tmp_path)] == [
        "export: torch.save",
        "report: open(mode='w')",
        "report: json.dump",
        "plot: .savefig",
    ]


# --------------------------------------------------------------------------------------------
# Interrupted writes


class _Killed(KeyboardInterrupt):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_interrupted_parquet_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pq.write_table

    def dies_half_way(table: pa.Table, where: str, **kw: object) -> None:
        real(table.slice(0, 10), where)  # some bytes are on disk...
        raise _Killed  # ...then the process is interrupted

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    target = tmp_path / "predictions.parquet"
    with pytest.raises(_Killed):
        atomic.write_parquet(pa.table({"x": np.arange(1000)}), str(target))
    assert _leftovers(tmp_path) == []  # neither the target nor the temp file


def test_interrupted_json_keeps_the_old_complete_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic.write_json({"held_out": {"c_index_td": 0.7}}, str(target))
    with pytest.raises(TypeError):  # fails half-way through the dump
        atomic.write_json({"held_out": {"c_index_td": 0.8}, "z": object()}, str(target))
    assert json.loads(target.read_text()) == {"held_out": {"c_index_td": 0.7}}
    assert _leftovers(tmp_path) == ["metrics.json"]


def test_interrupted_plot_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from ehrsurv_dist.metrics import plots

    real = Figure.savefig

    def dies(self: Figure, f: object, **kw: object) -> None:
        real(self, f, **kw)
        raise _Killed

    monkeypatch.setattr(Figure, "savefig", dies)
    hz = [np.array([0.1, 0.2, 0.3], np.float32), np.array([0.2, 0.1], np.float32)]
    with pytest.raises(_Killed):
        plots.plot_survival_curves(hz, np.array([2, 1]), str(tmp_path / "survival_held_out.png"))
    assert _leftovers(tmp_path) == []


def test_interrupted_predict_leaves_no_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_untrained_run: Any
) -> None:
    """``predict`` killed while writing its Parquet: no file at --out (single-process path)."""
    from ehrsurv_dist import schema as S
    from ehrsurv_dist.evaluate import predict_cohort
    from ehrsurv_dist.testing import write_cohort

    rows = []
    for s in range(1, 9):
        rows += [(s, "1960-01-01", S.BIRTH_CODE), (s, "2020-01-01", "A"), (s, "2020-02-01", "B")]
    cohort = write_cohort(
        tmp_path / "c", rows, [(s, s % 2 == 0, "2020-06-01") for s in range(1, 9)]
    )
    run = str(tmp_path / "run")
    make_untrained_run(cohort, run, ["model.size=tiny", "train.min_free_gb=0"])
    out_dir = tmp_path / "pred"
    out_dir.mkdir()
    real = pq.write_table

    def dies_half_way(table: pa.Table, where: str, **kw: object) -> None:
        real(table.slice(0, 2), where)
        raise _Killed

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(_Killed):
        predict_cohort(run, cohort, str(out_dir / "predictions.parquet"), use_ray=False)
    assert _leftovers(out_dir) == []
    monkeypatch.setattr(pq, "write_table", real)
    assert (
        predict_cohort(run, cohort, str(out_dir / "predictions.parquet"), use_ray=False).subjects
        == 8
    )
    assert _leftovers(out_dir) == ["predictions.parquet"]  # the same call, uninterrupted


def test_atomic_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; an output must be readable as a plain open() would make it."""
    old = os.umask(0o022)
    try:
        atomic.write_text("x", tmp_path / "a.txt")
        atomic.write_parquet(pa.table({"a": [1]}), tmp_path / "b.parquet")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.parquet").stat().st_mode & 0o777 == 0o644
