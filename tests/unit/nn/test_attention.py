"""Attention kernels, masks, grouped-query heads, rotary positions and the KV cache."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.nn import ATTENTION, AttentionConfig, KVCache, RotaryEmbedding, SelfAttention, build_mask
from ptmkit.nn.attention import eager_kernel

DENSE = sorted(name for name, kernel in ATTENTION.items() if kernel.kind == "dense")  # the rest: tests/contracts


def _kernel(name, heads=4, kv=4, d=8):
    return ATTENTION[name](AttentionConfig(heads * d, heads, num_kv_heads=kv))


def _qkv(h=4, kv=4, t=7, s=7, d=8, b=2):
    return torch.randn(b, h, t, d), torch.randn(b, kv, s, d), torch.randn(b, kv, s, d)


@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [False, True])
def test_every_kernel_matches_eager_reference(name, kv, causal):
    q, k, v = _qkv(kv=kv)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    for m in (None, mask):
        want = eager_kernel(q, k, v, m, causal, 0.0, 8**-0.5)
        got = _kernel(name, kv=kv)(q, k, v, m, causal, 0.0, 8**-0.5)
        assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_eager_gqa_equals_repeated_heads():
    q, k, v = _qkv(kv=2)
    rep = eager_kernel(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), None, False, 0.0, 0.3)
    assert_close(eager_kernel(q, k, v, None, False, 0.0, 0.3), rep)


@pytest.mark.parametrize("kernel", DENSE)
def test_causal_attention_never_sees_the_future(kernel):
    attn = SelfAttention(AttentionConfig(32, 4, kernel=kernel)).eval()
    x = torch.randn(1, 10, 32)
    y = attn(x, is_causal=True)
    x2 = x.clone()
    x2[:, 6:] += torch.randn(1, 4, 32)  # change only the future of position 5
    y2 = attn(x2, is_causal=True)
    assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_padding_keys_are_ignored():
    attn = SelfAttention(AttentionConfig(32, 4)).eval()
    x = torch.randn(1, 6, 32)
    am = torch.tensor([[1, 1, 1, 1, 0, 0]])
    mask, _ = build_mask(am, 6, 6, causal=False, device=x.device)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 32)
    assert_close(attn(x, mask)[:, :4], attn(x2, mask)[:, :4])


def test_build_mask_fast_paths_and_offset_causality():
    assert build_mask(None, 5, 5, causal=True, device="cpu") == (None, True)
    assert build_mask(torch.ones(2, 5), 5, 5, causal=False, device="cpu") == (None, False)
    assert build_mask(None, 1, 9, causal=True, device="cpu") == (None, False)  # one new token sees the cache
    mask, is_causal = build_mask(None, 2, 5, causal=True, device="cpu")  # 3 cached + 2 new
    assert not is_causal
    assert mask[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_cached_attention_equals_full_attention():
    attn = SelfAttention(AttentionConfig(32, 4, num_kv_heads=2)).eval()
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 9, 32)
    pos = torch.arange(9)[None].expand(2, 9)
    full = attn(x, is_causal=True, rotary=rope(pos, x.dtype))
    cache = KVCache(1, 2, 2, 8, 16, torch.float32, "cpu")
    outs = []
    for start, end in [(0, 4), (4, 5), (5, 9)]:
        mask, causal = build_mask(None, end - start, end, causal=True, device="cpu")
        outs.append(attn(x[:, start:end], mask, causal, rope(pos[:, start:end], x.dtype), cache, 0))
        cache.advance(end - start)
    assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_is_an_error():
    cache = KVCache(1, 1, 1, 4, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="cache is full"):
        cache.update(0, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def test_rotary_is_relative():
    # RoPE property: <R(m)q, R(n)k> depends only on m - n.
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    from ptmkit.nn import apply_rotary

    def score(m, n):
        cq, sq = rope(torch.tensor([[m]]), torch.float32)
        ck, sk = rope(torch.tensor([[n]]), torch.float32)
        qr, _ = apply_rotary(q, q, cq, sq)
        kr, _ = apply_rotary(k, k, ck, sk)
        return (qr * kr).sum()

    assert_close(score(3, 1), score(12, 10), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hidden_size=30, num_heads=4), "not divisible"),
        (dict(hidden_size=32, num_heads=4, num_kv_heads=3), "must divide"),
        (dict(hidden_size=0, num_heads=4), "must be positive"),
        (dict(hidden_size=32, num_heads=4, kernel="nope"), "unknown kernel"),
        (dict(hidden_size=32, num_heads=4, dropout=1.5), "dropout"),
    ],
)
def test_invalid_attention_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AttentionConfig(**kwargs)


def test_three_dimensional_mask_blocks_other_documents():
    doc = torch.tensor([[0, 0, 0, 1, 1, 1]])
    full = doc[:, :, None] == doc[:, None, :]  # (1, 6, 6)
    mask, causal = build_mask(full, 6, 6, causal=True, device="cpu")
    assert not causal
    m = mask[0, 0]
    assert m[4].tolist() == [False, False, False, True, True, False]
    attn = SelfAttention(AttentionConfig(32, 4)).eval()
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[:, :3] = torch.randn(1, 3, 32)  # change only document 0
    assert_close(attn(x, mask)[:, 3:], attn(x2, mask)[:, 3:])
