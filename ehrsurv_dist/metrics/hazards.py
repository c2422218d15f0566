"""Per-subject hazards in one flat table, and the survival curves they give (docs/design.md §2).

Subject i has hazards ``h_i[0..T_i]`` over its real visits. :class:`HazardTable` holds them as
rows of one :class:`~ehrsurv_dist.ragged.Ragged` (row i = subject i) together with the
log-survival ``log S_i(t) = Σ_{s≤t} log1p(−h_i[s])``, accumulated left to right within each row.
Beyond the last visit the last hazard is held constant. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from ehrsurv_dist.metrics.inputs import (
    FloatArray,
    IntArray,
    as_last_visit,
    as_whole_times,
    check_horizon_count,
    check_numeric,
)
from ehrsurv_dist.ragged import Ragged

#: Hazards as accepted by the public functions: a padded ``[N, V]`` array, a ragged sequence of
#: 1-D arrays (length ``T_i + 1`` each), or an already normalised :class:`HazardTable`.
HazardsLike = Union["HazardTable", npt.NDArray[Any], Sequence[npt.ArrayLike]]

HAZARD = "hazard"
LOG_SURVIVAL = "log_survival"


@dataclass(frozen=True)
class HazardTable:
    """Per-subject hazards of the real visits with their log-survival: a typed view of a Ragged.

    Build it with :func:`as_hazard_table` or :func:`hazard_table_from_csr`; every public function
    accepts it in place of raw hazards, which saves re-validating a large split several times.

    Attributes:
        rows: N rows (subjects) over the columns ``hazard`` (float64, the hazards of the real
            visits) and ``log_survival`` (float64, ``log S_i(t)`` for ``t ≤ T_i``, a sequential
            left-to-right sum, so equal prefixes give bitwise equal values).
    """

    rows: Ragged

    @classmethod
    def from_hazards(cls, hazards: Ragged) -> HazardTable:
        """The table of checked float64 hazards (one row per subject, at least one visit each)."""
        values = np.asarray(hazards.values, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_q = np.log1p(-values)  # log(1 − h); −inf where h = 1
        log_s = cumsum_rows(log_q, hazards.offsets)
        return cls(Ragged({HAZARD: values, LOG_SURVIVAL: log_s}, hazards.offsets))

    @property
    def values(self) -> FloatArray:
        """float64 ``[sum_i (T_i + 1)]``: the hazards of subject i are
        ``values[offsets[i]:offsets[i + 1]]``."""
        return self.rows.values[HAZARD]  # type: ignore[index, no-any-return]

    @property
    def log_survival_flat(self) -> FloatArray:
        """float64, same layout as :attr:`values`: ``log S_i(t)`` for ``t ≤ T_i``."""
        return self.rows.values[LOG_SURVIVAL]  # type: ignore[index, no-any-return]

    @property
    def offsets(self) -> IntArray:
        """int64 ``[N + 1]`` row boundaries into :attr:`values`."""
        return self.rows.offsets

    @cached_property
    def last_visit(self) -> IntArray:
        """int64 ``[N]``, ``T_i``."""
        return self.rows.lengths - 1

    @property
    def n(self) -> int:
        """Number of subjects N."""
        return len(self.rows)

    def take(self, idx: npt.ArrayLike) -> HazardTable:
        """The table of subjects ``idx`` (repeats allowed), in that order.

        The log-survival of a row depends on that row only, so it is taken, not recomputed.
        """
        return HazardTable(self.rows.take(np.asarray(idx, dtype=np.int64)))

    def log_survival(self, times: npt.ArrayLike) -> FloatArray:
        """``log S_i(t)`` on whole times, with the constant-hazard extension beyond ``T_i``.

        Args:
            times: int ``[K]`` whole visit indices ``≥ −1`` (``log S(−1) = 0``).

        Returns:
            float64 ``[N, K]``.
        """
        t = np.asarray(times, dtype=np.int64).reshape(-1)
        if t.size and t.min() < -1:
            raise ValueError(f"times: must be >= -1, got min {t.min()}")
        T = self.last_visit[:, None]  # [N, 1]
        start = self.offsets[:-1, None]  # [N, 1]
        pos = np.minimum(np.maximum(t[None, :], 0), T)  # [N, K] index within the subject
        out = self.log_survival_flat[start + pos]  # [N, K]
        beyond = np.maximum(t[None, :] - T, 0)  # [N, K] steps past the last visit
        if np.any(beyond):
            with np.errstate(divide="ignore", invalid="ignore"):
                log_q_last = np.log1p(-self.values[self.offsets[1:] - 1])  # [N]
                extra = beyond * log_q_last[:, None]
            extra[beyond == 0] = 0.0  # 0 · (−inf) when h = 1 must stay 0
            out = out + extra
        out[:, t == -1] = 0.0
        return out

    def padded(self, horizon: int | None = None) -> FloatArray:
        """Hazards as a padded ``[N, K]`` float64 array with the last hazard held beyond ``T_i``.

        Args:
            horizon: number of columns K (visit indices ``0..K−1``); default ``max(T) + 1``.
        """
        k = check_horizon_count(horizon, self.last_visit)
        pos = np.minimum(np.arange(k)[None, :], self.last_visit[:, None])  # [N, K]
        return self.values[self.offsets[:-1, None] + pos]


def cumsum_rows(x: FloatArray, offsets: IntArray) -> FloatArray:
    """Cumulative sum within each row, accumulated strictly left to right.

    Loops over the position within a row (max length iterations), each step vectorised over the
    rows still that long, so the cost is O(len(x)) and the extra memory O(N).

    Args:
        x: float ``[NE]`` elements of every row, back to back.
        offsets: int64 ``[N + 1]`` row boundaries.

    Returns:
        Same shape and dtype as ``x``.
    """
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest rows first
    neg_sorted = -lengths[order]  # ascending
    starts = offsets[:-1][order]
    out = np.empty_like(x)
    out[starts] = x[starts]
    for t in range(1, int(lengths.max(initial=0))):
        m = int(np.searchsorted(neg_sorted, -t, side="left"))  # rows with length > t
        pos = starts[:m] + t
        out[pos] = out[pos - 1] + x[pos]
    return out


def as_hazard_table(hazards: HazardsLike, last_visit: npt.ArrayLike | None = None) -> HazardTable:
    """Validate hazards and put them in the flat :class:`HazardTable` form.

    Args:
        hazards: a :class:`HazardTable` (returned as is); a padded float array ``[N, V]`` (then
            ``last_visit`` is required and entries after ``T_i`` are ignored, NaN allowed there);
            or a sequence of N 1-D arrays, subject i's of length ``T_i + 1`` exactly.
        last_visit: int ``[N]``, ``T_i ≥ 0``. Optional for ragged input (inferred from lengths).

    Returns:
        The normalised table.

    Raises:
        ValueError: empty input, wrong shapes or dtypes, hazards outside ``[0, 1]`` or not finite
            on a real visit, ``last_visit`` out of range or inconsistent with ragged lengths.
    """
    if isinstance(hazards, HazardTable):
        if last_visit is not None:
            lv = as_last_visit(last_visit, "last_visit", hazards.n)
            if not np.array_equal(lv, hazards.last_visit):
                raise ValueError("last_visit: differs from the HazardTable's last_visit")
        return hazards
    if isinstance(hazards, np.ndarray) and hazards.dtype != object:
        values, lengths = _from_padded(hazards, last_visit)
    else:
        values, lengths = _from_sequence(hazards, last_visit)
    if not np.all(np.isfinite(values)):
        raise ValueError("hazards: NaN or infinite value on a real visit")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(
            f"hazards: values must lie in [0, 1], got range [{values.min()}, {values.max()}]"
        )
    return HazardTable.from_hazards(Ragged.from_lengths(values, lengths))


def _from_padded(
    hazards: npt.NDArray[Any], last_visit: npt.ArrayLike | None
) -> tuple[FloatArray, IntArray]:
    """The real-visit hazards of a padded ``[N, V]`` array (range not checked yet).

    Returns:
        ``(values, lengths)``: float64 ``[sum_i (T_i + 1)]`` subject after subject, int64 ``[N]``.
    """
    if hazards.ndim != 2:
        raise ValueError(
            f"hazards: a padded array must be 2-D [N, V], got shape {hazards.shape}; "
            "pass ragged hazards as a list of 1-D arrays"
        )
    check_numeric(hazards, "hazards")
    n, v = hazards.shape
    if n == 0 or v == 0:
        raise ValueError(f"hazards: empty array of shape {hazards.shape}")
    if last_visit is None:
        raise ValueError("last_visit: required with padded [N, V] hazards")
    lv = as_last_visit(last_visit, "last_visit", n)
    if lv.max() >= v:
        raise ValueError(
            f"last_visit: max {lv.max()} does not fit the {v} visit columns of hazards"
        )
    real = np.arange(v)[None, :] <= lv[:, None]  # [N, V] real-visit mask
    values = np.asarray(hazards, dtype=np.float64)[real]  # row-major: subject after subject
    return values, lv + 1


def _from_sequence(
    hazards: Iterable[npt.ArrayLike], last_visit: npt.ArrayLike | None
) -> tuple[FloatArray, IntArray]:
    """The hazards of N 1-D arrays, subject i's of length ``T_i + 1`` (range not checked yet).

    Returns:
        ``(values, lengths)`` as for :func:`_from_padded`.
    """
    arrays = [np.asarray(r) for r in hazards]
    if len(arrays) == 0:
        raise ValueError("hazards: empty sequence")
    for i, a in enumerate(arrays):
        problem = _row_problem(a)
        if problem:
            raise ValueError(f"hazards: subject {i} {problem}")
    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.int64, count=len(arrays))
    if last_visit is not None:
        lv = as_last_visit(last_visit, "last_visit", len(arrays))
        bad = np.flatnonzero(lv + 1 != lengths)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"last_visit: subject {i} has last_visit {lv[i]} but {lengths[i]} hazards "
                "(ragged hazards need exactly last_visit + 1 values)"
            )
    return np.concatenate(arrays).astype(np.float64, copy=False), lengths


def _row_problem(a: npt.NDArray[Any]) -> str | None:
    """What is wrong with one subject's hazards (None: a non-empty numeric 1-D array)."""
    if a.ndim != 1:
        return f"has shape {a.shape}, expected 1-D"
    if a.shape[0] == 0:
        return "has no visit"
    return None if a.dtype.kind in "fiu" else f"has non-numeric dtype {a.dtype}"


def hazard_table_from_csr(values: npt.ArrayLike, offsets: npt.ArrayLike) -> HazardTable:
    """Build a :class:`HazardTable` from flat hazards and ``[N + 1]`` row offsets.

    The zero-copy path for hazards that already live in CSR form (a Parquet list column, the
    predictions of a batch job): no per-subject Python objects.

    Raises:
        ValueError: offsets not starting at 0, not increasing, or not matching ``values``.
    """
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if off.size < 2 or off[0] != 0 or off[-1] != vals.size:
        raise ValueError("offsets: must start at 0 and end at len(values), with N + 1 entries")
    if np.diff(off).min() < 1:
        raise ValueError("offsets: every subject needs at least one visit")
    if not np.all(np.isfinite(vals)) or (vals.size and (vals.min() < 0.0 or vals.max() > 1.0)):
        raise ValueError("values: hazards must be finite and lie in [0, 1]")
    return HazardTable.from_hazards(Ragged(vals, off))


def pad_hazards(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None = None, horizon: int | None = None
) -> FloatArray:
    """Hazards as a padded float64 ``[N, K]`` array, last hazard held constant beyond ``T_i``.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        horizon: number of columns K (visit indices ``0..K−1``); default ``max(T) + 1``.

    Returns:
        float64 ``[N, K]`` with ``out[i, t] = h_i[min(t, T_i)]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; ``horizon`` not a positive int.
    """
    return as_hazard_table(hazards, last_visit).padded(horizon)


def survival_curves(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None = None, horizon: int | None = None
) -> FloatArray:
    """Predicted survival ``S_i(t)`` on the grid ``t = 0..K−1``.

    Beyond a subject's last visit the last hazard is held constant.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        horizon: number of grid points K; default ``max(T) + 1``.

    Returns:
        float64 ``[N, K]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; ``horizon`` not a positive int.

    Example:
        ``h = [.1, .15, .2]`` and ``horizon=4`` give ``[.9, .765, .612, .612 · .8]``.
    """
    table = as_hazard_table(hazards, last_visit)
    k = check_horizon_count(horizon, table.last_visit)
    return np.exp(table.log_survival(np.arange(k)))


def event_free_at(
    hazards: HazardsLike, last_visit: npt.ArrayLike | None, times: npt.ArrayLike
) -> FloatArray:
    """Predicted probability of being event-free at whole times k (``S(k − 1)``, ``S(−1) = 1``).

    This is the prediction that matches the :func:`~ehrsurv_dist.metrics.to_sksurv_time` scale:
    an event after visit T happens at T + 0.5, so it has happened by time k iff ``T ≤ k − 1``.

    Args:
        hazards: see :func:`as_hazard_table`.
        last_visit: int ``[N]``; see :func:`as_hazard_table`.
        times: whole times ``k ≥ 0``, ``[K]``; returned in sorted unique order.

    Returns:
        float64 ``[N, K]``.

    Raises:
        ValueError: see :func:`as_hazard_table`; negative or non-whole ``times``.
    """
    table = as_hazard_table(hazards, last_visit)
    ks = as_whole_times(times, "times")
    if ks.min() < 0:
        raise ValueError(f"times: must be >= 0, got {ks.min()}")
    return np.exp(table.log_survival(ks - 1))
