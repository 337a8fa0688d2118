"""Behaviour of the approximate attention kernels (Linformer, Performer, linear attention, Reformer LSH) beyond the
shared contract (tests/contracts/test_attention_kernels.py): exact special cases, their options and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.nn import ATTENTION, AttentionConfig
from ptmkit.nn.attention import eager_kernel
from ptmkit.nn.kernels.linear import linear_attention
from ptmkit.nn.kernels.performer import orthogonal_gaussian

D, HEADS = 16, 4
APPROX = ["linformer", "performer", "linear", "lsh"]
SMALL = {"linformer": {"proj_len": 16, "max_len": 64}, "performer": {"num_features": 64, "seed": 0, "chunk": 8},
         "linear": {"chunk": 8}, "lsh": {"n_buckets": 4, "n_hashes": 2, "chunk_len": 8, "seed": 0}}


def build(name: str, kv_heads: int = HEADS, dropout: float = 0.0, **options):
    cfg = AttentionConfig(HEADS * D, HEADS, num_kv_heads=kv_heads, kernel=name, kernel_options=options,
                          dropout=dropout)
    return ATTENTION[name](cfg)


def qkv(t: int, b: int = 2, kv_heads: int = HEADS, seed: int = 0, std: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, HEADS, t, D, generator=g) * std
    k = torch.randn(b, kv_heads, t, D, generator=g) * std
    v = torch.randn(b, kv_heads, t, D, generator=g)
    return q, k, v


def rel(got, want) -> float:
    return float((got - want).norm() / want.norm())


def pad_mask(t: int, cut: int) -> torch.Tensor:
    keep = torch.ones(2, t, dtype=torch.bool)
    keep[1, t - cut:] = False
    return keep[:, None, None, :]  # (B, 1, 1, S)


# ---- shared by all four ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", APPROX)
def test_all_are_registered_as_approximations(name):
    assert ATTENTION[name].kind == "approximate"
    assert ATTENTION[name].causal == (name != "linformer")


@pytest.mark.parametrize("name", APPROX)
def test_padded_keys_do_not_change_the_output(name):
    kernel = build(name, **SMALL[name])
    q, k, v = qkv(64)
    mask = pad_mask(64, 9)
    k2, v2 = k.clone(), v.clone()
    k2[1, :, -9:] += 5 * torch.randn(HEADS, 9, D)  # change only padded keys/values
    v2[1, :, -9:] += 5 * torch.randn(HEADS, 9, D)
    y, y2 = kernel(q, k, v, mask, False, 0.0, None), kernel(q, k2, v2, mask, False, 0.0, None)
    assert_close(y, y2)


@pytest.mark.parametrize("name", APPROX)
def test_grouped_query_heads_equal_repeated_heads(name):
    kernel = build(name, kv_heads=2, **SMALL[name])
    q, k, v = qkv(64, kv_heads=2)
    kernel_mha = build(name, **SMALL[name])
    kernel_mha.load_state_dict(
        {n: (p if n not in ("proj_k", "proj_v") or p.dim() == 2 else p.repeat_interleave(2, dim=0))
         for n, p in kernel.state_dict().items()})
    want = kernel_mha(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), None, False, 0.0, None)
    assert_close(kernel(q, k, v, None, False, 0.0, None), want)


@pytest.mark.parametrize("name", ["performer", "linear", "lsh"])
def test_causal_gradients_are_finite(name):
    # the first query sees only itself; in LSH some rows have no visible key at all (the self slot answers)
    q, k, v = (x.requires_grad_() for x in qkv(40))
    build(name, **SMALL[name])(q, k, v, None, True, 0.0, None).square().sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["performer", "linear"])
def test_feature_kernels_warn_that_attention_dropout_is_not_applied(name):
    with pytest.warns(UserWarning, match="dropout"):
        build(name, dropout=0.1)


# ---- linear attention (Katharopoulos et al. 2020) -------------------------------------------------------------------

def quadratic_linear_attention(q, k, v, causal, keep=None):
    """The same feature map written as an explicit (T, S) matrix: phi(q) phi(k)^T, masked, row-normalised."""
    a = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # (B, H, T, S)
    if causal:
        a = a.tril()
    if keep is not None:
        a = a * keep[:, None, None, :]
    return (a / a.sum(-1, keepdim=True)) @ v


@pytest.mark.parametrize("chunk", [1, 7, 16, 128])
def test_linear_causal_equals_the_masked_quadratic_form(chunk):
    q, k, v = qkv(50)  # 50 is not a multiple of 7 or 16: the last chunk is padded internally
    got = build("linear", chunk=chunk)(q, k, v, None, True, 0.0, None)
    assert_close(got, quadratic_linear_attention(q, k, v, True), atol=1e-5, rtol=1e-4)


def test_linear_bidirectional_with_padding_equals_the_quadratic_form():
    q, k, v = qkv(40)
    mask = pad_mask(40, 6)
    got = build("linear")(q, k, v, mask, False, 0.0, None)
    assert_close(got, quadratic_linear_attention(q, k, v, False, mask[:, 0, 0]), atol=1e-5, rtol=1e-4)


def test_linear_attention_helper_is_chunk_invariant_for_any_features():
    g = torch.Generator().manual_seed(3)
    phi_q, phi_k = torch.rand(1, 2, 33, 24, generator=g), torch.rand(1, 2, 33, 24, generator=g)  # F = 24 != D
    v = torch.randn(1, 2, 33, 8, generator=g)
    ref = linear_attention(phi_q, phi_k, v, True, chunk=1)
    for chunk in (4, 11, 33, 64):
        assert_close(linear_attention(phi_q, phi_k, v, True, chunk=chunk), ref, atol=1e-5, rtol=1e-4)


def test_linear_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="chunk must be >= 1"):
        build("linear", chunk=0)
    with pytest.raises(ConfigError, match="eps must be > 0"):
        build("linear", eps=0.0)


# ---- Performer (Choromanski et al. 2021) ----------------------------------------------------------------------------

def test_orthogonal_features_are_orthogonal_in_blocks_with_gaussian_norms():
    w = orthogonal_gaussian(40, 16, torch.Generator().manual_seed(0))  # blocks of 16, 16, 8 rows
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert not torch.allclose(w.norm(dim=1), w.norm(dim=1)[0].expand(40))  # norms vary like a Gaussian vector's


def test_performer_features_estimate_the_softmax_kernel():
    kernel = build("performer", num_features=20000, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 1, 6, D, generator=g) * 0.15, torch.randn(1, 1, 6, D, generator=g) * 0.15
    wx = lambda z: z @ kernel.features.T - z.square().sum(-1, keepdim=True) / 2  # noqa: E731  unstabilised log phi
    estimate = (torch.exp(wx(x)) @ torch.exp(wx(y)).transpose(-2, -1)) / 20000  # (1, 1, 6, 6)
    assert_close(estimate, torch.exp(x @ y.transpose(-2, -1)), rtol=0.05, atol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_performer_error_shrinks_as_num_features_grows(causal):
    q, k, v = qkv(64, std=0.7)
    want = eager_kernel(q, k, v, None, causal, 0.0, D ** -0.5)
    errors = {}
    for f in (8, 64, 1024):
        errs = [rel(build("performer", num_features=f, seed=s)(q, k, v, None, causal, 0.0, None), want)
                for s in range(4)]
        errors[f] = sum(errs) / len(errs)
    assert errors[8] > errors[64] > errors[1024], errors
    assert errors[1024] < 0.5 * errors[8], errors


def test_performer_is_reproducible_from_its_buffers():
    torch.manual_seed(0)
    a = build("performer", num_features=32)  # seed None: features from the global RNG
    b = build("performer", num_features=32)
    assert not torch.equal(a.features, b.features)  # every layer draws its own
    b.load_state_dict(a.state_dict())
    q, k, v = qkv(24)
    assert_close(a(q, k, v, None, True, 0.0, None), b(q, k, v, None, True, 0.0, None), atol=0, rtol=0)
    assert torch.equal(build("performer", seed=5).features, build("performer", seed=5).features)


def test_performer_redraws_every_n_training_passes_reproducibly():
    a = build("performer", num_features=32, seed=3, redraw_every=2).train()
    b = build("performer", num_features=32, seed=3, redraw_every=2).train()
    q, k, v = qkv(16)
    first = a.features.clone()
    a(q, k, v, None, False, 0.0, None)
    a(q, k, v, None, False, 0.0, None)
    assert torch.equal(a.features, first)  # two passes with the first draw
    a(q, k, v, None, False, 0.0, None)
    assert not torch.equal(a.features, first) and int(a.redraws) == 1
    b.load_state_dict(a.state_dict())  # a resumed run continues with the same features and count
    for kernel in (a, b):
        for _ in range(2):
            kernel(q, k, v, None, False, 0.0, None)
    assert torch.equal(a.features, b.features) and int(a.redraws) == int(b.redraws) == 2
    a.eval()
    before = a.features.clone()
    for _ in range(3):
        a(q, k, v, None, False, 0.0, None)
    assert torch.equal(a.features, before)  # evaluation never redraws


def test_performer_stays_finite_for_large_logits():
    q, k, v = qkv(64, std=6.0)  # exp(q.k) would overflow fp32 without the stabilisers
    for causal in (False, True):
        assert torch.isfinite(build("performer", seed=0)(q, k, v, None, causal, 0.0, None)).all()


def test_performer_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="num_features must be >= 1"):
        build("performer", num_features=0)
    with pytest.raises(ConfigError, match="redraw_every must be >= 0"):
        build("performer", redraw_every=-1)
    with pytest.raises(ConfigError, match="chunk must be >= 1"):
        build("performer", chunk=0)


# ---- Linformer (Wang et al. 2020) -----------------------------------------------------------------------------------

def test_linformer_with_identity_projections_equals_dense():
    q, k, v = qkv(32)
    want = eager_kernel(q, k, v, None, False, 0.0, D ** -0.5)
    pooled = build("linformer", proj_len=32, max_len=32)  # pooling init with P = M: the identity
    assert_close(pooled.proj_k, torch.eye(32))
    assert_close(pooled(q, k, v, None, False, 0.0, None), want, atol=1e-5, rtol=1e-4)
    random = build("linformer", proj_len=32, max_len=32, init="gaussian", sharing="none")
    with torch.no_grad():
        random.proj_k.copy_(torch.eye(32).expand(HEADS, 32, 32))
        random.proj_v.copy_(torch.eye(32).expand(HEADS, 32, 32))
    assert_close(random(q, k, v, None, False, 0.0, None), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sharing", ["headwise", "key-value", "none"])
def test_linformer_short_sequences_use_the_first_columns(sharing):
    kernel = build("linformer", proj_len=8, max_len=48, init="gaussian", sharing=sharing)
    q, k, v = qkv(20)
    e = kernel.proj_k[..., :20]
    f = e if kernel.proj_v is None else kernel.proj_v[..., :20]
    if e.dim() == 2:
        e, f = e.expand(HEADS, 8, 20), f.expand(HEADS, 8, 20)
    kp, vp = e @ k, f @ v  # (B, H, P, D)
    want = torch.softmax(q @ kp.transpose(-2, -1) * D ** -0.5, dim=-1) @ vp
    assert_close(kernel(q, k, v, None, False, 0.0, None), want, atol=1e-5, rtol=1e-4)
    params = {n: tuple(p.shape) for n, p in kernel.named_parameters()}
    expected = {"headwise": {"proj_k": (8, 48), "proj_v": (8, 48)}, "key-value": {"proj_k": (8, 48)},
                "none": {"proj_k": (HEADS, 8, 48), "proj_v": (HEADS, 8, 48)}}[sharing]
    assert params == expected


def test_linformer_masks_slots_no_real_key_reaches():
    # pooling with 8 slots over 64 positions: a 32-token sequence fills slots 0-3 only; slots 4-7 must not be empty
    # keys with score 0 (which would pull every output towards zero)
    kernel = build("linformer", proj_len=8, max_len=64)
    q, k, v = qkv(32)
    pooled_k = k.view(2, HEADS, 4, 8, D).mean(3)  # (B, H, 4, D) the four reachable slots
    pooled_v = v.view(2, HEADS, 4, 8, D).mean(3)
    want = torch.softmax(q @ pooled_k.transpose(-2, -1) * D ** -0.5, dim=-1) @ pooled_v
    assert_close(kernel(q, k, v, None, False, 0.0, None), want, atol=1e-5, rtol=1e-4)


def test_linformer_bad_lengths_are_config_errors():
    with pytest.raises(ConfigError, match="proj_len 128 is longer than max_len 64"):
        build("linformer", proj_len=128, max_len=64)
    kernel = build("linformer", proj_len=32, max_len=64)
    q, k, v = qkv(16)
    with pytest.raises(ConfigError, match="proj_len 32 is longer than the sequence"):
        kernel(q, k, v, None, False, 0.0, None)
    q, k, v = qkv(80)
    with pytest.raises(ConfigError, match="longer than max_len 64"):
        kernel(q, k, v, None, False, 0.0, None)
    with pytest.raises(ConfigError, match="sharing"):
        build("linformer", sharing="layerwise")


# ---- LSH attention (Kitaev et al. 2020) -----------------------------------------------------------------------------

def self_masked_reference(q, k, v, allowed):
    """Dense attention under `allowed` (B|1, H|1, T, S) without the diagonal; a row with nothing else sees itself."""
    t = q.shape[2]
    eye = torch.eye(t, dtype=torch.bool)
    allowed = allowed & ~eye
    allowed = allowed | (eye & ~allowed.any(-1, keepdim=True))
    return eager_kernel(q, k, v, allowed, False, 0.0, D ** -0.5)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("n_hashes", [1, 3])
def test_lsh_with_one_bucket_equals_dense_attention_with_self_masking(causal, n_hashes):
    q, k, v = qkv(40)
    kernel = build("lsh", n_buckets=1, n_hashes=n_hashes, chunk_len=64)  # one chunk holds the whole sequence
    allowed = torch.ones(40, 40, dtype=torch.bool)
    allowed = allowed.tril() if causal else allowed
    want = self_masked_reference(q, k, v, allowed)
    assert_close(kernel(q, k, v, None, causal, 0.0, None), want, atol=1e-5, rtol=1e-4)


def test_lsh_with_one_bucket_and_short_chunks_sees_its_chunk_and_the_previous_one():
    q, k, v = qkv(32)
    kernel = build("lsh", n_buckets=1, n_hashes=1, chunk_len=8)
    chunk = torch.arange(32) // 8
    allowed = (chunk[None, :] <= chunk[:, None]) & (chunk[None, :] >= chunk[:, None] - 1)  # (T, S)
    assert_close(kernel(q, k, v, None, False, 0.0, None), self_masked_reference(q, k, v, allowed),
                 atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_lsh_attends_only_within_buckets(causal):
    q, k, v = qkv(48, seed=4)
    kernel = build("lsh", n_buckets=4, n_hashes=1, chunk_len=64, seed=0)  # each bucket fits one chunk
    bq, bk = kernel.hash(q)[:, :, 0], kernel.hash(k)[:, :, 0]  # (B, H, T)
    assert len(bq.unique()) == 4  # the test exercises several buckets
    allowed = bq[..., :, None] == bk[..., None, :]  # (B, H, T, S)
    if causal:
        allowed = allowed & torch.ones(48, 48, dtype=torch.bool).tril()
    assert_close(kernel(q, k, v, None, causal, 0.0, None), self_masked_reference(q, k, v, allowed),
                 atol=1e-5, rtol=1e-4)


def test_lsh_more_rounds_lower_the_error():
    q, k, v = qkv(64, std=1.4)
    want = eager_kernel(q, k, v, None, False, 0.0, D ** -0.5)
    err = {r: sum(rel(build("lsh", n_buckets=8, n_hashes=r, chunk_len=8, seed=s)(q, k, v, None, False, 0.0, None),
                      want) for s in range(3)) / 3 for r in (1, 8)}
    assert err[8] < 0.8 * err[1], err


def test_lsh_causal_output_does_not_depend_on_future_buckets():
    q, k, v = qkv(64, seed=5)
    kernel = build("lsh", n_buckets=8, n_hashes=2, chunk_len=4, seed=0)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, 40:], k2[:, :, 40:], v2[:, :, 40:] = -q[:, :, 40:], -k[:, :, 40:], torch.randn(2, HEADS, 24, D)
    assert not torch.equal(kernel.hash(k)[..., 40:], kernel.hash(k2)[..., 40:])  # future tokens change bucket
    y, y2 = kernel(q, k, v, None, True, 0.0, None), kernel(q2, k2, v2, None, True, 0.0, None)
    assert_close(y[:, :, :40], y2[:, :, :40])


def test_lsh_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="n_buckets must be 1 .* or even"):
        build("lsh", n_buckets=3)
    with pytest.raises(ConfigError, match="n_buckets must be 1"):
        build("lsh", n_buckets=0)
    with pytest.raises(ConfigError, match="n_hashes must be >= 1"):
        build("lsh", n_hashes=0)
    with pytest.raises(ConfigError, match="chunk_len must be >= 1"):
        build("lsh", chunk_len=0)
