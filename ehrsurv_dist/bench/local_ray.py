"""A quiet in-process local Ray for the benches (an edge module: Ray imported in functions).

``address="local"`` always starts a fresh Ray owned by this process, never one a user or
another bench started on the same machine; no dashboard and no Ray Data progress bars, whose
output would interleave with the bench's own. The workers' output is forwarded, as for a
training job (``train/console.py``): their warnings and errors are not lost, and the rest of
what they say is kept off the console.
"""

from __future__ import annotations


def start_local_ray(num_cpus: int, object_store_mb: int | None = None) -> None:
    """``ray.init`` a fresh local Ray of ``num_cpus`` logical CPUs (and an object store of
    ``object_store_mb``, None: Ray's default) and quiet Ray Data."""
    import ray  # the edge: only callers that start Ray pay for the import

    ray.init(
        address="local",
        num_cpus=num_cpus,
        object_store_memory=None if object_store_mb is None else object_store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    quiet_data_context()


def quiet_data_context() -> None:
    """No progress bars and no execution-start lines from Ray Data in this process."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
