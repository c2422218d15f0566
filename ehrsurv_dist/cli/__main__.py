"""``python -m ehrsurv_dist.cli``: the ``ehrsurv`` command (what ``ray job submit`` runs)."""

import sys

from ehrsurv_dist.cli import main

sys.exit(main())
