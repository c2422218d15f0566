"""Scalar risk scores from per-visit hazards (docs/design.md §4), for Harrell's and Uno's C.

The names of the scores are :data:`ehrsurv_dist.schema.RISK_SCORES`; the job file picks one with
``finetune.risk_score``. Pure numpy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ehrsurv_dist.metrics.hazards import HazardsLike, as_hazard_table, cumsum_rows
from ehrsurv_dist.metrics.inputs import FloatArray, check_int
from ehrsurv_dist.schema import RISK_SCORES


def _check_risk_score(risk_score: str) -> None:
    if risk_score not in RISK_SCORES:
        raise ValueError(f"risk_score: expected one of {RISK_SCORES}, got {risk_score!r}")


def risk_scores(
    hazards: HazardsLike,
    last_visit: npt.ArrayLike | None = None,
    risk_score: str = "mean_hazard",
    risk_k: int = 10,
    risk_n: int = 10,
) -> FloatArray:
    """Scalar risk per subject (higher = earlier event), for Harrell's and Uno's C.

    Scores (docs/design.md §4): ``mean_hazard``: mean hazard over the subject's real visits (the seed's
    default); ``horizon``: ``1 − S(min(risk_k, T))``; ``first_n``: mean of the first
    ``min(risk_n, T + 1)`` hazards (the seed's length-bias fix).

    Args:
        hazards: see :func:`~ehrsurv_dist.metrics.as_hazard_table`.
        last_visit: int ``[N]``.
        risk_score: one of :data:`~ehrsurv_dist.schema.RISK_SCORES`.
        risk_k: visit index k for ``risk_score="horizon"`` (``≥ 0``; ``finetune.risk_k``).
        risk_n: number of visits n for ``risk_score="first_n"`` (``≥ 1``; ``finetune.risk_n``).

    Returns:
        float64 ``[N]``.

    Raises:
        ValueError: bad inputs, unknown ``risk_score``, bad ``risk_k`` or ``risk_n``.
    """
    _check_risk_score(risk_score)
    table = as_hazard_table(hazards, last_visit)
    T = table.last_visit
    start = table.offsets[:-1]
    if risk_score == "horizon":
        k = check_int(risk_k, "risk_k", 0, "an int >= 0")
        return 1.0 - np.exp(table.log_survival_flat[start + np.minimum(k, T)])
    if risk_score == "first_n":
        m = np.minimum(check_int(risk_n, "risk_n", 1, "an int >= 1"), T + 1)
    else:
        m = T + 1
    csum = cumsum_rows(table.values, table.offsets)
    return csum[start + m - 1] / m


def risk_score_name(risk_score: str, risk_k: int = 10, risk_n: int = 10) -> str:
    """The label a metric reports for the risk score it used, e.g. ``horizon(k=10)``.

    The label's ``k=`` / ``n=`` spelling is part of the reported metrics (``metrics.json``), so
    it stays as it is.
    """
    _check_risk_score(risk_score)
    return {
        "mean_hazard": "mean_hazard",
        "horizon": f"horizon(k={risk_k})",
        "first_n": f"first_n(n={risk_n})",
    }[risk_score]
