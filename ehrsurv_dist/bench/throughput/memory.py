"""Memory figures of ``bench throughput``: worker peak RSS, RSS rise, analytic ZeRO state.

Reads ``/proc`` (Linux); pure Python apart from ``psutil`` for the process tree.
"""

from __future__ import annotations

import resource
import threading

WORKER_MARKER = "RayTrainWorker"  # Ray's process title of a Ray Train worker actor


def model_state_bytes_per_rank(params: int, stage: int, world: int) -> float:
    """fp32 weights + gradients + AdamW moments held by one rank under ZeRO ``stage``.

    4 bytes of weights, 4 of gradients and 8 of AdamW state (two moments) per parameter; ZeRO-1
    shards the optimizer state over ``world`` ranks, ZeRO-2 also the gradients, ZeRO-3 also
    the weights.
    """
    if stage not in (0, 1, 2, 3) or world < 1:
        raise ValueError(f"stage must be 0-3 and world >= 1, got {stage}, {world}")
    weights = 4.0 / (world if stage >= 3 else 1)
    grads = 4.0 / (world if stage >= 2 else 1)
    adam = 8.0 / (world if stage >= 1 else 1)
    return params * (weights + grads + adam)


def _status_kb(pid: int, fields: tuple[str, ...]) -> dict[str, int] | None:
    """The ``fields`` (e.g. ``VmHWM``) of ``/proc/PID/status`` in kB, None if the process is
    gone or unreadable."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return out


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set (``VmHWM``) of a process in MB, None if it is gone or unreadable."""
    kb = _status_kb(pid, ("VmHWM",))
    return None if not kb or "VmHWM" not in kb else kb["VmHWM"] / 1024.0


def _vm_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssRise:
    """Rise of this process's resident memory over a ``with`` block (sampled every 5 ms)."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.start = self.peak = 0.0
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    @property
    def rise(self) -> float:
        return self.peak - self.start

    def __enter__(self) -> RssRise:
        self.start = self.peak = _vm_rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _vm_rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()
        self.peak = max(self.peak, _vm_rss_mb())


class WorkerMemory:
    """Peak resident memory of the Ray worker processes started below this process.

    A thread walks this process's descendants every ``every_s`` seconds (the local Ray's raylet
    is our child and its workers are its children, so other users' Ray clusters on the same
    machine are never counted) and keeps, per process whose command line holds ``marker``
    (default: Ray Train workers; ``"ray::"``: every Ray worker), the largest ``VmHWM`` seen
    (``peaks``: the kernel's own high-water mark, so short peaks between samples are not
    missed; it counts the object-store pages the process mapped), the largest private resident
    set sampled (``private_peaks``: ``RssAnon`` + ``RssFile``, without shared memory such as
    the object store) and its process title (``titles``, e.g. ``ray::RayTrainWorker``).
    """

    def __init__(self, marker: str = WORKER_MARKER, every_s: float = 0.2) -> None:
        self.marker = marker
        self.every_s = every_s
        self.peaks: dict[int, float] = {}
        self.private_peaks: dict[int, float] = {}
        self.titles: dict[int, str] = {}
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil  # optional dependency: only the bench samples worker processes

        for p in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except (psutil.Error, OSError):
                continue
            if self.marker not in cmd:
                continue
            kb = _status_kb(p.pid, ("VmHWM", "RssAnon", "RssFile"))
            if not kb or "VmHWM" not in kb:
                continue
            self.peaks[p.pid] = max(self.peaks.get(p.pid, 0.0), kb["VmHWM"] / 1024.0)
            private = (kb.get("RssAnon", 0) + kb.get("RssFile", 0)) / 1024.0
            self.private_peaks[p.pid] = max(self.private_peaks.get(p.pid, 0.0), private)
            self.titles[p.pid] = cmd.split()[0] if cmd.split() else ""

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> WorkerMemory:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()
