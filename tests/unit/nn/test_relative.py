"""Relative position buckets and bias (T5), additive-bias masks, and cross-attention with its cache."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.nn import (
    ATTENTION, AttentionConfig, CrossAttention, CrossKVCache, RelativeBiasConfig, RelativePositionBias, add_bias,
    build_mask, relative_position_bucket,
)
from ptmkit.nn.attention import eager_kernel


def _buckets(offsets, **kw):
    return relative_position_bucket(torch.tensor(offsets), **kw).tolist()


def test_bidirectional_buckets_by_hand():
    # 8 buckets, 4 per direction: offsets 0 and 1 exact, then log bins over [2, 16): floor(log(d/2)/log(8)*2) + 2.
    kw = dict(bidirectional=True, num_buckets=8, max_distance=16)
    assert _buckets([0, -1, -2, -3, -5, -6, -8, -15, -16, -100], **kw) == [0, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    # keys after the query use the upper half: 4 + the same layout
    assert _buckets([1, 2, 5, 6, 16, 100], **kw) == [5, 6, 6, 7, 7, 7]


def test_causal_buckets_by_hand():
    # 8 buckets, one direction: offsets 0..3 exact, then floor(log(d/4)/log(4)*4) + 4, capped at 7.
    kw = dict(bidirectional=False, num_buckets=8, max_distance=16)
    assert _buckets([0, -1, -3, -4, -5, -7, -8, -15, -16, -1000], **kw) == [0, 1, 3, 4, 4, 5, 6, 7, 7, 7]
    assert _buckets([1, 5, 100], **kw) == [0, 0, 0]  # the future shares bucket 0 (and is masked anyway)


def test_t5_default_buckets_by_hand():
    kw = dict(bidirectional=True, num_buckets=32, max_distance=128)
    # 16 per direction; 0..7 exact; 8 + floor(log(d/8)/log(16)*8) beyond; >= 128 -> 15
    assert _buckets([0, -7, -8, -16, -32, -127, -128, 3, 200], **kw) == [0, 7, 8, 10, 12, 15, 15, 19, 31]


def test_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention  # a test dependency: missing it is an error

    rel = torch.arange(-300, 300)[None, :] - torch.zeros(1, 1, dtype=torch.long)
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 16), (4, 5), (6, 100)):
            if bidirectional and nb < 4:
                continue
            want = T5Attention._relative_position_bucket(rel, bidirectional, nb, md)
            assert torch.equal(relative_position_bucket(rel, bidirectional, nb, md), want)


@pytest.mark.parametrize("kw,msg", [
    (dict(num_heads=4, num_buckets=1), "num_buckets must be >= 2"),
    (dict(num_heads=4, num_buckets=3, bidirectional=True), "needs num_buckets >= 4"),
    (dict(num_heads=4, num_buckets=32, max_distance=8), "must exceed"),
    (dict(num_heads=0), "must be positive"),
])
def test_invalid_bias_configs(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        RelativeBiasConfig(**kw)


def test_bias_shape_and_cached_rows_agree():
    bias = RelativePositionBias(RelativeBiasConfig(num_heads=3, num_buckets=8, max_distance=16, bidirectional=False))
    full = bias(6, 6)
    assert full.shape == (1, 3, 6, 6)
    assert_close(bias(1, 6), full[:, :, -1:])  # one new query after 5 cached keys
    assert_close(bias(2, 6), full[:, :, -2:])
    # translation invariance: the bias depends on the offset only
    assert_close(full[0, :, 3, 1], full[0, :, 5, 3])


def test_add_bias_combines_padding_and_causality():
    bias = torch.randn(1, 2, 4, 4)
    keep = torch.tensor([[1, 1, 1, 0]])
    mask, is_causal = build_mask(None, 4, 4, causal=True, device="cpu")
    m = add_bias(mask, is_causal, bias)
    neg = torch.finfo(m.dtype).min
    assert m[0, 0, 0, 1] == neg and m[0, 0, 3, 2] == bias[0, 0, 3, 2]
    mask, is_causal = build_mask(keep, 4, 4, causal=False, device="cpu")
    m = add_bias(mask, is_causal, bias)
    assert m.shape == (1, 2, 4, 4) and (m[..., 3] == neg).all() and torch.equal(m[..., :3], bias[..., :3])
    assert torch.equal(add_bias(None, False, bias), bias)


@pytest.mark.parametrize("name", sorted(n for n, k in ATTENTION.items() if k.kind == "dense"))
@pytest.mark.parametrize("causal", [False, True])
def test_kernels_accept_a_float_bias(name, causal):
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    keep = torch.ones(2, 5, dtype=torch.long)
    keep[1, 3:] = 0
    mask, is_causal = build_mask(keep, 5, 5, causal=causal, device="cpu")
    m = add_bias(mask, is_causal, torch.randn(1, 4, 5, 5))
    want = eager_kernel(q, k, v, m, False, 0.0, 1.0)
    kernel = ATTENTION[name](AttentionConfig(32, 4))
    assert_close(kernel(q, k, v, m, False, 0.0, 1.0), want, atol=1e-5, rtol=1e-5)
    assert not want.isnan().any()


def test_cross_attention_cache_and_padding():
    attn = CrossAttention(AttentionConfig(16, 4, scale=1.0)).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[1, 5:] = 0
    mask, _ = build_mask(keep, 3, 7, causal=False, device="cpu")
    want = attn(x, memory, mask)
    cache = CrossKVCache()
    assert_close(attn(x[:, :1], memory, mask, cache, layer=2), want[:, :1])
    assert 2 in cache
    assert_close(attn(x[:, 1:], None, mask, cache, layer=2), want[:, 1:])  # keys/values come from the cache
    memory2 = memory.clone()
    memory2[1, 5:] = torch.randn(2, 16)  # padded source positions do not matter
    assert_close(attn(x, memory2, mask)[1], want[1])
    cache.reorder(torch.tensor([1]))
    assert cache.kv[2][0].shape[0] == 1
    with pytest.raises(ValueError, match="memory"):
        attn(x, None, mask)


def test_attention_scale_option():
    with pytest.raises(ConfigError, match="scale"):
        AttentionConfig(16, 4, scale=0.0)
    assert CrossAttention(AttentionConfig(16, 4)).scale == 4 ** -0.5
