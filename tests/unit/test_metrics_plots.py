"""Unit tests for ehrsurv_dist.metrics.plots: PNG files written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrsurv_dist.metrics import calibration_at, risk_scores
from ehrsurv_dist.metrics.plots import (
    km_by_risk_group,
    plot_calibration,
    plot_km_by_risk_group,
    plot_risk_vs_length,
    plot_survival_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def split() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    T = rng.integers(0, 9, size=80)
    E = rng.random(80) < 0.4
    hz = [rng.uniform(0.0, 0.3, size=t + 1) for t in T]
    return hz, T, E


def assert_png(path: Path, folder: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000  # a real figure, not an empty canvas
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []  # no temp left


def test_plot_survival_curves_writes_png(tmp_path: Path, split) -> None:
    hz, T, E = split
    out = plot_survival_curves(hz, T, tmp_path / "plots" / "surv.png", event=E, horizon=12)
    assert out == tmp_path / "plots" / "surv.png"  # parent folder created
    assert_png(out, tmp_path / "plots")


def test_plot_calibration_from_result_and_dict(tmp_path: Path, split) -> None:
    hz, T, E = split
    cal = calibration_at(hz, T, E, horizon=4, n_bins=5)
    a = plot_calibration(cal, tmp_path / "cal.png")
    b = plot_calibration(cal.as_dict(), tmp_path / "cal2.png")
    assert_png(a, tmp_path)
    assert_png(b, tmp_path)
    with pytest.raises(ValueError, match="calibration: missing keys"):
        plot_calibration({"horizon": 4}, tmp_path / "bad.png")


def test_plot_risk_vs_length_overwrites_atomically(tmp_path: Path, split) -> None:
    hz, T, E = split
    target = tmp_path / "risk_len.png"
    target.write_bytes(b"old")
    out = plot_risk_vs_length(risk_scores(hz, T), T, target, event=E, risk_name="mean_hazard")
    assert_png(out, tmp_path)
    with pytest.raises(ValueError, match="risk: length"):
        plot_risk_vs_length(np.zeros(3), T, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _naive_km(times: np.ndarray, events: np.ndarray, at: float) -> float:
    """Product-limit estimate at ``at`` by a plain loop over the distinct event times."""
    s = 1.0
    for t in sorted(set(times[events].tolist())):
        if t > at:
            break
        at_risk = int((times >= t).sum())
        died = int(((times == t) & events).sum())
        s *= 1 - died / at_risk
    return s


def test_km_by_risk_group_matches_a_naive_product_limit_and_mean_prediction(split) -> None:
    hz, T, E = split
    risk = risk_scores(hz, T, "mean_hazard")
    groups = km_by_risk_group(hz, risk, T, E, groups=3)
    assert [g["n"] for g in groups] == [27, 27, 26]
    assert sum(g["events"] for g in groups) == int(E.sum())
    # lowest risk first, groups do not overlap
    assert all(
        a["risk_range"][1] <= b["risk_range"][0]
        for a, b in zip(groups[:-1], groups[1:], strict=True)
    )
    order = np.argsort(risk, kind="stable")
    for g, part in zip(groups, np.array_split(order, 3), strict=True):
        time = T[part] + 0.5 * E[part]  # docs/design.md §4 time scale
        for t, s in zip(g["km_time"], g["km_survival"], strict=True):
            assert s == pytest.approx(_naive_km(time, E[part], t), abs=1e-12)
        # mean predicted S(k - 1): cumulative product, last hazard held beyond T
        for k in (0, 1, 4, 9):
            vals = []
            for i in part:
                h = np.concatenate([hz[i], np.full(12, hz[i][-1])])
                vals.append(1.0 if k == 0 else float(np.prod(1 - h[:k])))
            assert g["pred_survival"][k] == pytest.approx(np.mean(vals), abs=1e-12)


def test_plot_km_by_risk_group_writes_png(tmp_path: Path, split) -> None:
    hz, T, E = split
    risk = risk_scores(hz, T, "mean_hazard")
    out = plot_km_by_risk_group(hz, risk, T, E, tmp_path / "km.png", risk_name="mean_hazard")
    assert_png(out, tmp_path)
