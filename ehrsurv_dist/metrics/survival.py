"""The metrics' former single module, kept as an alias of :mod:`ehrsurv_dist.metrics`.

The metrics now live in one module per job (see the package doc). Callers outside the package
that still import ``ehrsurv_dist.metrics.survival`` (``cli``, ``tune``, ``train.worker``,
``data.synth_report``) get the package's public names from here; new code imports
``ehrsurv_dist.metrics``.
"""

from ehrsurv_dist.metrics import *  # noqa: F403 (the package's public names, one list)
from ehrsurv_dist.metrics import __all__  # noqa: F401
