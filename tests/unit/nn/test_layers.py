"""Norms, feed-forward layers, positions and embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from ptmkit.nn import MLP, Embeddings, GatedMLP, RMSNorm, SinusoidalPositions
from ptmkit.nn.positions import positions_from_mask


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data = torch.linspace(0.5, 2, 8)
    x = torch.randn(3, 8)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert_close(norm(x), want)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_sinusoidal_table_values():
    pe = SinusoidalPositions(16, 6)
    p = torch.tensor([[3]])
    got = pe(p)[0, 0]
    want = [f(3 / 10000 ** (2 * i / 6)) for i in range(3) for f in (math.sin, math.cos)]
    assert_close(got, torch.tensor(want), atol=1e-6, rtol=1e-6)


def test_gated_mlp_is_swiglu():
    ffn = GatedMLP(4, 6)
    x = torch.randn(2, 4)
    gate, up = ffn.gate_up.weight[0::2], ffn.gate_up.weight[1::2]  # rows alternate gate_i, up_i
    want = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ ffn.down.weight.T
    assert_close(ffn(x), want)


def test_gated_mlp_paths_agree_and_a_hooked_projection_runs_as_a_module():
    """The plain path (two matmuls over the weight's gate and up rows) and the module path (one matmul, then a
    de-interleaving copy: taken when a delta method hooks gate_up) give the same outputs and gradients; the hook
    fires only on the module path."""
    torch.manual_seed(0)
    ffn = GatedMLP(8, 12, bias=True)
    x = torch.randn(2, 3, 8, requires_grad=True)
    assert ffn._plain_projection()
    plain = ffn(x)
    plain.square().sum().backward()
    grads = [x.grad.clone(), ffn.gate_up.weight.grad.clone(), ffn.gate_up.bias.grad.clone()]
    x.grad = None
    ffn.zero_grad()
    calls = []
    handle = ffn.gate_up.register_forward_hook(lambda m, i, y: calls.append(y.shape))
    assert not ffn._plain_projection()
    hooked = ffn(x)
    hooked.square().sum().backward()
    assert calls == [(2, 3, 24)]
    assert_close(hooked, plain)
    for got, want in zip([x.grad, ffn.gate_up.weight.grad, ffn.gate_up.bias.grad], grads):
        assert_close(got, want)
    handle.remove()
    assert ffn._plain_projection()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, y: None)  # a hook on every module
    assert not ffn._plain_projection()
    handle.remove()
    assert ffn._plain_projection()


def test_mlp_gelu_variants_differ():
    exact, approx = MLP(4, 8, "gelu"), MLP(4, 8, "gelu_new")
    approx.load_state_dict(exact.state_dict())
    x = torch.randn(5, 4) * 3
    assert not torch.equal(exact(x), approx(x))
    assert_close(exact(x), approx(x), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, 8, "gleu")


def test_embeddings_reject_positions_beyond_table():
    emb = Embeddings(10, 4, max_positions=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        emb(torch.zeros(1, 9, dtype=torch.long), torch.arange(9)[None])


def test_positions_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert positions_from_mask(mask, past=3).tolist() == [[1, 2], [3, 4]]


def test_fused_qkv_rows_group_whole_heads_and_round_trip():
    from ptmkit.models.convert.base import fuse_qkv, split_qkv
    from ptmkit.nn.attention import AttentionConfig, SelfAttention

    h, kv, d, width = 4, 2, 3, 8
    q, k, v = torch.randn(h * d, width), torch.randn(kv * d, width), torch.randn(kv * d, width)
    fused = fuse_qkv(q, k, v, h, kv)
    for got, want in zip(split_qkv(fused, h, kv), (q, k, v)):
        assert torch.equal(got, want)
    # the first half of the rows (one of two tensor-parallel shards) is exactly group 0: query heads 0-1, k0, v0
    assert torch.equal(fused[: fused.shape[0] // 2], torch.cat([q[: 2 * d], k[:d], v[:d]]))

    # and attention with the fused layout equals attention computed from separate projections
    attn = SelfAttention(AttentionConfig(width, h, num_kv_heads=kv, head_dim=d, bias=False))
    with torch.no_grad():
        attn.qkv.weight.copy_(fused)
    x = torch.randn(2, 5, width)
    qh = (x @ q.T).view(2, 5, h, d).transpose(1, 2)
    kh = (x @ k.T).view(2, 5, kv, d).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    vh = (x @ v.T).view(2, 5, kv, d).transpose(1, 2).repeat_interleave(h // kv, dim=1)
    ref = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(2, 5, h * d)
    assert_close(attn(x), attn.out(ref))
