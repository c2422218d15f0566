"""Integration tier: one real local Ray for the whole pytest session, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray shared by every integration test; shut down after.

    3 logical CPUs on this 2-core machine: 2 train workers plus 1 for the Ray Data tasks that
    feed them (the training launcher refuses fewer)."""
    pytest.importorskip("ray")
    import ray
    import ray.data

    if ray.is_initialized():  # someone else's Ray: use it, but do not stop it
        yield
        return
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield
    finally:
        ray.shutdown()
