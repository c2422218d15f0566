"""Pure helpers of ``ehrsurv bench throughput`` (no Ray): attention kernels, counts, memory."""

from __future__ import annotations

import pytest
import torch

from ehrsurv_dist import schema as S
from ehrsurv_dist.bench import attention as A
from ehrsurv_dist.bench.throughput import (
    RssRise,
    counters_per_epoch,
    keyed_steps,
    model_state_bytes_per_rank,
    off_cpu_fraction,
    pooled,
    steady,
    step_floor,
)
from ehrsurv_dist.models import builders as B
from ehrsurv_dist.models.behrt import build_attention_mask


@pytest.mark.parametrize("masked", [True, False])
def test_naive_attention_equals_sdpa_values_and_gradients(masked: bool) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 21, 8)  # odd L: visits of 4 codes leave a partial last visit
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    mask = A.visit_causal_mask(3, 21, 4) if masked else None
    grads = []
    outs = []
    for fn in (A.naive_attention, A.sdpa_attention):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv, mask)
        (out * torch.arange(8, dtype=out.dtype)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (qq, kk, vv)])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=0)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_visit_causal_mask_is_the_models_mask() -> None:
    L, c = 10, 3
    visit = (torch.arange(L) // c)[None].expand(2, L)
    want = build_attention_mask(visit, torch.ones(2, L, dtype=torch.bool), "visit_causal")
    assert torch.equal(A.visit_causal_mask(2, L, c), want)
    assert A.visit_causal_mask(1, 4, 2)[0, 0].int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]


def test_seed_ratio_at_50_visits_of_30_codes() -> None:
    # docs/models.md: L = 1500, 2.25M vs 50·30² + 50² = 47,500 entries, "about 47x"
    assert A.flat_score_entries(50, 30) == 2_250_000
    assert A.hierarchical_score_entries(50, 30) == 47_500
    assert A.seed_attention_ratio(50, 30) == pytest.approx(2_250_000 / 47_500)
    assert 47 < A.seed_attention_ratio(50, 30) < 48


def test_model_score_entries_follow_the_configs() -> None:
    flat = B.build_survival_model(B.behrt_tiny(50, 12))  # 2 layers, 4 heads
    hier = B.build_survival_model(B.hierarchical_tiny(50, max_visits=4, max_codes_per_visit=3))
    assert A.model_score_entries(flat, 4, 3) == 2 * 4 * 12**2
    # attention pooling scores each code once; 1 layer x 4 heads across 4 visits
    assert A.model_score_entries(hier, 4, 3) == 4 * 3 + 1 * 4 * 4**2
    with pytest.raises(TypeError):
        A.model_score_entries(torch.nn.Linear(2, 2), 4, 3)


def test_flat_and_hierarchical_inputs_hold_the_same_subjects() -> None:
    flat, hier = A.flat_and_hierarchical_inputs(40, batch=2, visits=3, codes=4)
    assert flat[S.CODES].shape == (2, 12) and hier[S.CODES].shape == (2, 3, 4)
    assert torch.equal(flat[S.CODES].view(2, 3, 4), hier[S.CODES])
    assert flat[S.VISIT_IDS][0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(flat[S.AGES].view(2, 3, 4)[:, :, 0], hier[S.AGES])
    assert int(flat[S.CODES].min()) >= S.NUM_SPECIAL_TOKENS
    # both real models accept them and return one logit per visit
    f = B.build_survival_model(B.behrt_tiny(40, 12))(**flat)
    h = B.build_survival_model(B.hierarchical_tiny(40, max_visits=3, max_codes_per_visit=4))(**hier)
    assert f.logits.shape == h.logits.shape == (2, 3)


def test_naive_attention_saves_the_probabilities_for_backward() -> None:
    B_, H, L, d = 2, 2, 64, 4
    q, k, v = (torch.randn(B_, H, L, d, requires_grad=True) for _ in range(3))
    mask = A.visit_causal_mask(B_, L, 8)
    _, naive = A.saved_bytes(lambda: A.naive_attention(q, k, v, mask))
    _, sdpa = A.saved_bytes(lambda: A.sdpa_attention(q, k, v, mask))
    probs = B_ * H * L * L * 4  # one fp32 [B, H, L, L] tensor
    assert naive >= probs  # the probabilities, kept for the softmax and matmul backward
    assert sdpa < naive


def test_model_state_bytes_per_rank() -> None:
    p = 1000
    assert model_state_bytes_per_rank(p, 0, 2) == 16 * p
    assert model_state_bytes_per_rank(p, 1, 2) == (4 + 4 + 4) * p
    assert model_state_bytes_per_rank(p, 2, 2) == (4 + 2 + 4) * p
    assert model_state_bytes_per_rank(p, 3, 4) == (1 + 1 + 2) * p
    assert model_state_bytes_per_rank(p, 2, 1) == 16 * p
    with pytest.raises(ValueError):
        model_state_bytes_per_rank(p, 4, 2)


def test_steady_skips_the_warmup_epoch() -> None:
    assert steady([5.0, 1.0, 2.0]) == [1.0, 2.0]
    assert steady([5.0]) == [5.0]


def test_pooled_takes_the_steady_epochs_of_every_run() -> None:
    runs = [
        {
            "epoch_s": [9.0, 1.0, 2.0],
            "tokens": [5.0, 6.0, 7.0],
            "wait": [0.9, 0.1, 0.2],
            "steps": [3, 3, 3],
        },
        {"epoch_s": [8.0, 3.0], "tokens": [5.0, 8.0], "wait": [0.8, 0.3], "steps": [3, 3]},
    ]
    p = pooled(runs)
    # each run's warm-up epoch (9.0, 8.0) is left out; the rest are kept in order
    assert p == {
        "epoch_s": [1.0, 2.0, 3.0],
        "tokens": [6.0, 7.0, 8.0],
        "wait": [0.1, 0.2, 0.3],
        "steps": [3, 3, 3],
    }


def _keyed(*epochs: list[float]) -> list[dict[int, float]]:
    """A round whose epochs train batches 0, 1, 2, ... in that order."""
    return [dict(enumerate(e)) for e in epochs]


def test_step_floor_takes_each_batchs_fastest_round() -> None:
    rounds = [
        _keyed([9.0, 9.0], [1.0, 5.0, 2.0], [4.0]),  # round 0: epochs 0 (warm-up), 1, 2
        _keyed([8.0, 8.0], [3.0, 1.0, 2.5], [3.0]),  # round 1
        _keyed([7.0, 7.0], [2.0, 4.0, 0.5], [6.0]),  # round 2
    ]
    # epoch 1: min(1,3,2) + min(5,1,4) + min(2,2.5,0.5) = 1 + 1 + 0.5; epoch 2: min(4,3,6)
    assert step_floor(rounds) == [2.5, 3.0]
    # the floor is never above any round's own epoch, and one round is its own floor
    assert step_floor(rounds, skip=0)[0] == 7.0 + 7.0
    assert step_floor(rounds[:1]) == [8.0, 4.0]


def test_step_floor_pairs_steps_by_batch_not_by_position() -> None:
    # Batches 10 (slow: 0.1 s) and 20 (fast: 0.01 s); round 1 trained them in the other order,
    # as a Ray run does when its units arrive in another order. Paired by position, the
    # minimum would take the fast batch's time at both positions (0.02 s).
    run0 = {"step_s": [[0.1, 0.01], [0.1, 0.01]], "step_keys": [[10, 20], [10, 20]]}
    run1 = {"step_s": [[0.1, 0.01], [0.011, 0.12]], "step_keys": [[10, 20], [20, 10]]}
    rounds = [keyed_steps(run0), keyed_steps(run1)]
    assert rounds[1][1] == {20: 0.011, 10: 0.12}
    assert step_floor(rounds) == [pytest.approx(0.1 + 0.01)]


def test_step_floor_refuses_rounds_that_did_different_work() -> None:
    with pytest.raises(ValueError, match="differ in batches"):
        step_floor([_keyed([1.0], [1.0, 2.0]), _keyed([1.0], [1.0])])
    with pytest.raises(ValueError, match="differ in batches"):  # as many, but other batches
        step_floor([_keyed([1.0], [1.0]), [{0: 1.0}, {5: 1.0}]])
    with pytest.raises(ValueError, match="differ in epochs"):
        step_floor([_keyed([1.0], [1.0]), _keyed([1.0])])
    with pytest.raises(ValueError, match="no rounds"):
        step_floor([])
    # a batch twice in one epoch cannot be paired with another round's
    with pytest.raises(ValueError, match="distinct batch keys"):
        keyed_steps({"step_s": [[1.0, 2.0]], "step_keys": [[4, 4]]})


def test_off_cpu_fraction_of_the_steady_epochs() -> None:
    runs = [
        {"thread_s": [9.0, 1.0, 2.0], "cpu_s": [1.0, 0.9, 1.6]},
        {"thread_s": [9.0, 1.0], "cpu_s": [9.0, 1.0]},
    ]
    # steady: wall 1 + 2 + 1 = 4, CPU 0.9 + 1.6 + 1.0 = 3.5
    assert off_cpu_fraction(runs) == pytest.approx(1 - 3.5 / 4)
    assert off_cpu_fraction(runs[1:]) == 0.0


def test_counters_per_epoch_is_the_median_of_the_steady_epochs() -> None:
    runs = [
        {"counters": [[900, 900, 900], [10, 100, 0], [30, 140, 5]]},
        {"counters": [[900, 900, 900], [20, 120, 1]]},
    ]
    assert counters_per_epoch(runs) == (20.0, 120.0, 1.0)
    with pytest.raises(ValueError, match="no epochs"):
        counters_per_epoch([])


def test_rss_rise_sees_an_allocation() -> None:
    with RssRise() as r:
        x = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        x += 1
    assert r.rise > 32
    del x


# --- the GPU benchmark's pure parts (its CPU run is in tests/integration) -----------------------


@pytest.mark.parametrize("size", ["tiny", "small", "medium", "large"])
def test_flops_formula_counts_the_linear_weights_a_token_passes(size: str) -> None:
    from ehrsurv_dist.bench import gpu

    cfg = getattr(B, f"behrt_{size}")(99, 64)
    model = B.build_survival_model(cfg)
    per_token = [model.encoder.embeddings.projection, *model.encoder.blocks]
    n = sum(
        m.weight.numel()
        for part in per_token
        for m in part.modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert gpu.linear_params_per_token(cfg) == n
    assert gpu.flops_per_token(cfg, 64) == 6 * n + 12 * cfg.num_layers * 64 * cfg.hidden_dim


def test_flops_formula_tiny_by_hand() -> None:
    from ehrsurv_dist.bench import gpu

    cfg = B.behrt_tiny(99, 10)  # d 32, FFN 64, 2 layers, no projection
    assert gpu.linear_params_per_token(cfg) == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert gpu.flops_per_token(cfg, 10) == 6 * 16384 + 12 * 2 * 10 * 32


def test_peak_table() -> None:
    from ehrsurv_dist.bench import gpu

    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("Some New GPU") is None


def test_gpu_synthetic_batch_is_a_valid_flat_batch() -> None:
    from ehrsurv_dist.bench import gpu
    from ehrsurv_dist.models.survival import select_inputs

    b = gpu.synthetic_batch(50, batch=3, seq_len=23, codes_per_visit=5)
    assert b[S.VISIT_IDS][0].tolist() == [i // 5 for i in range(23)]
    assert b[S.LAST_VISIT].tolist() == [4, 4, 4]
    model = B.build_survival_model(B.behrt_tiny(50, 23))
    out = model(**select_inputs(model, b))
    assert out.logits.shape == (3, 5) and bool(out.visit_mask.all())


TRAINING_KEYS = [
    "train_overhead_ratio", "train_overhead_ratio_best_epoch", "train_overhead_ratio_step_median",
    "ray_1w_step_floor_epoch_s", "train_cpu_ratio", "ray_1w_off_cpu_fraction",
    "plain_off_cpu_fraction", "ray_1w_voluntary_switches_per_epoch",
    "ray_1w_involuntary_switches_per_epoch", "ray_1w_page_faults_per_epoch",
    "plain_voluntary_switches_per_epoch", "plain_involuntary_switches_per_epoch",
    "plain_page_faults_per_epoch", "plain_step_floor_epoch_s", "data_wait_fraction",
    "ray_1w_tokens_per_s", "ray_2w_tokens_per_s", "plain_tokens_per_s",
    "plain_stream_tokens_per_s", "train_overhead_ratio_median", "train_overhead_ratio_vs_stream",
    "ray_2w_speedup_vs_1w", "ray_2w_speedup_vs_plain", "ray_1w_epoch_s", "ray_1w_epoch_median_s",
    "ray_2w_epoch_s", "plain_epoch_s", "plain_epoch_median_s", "plain_stream_epoch_s",
    "ray_1w_tokens_per_s_median", "plain_tokens_per_s_median", "ray_2w_data_wait_fraction",
    "plain_stream_data_wait_fraction", "ray_1w_compute_s", "ray_1w_run_wall_s",
    "ray_1w_first_epoch_s", "train_overhead_ratio_round_min", "train_overhead_ratio_round_max",
    "tokens_per_epoch", "steps_per_epoch", "plain_loss_epoch_last",
]  # fmt: skip


def _run(scale: float, steps: int = 3, epochs: int = 3, first_key: int = 0) -> dict[str, object]:
    """A run record as ray_run / plain_loop return it, times scaled by ``scale``; its batches
    are named ``first_key``, ``first_key + 1``, ..."""
    step_s = [[scale * (1 + 0.1 * s + 0.01 * e) for s in range(steps)] for e in range(epochs)]
    return {
        "step_s": step_s,
        "step_keys": [list(range(first_key, first_key + steps)) for _ in range(epochs)],
        "cpu_s": [0.9 * sum(x) for x in step_s],
        "thread_s": [1.04 * sum(x) for x in step_s],
        "counters": [[10, 2, 100] for _ in range(epochs)],
        "epoch_s": [1.05 * sum(x) for x in step_s],
        "tokens": [300.0] * epochs,
        "wait": [0.01] * epochs,
        "steps": [steps] * epochs,
        "wall_s": 9.0,
        "loss": [0.7, 0.6, 0.5],
        "worker_peak_rss_mb": [400.0, 420.0],
    }


def test_bench_keys_are_those_of_the_bench_json() -> None:
    from ehrsurv_dist.bench.throughput.reduce import memory_keys, training_keys

    ray1, plain = [_run(1.1), _run(1.2)], [_run(1.0), _run(1.05)]
    keys = training_keys(ray1, plain, _run(0.6), _run(1.3))
    assert list(keys) == TRAINING_KEYS
    assert keys["train_overhead_ratio"] == pytest.approx(1.1)  # step floors: 1.1 / 1.0
    assert keys["plain_loss_epoch_last"] == 0.5
    mem = memory_keys({"2w_zero1": _run(0.6), "2w_zero2": _run(0.6)}, [1, 2], n_params=1000)
    assert list(mem) == [
        f"{k.format(s=s)}"
        for s in (1, 2)
        for k in (
            "peak_rss_mb_zero{s}", "peak_rss_mb_zero{s}_mean", "ray_2w_zero{s}_tokens_per_s",
            "ray_2w_zero{s}_data_wait_fraction", "model_state_mb_per_rank_zero{s}",
            "ray_2w_zero{s}_run_wall_s",
        )
    ]  # fmt: skip
    assert mem["peak_rss_mb_zero1"] == 420.0


def test_bench_refuses_unequal_work() -> None:
    from ehrsurv_dist.bench.throughput.reduce import training_keys

    with pytest.raises(RuntimeError, match="unequal work"):
        training_keys([_run(1.1)], [_run(1.0, steps=4)], _run(0.6), _run(1.3))
    # as many steps and tokens, but other batches
    with pytest.raises(RuntimeError, match="unequal work"):
        training_keys([_run(1.1)], [_run(1.0, first_key=7)], _run(0.6), _run(1.3))
