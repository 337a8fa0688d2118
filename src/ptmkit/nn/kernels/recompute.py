"""Chunked attention that keeps no activations: the forward pass keeps its inputs, the backward pass recomputes.

Approximate kernels whose keys enter only through a small *summary* — linear attention and Performer
(sum_j phi(k_j) v_j^T, F x D) and Linformer (E K, F V: P x D) — are computed in two passes over chunks of rows:

    summary = sum over key chunks of key_part(k_c, v_c)          small, per key/value head
    out_c   = query_part(q_c, summary)                           row by row in the queries

Plain autograd of these expressions keeps every per-token intermediate: Performer's feature maps are (T x F) with
F = 4 D random features, several of them, so it held 5x the memory of fused flash attention (SDPA) at 16k tokens.
Here autograd keeps only q, k, v (the caller holds them anyway) and the summary; the backward pass recomputes one
chunk at a time (activation checkpointing at chunk granularity, as flash attention recomputes its scores):

    1. query chunks: d summary += (d out_c / d summary)^T dout_c;  dq_c = (d out_c / d q_c)^T dout_c
    2. key chunks:   dk_c, dv_c = (d summary_c / d (k_c, v_c))^T d summary

so the peak is the output, the three input gradients and one chunk. A spec object says what the two parts are;
parameters whose last dimension runs along the keys (Linformer's projections) are sliced per key chunk and their
gradient is assembled from the slices, so no full-size gradient is made per chunk.
"""

from __future__ import annotations

from typing import Protocol

import torch

# One chunk's widest intermediate holds about 1/8 of the size of q, so the chunk's scratch stays a small fraction of
# the four (B, H, T, D) tensors a backward pass needs anyway (output, dq, dk, dv): fused flash attention (SDPA)
# needs about 1.25 of them more. 1/16 cut the peak a little further but doubled the time of the window kernels at
# 4,096 tokens (Python overhead of 4x as many chunks; measured). At least 2^17 elements: below 2,048 tokens fewer,
# larger chunks save more time than the memory they cost; at most 2^19 (2 MiB in float32).
SCRATCH_FRACTION = 8
SCRATCH_MIN, SCRATCH_MAX = 1 << 17, 1 << 19


def scratch_budget(q_elements: int) -> int:
    """Elements one chunk's widest intermediate may hold, for queries of q_elements = B·H·T·D elements."""
    return min(max(q_elements // SCRATCH_FRACTION, SCRATCH_MIN), SCRATCH_MAX)


def chunk_rows(q: torch.Tensor, width: int) -> int:
    """Rows per chunk for q (B, H, T, D) when one chunk's widest intermediate is (B, H, rows, width)."""
    b, h = q.shape[:2]
    return max(1, scratch_budget(q.numel()) // (b * h * max(width, 1)))


class SummarySpec(Protocol):
    """The two parts of a summary-attention kernel (computed in float32, see `wide`; autocast is off)."""

    def key_part(self, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                 params: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The summary of one chunk of c keys (k, v (B, K, c, D); keep (B, c) or None; params sliced to the chunk):
        a tuple of small tensors, summed over the chunks."""
        ...

    def query_part(self, q: torch.Tensor, lo: int, summary: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Outputs (B, H, c, D) of the queries lo..lo+c from the whole summary."""
        ...


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it already is (gradcheck runs kernels in double)."""
    return x if x.dtype == torch.float64 else x.float()


def dropout_keep(shape, p: float, seed: int, device) -> torch.Tensor:
    """An inverted-dropout mask (0 or 1 / (1 - p)) drawn from a generator seeded by `seed`: a kernel that recomputes
    in backward seeds it per chunk, so the backward pass regenerates exactly the forward pass's mask."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.empty(shape, device=device).bernoulli_(1.0 - p, generator=gen).div_(1.0 - p)


def _spans(n: int, rows: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def _chunk(keep: torch.Tensor | None, a: int, z: int) -> torch.Tensor | None:
    return None if keep is None else keep[:, a:z]


class _SummaryAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, rows, q, k, v, keep, *params):
        # params: tensors whose last dimension runs along the keys (length >= S), sliced per key chunk
        with torch.autocast(q.device.type, enabled=False):
            summary = None
            for a, z in _spans(k.shape[2], rows):
                part = spec.key_part(k[:, :, a:z], v[:, :, a:z], _chunk(keep, a, z),
                                     tuple(p[..., a:z] for p in params))
                summary = part if summary is None else tuple(s.add_(x) for s, x in zip(summary, part))
            out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, T, D)
            for a, z in _spans(q.shape[2], rows):
                out[:, :, a:z] = spec.query_part(q[:, :, a:z], a, summary)
        ctx.spec, ctx.rows, ctx.n_params = spec, rows, len(params)
        ctx.save_for_backward(q, k, v, keep, *params, *summary)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, keep, *rest = ctx.saved_tensors
        params, summary = rest[:ctx.n_params], rest[ctx.n_params:]
        spec, rows = ctx.spec, ctx.rows
        need_q, need_k, need_v = ctx.needs_input_grad[2:5]
        need_p = ctx.needs_input_grad[6:]
        dq = torch.empty_like(q) if need_q else None
        leaves = [s.detach().requires_grad_() for s in summary]
        dsum = [torch.zeros_like(s) for s in summary]
        with torch.autocast(q.device.type, enabled=False), torch.enable_grad():
            for a, z in _spans(q.shape[2], rows):  # 1. queries: dq and the summary's gradient
                qc = q[:, :, a:z].detach().requires_grad_(need_q)
                out = spec.query_part(qc, a, tuple(leaves)).to(dout.dtype)
                grads = torch.autograd.grad(out, ([qc] if need_q else []) + leaves, dout[:, :, a:z],
                                            allow_unused=True)
                if need_q:
                    dq[:, :, a:z] = grads[0]
                for acc, g in zip(dsum, grads[need_q:]):
                    if g is not None:
                        acc.add_(g)
            dk = torch.empty_like(k) if need_k else None
            dv = torch.empty_like(v) if need_v else None
            dparams = [torch.zeros_like(p) if n else None for p, n in zip(params, need_p)]
            if need_k or need_v or any(need_p):
                for a, z in _spans(k.shape[2], rows):  # 2. keys: through the summary to k, v and the parameters
                    kc = k[:, :, a:z].detach().requires_grad_(need_k)
                    vc = v[:, :, a:z].detach().requires_grad_(need_v)
                    pc = [p[..., a:z].detach().requires_grad_(n) for p, n in zip(params, need_p)]
                    part = spec.key_part(kc, vc, _chunk(keep, a, z), tuple(pc))
                    wrt = [x for x, n in ((kc, need_k), (vc, need_v), *zip(pc, need_p)) if n]
                    used = [(p, g) for p, g in zip(part, dsum) if p.requires_grad]
                    grads = iter(torch.autograd.grad([p for p, _ in used], wrt, [g for _, g in used],
                                                     allow_unused=True))
                    if need_k:
                        _put(dk, next(grads), a, z, dim=2)
                    if need_v:
                        _put(dv, next(grads), a, z, dim=2)
                    for dp, n in zip(dparams, need_p):
                        if n:
                            g = next(grads)
                            if g is not None:
                                dp[..., a:z].add_(g)
        return (None, None, dq, dk, dv, None, *dparams)


def _put(dst: torch.Tensor, g: torch.Tensor | None, a: int, z: int, dim: int) -> None:
    if g is None:
        dst.narrow(dim, a, z - a).zero_()
    else:
        dst.narrow(dim, a, z - a).copy_(g)


def summary_attention(spec: SummarySpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      keep: torch.Tensor | None, width: int, params: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Chunked summary attention (see the module docstring): q (B, H, T, D), k/v (B, K, S, D), keep (B, S) or
    None; `width` is the widest per-row intermediate of the spec (feature or slot count) and sets the chunk rows;
    `params` have their last dimension along the keys. Returns (B, H, T, D) in q's dtype."""
    return _SummaryAttention.apply(spec, chunk_rows(q, width), q, k, v, keep, *params)
