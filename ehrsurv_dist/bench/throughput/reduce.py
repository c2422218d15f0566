"""Reducers of ``bench throughput``: steady epochs, step floors, rates and the bench keys.

Pure numpy over the per-epoch records of :func:`~ehrsurv_dist.bench.throughput.runs.ray_run`
and :func:`~ehrsurv_dist.bench.throughput.runs.plain_loop` (no Ray, no torch).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ehrsurv_dist.bench.throughput.memory import model_state_bytes_per_rank


def steady(values: Sequence[float], skip: int = 1) -> list[float]:
    """The values after the first ``skip`` (warm-up) epochs; all of them if there are no more."""
    return list(values[skip:]) if len(values) > skip else list(values)


def pooled(runs: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """The steady epochs (each run's first left out) of several runs, in one list per key."""
    keys = ("epoch_s", "tokens", "wait", "steps")
    return {k: [v for run in runs for v in steady(run[k])] for k in keys}


def keyed_steps(run: Mapping[str, Any]) -> list[dict[int, float]]:
    """Per epoch of a run: its steps' wall times by batch key (``step_keys``, ``step_s``).

    Raises:
        ValueError: an epoch without keys, or a key twice in one epoch (its steps could not
            be paired with another run's).
    """
    out = []
    for e, (secs, keys) in enumerate(zip(run["step_s"], run["step_keys"], strict=True)):
        by_key = dict(zip(keys, secs, strict=True))
        if len(by_key) != len(secs):
            raise ValueError(f"epoch {e}: {len(secs)} steps but {len(by_key)} distinct batch keys")
        out.append(by_key)
    return out


def _per_step(
    rounds: Sequence[Sequence[Mapping[int, float]]], stat: Callable[..., Any], skip: int
) -> list[float]:
    """Per epoch after the first ``skip``: Σ over its batches of ``stat`` over the rounds of
    that batch's step time (``rounds[r][e]``: batch key → seconds, :func:`keyed_steps`).

    Raises:
        ValueError: no rounds, or rounds that differ in epochs or in the batches of an epoch.
    """
    if not rounds:
        raise ValueError("no rounds")
    n_epochs = len(rounds[0])
    if any(len(r) != n_epochs for r in rounds):
        raise ValueError(f"rounds differ in epochs: {[len(r) for r in rounds]}")
    totals = []
    for e in range(skip, n_epochs):
        keys = sorted(rounds[0][e])
        if any(sorted(r[e]) != keys for r in rounds):
            lengths = sorted({len(r[e]) for r in rounds})
            raise ValueError(f"epoch {e}: rounds differ in batches (steps: {lengths})")
        times = np.asarray([[r[e][k] for k in keys] for r in rounds], dtype=float)
        totals.append(float(stat(times, axis=0).sum()))
    return totals


def step_floor(rounds: Sequence[Sequence[Mapping[int, float]]], skip: int = 1) -> list[float]:
    """Per epoch after the first ``skip``: the sum over its batches of each batch's fastest
    step time over the rounds.

    ``rounds[r][e]`` maps a batch key to the wall time of the step that trained that batch in
    epoch ``e`` of round ``r`` (:func:`keyed_steps`). Every round trains the same batches in
    an epoch (batches depend only on seed and epoch) through the same weights (each round
    starts from the same seed); on Ray the *order* of the batches may differ between rounds
    (units arrive as their tasks finish), so steps are paired by batch, not by position. A
    step's time is then that work's cost plus whatever the machine took away during it; the
    minimum over rounds keeps the first and drops most of the second, as ``timeit`` does. A
    cost that the path itself adds to every step stays in the minimum.

    Raises:
        ValueError: no rounds, or rounds that differ in epochs or in the batches of an epoch.
    """
    return _per_step(rounds, np.min, skip)


def off_cpu_fraction(runs: Sequence[Mapping[str, Sequence[float]]], skip: int = 1) -> float:
    """Share of the steady epochs' wall time in which the training thread was not running:
    1 − Σ thread CPU time ÷ Σ wall time over the same interval (``cpu_s`` and ``thread_s`` of
    every run, each run's first ``skip`` epochs left out). A loop that never waits is close to 0."""
    cpu = sum(sum(steady(run["cpu_s"], skip)) for run in runs)
    wall = sum(sum(steady(run["thread_s"], skip)) for run in runs)
    return 1.0 - cpu / wall if wall > 0 else math.nan


def counters_per_epoch(
    runs: Sequence[Mapping[str, Any]], skip: int = 1
) -> tuple[float, float, float]:
    """Median over the steady epochs of every run of the training thread's (voluntary
    switches, involuntary switches, page faults) per epoch (``counters`` of each run)."""
    rows = [c for run in runs for c in steady(run["counters"], skip)]
    if not rows:
        raise ValueError("no epochs")
    med = np.median(np.asarray(rows, dtype=float), axis=0)
    return float(med[0]), float(med[1]), float(med[2])


def rates(run: Mapping[str, Any], skip: int = 1) -> dict[str, float]:
    """Best and median epoch time and tokens/s of one run's epochs after the first ``skip``."""
    secs = steady(run["epoch_s"], skip)
    toks = steady(run["tokens"], skip)
    best = int(np.argmin(secs))
    return {
        "epoch_s": secs[best],
        "epoch_median_s": statistics.median(secs),
        "tokens_per_s": toks[best] / secs[best],
        "tokens_per_s_median": statistics.median(t / s for t, s in zip(toks, secs, strict=True)),
        "tokens_per_epoch": statistics.median(toks),
        "data_wait_fraction": statistics.mean(steady(run["wait"], skip)),
        "steps_per_epoch": statistics.median(steady(run["steps"], skip)),
    }


def training_keys(
    ray1: Sequence[Mapping[str, Any]],
    plain: Sequence[Mapping[str, Any]],
    ray2: Mapping[str, Any],
    stream: Mapping[str, Any],
) -> dict[str, float]:
    """The throughput keys of ``bench.json`` (module doc of ``bench.throughput``, (a) and (b)).

    Args:
        ray1: the 1-worker Ray runs, one per round.
        plain: the plain loops, one per round (after the Ray run of the same round).
        ray2: the 2-worker run of the first ZeRO stage.
        stream: the plain loop that reads its batches inside the timed epoch.

    Raises:
        RuntimeError: the Ray runs and the plain loops did not do equal work.
    """
    # Steady epochs of every round pooled: as many for the Ray runs as for the plain loops.
    r1 = rates(pooled(ray1), skip=0)
    r2 = rates(ray2)
    rp = rates(pooled(plain), skip=0)
    rs = rates(stream)
    _check_equal_work(ray1, plain, r1, rp)
    # The training thread's CPU time (its work) per epoch: per epoch the median over rounds.
    ray_cpu = sum(np.median([steady(r["cpu_s"]) for r in ray1], axis=0))
    plain_cpu = sum(np.median([steady(r["cpu_s"]) for r in plain], axis=0))
    ray_steps = [keyed_steps(run) for run in ray1]
    plain_steps = [keyed_steps(run) for run in plain]
    ray_floor = step_floor(ray_steps)
    plain_floor = step_floor(plain_steps)
    ray_step_median = sum(_per_step(ray_steps, np.median, 1))
    plain_step_median = sum(_per_step(plain_steps, np.median, 1))
    ray_counters = counters_per_epoch(ray1)
    plain_counters = counters_per_epoch(plain)
    # Each round's own ratio (its Ray run against the plain loop right after it).
    round_ratios = [
        min(steady(a["epoch_s"])) / min(steady(b["epoch_s"]))
        for a, b in zip(ray1, plain, strict=True)
    ]
    return {
        "train_overhead_ratio": sum(ray_floor) / sum(plain_floor),
        "train_overhead_ratio_best_epoch": r1["epoch_s"] / rp["epoch_s"],
        "train_overhead_ratio_step_median": ray_step_median / plain_step_median,
        "ray_1w_step_floor_epoch_s": statistics.mean(ray_floor),
        "train_cpu_ratio": ray_cpu / plain_cpu,
        "ray_1w_off_cpu_fraction": off_cpu_fraction(ray1),
        "plain_off_cpu_fraction": off_cpu_fraction(plain),
        "ray_1w_voluntary_switches_per_epoch": ray_counters[0],
        "ray_1w_involuntary_switches_per_epoch": ray_counters[1],
        "ray_1w_page_faults_per_epoch": ray_counters[2],
        "plain_voluntary_switches_per_epoch": plain_counters[0],
        "plain_involuntary_switches_per_epoch": plain_counters[1],
        "plain_page_faults_per_epoch": plain_counters[2],
        "plain_step_floor_epoch_s": statistics.mean(plain_floor),
        "data_wait_fraction": r1["data_wait_fraction"],
        "ray_1w_tokens_per_s": r1["tokens_per_s"],
        "ray_2w_tokens_per_s": r2["tokens_per_s"],
        "plain_tokens_per_s": rp["tokens_per_s"],
        "plain_stream_tokens_per_s": rs["tokens_per_s"],
        "train_overhead_ratio_median": r1["epoch_median_s"] / rp["epoch_median_s"],
        "train_overhead_ratio_vs_stream": r1["epoch_s"] / rs["epoch_s"],
        "ray_2w_speedup_vs_1w": r2["tokens_per_s"] / r1["tokens_per_s"],
        "ray_2w_speedup_vs_plain": r2["tokens_per_s"] / rp["tokens_per_s"],
        "ray_1w_epoch_s": r1["epoch_s"],
        "ray_1w_epoch_median_s": r1["epoch_median_s"],
        "ray_2w_epoch_s": r2["epoch_s"],
        "plain_epoch_s": rp["epoch_s"],
        "plain_epoch_median_s": rp["epoch_median_s"],
        "plain_stream_epoch_s": rs["epoch_s"],
        "ray_1w_tokens_per_s_median": r1["tokens_per_s_median"],
        "plain_tokens_per_s_median": rp["tokens_per_s_median"],
        "ray_2w_data_wait_fraction": r2["data_wait_fraction"],
        "plain_stream_data_wait_fraction": rs["data_wait_fraction"],
        "ray_1w_compute_s": r1["epoch_s"] * (1 - r1["data_wait_fraction"]),
        "ray_1w_run_wall_s": statistics.median(run["wall_s"] for run in ray1),
        "ray_1w_first_epoch_s": statistics.median(run["epoch_s"][0] for run in ray1),
        "train_overhead_ratio_round_min": min(round_ratios),
        "train_overhead_ratio_round_max": max(round_ratios),
        "tokens_per_epoch": r1["tokens_per_epoch"],
        "steps_per_epoch": r1["steps_per_epoch"],
        "plain_loss_epoch_last": plain[-1]["loss"][-1],
    }


def _check_equal_work(
    ray1: Sequence[Mapping[str, Any]],
    plain: Sequence[Mapping[str, Any]],
    r1: Mapping[str, float],
    rp: Mapping[str, float],
) -> None:
    """The same tokens per epoch, and the same batches in every epoch (the step floors pair
    the two sides' steps by batch; :func:`step_floor` checks the rounds of each side among
    themselves)."""
    ray_steps = [len(x) for x in ray1[0]["step_s"]]
    plain_steps = [len(x) for x in plain[0]["step_s"]]
    same_batches = [sorted(k) for k in ray1[0]["step_keys"]] == [
        sorted(k) for k in plain[0]["step_keys"]
    ]
    if abs(r1["tokens_per_epoch"] - rp["tokens_per_epoch"]) > 0.5 or not same_batches:
        raise RuntimeError(
            "unequal work: the Ray run trained "
            f"{r1['tokens_per_epoch']:.0f} tokens per epoch in {ray_steps} steps per epoch, "
            f"the plain loop {rp['tokens_per_epoch']:.0f} in {plain_steps}"
        )


def memory_keys(
    ray_runs: Mapping[str, Mapping[str, Any]], stages: Sequence[int], n_params: int
) -> dict[str, float]:
    """The keys of the 2-worker run of every ZeRO stage ((c) of the module doc)."""
    res: dict[str, float] = {}
    for s in stages:
        run = ray_runs[f"2w_zero{s}"]
        peaks = run["worker_peak_rss_mb"]
        if not peaks:
            raise RuntimeError(f"no Ray Train worker process was seen during the ZeRO-{s} run")
        rs2 = rates(run)
        res[f"peak_rss_mb_zero{s}"] = max(peaks)
        res[f"peak_rss_mb_zero{s}_mean"] = statistics.mean(peaks)
        res[f"ray_2w_zero{s}_tokens_per_s"] = rs2["tokens_per_s"]
        res[f"ray_2w_zero{s}_data_wait_fraction"] = rs2["data_wait_fraction"]
        res[f"model_state_mb_per_rank_zero{s}"] = model_state_bytes_per_rank(n_params, s, 2) / 2**20
        res[f"ray_2w_zero{s}_run_wall_s"] = run["wall_s"]
    return res
