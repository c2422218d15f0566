"""The sweep's tables, plot and ``best.yaml`` (no Ray: formats rows that results.py collected).

Every file is written through :mod:`ehrsurv_dist.atomic`, so a reader never sees half of one.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ehrsurv_dist import atomic, rundir
from ehrsurv_dist.config import to_dict
from ehrsurv_dist.jobspec import JobSpec

PLOT_FILE = os.path.join(rundir.PLOTS, "tdc_vs_params.png")  # under the sweep's OUT

COLUMNS = [
    ("trial", "trial"),
    ("strategy", "strategy"),
    ("loss", "loss"),
    ("params", "other values"),
    ("trainable_params", "trainable params"),
    ("val_td_c", "val td-C (best)"),
    ("best_epoch", "best epoch"),
    ("epochs", "epochs"),
    ("status", "status"),
    ("tuning_ibs", "tuning IBS"),
    ("wall_s", "wall s"),
]


def markdown_table(rows: Sequence[Mapping[str, Any]], best: str | None = None) -> str:
    """The results as a Markdown table, best validation td-C first; ``best`` row in bold."""
    order = sorted(rows, key=lambda r: -(r["val_td_c"] if is_score(r["val_td_c"]) else -math.inf))
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = []
    for r in order:
        cells = [_cell(k, r.get(k)) for k, _ in COLUMNS]
        if best is not None and r["trial"] == best:
            cells = [f"**{c}**" if c else c for c in cells]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_results(out: str, rows: Sequence[Mapping[str, Any]], best: str | None = None) -> None:
    """``results.csv`` / ``.md`` / ``.json`` and the td-C vs parameters plot, atomically."""
    keys = [*dict.fromkeys(k for r in rows for k in r)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in keys})
    atomic.write_text(buf.getvalue(), os.path.join(out, "results.csv"))
    md = [
        "# Sweep results",
        "",
        "Validation td-C: the best epoch's time-dependent concordance on the `tuning` split "
        "(the score ASHA and the selection use). IBS: that epoch's model on `tuning`. "
        "status: completed, stopped (by the scheduler), error.",
        "",
        markdown_table(rows, best),
        "",
    ]
    atomic.write_text("\n".join(md), os.path.join(out, "results.md"))
    atomic.write_json({"best": best, "trials": list(rows)}, os.path.join(out, "results.json"))
    plot_tdc_vs_params(rows, os.path.join(out, PLOT_FILE))


def plot_tdc_vs_params(rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """Validation td-C against trainable parameters (log scale), one colour per strategy."""
    # matplotlib only here: importing the package (`ehrsurv tune --dry-run`) stays without it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, strategy in enumerate(("frozen", "lora", "full")):
        pts = [
            (r["trainable_params"], r["val_td_c"])
            for r in rows
            if r["strategy"] == strategy and is_score(r["val_td_c"]) and r["trainable_params"]
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=28, alpha=0.8, color=f"C{j}", label=f"{strategy} ({len(pts)})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("validation td-C (best epoch)")
    ax.set_title("td-C vs trainable parameters per strategy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    fig.tight_layout()
    atomic.write_png(fig, path, 110)


def write_best_yaml(spec: JobSpec, path: str, out: str, row: Mapping[str, Any]) -> None:
    """The best trial as a job file holding only what differs from the defaults."""
    diff = _diff(to_dict(spec), to_dict(JobSpec()))
    header = (
        f"Best trial {row['trial']} of the sweep in {out} "
        f"(validation td-C {num(row['val_td_c'])}, {row['trainable_params']} trainable "
        "parameters).\n"
        f"  ehrsurv finetune --config {path} --cohort COHORT --out RUN_DIR\n"
        "Every value below differs from the defaults; the sweep chose the tuned ones."
    )
    text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    text += yaml.safe_dump(diff, sort_keys=False, default_flow_style=False)
    atomic.write_text(text, path)


def _diff(value: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    """The nested keys of ``value`` whose values differ from ``default`` (empty sections left
    out)."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        d = default.get(k)
        if isinstance(v, Mapping) and isinstance(d, Mapping):
            sub = _diff(v, d)
            if sub:
                out[k] = sub
        elif v != d:
            out[k] = v
    return out


def is_score(x: Any) -> bool:
    """A score that exists: neither None nor NaN."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def num(x: Any) -> str:
    """A score to 4 decimals, ``n/a`` when there is none."""
    return f"{float(x):.4f}" if is_score(x) else "n/a"


def _cell(key: str, v: Any) -> str:
    """One Markdown table cell: scores to 4 decimals, parameters with thousands separators."""
    if v is None:
        return ""
    if key in ("val_td_c", "tuning_ibs", "tuning_td_c"):
        return num(v)
    if key == "trainable_params":
        return f"{int(v):,}"
    if key == "wall_s":
        return f"{float(v):.0f}"
    return str(v)
