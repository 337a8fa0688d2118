"""Every registered attention kernel (ptmkit.nn.ATTENTION) computes in bfloat16 as accurately as bf16 allows.

The contract (tests/contracts/test_attention_kernels.py) checks that each kernel runs in a model cast to bf16; here
the bf16 output is compared with the same kernel's fp32 output. Both runs get the same bf16-representable inputs and
buffers (random features, LSH rotations), so the difference is the arithmetic alone, and LSH hashes both runs into
the same buckets.

Bound. bf16 keeps 8 significant bits: unit roundoff u = 2^-8 (torch.finfo(torch.bfloat16).eps / 2). The output is
three roundings from the inputs (logits, attention weights, weighted sum of values), each a relative error <= u of
its values; a logit s rounded to bf16 moves exp(s) by a relative ~u|s|, and these inputs have peaked logits (std ~2),
so the worst element reaches a few u of the output's scale while the errors of most elements cancel. We require

    max |y_bf16 - y_fp32| <= 4u max |y_fp32|        (measured worst 2.1u: block_sparse)
    ||y_bf16 - y_fp32||_F <= 2u ||y_fp32||_F        (measured worst 1.5u: bigbird)

What fails them (checked when the bounds were chosen): LSH or Performer computing in bf16 where they widen to fp32,
the softmax probabilities or the logits stored in an 8-bit float, a bf16 path that drops the padding mask or changes
the scale, and bf16 outputs rounded to 6 significant bits instead of 8 (9 of the 18 cases). Losing a single bit is
below the bounds' resolution.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ptmkit.nn import ATTENTION, AttentionConfig, build_mask
from tests.contracts.test_attention_kernels import TEST_OPTIONS

U = 2.0 ** -8  # bf16 unit roundoff
MAX_ABS_BOUND, RMS_BOUND = 4 * U, 2 * U
B, HEADS, KV_HEADS, T, D = 2, 4, 2, 64, 16  # GQA (2 query heads per key/value head), T = the contract's length
# the contract's options, with fewer random features: the approximation's accuracy is not the point here, and 16,384
# features take seconds in bf16 on a CPU
OPTIONS = {**TEST_OPTIONS, "performer": {**TEST_OPTIONS["performer"], "num_features": 256}}
CASES = [(name, causal) for name in sorted(ATTENTION) for causal in (False, True)
         if not causal or ATTENTION[name].causal]  # kernels not defined for causal attention refuse it (contract)


def _inputs(seed: int = 0):
    """bf16-representable q, k, v with peaked attention (logits of standard deviation ~2) and a key-padding mask."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HEADS, T, D, generator=g) * 2 ** 0.5
    k = torch.randn(B, KV_HEADS, T, D, generator=g) * 2 ** 0.5
    v = torch.randn(B, KV_HEADS, T, D, generator=g)
    keep = torch.ones(B, T, dtype=torch.long)
    keep[1, T - 9:] = 0  # the second sequence ends in 9 padding tokens
    mask, _ = build_mask(keep, T, T, causal=False, device="cpu")  # (B, 1, 1, S)
    return q.bfloat16(), k.bfloat16(), v.bfloat16(), mask


@pytest.mark.parametrize("name,causal", CASES, ids=[f"{n}-{'causal' if c else 'bidirectional'}" for n, c in CASES])
def test_bf16_output_is_within_rounding_of_fp32(name, causal):
    torch.manual_seed(0)
    kernel = ATTENTION[name](AttentionConfig(HEADS * D, HEADS, num_kv_heads=KV_HEADS, kernel=name,
                                                     kernel_options=OPTIONS.get(name, {})))
    k16 = copy.deepcopy(kernel).to(torch.bfloat16)  # float buffers rounded to bf16, as model.to(bfloat16) does
    k32 = copy.deepcopy(k16).float()  # the same rounded buffers, fp32 arithmetic
    q, k, v, pad = _inputs()
    mask = None if causal else pad
    with torch.no_grad():
        want = k32(q.float(), k.float(), v.float(), mask, causal, 0.0, D ** -0.5)  # (B, H, T, D)
        got = k16(q, k, v, mask, causal, 0.0, D ** -0.5)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape == (B, HEADS, T, D)
    err = got.float() - want
    max_abs, rms = float(err.abs().max() / want.abs().max()), float(err.norm() / want.norm())
    assert max_abs <= MAX_ABS_BOUND, f"{name}: max |bf16 - fp32| = {max_abs / U:.2f} u x max|y| > {MAX_ABS_BOUND / U} u"
    assert rms <= RMS_BOUND, f"{name}: ||bf16 - fp32|| = {rms / U:.2f} u x ||y|| > {RMS_BOUND / U} u"
