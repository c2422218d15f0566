"""Unit tests for ehrsurv_dist.metrics.plots: PNG files written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrsurv_dist.metrics import calibration_at, risk_scores
from ehrsurv_dist.metrics.plots import plot_calibration, plot_risk_vs_length, plot_survival_curves

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
