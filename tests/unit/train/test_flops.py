"""MFU accounting: the analytic FLOPs formula, FlopCounterMode agreement, the peak table and the CPU peak."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ptmkit.models import build_model, make_config
from ptmkit.train.flops import (
    PEAK_FLOPS, device_peak_entry, device_peak_flops, format_flops, format_mfu, measure_cpu_peak_flops,
    measured_step_flops, mfu, training_flops_breakdown, training_flops_per_token,
)


def test_formula_on_a_hand_computed_config():
    # N = 1000 weights, L = 2 layers, T = 8 positions, d = 4: 6N = 6000; bidirectional attention
    # 12 * 2 * 8 * 4 = 768; causal 384.
    bi = training_flops_breakdown(1000, 2, 8, 4, causal=False)
    assert bi == {"params": 6000.0, "attention": 768.0, "total": 6768.0}
    causal = training_flops_breakdown(1000, 2, 8, 4, causal=True)
    assert causal == {"params": 6000.0, "attention": 384.0, "total": 6384.0}
    assert training_flops_per_token(1000, 2, 8, 4, causal=True) == causal["total"]
    assert training_flops_per_token(1000, 2, 8, 4, causal=False) == bi["total"]


@pytest.mark.parametrize("shape", [(124_000_000, 12, 1024, 768), (85_000_000, 12, 512, 768), (10, 1, 1, 1)])
def test_causal_is_bidirectional_minus_half_the_attention_term(shape):
    bi = training_flops_breakdown(*shape, causal=False)
    causal = training_flops_breakdown(*shape, causal=True)
    assert causal["params"] == bi["params"]
    assert causal["total"] == pytest.approx(bi["total"] - bi["attention"] / 2)


def _tiny_gpt2(vocab=128, width=64, layers=2, heads=2, seq=32):
    cfg = make_config("gpt2", dict(vocab_size=vocab, hidden_size=width, num_layers=layers, num_heads=heads,
                                   max_position_embeddings=seq, dropout=0.0, attention_dropout=0.0,
                                   embedding_dropout=0.0, bos_token_id=0, eos_token_id=0))
    return build_model("gpt2", cfg, "causal-lm")


def test_flop_counter_agrees_with_the_analytic_count():
    """FlopCounterMode over one forward + backward of a tiny GPT-2 against the analytic count.

    The comparison is against the *bidirectional* count: FlopCounterMode charges attention for the full
    T x T score matrix whatever the mask (its SDPA formulas ignore is_causal; the math backend runs full
    batched matmuls under a mask), while the analytic causal count credits only the unmasked half. The math
    backend is forced because torch has no FLOP formula for the fused CPU SDPA kernel (it would count zero).

    With N = the weight matrices only, the two agree exactly; with N = every parameter but the position table
    (the convention used for MFU) the analytic count is higher by 6 x (biases + LayerNorm parameters), which
    is 1.6% for this tiny model (width 64) and 0.1% for GPT-2-124M. Tolerance: 3%.
    """
    L, T, d, B = 2, 32, 64, 2
    model = _tiny_gpt2(width=d, layers=L, seq=T)
    ids = torch.randint(0, 128, (B, T))

    def step():
        model(ids).logits.float().sum().backward()

    with sdpa_kernel(SDPBackend.MATH):
        measured = measured_step_flops(step)
    tokens = B * T
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".pos." not in n)
    exact = training_flops_breakdown(matrices, L, T, d, causal=False)["total"] * tokens
    assert measured == pytest.approx(exact, rel=1e-9)

    n_pos = model.backbone.embeddings.pos.weight.numel()
    n_params = sum(p.numel() for p in model.parameters()) - n_pos
    analytic = training_flops_breakdown(n_params, L, T, d, causal=False)
    assert analytic["total"] * tokens == pytest.approx(measured, rel=0.03)
    # The counter's excess over the causal analytic count is the masked half of the attention term.
    causal = training_flops_breakdown(matrices, L, T, d, causal=True)
    assert measured - causal["total"] * tokens == pytest.approx(6 * L * T * d * tokens, rel=1e-9)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA L4", "L4"),
    ("Tesla V100-SXM2-16GB", "V100"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA B200", "B200"),
    ("AMD Instinct MI300X", "MI300X"),
])
def test_device_peak_maps_real_device_names(name, key):
    assert device_peak_entry(name) == (key, PEAK_FLOPS[key])
    assert device_peak_flops(name) == PEAK_FLOPS[key]


def test_device_peak_unknown_and_lookalikes():
    assert device_peak_flops("NVIDIA L40S") is None  # not an L4
    assert device_peak_flops("NVIDIA A10") is None  # not an A10G, not an A100
    assert device_peak_flops("cpu") is None
    assert PEAK_FLOPS["H100 SXM"] == 989e12 and PEAK_FLOPS["B200"] == 2250e12


def test_measure_cpu_peak_flops_is_positive_and_finite():
    peak = measure_cpu_peak_flops(size=64, repeats=2, warmup=1)
    assert peak > 0 and math.isfinite(peak)


def test_mfu_and_its_denominator_are_printed_together():
    value = mfu(800e6, 510_000, 989e12)
    assert value == pytest.approx(800e6 * 510_000 / 989e12)
    assert format_mfu(0.413, 989e12, "H100 SXM bf16 dense") == "MFU 41.3% of 989 TFLOP/s (H100 SXM bf16 dense)"
    assert format_flops(98.2e9) == "98.2 GFLOP/s"
    assert format_flops(2250e12) == "2.25 PFLOP/s"
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)


def test_applied_parameters_count_a_shared_layer_once_per_use():
    """ALBERT's cross-layer sharing: one block serving L layers does L blocks' matmuls; tied embeddings count once."""
    from ptmkit.train.flops import applied_parameters

    def albert(share):
        return build_model("albert", make_config("albert", dict(
            vocab_size=100, embedding_size=16, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
            max_position_embeddings=32, share=share)), "masked-lm")

    shared, unshared = albert("all"), albert("none")
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in unshared.parameters())
    assert applied_parameters(shared) == applied_parameters(unshared) == sum(p.numel() for p in unshared.parameters())
    tied = _tiny_gpt2(width=32, layers=2, seq=16)  # output layer tied to the embedding
    assert applied_parameters(tied) == sum(p.numel() for p in tied.parameters())


def test_cpu_peak_shrinks_the_measurement_where_the_dtype_is_emulated(monkeypatch):
    """A slow (emulated) dtype is timed on small matrices for ~50 ms a timing; a fast one at full size."""
    from ptmkit.train import flops

    for rough, size, work in ((1.3e9, 256, 1.3e9 * 0.05), (9e10, 1024, 1e9)):
        calls = []

        def fake(dtype, size=2048, repeats=5, warmup=2, work=1e9, rough=rough):
            calls.append((size, work))
            return rough

        monkeypatch.setattr(flops, "measure_cpu_peak_flops", fake)
        flops._cpu_peak.cache_clear()
        assert flops._cpu_peak("bfloat16", 1) == rough
        assert calls == [(256, 1e7), (size, work)]
    flops._cpu_peak.cache_clear()

