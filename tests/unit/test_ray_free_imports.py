"""Ray only at the edges: every module but the edge ones imports with ``ray`` unimportable.

The edges are the modules whose job is Ray: the Ray Data module, the Train launcher and worker,
the Tune package, batch inference (evaluate), the CLI, the local-cluster helper and the benches
that run Ray. Everything else (models, objectives, metrics, the data stages, configs, the
training loop and engines) must stay usable in a notebook or a unit test without Ray.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import ehrsurv_dist

# Module names (or package prefixes, ending with ".") allowed to import Ray at import time.
EDGES = (
    "ehrsurv_dist.cli",
    "ehrsurv_dist.cluster",
    "ehrsurv_dist.evaluate",
    "ehrsurv_dist.tune",
    "ehrsurv_dist.bench.",
    "ehrsurv_dist.data.pipeline",
    "ehrsurv_dist.data.shards",
    "ehrsurv_dist.train.launch",
    "ehrsurv_dist.train.console",  # the launcher's and the workers' console (Ray Data's logger)
    "ehrsurv_dist.train.worker",
    "ehrsurv_dist.train.progress",
    "ehrsurv_dist.train.tracking_callback",
)


def _is_edge(name: str) -> bool:
    return any(name == e or name.startswith(e if e.endswith(".") else e + ".") for e in EDGES)


def _modules() -> list[str]:
    found = [
        m.name
        for m in pkgutil.walk_packages(ehrsurv_dist.__path__, prefix="ehrsurv_dist.")
        if not _is_edge(m.name)
    ]
    return sorted(found)


# Runs in a fresh interpreter: ``sys.modules["ray"] = None`` makes every ``import ray`` (and
# ``import ray.x``) raise ImportError, as on a machine without Ray.
_PROBE = """
import importlib, json, sys
sys.modules["ray"] = None
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{type(e).__name__}: {e}"
print(json.dumps(failed))
"""


def test_pure_modules_import_without_ray() -> None:
    modules = _modules()
    assert len(modules) > 30, modules  # the walk found the package
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules)],
        capture_output=True,
        text=True,
        check=True,
    )
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert failed == {}, "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_the_probe_catches_a_module_that_imports_ray(tmp_path: Path) -> None:
    (tmp_path / "needs_ray.py").write_text("import ray\n")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(["needs_ray", "json"])],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        },
    )
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(failed) == ["needs_ray"]
    assert "import of ray halted" in failed["needs_ray"]


def _ray_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import Ray, at any depth (a function-local import counts too)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(
            a.name == "ray" or a.name.startswith("ray.") for a in node.names
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            lines.append(node.lineno)
    return lines


def test_no_ray_import_outside_the_edges_even_inside_functions() -> None:
    """A lazy ``import ray`` inside a function passes the import probe but still ties the module
    to Ray; only the edge modules may have one."""
    root = Path(ehrsurv_dist.__file__).parent
    offenders = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("").as_posix().replace("/", ".")
        name = rel.removesuffix(".__init__")
        if not _is_edge(name) and (lines := _ray_imports(path)):
            offenders[name] = lines
    assert offenders == {}
