"""ehrsurv_dist: discrete-time survival with BEHRT-style transformers on MEDS cohorts, on Ray.

From Python, a trained run: ``from ehrsurv_dist import load_model`` (:mod:`ehrsurv_dist.api`,
docs/python.md). Importing the package is cheap and Ray-free: the API is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ehrsurv_dist.api import TrainedModel, load_model

__all__ = ["TrainedModel", "load_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ehrsurv_dist import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
