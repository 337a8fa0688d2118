"""Exact sparse-pattern kernels (sliding_window, block_sparse, bigbird, longformer): the patterns themselves, their
errors, lengths that are not multiples of the block, padding rows with nothing to see, dropout, bf16.

The contract (tests/contracts/test_attention_kernels.py) checks every kernel against dense attention at T = 64;
here the lengths, options and head layouts vary.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.nn import ATTENTION, AttentionConfig, SelfAttention
from ptmkit.nn.attention import eager_kernel
from ptmkit.nn.kernels import blocked
from ptmkit.nn.kernels.bigbird import seed_layers

D = 8


def kernel(name, heads=4, kv=4, **options):
    return ATTENTION[name](AttentionConfig(heads * D, heads, num_kv_heads=kv, kernel=name, kernel_options=options))


def qkv(t, heads=4, kv=4, b=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, t, D, generator=g)
    k, v = torch.randn(b, kv, t, D, generator=g), torch.randn(b, kv, t, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def reference(kern, q, k, v, causal, keep=None):
    t = q.shape[2]
    allowed = kern.pattern(t, t, causal)[None, None]  # (1, 1, T, S)
    if keep is not None:
        allowed = allowed & keep[:, None, None, :]
    return eager_kernel(q, k, v, allowed, False, 0.0, D ** -0.5)


# ---- the patterns -------------------------------------------------------------------------------------------

def test_sliding_window_pattern_is_the_band():
    kern = kernel("sliding_window", window=2)
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    assert torch.equal(kern.pattern(7, 7, False), (i - j).abs() <= 2)
    assert torch.equal(kern.pattern(7, 7, True), (j <= i) & (i - j <= 2))


def test_block_sparse_is_the_fixed_pattern_of_child_et_al():
    kern = kernel("block_sparse", block=4, summary=1)
    p = kern.pattern(12, 12, False)
    # query 5 (block 1): its block 4..7 plus the summary column (last position) of every block: 3, 11
    assert p[5].nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 11]
    pc = kern.pattern(12, 12, True)
    assert pc[5].nonzero().flatten().tolist() == [3, 4, 5]  # causal: nothing after 5
    assert not pc.triu(1).any()


def test_bigbird_pattern_has_window_global_and_random_blocks():
    kern = kernel("bigbird", block=2, window_blocks=1, num_global_blocks=1, num_random_blocks=2)
    t, nb = 20, 10
    blocks = kern.pattern(t, t, False)[::2, ::2]  # (nb, nb): the pattern is constant on 2 x 2 blocks
    assert torch.equal(kern.pattern(t, t, False), blocks.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert blocks[[0, -1]].all() and blocks[:, [0, -1]].all()  # global blocks see and are seen by all
    i, j = torch.arange(nb)[:, None], torch.arange(nb)[None, :]
    assert blocks[(i - j).abs() <= 1].all()  # the window
    random = blocks & ((i - j).abs() > 1) & (j > 0) & (j < nb - 1)
    assert (random[1:-1].sum(1) == 2).all()  # exactly r random blocks per non-global query block
    assert torch.equal(kern.pattern(t, t, False), kernel("bigbird", block=2, num_random_blocks=2).pattern(t, t, False))


def test_bigbird_seed_changes_the_random_blocks_and_seed_layers_numbers_them():
    a = kernel("bigbird", block=4, num_random_blocks=2, seed=0).pattern(128, 128, False)
    b = kernel("bigbird", block=4, num_random_blocks=2, seed=1).pattern(128, 128, False)
    assert not torch.equal(a, b) and a.sum() == b.sum()
    model = nn.ModuleList(SelfAttention(AttentionConfig(32, 4, kernel="bigbird",
                                                        kernel_options={"block": 4, "num_random_blocks": 2}))
                          for _ in range(3))
    assert seed_layers(model) == 3
    patterns = [layer.kernel.pattern(128, 128, False) for layer in model]
    assert torch.equal(patterns[0], a) and torch.equal(patterns[1], b) and not torch.equal(patterns[1], patterns[2])


def test_longformer_global_tokens_see_and_are_seen_by_all():
    kern = kernel("longformer", window=1, global_tokens=2)
    p = kern.pattern(8, 8, False)
    assert p[:2].all() and p[:, :2].all()
    assert p[5].nonzero().flatten().tolist() == [0, 1, 4, 5, 6]
    pc = kern.pattern(8, 8, True)
    assert pc[5].nonzero().flatten().tolist() == [0, 1, 4, 5] and not pc.triu(1).any()


def test_pattern_density_is_linear_in_length():
    # O(T·w) allowed pairs: doubling T doubles the count (the dense count would quadruple)
    for name, opts in [("sliding_window", dict(window=16)), ("longformer", dict(window=16, global_tokens=4)),
                       ("bigbird", dict(block=16))]:
        kern = kernel(name, **opts)
        n1, n2 = kern.pattern(512, 512, False).sum(), kern.pattern(1024, 1024, False).sum()
        assert 1.9 < n2 / n1 < 2.1, name


# ---- exactness beyond the contract's T = 64 ------------------------------------------------------------------

CASES = [
    ("sliding_window", dict(window=7, block=16), [50, 77, 128]),
    ("sliding_window", dict(window=40, block=16), [50, 77]),  # window wider than a block
    ("longformer", dict(window=6, global_tokens=3, block=16), [50, 77]),
    ("longformer", dict(window=6, global_tokens=0, block=16), [50]),
    ("block_sparse", dict(block=16, summary=3), [48, 96]),
    ("bigbird", dict(block=8, window_blocks=1, num_global_blocks=2, num_random_blocks=3), [96, 160]),
    ("bigbird", dict(block=8, window_blocks=2, num_global_blocks=0, num_random_blocks=0), [64]),
]


@pytest.mark.parametrize("name,opts,lengths", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_blocked_kernel_equals_dense_under_its_pattern(name, opts, lengths, kv):
    kern = kernel(name, kv=kv, **opts)
    for t in lengths:
        q, k, v = qkv(t, kv=kv, seed=t)
        for causal in ([False, True] if kern.causal else [False]):
            keep = None
            if not causal:
                keep = torch.ones(2, t, dtype=torch.bool)
                keep[1, t - 5:] = False
            mask = None if keep is None else keep[:, None, None, :]
            got = kern(q, k, v, mask, causal, 0.0, D ** -0.5)
            assert_close(got, reference(kern, q, k, v, causal, keep), atol=1e-5, rtol=1e-4)


def test_gradients_equal_dense_gradients():
    kern = kernel("longformer", kv=2, window=5, global_tokens=2, block=8)
    q, k, v = (x.requires_grad_() for x in qkv(45, kv=2))
    kern(q, k, v, None, False, 0.0, D ** -0.5).square().sum().backward()
    got = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    reference(kern, q, k, v, False).square().sum().backward()
    for a, b in zip(got, (q.grad, k.grad, v.grad)):
        assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,opts,t", [
    ("sliding_window", dict(window=5, block=8), 45),
    ("block_sparse", dict(block=8, summary=2), 48),
    ("bigbird", dict(block=4, num_global_blocks=1, num_random_blocks=2), 48),
    ("longformer", dict(window=4, global_tokens=3, block=8), 45),
])
@pytest.mark.parametrize("chunk", [1, 1 << 20], ids=["block-per-chunk", "one-chunk"])
def test_every_kernel_has_the_gradients_of_dense_attention(name, opts, t, chunk, monkeypatch):
    # the backward pass recomputes scores chunk by chunk; force one query block per chunk to test the seams
    monkeypatch.setattr(blocked, "scratch_budget", lambda elements: chunk)
    kern = kernel(name, kv=2, **opts)
    keep = torch.ones(2, t, dtype=torch.bool)
    keep[0, t - 4:] = False  # every query still sees a real key (dense attention would give NaN rows)
    for causal in ([False, True] if kern.causal else [False]):
        q, k, v = (x.requires_grad_() for x in qkv(t, kv=2))
        gout = torch.randn(2, 4, t, D)
        pad = None if causal else keep
        out = kern(q, k, v, None if pad is None else pad[:, None, None, :], causal, 0.0, D ** -0.5)
        out.backward(gout)
        got = [out.detach()] + [x.grad.clone() for x in (q, k, v)]
        for x in (q, k, v):
            x.grad = None
        want = reference(kern, q, k, v, causal, pad)
        want.backward(gout)
        for a, b in zip(got, [want.detach(), q.grad, k.grad, v.grad]):
            assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_dropout_gradients_are_exact_for_the_dropped_weights():
    # the dropout mask is regenerated in backward from a seed drawn from torch's RNG: reseeding makes the
    # function deterministic, so finite differences check the recomputed backward
    kern = kernel("longformer", heads=2, kv=1, window=3, global_tokens=1, block=4)
    q, k, v = (x.double().requires_grad_() for x in qkv(14, heads=2, kv=1, b=1))

    def f(q, k, v):
        torch.manual_seed(0)
        return kern(q, k, v, None, False, 0.3, 0.5)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_a_query_whose_window_is_all_padding_stays_finite():
    # dense attention would give NaN for such a row, and NaN at a padded position poisons the next layer's grads
    kern = kernel("sliding_window", window=2, block=4)
    q, k, v = (x.requires_grad_() for x in qkv(16))
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[1, 8:] = False  # query 15 of row 1 sees only keys 13..15: all padding
    out = kern(q, k, v, keep[:, None, None, :], False, 0.0, D ** -0.5)
    assert torch.isfinite(out).all()
    out[:, :, :8].sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    assert_close(out[1, :, :6], reference(kern, q, k, v, False, keep)[1, :, :6])


def test_bfloat16_is_close_to_float32():
    kern = kernel("bigbird", block=8, num_random_blocks=1)
    q, k, v = qkv(64)
    want = kern(q, k, v, None, False, 0.0, D ** -0.5)
    got = kern(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, False, 0.0, D ** -0.5)
    assert got.dtype == torch.bfloat16
    assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


def test_dropout_applies_in_training_only():
    attn = SelfAttention(AttentionConfig(32, 4, dropout=0.5, kernel="sliding_window",
                                         kernel_options={"window": 4, "block": 8}))
    x = torch.randn(2, 40, 32)
    attn.eval()
    assert_close(attn(x), attn(x))
    attn.train()
    torch.manual_seed(0)
    a = attn(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, attn(x))


def test_layouts_are_cached_per_length():
    kern = kernel("sliding_window", window=3, block=8)
    assert kern.layout(40, False, "cpu") is kern.layout(40, False, "cpu")
    assert kern.layout(41, False, "cpu") is not kern.layout(40, False, "cpu")


# ---- errors that say what is wrong and how to fix it ----------------------------------------------------------

def call(kern, t):
    q, k, v = qkv(t, b=1)
    return kern(q, k, v, None, False, 0.0, D ** -0.5)


@pytest.mark.parametrize("name", ["sliding_window", "longformer"])
def test_window_not_smaller_than_the_sequence_is_an_error(name):
    with pytest.raises(ConfigError, match=r"window 32 is not smaller than the sequence \(32 tokens\).*sdpa"):
        call(kernel(name, window=32), 32)
    call(kernel(name, window=31), 32)  # the largest window that still drops keys


@pytest.mark.parametrize("name,opts", [("block_sparse", dict(block=16)), ("bigbird", dict(block=16))])
def test_block_not_dividing_the_sequence_is_an_error(name, opts):
    with pytest.raises(ConfigError, match=r"sequence length 100 is not a multiple of the block size 16.*pad"):
        call(kernel(name, **opts), 100)
    with pytest.raises(ConfigError, match="not a multiple"):
        kernel(name, **opts).pattern(100, 100, False)


def test_bigbird_global_blocks_covering_the_sequence_is_an_error():
    with pytest.raises(ConfigError, match=r"3 global blocks at each end cover all 6 blocks.*num_global_blocks"):
        call(kernel("bigbird", block=8, num_global_blocks=3, num_random_blocks=0), 48)


def test_bigbird_window_covering_the_sequence_is_an_error():
    with pytest.raises(ConfigError, match=r"window of ±2 blocks spans all 5 blocks"):
        call(kernel("bigbird", block=8, window_blocks=2, num_global_blocks=0, num_random_blocks=0), 40)


def test_bigbird_more_random_blocks_than_available_is_an_error():
    # 8 blocks, globals 0 and 7: query block 3 may draw only from 1, 5, 6 (blocks 2..4 are its window)
    with pytest.raises(ConfigError, match=r"num_random_blocks 4 is more than the 3 key blocks.*lower"):
        call(kernel("bigbird", block=8, num_random_blocks=4), 64)
    call(kernel("bigbird", block=8, num_random_blocks=3), 64)


def test_longformer_global_tokens_exceeding_the_sequence_is_an_error():
    with pytest.raises(ConfigError, match=r"global_tokens 40 is not smaller than the sequence \(40 tokens\)"):
        call(kernel("longformer", window=4, global_tokens=40), 40)


def test_block_sparse_single_block_is_an_error():
    with pytest.raises(ConfigError, match="single block"):
        call(kernel("block_sparse", block=32), 32)


@pytest.mark.parametrize("name,opts,match", [
    ("sliding_window", dict(window=0), "window must be >= 1"),
    ("sliding_window", dict(window=4, block=0), "block must be a positive"),
    ("longformer", dict(global_tokens=-1), "global_tokens must be >= 0"),
    ("block_sparse", dict(block=16, summary=16), r"summary must be in \[1, block\)"),
    ("block_sparse", dict(block=1), "block must be >= 2"),
    ("bigbird", dict(num_random_blocks=-1, window_blocks=-2), "window_blocks must be >= 0.*num_random_blocks"),
])
def test_bad_options_are_config_errors_at_config_time(name, opts, match):
    with pytest.raises(ConfigError, match=match):
        AttentionConfig(32, 4, kernel=name, kernel_options=opts)


def test_bigbird_refuses_causal_and_the_window_kernels_accept_it():
    q, k, v = qkv(64)
    with pytest.raises(ConfigError, match="causal"):
        kernel("bigbird", block=8, num_random_blocks=1)(q, k, v, None, True, 0.0, 0.3)
    for name in ("sliding_window", "block_sparse", "longformer"):
        assert ATTENTION[name].causal


def test_bigbird_layers_of_a_built_model_draw_different_random_blocks_reproducibly():
    from ptmkit.models import build_model, make_config
    from ptmkit.nn.kernels.bigbird import BigBird

    def kernels():
        cfg = make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                                       max_position_embeddings=512, attention_kernel="bigbird",
                                       attention_options={"block": 16, "num_random_blocks": 2}))
        return [m for m in build_model("bert", cfg).modules() if isinstance(m, BigBird)]

    first, again = kernels(), kernels()
    patterns = [k.pattern(256, 256, False) for k in first]
    assert not torch.equal(patterns[0], patterns[1]) and not torch.equal(patterns[1], patterns[2])
    assert all(torch.equal(p, k.pattern(256, 256, False)) for p, k in zip(patterns, again))
