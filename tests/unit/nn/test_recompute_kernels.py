"""The approximate kernels' chunked, recomputing forward/backward (ptmkit.nn.kernels.recompute and LSH's merged
passes) give the outputs and gradients of the same formulas under plain autograd, at every chunk seam, with
grouped heads and key padding; with dropout, finite differences check the regenerated masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ptmkit.nn import ATTENTION, AttentionConfig
from ptmkit.nn.kernels import blocked, recompute
from ptmkit.nn.kernels.base import expand_kv
from ptmkit.nn.kernels.linear import linear_attention
from ptmkit.nn.kernels.lsh import SELF_SCORE, bucket_layout

D, HEADS = 16, 4
OPTIONS = {"linformer": {"proj_len": 8, "max_len": 48, "sharing": "headwise"}, "performer": {"num_features": 32, "seed": 0},
           "linear": {}, "lsh": {"n_buckets": 4, "n_hashes": 2, "chunk_len": 4, "seed": 0}}


def build(name: str, kv: int = 2, **options):
    cfg = AttentionConfig(HEADS * D, HEADS, num_kv_heads=kv, kernel=name, kernel_options={**OPTIONS[name], **options})
    torch.manual_seed(0)
    kern = ATTENTION[name](cfg)
    if name == "linformer":  # random projections: the pooling initialisation is too regular to test gradients
        with torch.no_grad():
            for p in kern.parameters():
                p.normal_(0, 0.3)
    return kern


def qkv(t: int, kv: int = 2, b: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, t, D, generator=g).to(dtype) for n in (HEADS, kv, kv))
    return q, k, v


# ---- the formulas under plain autograd ------------------------------------------------------------------------------

def reference(kern, q, k, v, keep, causal, scale):
    name = kern.name
    if name == "linear":
        ke, ve = expand_kv(q, k, v)
        phi_k = F.elu(ke) + 1.0
        phi_k = phi_k if keep is None else phi_k * keep[:, None, :, None]
        return linear_attention(F.elu(q) + 1.0, phi_k, ve, causal, 8)
    if name == "performer":
        ke, ve = expand_kv(q, k, v)
        s = scale ** 0.5
        return linear_attention(kern.feature_map(q * s, True), kern.feature_map(ke * s, False, keep), ve, causal, 8)
    if name == "linformer":
        t = k.shape[2]
        e = kern.proj_k[..., :t]
        f = e if kern.proj_v is None else kern.proj_v[..., :t]
        if keep is not None:
            k, v = k * keep[:, None, :, None], v * keep[:, None, :, None]
        eq = "ps,bksd->bkpd" if e.dim() == 2 else "kps,bksd->bkpd"
        kp, vp = expand_kv(q, torch.einsum(eq, e, k), torch.einsum(eq, f, v))
        return torch.softmax(q @ kp.transpose(-2, -1) * scale, dim=-1) @ vp
    return lsh_reference(kern, q, k, v, keep, causal, scale)


def lsh_reference(kern, q, k, v, keep, causal, scale):
    """Reformer LSH attention with every round's laid-out chunks at once (the kernel's former implementation)."""
    k, v = expand_kv(q, k, v)
    b, h, t, d = q.shape
    o = kern.options
    c = min(o.chunk_len, t)
    slot_q, _, q_at, k_at, chunk_start = bucket_layout(kern.hash(q), kern.hash(k), o.n_buckets, c)
    lay = (b, h, o.n_hashes, q_at.shape[-1] // c, c)

    def gather(x, at):
        x = x.unsqueeze(2).expand(b, h, o.n_hashes, t, d)
        return x.gather(3, at.clamp_min(0).unsqueeze(-1).expand(*at.shape, d)).view(*lay, d)

    qc, kc, vc = gather(q, q_at), gather(k, k_at), gather(v, k_at)
    prev = lambda x: torch.cat([torch.zeros_like(x[:, :, :, :1]), x[:, :, :, :-1]], dim=3)  # noqa: E731
    kw, vw = torch.cat([prev(kc), kc], dim=4), torch.cat([prev(vc), vc], dim=4)
    qpos, kpos = q_at.view(lay), k_at.view(lay)
    kpos_w = torch.cat([prev(kpos).masked_fill(chunk_start[..., None], -1), kpos], dim=4)
    allowed = (kpos_w >= 0)[..., None, :] & (qpos >= 0)[..., :, None] & (kpos_w[..., None, :] != qpos[..., :, None])
    if causal:
        allowed &= kpos_w[..., None, :] <= qpos[..., :, None]
    if keep is not None:
        kept = keep[:, None, None, None, :].expand(*kpos_w.shape[:-1], t)
        allowed &= kept.gather(-1, kpos_w.clamp_min(0)).unsqueeze(-2)
    scores = ((qc * scale) @ kw.transpose(-2, -1)).masked_fill(~allowed, float("-inf"))
    lse = torch.logaddexp(scores.logsumexp(dim=-1), torch.tensor(SELF_SCORE, dtype=scores.dtype))
    out = (scores - lse[..., None]).exp() @ vw + torch.exp(SELF_SCORE - lse)[..., None] * gather(v, q_at)
    out = out.reshape(b, h, o.n_hashes, -1, d).gather(3, slot_q.unsqueeze(-1).expand(*slot_q.shape, d))
    lse = lse.reshape(b, h, o.n_hashes, -1).gather(3, slot_q)
    return (torch.softmax(lse, dim=2)[..., None] * out).sum(dim=2)


def run(fn, q, k, v, gout, params=()):
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    for p in params:
        p.grad = None
    out = fn(*leaves)
    out.backward(gout)
    return [out.detach()] + [x.grad for x in leaves] + [p.grad.clone() for p in params]


CASES = [("linear", False), ("performer", False), ("linformer", False), ("lsh", False), ("lsh", True)]


@pytest.mark.parametrize("name,causal", CASES, ids=[f"{n}-{'causal' if c else 'bidir'}" for n, c in CASES])
@pytest.mark.parametrize("budget", [1, 1 << 20], ids=["row-per-chunk", "one-chunk"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_outputs_and_gradients_equal_plain_autograd(name, causal, budget, padded, monkeypatch):
    # budget 1: one row (LSH: one chunk) per pass, so every seam between chunks is crossed
    monkeypatch.setattr(recompute, "scratch_budget", lambda elements: budget)
    t, scale = 37, D ** -0.5
    kern = build(name)
    q, k, v = qkv(t)
    keep = None
    if padded:
        keep = torch.ones(2, t, dtype=torch.bool)
        keep[1, t - 9:] = False
    gout = torch.randn(2, HEADS, t, D, generator=torch.Generator().manual_seed(1))
    params = list(kern.parameters())
    mask = None if keep is None else keep[:, None, None, :]
    got = run(lambda q, k, v: kern(q, k, v, mask, causal, 0.0, scale), q, k, v, gout, params)
    want = run(lambda q, k, v: reference(kern, q, k, v, keep, causal, scale), q, k, v, gout, params)
    for a, b in zip(got, want):
        assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["linformer", "lsh"])
def test_dropout_masks_are_regenerated_exactly_in_backward(name):
    # the mask comes from a seed drawn from torch's RNG: reseeding makes the call deterministic, so finite
    # differences check the recomputed backward (float64 all the way)
    kern = build(name, kv=1).double()
    q, k, v = (x.double().requires_grad_() for x in qkv(10, kv=1, b=1))

    def f(q, k, v):
        torch.manual_seed(0)
        return kern(q, k, v, None, False, 0.3, 0.5)

    assert torch.autograd.gradcheck(f, (q, k, v))
    torch.manual_seed(1)
    assert not torch.equal(f(q, k, v), kern(q, k, v, None, False, 0.3, 0.5))  # dropout did change the output


@pytest.mark.parametrize("name", ["linear", "performer", "linformer", "lsh"])
def test_gradients_pass_finite_differences(name):
    kern = build(name, kv=1).double()
    q, k, v = (x.double().requires_grad_() for x in qkv(10, kv=1, b=1))
    assert torch.autograd.gradcheck(lambda q, k, v: kern(q, k, v, None, False, 0.0, 0.5), (q, k, v))


def test_linformer_projection_gradients_match_with_key_value_sharing():
    kern = build("linformer", sharing="key-value")
    q, k, v = qkv(20)
    gout = torch.randn(2, HEADS, 20, D)
    params = list(kern.parameters())
    assert len(params) == 1
    got = run(lambda q, k, v: kern(q, k, v, None, False, 0.0, 0.25), q, k, v, gout, params)
    want = run(lambda q, k, v: reference(kern, q, k, v, None, False, 0.25), q, k, v, gout, params)
    for a, b in zip(got, want):
        assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_the_forward_pass_keeps_no_per_token_intermediates():
    # what autograd holds after the forward pass: the inputs and a summary, not (T x F) feature maps
    kern = build("performer", kv=HEADS, num_features=64)
    q, k, v = (x.requires_grad_() for x in qkv(256, kv=HEADS, b=1))
    saved = []

    def pack(x):
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kern(q, k, v, None, False, 0.0, None)
    big = [tuple(x.shape) for x in saved if x.numel() > q.numel() and x.data_ptr() not in
           {q.data_ptr(), k.data_ptr(), v.data_ptr()}]
    assert big == []


def test_the_scratch_of_one_chunk_is_a_small_fraction_of_the_inputs():
    q = torch.empty(1, 8, 4096, 64)
    assert recompute.scratch_budget(q.numel()) == q.numel() // recompute.SCRATCH_FRACTION
    assert recompute.SCRATCH_FRACTION >= 8  # scratch of one chunk: at most 1/8 of one (B, H, T, D) tensor
    assert recompute.chunk_rows(q, 256) == 4096 * 64 // recompute.SCRATCH_FRACTION // 256
    assert recompute.scratch_budget(10) == recompute.SCRATCH_MIN and recompute.scratch_budget(1 << 40) == (1 << 19)
    assert blocked.scratch_budget is recompute.scratch_budget  # the exact kernels chunk by the same rule
