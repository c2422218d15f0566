"""Cells of the benchmark tables (``SUMMARY.md``), shared by the visit and calendar benches."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def cell(x: Any, nd: int = 4) -> str:
    """A number as a table cell: ``–`` for none or not finite, thousands for ints, ``nd``
    decimals otherwise."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{nd}f}"


def td_ci_cell(row: dict[str, Any]) -> str:
    """A row's held-out td-C with its 95% interval when it has one: ``0.7717 [0.757, 0.785]``."""
    ci = row.get("c_index_td_ci")
    td = cell(row.get("c_index_td"))
    if ci and None not in ci:
        td += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return td


def difference(a: Any, b: Any) -> float | None:
    """``a − b``, or None when either is missing."""
    if a is None or b is None:
        return None
    return float(a) - float(b)


def json_appendix(r: Mapping[str, Any]) -> list[str]:
    """The closing lines of a ``SUMMARY.md``: ``bench.json``'s content as a JSON block."""
    return ["```json", json.dumps(dict(r), indent=2), "```", ""]
