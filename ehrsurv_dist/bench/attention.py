"""Attention costs measured for ``ehrsurv bench throughput`` (pure torch, no Ray).

Two questions from the seed's documents, answered with numbers from this machine:

- ``scaled_dot_product_attention`` vs a naive softmax attention (``softmax(q kᵀ / √d) v`` written
  out, the B × H × L × L score and probability tensors materialised) at one sequence length, for
  the forward + backward pass: time, and the bytes autograd keeps for the backward pass (exact,
  counted with ``saved_tensors_hooks``), and the rise of the process's resident memory (sampled).
- flat vs hierarchical BEHRT at V visits of C codes (docs/models.md): the analytic ratio of
  attention score entries, and the measured forward + backward time of the two real models.

Shape vocabulary: ``B`` batch, ``H`` heads, ``L`` tokens, ``V`` visits, ``C`` codes per visit,
``D`` hidden.
"""

from __future__ import annotations

import functools
import gc
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrsurv_dist import schema as S
from ehrsurv_dist.models import builders as B
from ehrsurv_dist.models.hierarchical import HierarchicalBEHRTSurvival
from ehrsurv_dist.models.survival import BEHRTSurvival


def naive_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Softmax attention written out: the reference that ``scaled_dot_product_attention`` replaces.

    Args:
        q, k, v: [B, H, L, D/H].
        mask: bool, broadcastable to [B, H, L, L], True = may attend (the SDPA convention).
        dropout_p: dropout on the attention probabilities.

    Returns:
        [B, H, L, D/H].
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, L, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v  # [B, H, L, D/H]


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the same arguments."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def visit_causal_mask(batch: int, length: int, codes_per_visit: int) -> Tensor:
    """The flat model's visit-causal mask for subjects of ``length`` tokens in visits of
    ``codes_per_visit`` codes (all tokens real): bool [B, 1, L, L]."""
    visit = torch.arange(length) // codes_per_visit  # [L]
    allowed = visit[None, :] <= visit[:, None]  # [L(query), L(key)]
    return allowed[None, None].expand(batch, 1, length, length)


def flat_score_entries(visits: int, codes: int) -> int:
    """Attention score entries of one flat head: every token against every token, (V·C)²."""
    return (visits * codes) ** 2


def hierarchical_score_entries(visits: int, codes: int) -> int:
    """The seed's hierarchical count for one head (docs/models.md): C² per visit (codes attend
    within their visit), plus V² (visits attend across the timeline): V·C² + V²."""
    return visits * codes**2 + visits**2


def seed_attention_ratio(visits: int, codes: int) -> float:
    """(V·C)² / (V·C² + V²): 47.4 at V = 50, C = 30 (the seed's "about 47× cheaper")."""
    return flat_score_entries(visits, codes) / hierarchical_score_entries(visits, codes)


def model_score_entries(model: nn.Module, visits: int, codes: int) -> int:
    """Attention score entries per subject of one forward pass of *our* models at V, C.

    Flat BEHRT: layers × heads × (V·C)². Hierarchical BEHRT: its visit pooling scores each
    code once against one learned query (V·C entries with attention pooling, none with mean
    pooling), then layers × heads × V² across visits. Our hierarchical model pools visits with
    one query (seed option B), not a within-visit transformer (option C, the seed's C² term).
    """
    if isinstance(model, BEHRTSurvival):
        cfg = model.cfg
        return cfg.num_layers * cfg.num_heads * (visits * codes) ** 2
    if isinstance(model, HierarchicalBEHRTSurvival):
        hc = model.cfg
        pooling = visits * codes if hc.visit_pooling == "attention" else 0
        return pooling + hc.num_layers * hc.num_heads * visits**2
    raise TypeError(f"no attention count for {type(model).__name__}")


def saved_bytes(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
    """Run ``fn`` and count the bytes autograd saves for the backward pass (distinct storages).

    Returns:
        (the output, bytes saved).
    """
    seen: dict[Any, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device)] = max(
                seen.get((st.data_ptr(), t.device), 0), st.nbytes()
            )
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(best, median) seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0], times[len(times) // 2]


def bench_attention_kernels(
    batch: int,
    heads: int,
    length: int,
    head_dim: int,
    *,
    repeats: int = 3,
    codes_per_visit: int = 8,
    rss: Callable[[], Any] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """SDPA vs naive attention, forward + backward, with the flat model's visit-causal mask.

    Args:
        batch, heads, length, head_dim: B, H, L, D/H.
        repeats: timed calls per variant (best and median kept).
        codes_per_visit: tokens per visit of the mask.
        rss: a context-manager factory with a ``peak - start`` rise in MB (``.rise``), e.g. the
            RSS sampler of :mod:`ehrsurv_dist.bench.throughput`; None skips the RSS figures.
        seed: seed of the random q, k, v.

    Returns:
        Flat keys: ``attn_{sdpa,naive}_ms`` (best), ``*_median_ms``, ``*_saved_mb`` (autograd),
        ``*_rss_rise_mb``, ``attn_sdpa_dropout_ms`` / ``attn_naive_dropout_ms`` (with the model's
        attention dropout 0.1, which forces SDPA onto its math path on CPU), and the ratios.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, length, head_dim)
    q, k, v = (torch.randn(shape, generator=g).requires_grad_() for _ in range(3))
    mask = visit_causal_mask(batch, length, codes_per_visit)
    res: dict[str, float] = {}
    variants: dict[str, tuple[Callable[..., Tensor], float]] = {
        "sdpa": (sdpa_attention, 0.0),
        "naive": (naive_attention, 0.0),
        "sdpa_dropout": (sdpa_attention, 0.1),
        "naive_dropout": (naive_attention, 0.1),
    }
    # max abs difference of the outputs (no dropout): the two compute the same function
    with torch.no_grad():
        diff = (sdpa_attention(q, k, v, mask) - naive_attention(q, k, v, mask)).abs().max()
    res["attn_max_abs_diff"] = float(diff)
    for name, (fn, p) in variants.items():

        def step(fn: Callable[..., Tensor] = fn, p: float = p) -> None:
            out = fn(q, k, v, mask, p)
            out.sum().backward()
            for t in (q, k, v):
                t.grad = None

        best, med = best_time(step, repeats)
        res[f"attn_{name}_ms"] = best * 1e3
        res[f"attn_{name}_median_ms"] = med * 1e3
        if p == 0.0:
            gc.collect()
            out, nbytes = saved_bytes(functools.partial(fn, q, k, v, mask))
            del out
            res[f"attn_{name}_saved_mb"] = nbytes / 2**20
            if rss is not None:
                gc.collect()
                with rss() as r:
                    step()
                res[f"attn_{name}_rss_rise_mb"] = float(r.rise)
    res["attn_speedup"] = res["attn_naive_ms"] / res["attn_sdpa_ms"]
    res["attn_saved_memory_ratio"] = res["attn_naive_saved_mb"] / max(
        res["attn_sdpa_saved_mb"], 1e-9
    )
    res["attn_dropout_slowdown_sdpa"] = res["attn_sdpa_dropout_ms"] / res["attn_sdpa_ms"]
    res.update(
        {
            "attn_batch": batch,
            "attn_heads": heads,
            "attn_len": length,
            "attn_head_dim": head_dim,
        }
    )
    return res


def flat_and_hierarchical_inputs(
    vocab_size: int, batch: int, visits: int, codes: int, seed: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The same subjects (V visits of C real codes each) in the flat and hierarchical layouts."""
    g = torch.Generator().manual_seed(seed)
    L = visits * codes
    hcodes = torch.randint(S.NUM_SPECIAL_TOKENS, vocab_size, (batch, visits, codes), generator=g)
    gaps = torch.rand(batch, visits, generator=g) * 200.0
    gaps[:, 0] = 0.0
    ages = 40.0 + gaps.cumsum(1) / 365.25  # [B, V]
    flat = {
        S.CODES: hcodes.reshape(batch, L),  # [B, V, C] -> [B, V·C]
        S.AGES: ages[:, :, None].expand(batch, visits, codes).reshape(batch, L),
        S.VISIT_IDS: torch.arange(visits).repeat_interleave(codes)[None].expand(batch, L).clone(),
        S.ATTENTION_MASK: torch.ones(batch, L, dtype=torch.bool),
    }
    hier = {
        S.CODES: hcodes,
        S.AGES: ages,
        S.TIME_DELTAS: gaps,
        S.CODE_MASK: torch.ones(batch, visits, codes, dtype=torch.bool),
        S.VISIT_MASK: torch.ones(batch, visits, dtype=torch.bool),
    }
    return flat, hier


def bench_flat_vs_hierarchical(
    size: str,
    *,
    visits: int = 50,
    codes: int = 30,
    batch: int = 4,
    vocab_size: int = 1000,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Forward + backward time of flat vs hierarchical BEHRT (preset ``size``) at V, C.

    Both models get the same subjects; the flat one reads them as L = V·C tokens.

    Returns:
        Flat keys ``flat_hier_*``: the seed's analytic ratio, our models' score-entry ratio,
        the measured times and their ratio.
    """
    torch.manual_seed(seed)
    flat_cfg = getattr(B, f"behrt_{size}")(vocab_size, visits * codes)
    hier_cfg = getattr(B, f"hierarchical_{size}")(
        vocab_size, max_visits=visits, max_codes_per_visit=codes
    )
    flat_model = B.build_survival_model(flat_cfg)
    hier_model = B.build_survival_model(hier_cfg)
    flat_in, hier_in = flat_and_hierarchical_inputs(vocab_size, batch, visits, codes, seed)

    def step(model: nn.Module, inputs: dict[str, Tensor]) -> None:
        out = model(**inputs)
        out.logits.sum().backward()
        model.zero_grad(set_to_none=True)

    t_flat, t_flat_med = best_time(lambda: step(flat_model, flat_in), repeats)
    t_hier, t_hier_med = best_time(lambda: step(hier_model, hier_in), repeats)
    flat_entries = model_score_entries(flat_model, visits, codes)
    hier_entries = model_score_entries(hier_model, visits, codes)
    return {
        "flat_hier_visits": visits,
        "flat_hier_codes": codes,
        "flat_hier_batch": batch,
        "flat_hier_attention_ops_ratio_seed": seed_attention_ratio(visits, codes),
        "flat_hier_attention_ops_ratio_models": flat_entries / hier_entries,
        "flat_attention_entries_per_subject": flat_entries,
        "hier_attention_entries_per_subject": hier_entries,
        "flat_fwd_bwd_ms": t_flat * 1e3,
        "hier_fwd_bwd_ms": t_hier * 1e3,
        "flat_fwd_bwd_median_ms": t_flat_med * 1e3,
        "hier_fwd_bwd_median_ms": t_hier_med * 1e3,
        "flat_hier_time_ratio": t_flat / t_hier,
    }
