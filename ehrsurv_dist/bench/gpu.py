"""GPU throughput of the BEHRT presets: bf16 DeepSpeed training steps on one device.

Called by ``scripts/gpu_bench.sh`` (``python -m ehrsurv_dist.bench.gpu --sizes medium large``).
For each preset it builds the flat survival model, wraps it in the project's own DeepSpeed engine
(:func:`ehrsurv_dist.train.engine.build_engine`: ZeRO stage 1, bf16 weights with fp32 master
copies, our fused AdamW, gradient clipping) and trains on fixed-shape synthetic batches (every
token real, visits of ``codes_per_visit`` codes, visit-causal attention, NLL loss), timing steps
after a warm-up. No Ray: one process, one device — the per-device figure a Ray Train worker would
reach.

Reported per preset (flat keys ``{size}_...`` in ``bench.json``): tokens/s, step time, model
FLOPs utilisation, peak memory allocated/reserved, parameters.

**FLOPs formula** (per token, forward + backward; PaLM appendix B / Chinchilla style)::

    6 · N  +  12 · n_layers · L · d

``N``: weights of the Linear layers every token passes through (per layer q, k, v, o: 4·d²;
feed-forward: 2·d·d_ff; plus the embedding projection when embedding_dim ≠ d); the
embedding look-ups, LayerNorms, biases and the per-visit hazard head are left out. The second term
is attention: Q·Kᵀ and A·V cost 2·L·d each per token and layer forward, ×3 for forward + backward.
The full L × L attention is counted: the visit-causal mask is passed to
``scaled_dot_product_attention`` as a mask, so the kernel computes every block. MFU = achieved
FLOP/s ÷ the device's dense bf16 peak (a table of known GPUs, or ``--peak-tflops``).

On a machine without CUDA it runs the same code in fp32 on the CPU (for tests and for checking
the script), and says that it skipped the GPU-only parts (bf16, MFU, CUDA memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ehrsurv_dist import atomic
from ehrsurv_dist import schema as S
from ehrsurv_dist.models import builders as B
from ehrsurv_dist.models.config import BEHRTConfig
from ehrsurv_dist.train.engine import EngineConfig, build_engine, ensure_process_group
from ehrsurv_dist.train.loop import to_tensors
from ehrsurv_dist.train.tasks import SurvivalTask

# Dense bf16 peak TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 125.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16 tensor cores; V100 has no bf16
    ("T4", 65.0),  # fp16
)


def linear_params_per_token(cfg: BEHRTConfig) -> int:
    """N of the FLOPs formula: Linear weights every token goes through (module doc)."""
    d, ff = cfg.hidden_dim, cfg.ffn_dim
    per_layer = 4 * d * d + 2 * d * ff
    projection = cfg.embedding_dim * d if cfg.embedding_dim != d else 0
    return cfg.num_layers * per_layer + projection


def flops_per_token(cfg: BEHRTConfig, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward: ``6 N + 12 n_layers L d``."""
    return 6.0 * linear_params_per_token(cfg) + 12.0 * cfg.num_layers * seq_len * cfg.hidden_dim


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known GPU (first matching entry of :data:`PEAK_BF16_TFLOPS`)."""
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def synthetic_batch(
    vocab_size: int, batch: int, seq_len: int, codes_per_visit: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A fixed-shape flat batch, every token real: visits of ``codes_per_visit`` codes."""
    g = torch.Generator().manual_seed(seed)
    visit = torch.arange(seq_len) // codes_per_visit  # [L]
    n_visits = int(visit[-1]) + 1
    age0 = 30.0 + 40.0 * torch.rand(batch, 1, generator=g)
    return {
        S.CODES: torch.randint(S.NUM_SPECIAL_TOKENS, vocab_size, (batch, seq_len), generator=g),
        S.AGES: (age0 + visit[None, :].float() * 0.3).float(),
        S.VISIT_IDS: visit[None, :].expand(batch, seq_len).clone(),
        S.ATTENTION_MASK: torch.ones(batch, seq_len, dtype=torch.bool),
        S.LAST_VISIT: torch.full((batch,), n_visits - 1, dtype=torch.int64),
        S.EVENT: torch.rand(batch, generator=g) < 0.5,
    }


@dataclass(frozen=True)
class GpuBenchSettings:
    """What every preset of one GPU bench run trains with: batch shape, steps, ZeRO stage."""

    batch: int = 32
    """Subjects per micro-batch."""
    seq_len: int = 512
    """Tokens per subject L."""
    steps: int = 30
    """Timed optimizer steps per preset."""
    warmup: int = 5
    """Untimed optimizer steps first."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0-2 anywhere, 3 on a GPU)."""
    vocab_size: int = 1000
    """Code ids of the synthetic batches (and the model's vocabulary)."""
    codes_per_visit: int = 10
    """Codes per visit of the synthetic batches."""


def bench_size(
    size: str, settings: GpuBenchSettings, *, device: torch.device, peak: float | None = None
) -> dict[str, float]:
    """Train preset ``size`` for ``warmup`` + ``steps`` steps of ``settings``; the figures of the
    timed steps."""
    batch, seq_len, vocab_size = settings.batch, settings.seq_len, settings.vocab_size
    steps, warmup = settings.steps, settings.warmup
    cuda = device.type == "cuda"
    cfg = getattr(B, f"behrt_{size}")(vocab_size, seq_len)  # the preset as trained
    torch.manual_seed(0)
    model: nn.Module = B.build_survival_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    ecfg = EngineConfig(
        engine="deepspeed",
        zero_stage=settings.zero_stage,
        precision="bf16" if cuda else "fp32",
        micro_batch_size=batch,
        lr=1e-4,
    )
    engine = build_engine(model, ecfg, total_steps=warmup + steps, device=device)
    task = SurvivalTask(loss="nll")
    host = synthetic_batch(vocab_size, batch, seq_len, settings.codes_per_visit)
    np_batch = {k: v.numpy() for k, v in host.items()}

    def step() -> None:
        tb = to_tensors(np_batch, device)  # host → device every step, as in training
        loss, _ = task(engine, engine.module, tb, 0)
        engine.backward(loss)
        engine.step()

    engine.train()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    tokens = batch * seq_len
    best, med = min(times), statistics.median(times)
    fpt = flops_per_token(cfg, seq_len)
    res = {
        "params": float(n_params),
        "linear_params_per_token": float(linear_params_per_token(cfg)),
        "flops_per_token": fpt,
        "step_s": med,
        "step_best_s": best,
        "tokens_per_s": tokens / med,
        "tokens_per_s_best": tokens / best,
        "achieved_tflops": fpt * tokens / med / 1e12,
        "batch": float(batch),
        "seq_len": float(seq_len),
    }
    if cuda:
        res["peak_mem_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["peak_mem_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        if peak:
            res["mfu"] = res["achieved_tflops"] / peak
    return res


def run_gpu_bench(
    out: str,
    sizes: Sequence[str] = ("medium", "large"),
    settings: GpuBenchSettings | None = None,
    *,
    peak: float | None = None,
    device: str | None = None,
    log: Any = print,
) -> dict[str, float]:
    """Benchmark each preset in ``sizes`` and write ``OUT/bench.json`` and ``OUT/SUMMARY.md``.

    Args:
        out: output directory (created).
        sizes: BEHRT presets.
        settings: micro-batch shape, timed and untimed steps and ZeRO stage of every preset
            (default: :class:`GpuBenchSettings`' defaults).
        peak: the device's dense bf16 peak in TFLOP/s (default: from the device name).
        device: ``cuda`` / ``cpu`` (default: cuda if available).
        log: where progress lines go.

    Returns:
        The flat ``bench.json`` content.
    """
    settings = settings or GpuBenchSettings()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(dev)
        if peak is None:
            peak = peak_tflops(name)
        if peak is None:
            log(f"unknown GPU {name!r}: pass --peak-tflops for MFU; reporting TFLOP/s only")
    else:
        log(
            "no CUDA device: running fp32 on the CPU; skipped the GPU-only parts (bf16, MFU, "
            "CUDA peak memory)"
        )
    created = ensure_process_group("nccl" if cuda else "gloo")
    res: dict[str, float] = {}
    try:
        for size in sizes:
            t0 = time.perf_counter()
            r = bench_size(size, settings, device=dev, peak=peak)
            res.update({f"{size}_{k}": v for k, v in r.items()})
            res[f"{size}_wall_s"] = time.perf_counter() - t0
            if cuda:
                torch.cuda.empty_cache()  # the next preset starts from an empty cache
            mem = (
                f", peak memory {r['peak_mem_allocated_gb']:.2f} GiB allocated / "
                f"{r['peak_mem_reserved_gb']:.2f} GiB reserved"
                if cuda
                else ""
            )
            mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
            log(
                f"{size}: {r['tokens_per_s']:,.0f} tokens/s (median step {1e3 * r['step_s']:.1f} ms)"
                f", {r['achieved_tflops']:.2f} TFLOP/s{mfu}{mem}"
            )
    finally:
        if created:
            dist.destroy_process_group()
    res["peak_bf16_tflops"] = float(peak) if peak else 0.0
    res["cuda"] = float(cuda)
    os.makedirs(out, exist_ok=True)
    atomic.write_json(res, os.path.join(out, "bench.json"))
    atomic.write_text(
        _summary(res, sizes, name, cuda, settings.zero_stage), os.path.join(out, "SUMMARY.md")
    )
    return res


def _summary(r: dict[str, float], sizes: Sequence[str], name: str, cuda: bool, zero: int) -> str:
    prec = "bf16" if cuda else "fp32 (CPU: no GPU found)"
    lines = [
        "# GPU training throughput",
        "",
        f"Device: {name}; DeepSpeed ZeRO-{zero}, {prec}, torch {torch.__version__}; "
        "flat BEHRT survival model, every token real, visit-causal attention, NLL.",
        "",
        "FLOPs per token (forward + backward) = 6·N + 12·n_layers·L·d, N = Linear weights per "
        "token (embedding look-ups, norms and the per-visit head left out); MFU = achieved ÷ "
        f"dense bf16 peak ({r['peak_bf16_tflops']:g} TFLOP/s).",
        "",
        "| preset | params | batch × L | tokens/s | step ms | TFLOP/s | MFU | peak GiB (alloc / reserved) |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for s in sizes:
        mfu = f"{100 * r[f'{s}_mfu']:.1f}%" if f"{s}_mfu" in r else "–"
        mem = (
            f"{r[f'{s}_peak_mem_allocated_gb']:.2f} / {r[f'{s}_peak_mem_reserved_gb']:.2f}"
            if f"{s}_peak_mem_allocated_gb" in r
            else "–"
        )
        lines.append(
            f"| {s} | {r[f'{s}_params']:,.0f} | {r[f'{s}_batch']:.0f} × {r[f'{s}_seq_len']:.0f} "
            f"| {r[f'{s}_tokens_per_s']:,.0f} | {1e3 * r[f'{s}_step_s']:.1f} | "
            f"{r[f'{s}_achieved_tflops']:.2f} | {mfu} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ehrsurv_dist.bench.gpu",
        description="bf16 DeepSpeed training throughput of BEHRT presets on one GPU: tokens/s, "
        "model FLOPs utilisation and peak memory (fp32 on the CPU when there is no GPU).",
    )
    p.add_argument("--out", required=True, help="output directory for bench.json and SUMMARY.md")
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["medium", "large"],
        choices=["tiny", "small", "medium", "large"],
        help="BEHRT presets to run (default: medium large)",
    )
    p.add_argument("--batch", type=int, default=32, help="subjects per micro-batch (default 32)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per subject L (default 512)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--zero-stage", type=int, default=1, help="DeepSpeed ZeRO stage (default 1)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's dense bf16 peak TFLOP/s for MFU (default: from the GPU's name)",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    a = p.parse_args(argv)
    if min(a.batch, a.seq_len, a.steps) < 1 or a.warmup < 0:
        p.error("--batch, --seq-len and --steps must be >= 1, --warmup >= 0")
    shape = {k: getattr(a, k) for k in ("batch", "seq_len", "steps", "warmup", "zero_stage")}
    run_gpu_bench(a.out, a.sizes, GpuBenchSettings(**shape), peak=a.peak_tflops, device=a.device)
    print(open(os.path.join(a.out, "SUMMARY.md")).read())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
