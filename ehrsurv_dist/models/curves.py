"""Hazards, survival curves and scalar risk scores from per-visit logits (DESIGN.md §2, §4).

Semantics: ``h_t = sigmoid(logit_t)`` is the probability of the event in the interval after visit
t, given no event so far and the history up to visit t. ``S(t) = prod_{s<=t} (1 - h_s)`` is
computed in log space, ``log(1 - h) = logsigmoid(-logit)``. Visit slots that are not real
(``visit_mask`` False) inside a subject's history contribute ``h = 0``. Beyond a subject's last real
visit T the curve holds the last hazard ``h_T`` constant (DESIGN.md §2).

The torch functions take logits; the ``*_np`` functions take hazards (what the predictions Parquet
stores) so that the numpy metrics code can use the same definitions.

Shape vocabulary: ``B`` batch, ``V`` visit slots, ``K`` time steps of a curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RiskScore = Literal["mean_hazard", "horizon", "first_n"]
RISK_SCORES: tuple[str, ...] = ("mean_hazard", "horizon", "first_n")


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | None = None,
    dtype: torch.dtype | None = None,
    floating: bool = False,
) -> Tensor:
    """Validate one tensor argument; shared by models, curves and objectives.

    Args:
        x: the value to check.
        name: the argument name, used in the error message.
        ndim: required number of dimensions, if any.
        dtype: required dtype, if any.
        floating: require a floating-point dtype.

    Returns:
        ``x``, typed as a Tensor.

    Raises:
        ValueError: naming ``name`` when ``x`` is not a tensor or has the wrong rank or dtype.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _check_logits_mask(logits: Tensor, visit_mask: Tensor) -> None:
    check_tensor(logits, "logits", ndim=2, floating=True)
    check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
    if visit_mask.shape != logits.shape:
        raise ValueError(
            f"visit_mask shape {tuple(visit_mask.shape)} != logits shape {tuple(logits.shape)}"
        )


def last_real_visit(visit_mask: Tensor) -> Tensor:
    """Index of each subject's last real visit slot.

    Args:
        visit_mask: bool [B, V], True = real visit slot.

    Returns:
        int64 [B]; -1 for a subject without any real visit.
    """
    check_tensor(visit_mask, "visit_mask", ndim=2, dtype=torch.bool)
    idx = torch.arange(visit_mask.shape[1], device=visit_mask.device)
    return torch.where(visit_mask, idx, -1).amax(dim=1)


def hazards_from_logits(logits: Tensor, visit_mask: Tensor) -> Tensor:
    """Per-visit hazards ``sigmoid(logits)``, exactly 0 on visit slots that are not real.

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].

    Returns:
        float [B, V] in [0, 1].
    """
    _check_logits_mask(logits, visit_mask)
    return torch.where(visit_mask, torch.sigmoid(logits), torch.zeros_like(logits))


def log_survival(logits: Tensor, visit_mask: Tensor, num_steps: int | None = None) -> Tensor:
    """``log S(t)`` for t = 0..K-1, holding the last real hazard constant beyond it.

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].
        num_steps: K, the curve length (default V); may exceed V.

    Returns:
        float [B, K], non-increasing along K. A subject without real visits gets 0 (S = 1).
    """
    _check_logits_mask(logits, visit_mask)
    K = logits.shape[1] if num_steps is None else num_steps
    if K < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    log_1m_h = torch.where(visit_mask, F.logsigmoid(-logits), torch.zeros_like(logits))  # [B, V]
    last = last_real_visit(visit_mask)  # [B]
    t = torch.arange(K, device=logits.device)  # [K]
    within = t[None, :] <= last[:, None]  # [B, K]
    # t itself up to T, then T again (T <= V - 1, so every index is in range)
    idx = torch.where(within, t[None, :], last.clamp(min=0)[:, None])  # [B, K]
    steps = log_1m_h.gather(1, idx)  # [B, K]
    steps = torch.where((last >= 0)[:, None], steps, torch.zeros_like(steps))
    return steps.cumsum(dim=1)


def survival_curve(logits: Tensor, visit_mask: Tensor, num_steps: int | None = None) -> Tensor:
    """``S(t) = prod_{s<=t} (1 - h_s)`` for t = 0..K-1 (see :func:`log_survival`).

    Returns:
        float [B, K] in [0, 1].
    """
    return log_survival(logits, visit_mask, num_steps).exp()


def risk_score(
    logits: Tensor,
    visit_mask: Tensor,
    method: RiskScore = "mean_hazard",
    *,
    horizon: int | None = None,
    first_n: int | None = None,
) -> Tensor:
    """Scalar risk per subject (DESIGN.md §4); higher = earlier expected event.

    - ``mean_hazard``: mean of h_t over the real visits (seed default).
    - ``horizon``: ``1 - S(min(k, T))`` with k = ``horizon`` and T the last real visit.
    - ``first_n``: mean of h_t over the first ``first_n`` real visits (seed's length-bias fix).

    Args:
        logits: float [B, V].
        visit_mask: bool [B, V].
        method: one of ``RISK_SCORES``.
        horizon: k >= 0, required for ``horizon``.
        first_n: n >= 1, required for ``first_n``.

    Returns:
        float [B]; 0 for a subject without real visits.

    Raises:
        ValueError: unknown ``method`` or a missing/invalid ``horizon`` / ``first_n``.
    """
    _check_logits_mask(logits, visit_mask)
    if method == "mean_hazard":
        h = hazards_from_logits(logits, visit_mask)
        return h.sum(1) / visit_mask.sum(1).clamp(min=1).to(h.dtype)
    if method == "horizon":
        if horizon is None or horizon < 0:
            raise ValueError(f"horizon must be an int >= 0 for method='horizon', got {horizon}")
        last = last_real_visit(visit_mask)
        at = torch.minimum(last, torch.full_like(last, horizon)).clamp(min=0)  # [B]
        log_s = log_survival(logits, visit_mask).gather(1, at[:, None]).squeeze(1)  # [B]
        return -torch.expm1(log_s)
    if method == "first_n":
        if first_n is None or first_n < 1:
            raise ValueError(f"first_n must be an int >= 1 for method='first_n', got {first_n}")
        rank = visit_mask.long().cumsum(1)  # [B, V], 1-based rank among real visits
        keep = visit_mask & (rank <= first_n)
        h = hazards_from_logits(logits, keep)
        return h.sum(1) / keep.sum(1).clamp(min=1).to(h.dtype)
    raise ValueError(f"method must be one of {RISK_SCORES}, got {method!r}")


# --- numpy versions (hazards in, for the metrics code) -------------------------------------------


def pad_ragged(hazards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad per-subject hazard arrays (length T + 1 each) into a dense matrix.

    Args:
        hazards: N arrays of shape [T_i + 1].

    Returns:
        ``(h, mask)``: float64 [N, V] with 0 on padding, bool [N, V]; V = max length (>= 1).
    """
    n = len(hazards)
    width = max([len(h) for h in hazards] + [1])
    out = np.zeros((n, width), dtype=np.float64)
    mask = np.zeros((n, width), dtype=bool)
    for i, h in enumerate(hazards):
        out[i, : len(h)] = h
        mask[i, : len(h)] = True
    return out, mask


def _check_np(hazards: np.ndarray, visit_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(hazards, dtype=np.float64)
    m = np.asarray(visit_mask)
    if h.ndim != 2:
        raise ValueError(f"hazards must be 2-D [N, V], got shape {h.shape}")
    if m.dtype != np.bool_ or m.shape != h.shape:
        raise ValueError(f"visit_mask must be bool with shape {h.shape}, got {m.dtype} {m.shape}")
    if np.any((h < 0) | (h > 1)):
        raise ValueError("hazards must lie in [0, 1]")
    return np.where(m, h, 0.0), m


def last_real_visit_np(visit_mask: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`last_real_visit`: int64 [N], -1 without real visits."""
    m = np.asarray(visit_mask, dtype=bool)
    idx = np.arange(m.shape[1])
    return np.where(m, idx, -1).max(axis=1).astype(np.int64)


def survival_curve_np(
    hazards: np.ndarray, visit_mask: np.ndarray, num_steps: int | None = None
) -> np.ndarray:
    """numpy twin of :func:`survival_curve`, from hazards.

    Args:
        hazards: float [N, V] in [0, 1].
        visit_mask: bool [N, V].
        num_steps: K (default V); beyond the last real visit the last hazard is held constant.

    Returns:
        float64 [N, K].
    """
    h, m = _check_np(hazards, visit_mask)
    k = h.shape[1] if num_steps is None else num_steps
    if k < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    last = last_real_visit_np(m)
    t = np.arange(k)
    idx = np.where(t[None, :] <= last[:, None], t[None, :], np.maximum(last, 0)[:, None])
    steps = np.take_along_axis(h, idx, axis=1)  # [N, K]
    steps = np.where((last >= 0)[:, None], steps, 0.0)
    with np.errstate(divide="ignore"):
        log_1m = np.log1p(-steps)
    return np.exp(np.cumsum(log_1m, axis=1))


def risk_score_np(
    hazards: np.ndarray,
    visit_mask: np.ndarray,
    method: RiskScore = "mean_hazard",
    *,
    horizon: int | None = None,
    first_n: int | None = None,
) -> np.ndarray:
    """numpy twin of :func:`risk_score`, from hazards: float64 [N]."""
    h, m = _check_np(hazards, visit_mask)
    if method == "mean_hazard":
        return h.sum(1) / np.maximum(m.sum(1), 1)
    if method == "horizon":
        if horizon is None or horizon < 0:
            raise ValueError(f"horizon must be an int >= 0 for method='horizon', got {horizon}")
        at = np.maximum(np.minimum(last_real_visit_np(m), horizon), 0)
        s = survival_curve_np(h, m)
        return 1.0 - np.take_along_axis(s, at[:, None], axis=1)[:, 0]
    if method == "first_n":
        if first_n is None or first_n < 1:
            raise ValueError(f"first_n must be an int >= 1 for method='first_n', got {first_n}")
        keep = m & (np.cumsum(m, axis=1) <= first_n)
        return np.where(keep, h, 0.0).sum(1) / np.maximum(keep.sum(1), 1)
    raise ValueError(f"method must be one of {RISK_SCORES}, got {method!r}")
