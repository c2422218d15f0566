"""Input checks shared by the survival metrics, and the time convention for scikit-survival.

Every public metric validates its per-subject arrays here, so a bad argument raises the same
``ValueError`` naming the argument whichever metric it was passed to. The time convention (an
event after visit T at time ``T + 0.5``, a censoring at ``T``; docs/design.md §4) is
:func:`to_sksurv_time`. Pure numpy / scikit-survival.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from sksurv.util import Surv

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def check_numeric(a: npt.NDArray[Any], name: str) -> None:
    """Raise unless ``a`` has a real numeric dtype (float, int or unsigned)."""
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric dtype, got {a.dtype}")


def check_int(value: Any, name: str, minimum: int, expected: str) -> int:
    """``value`` as an int when it is an integer (not a bool) ``>= minimum``.

    Raises:
        ValueError: ``"{name}: expected {expected}, got {value!r}"``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def _per_subject(values: npt.ArrayLike, name: str, n: int) -> npt.NDArray[Any]:
    """``values`` as a 1-D array of length ``n``."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {n} subjects")
    return a


def as_last_visit(last_visit: npt.ArrayLike, name: str, n: int | None = None) -> IntArray:
    """Validated last input visit indices T: int64 ``[N]``, non-empty, ``T >= 0``.

    Args:
        last_visit: int ``[N]``.
        name: the argument's name, for the error message.
        n: the number of subjects it must match (None: any).
    """
    a = np.asarray(last_visit)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: empty")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer dtype (visit index T), got {a.dtype}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name}: length {a.shape[0]} does not match {n} subjects")
    if a.min() < 0:
        raise ValueError(f"{name}: visit indices must be >= 0, got min {a.min()}")
    return a.astype(np.int64, copy=False)


def as_event(event: npt.ArrayLike, name: str, n: int) -> BoolArray:
    """Validated event flags: bool ``[N]`` (0/1 numbers accepted)."""
    a = _per_subject(event, name, n)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind not in "iuf" or not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name}: expected bool (or 0/1) values, got dtype {a.dtype}")
    return a.astype(np.bool_)


def as_risk(risk: npt.ArrayLike, name: str, n: int) -> FloatArray:
    """Validated scalar risk scores: finite float64 ``[N]``."""
    a = _per_subject(risk, name, n)
    check_numeric(a, name)
    out = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: NaN or infinite value")
    return out


def check_horizon_count(horizon: int | None, last_visit: IntArray) -> int:
    """Number of grid points K: ``horizon``, or ``max(T) + 1`` when None."""
    if horizon is None:
        return int(last_visit.max()) + 1
    return check_int(horizon, "horizon", 1, "a positive int (number of grid points)")


def as_whole_times(times: npt.ArrayLike, name: str) -> IntArray:
    """Whole times k (ints, or floats without a fraction): sorted unique int64 ``[K]``, K ≥ 1."""
    a = np.asarray(times)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of whole times, got {a.shape}")
    check_numeric(a, name)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{name}: must be whole visit indices k, got {a}")
    return np.unique(a.astype(np.int64))


def check_pair(
    last_visit: npt.ArrayLike, event: npt.ArrayLike, prefix: str = ""
) -> tuple[IntArray, BoolArray]:
    """Validated ``(last_visit, event)`` of one split; ``prefix`` names it (``"train_"``)."""
    lv = as_last_visit(last_visit, f"{prefix}last_visit")
    ev = as_event(event, f"{prefix}event", lv.shape[0])
    return lv, ev


def to_sksurv_time(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> FloatArray:
    """Observed times for scikit-survival: ``T + 0.5`` for events, ``T`` for censorings.

    Args:
        last_visit: int ``[N]`` last input visit index T.
        event: bool ``[N]``.

    Returns:
        float64 ``[N]``.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    lv, ev = check_pair(last_visit, event)
    return lv + 0.5 * ev


def structured_y(last_visit: npt.ArrayLike, event: npt.ArrayLike) -> npt.NDArray[Any]:
    """The scikit-survival structured ``(event, time)`` array on the :func:`to_sksurv_time` scale.

    Raises:
        ValueError: bad shapes or dtypes, empty input.
    """
    return sksurv_y(*check_pair(last_visit, event))


def sksurv_y(lv: IntArray, ev: BoolArray) -> npt.NDArray[Any]:
    """:func:`structured_y` of already checked arrays."""
    return Surv.from_arrays(event=ev, time=lv + 0.5 * ev)


def structured_y_capped(lv: IntArray, ev: BoolArray, cap: float) -> npt.NDArray[Any]:
    """:func:`structured_y` of checked arrays with observed times above ``cap`` lowered to it.

    When ``cap`` exceeds every evaluated horizon, every case/control label and every censoring
    weight that scikit-survival's Brier score and cumulative/dynamic AUC use at those horizons
    is unchanged, but the censoring distribution (from the train split) is no longer asked about
    times it cannot estimate.
    """
    return Surv.from_arrays(event=ev, time=np.minimum(lv + 0.5 * ev, cap))
