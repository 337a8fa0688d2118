"""The blocked engine behind the exact sparse-pattern kernels (sliding_window, block_sparse, bigbird, longformer).

The sequence is cut into query blocks; each block gathers only the keys its pattern can reach, as up to three
pieces — a contiguous *span* around the block (windows), *gathered* per-block positions (an index
tensor: BigBird's random blocks) and *shared* positions every block sees (global tokens, summary columns) — and
computes (B, K, nb, g·bs, J) scores, masks them with the kernel's own rule `allows(q, k)`, takes a float32
softmax and the weighted sum. Time is O(T·J), J the keys per block, never O(T²); memory is O(T·D) plus one chunk of
scores, as the pass runs chunk by chunk and the backward pass recomputes scores from the saved log-sum-exp (flash
attention's scheme, Dao et al. 2022). Query rows that see every key (global tokens) are computed densely over all
T keys in the same pass and written over the blocked result: O(T·n_global).

Exactness does not depend on the pieces being tight: the mask is the rule itself evaluated at the gathered
positions, a key gathered twice (a global key inside a window) is kept once, and out-of-range or internal padding
positions are masked. The rule is also what `pattern(t, s, causal)` evaluates densely, so the blocked kernel and
its reference mask cannot drift apart; the contract test checks that the pieces cover the rule.

Grouped-query heads are not repeated: the g query heads sharing a key/value head are folded into the query rows
of a block (they see the same keys), so one (g·bs × D) @ (D × J) product serves them all.
Dimension legend: B batch, H query heads, K key/value heads, g = H / K, T sequence length, D head dim,
bs query block size, nb = ceil(T / bs) blocks, J keys gathered per block, G shared keys, Tg global query rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, key_padding
from ptmkit.nn.kernels.recompute import dropout_keep, scratch_budget

# A disallowed score: finite, so a query whose every visible key is padding gets a finite (uniform, meaningless)
# output instead of NaN that would poison the next layer's gradients (transformers does the same).
NEG = torch.finfo(torch.float32).min
LOG2E = 1.4426950408889634  # scores are kept in base 2: softmax(x) = 2^(x·log2 e) / sum


@dataclass
class Pieces:
    """Which keys each query block gathers (positions may fall outside [0, T): they are masked)."""

    block: int
    span: tuple[int, int] | None = None  # (lo, n): keys i·bs + lo + [0, n) for query block i
    gathered: torch.Tensor | None = None  # (nb, Jg) long: extra key positions per query block
    shared: torch.Tensor | None = None  # (G,) long: key positions every query block sees
    global_rows: torch.Tensor | None = None  # (Tg,) long: query positions computed densely over all keys


@dataclass
class Layout:
    """Pieces plus the derived index and mask tensors for one (T, causal, device); cached by the kernel."""

    t: int
    block: int
    nb: int
    pieces: Pieces
    sizes: list[int]  # keys per piece, in the order span, gathered, shared
    key_pos: torch.Tensor  # (nb, J) long: the key gathered, clamped into [0, T) (out-of-range ones are masked)
    blocked: torch.Tensor  # (nb, bs, J) bool: True = may NOT attend (rule, range, duplicates)
    global_mask: torch.Tensor | None  # (Tg, T) bool for the dense rows; None = every key


def build_layout(kernel: "BlockedPatternKernel", t: int, causal: bool, device) -> Layout:
    pieces = kernel.pieces(t, causal)
    bs = pieces.block
    nb = -(-t // bs)
    starts = torch.arange(nb, device=device) * bs  # (nb,)
    pos, sizes = [], []
    if pieces.span is not None:
        lo, n = pieces.span
        pos.append(starts[:, None] + lo + torch.arange(n, device=device))  # (nb, n)
        sizes.append(n)
    if pieces.gathered is not None:
        pos.append(pieces.gathered.to(device))  # (nb, Jg)
        sizes.append(pos[-1].shape[1])
    if pieces.shared is not None:
        pos.append(pieces.shared.to(device)[None].expand(nb, -1))  # (nb, G)
        sizes.append(pos[-1].shape[1])
    kpos = torch.cat(pos, dim=1)  # (nb, J)
    valid = (kpos >= 0) & (kpos < t)
    # Keep the first copy of a key gathered twice (stable sort: pieces earlier in the row win).
    key = torch.where(valid, kpos, -1 - torch.arange(kpos.shape[1], device=device))  # invalid: unique negatives
    sorted_key, order = key.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(valid)
    dup_sorted[:, 1:] = sorted_key[:, 1:] == sorted_key[:, :-1]
    dup = torch.zeros_like(valid).scatter_(1, order, dup_sorted)
    qpos = torch.arange(nb * bs, device=device).view(nb, bs).clamp(max=t - 1)  # (nb, bs); internal padding rows
    ok = kernel.allows(qpos[:, :, None], kpos.clamp(0, t - 1)[:, None, :], t, causal)  # (nb, bs, J)
    ok = ok & (valid & ~dup)[:, None, :]
    global_mask = None
    if pieces.global_rows is not None:
        rows = pieces.global_rows.to(device)
        global_mask = kernel.allows(rows[:, None], torch.arange(t, device=device)[None, :], t, causal)  # (Tg, T)
        if bool(global_mask.all()):
            global_mask = None
        pieces = Pieces(bs, pieces.span, pieces.gathered, pieces.shared, rows)
    return Layout(t, bs, nb, pieces, sizes, kpos.clamp(0, t - 1), ~ok, global_mask)


# Query blocks per chunk are chosen so that one chunk's scores hold about scratch_budget elements (1/8 of q's size,
# at most 2^19): the forward pass keeps only the output and the log-sum-exp (as flash attention does) and the
# backward pass recomputes a chunk's scores, so the peak memory is O(T·D) plus one small chunk, not O(T·J).


def blocked_attention(q, k, v, keep, lay: Layout, scale: float, dropout_p: float) -> torch.Tensor:
    """Exact attention under the layout's pattern. q (B,H,T,D), k/v (B,K,T,D), keep (B,T) bool or None."""
    b, h, t, d = q.shape
    kh = k.shape[1]
    g, bs, nb = h // kh, lay.block, lay.nb
    tp = nb * bs
    qs = F.pad(q, (0, 0, 0, tp - t)) if tp != t else q
    qb = qs.view(b, kh, g, nb, bs, d)  # (B, K, g, nb, bs, D): query head h = kv head h // g (as expand_kv)
    if g > 1:
        qb = qb.transpose(2, 3)  # (B, K, nb, g, bs, D)
    qb = qb.reshape(b, kh, nb, g * bs, d)  # (B, K, nb, g·bs, D): the group's heads share the block's keys
    blocked = lay.blocked  # (nb, bs, J)
    if keep is not None:
        blocked = blocked | ~keep[:, lay.key_pos][:, :, None, :]  # (B, nb, bs, J)
    if g > 1:  # the mask of the g heads folded into a block's rows
        j = blocked.shape[-1]
        blocked = blocked.unsqueeze(-3).expand(*blocked.shape[:-2], g, bs, j).reshape(*blocked.shape[:-3], nb,
                                                                                       g * bs, j)
    blocked = blocked if blocked.dim() == 4 else blocked[None]  # (B|1, nb, g·bs, J)
    glob = None
    if lay.pieces.global_rows is not None:
        # Rows that see every key, computed densely over all T keys in the same pass (O(Tg·T), linear in T).
        rows = lay.pieces.global_rows  # (Tg,)
        qg = q.detach().index_select(2, rows).reshape(b, kh, g * rows.shape[0], d)  # (B, K, g·Tg, D)
        gblocked = None if lay.global_mask is None else ~lay.global_mask.repeat(g, 1)[None]  # (1, g·Tg, T)
        if keep is not None:
            gblocked = ~keep[:, None, :] if gblocked is None else gblocked | ~keep[:, None, :]  # (B, g·Tg|1, T)
        gi = torch.arange(g, device=q.device)[:, None]
        grid = (rows // bs).expand(g, -1), gi * bs + rows % bs  # (g, Tg) each: block and row of qb/out
        is_global = torch.zeros(nb, g * bs, dtype=torch.bool, device=q.device)
        is_global[grid] = True  # (nb, g·bs): the blocked rows the dense rows overwrite
        glob = (qg, gblocked, grid, is_global)
    seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0  # dropout masks are regenerated in backward
    out = _BlockedAttention.apply(qb, k, v, blocked, lay, scale, dropout_p, seed, glob)  # (B, K, nb, g·bs, D)
    out = out.view(b, kh, nb, g, bs, d)
    if g > 1:
        out = out.transpose(2, 3)  # (B, K, g, nb, bs, D)
    return out.reshape(b, h, tp, d)[:, :, :t]  # (B, H, T, D)


def _row_chunks(qg: torch.Tensor, t: int) -> list[tuple[int, int]]:
    b, kh, r, d = qg.shape
    per = max(1, scratch_budget(b * kh * t * d) // (b * kh * t))  # dense rows per chunk
    return [(a, min(a + per, r)) for a in range(0, r, per)]


def _row_mask(gblocked: torch.Tensor | None, a: int, z: int) -> torch.Tensor | None:
    if gblocked is None:
        return None
    return (gblocked if gblocked.shape[1] == 1 else gblocked[:, a:z])[:, None]  # (B|1, 1, r|1, T)


def _chunks(shape, lay: Layout) -> list[tuple[slice, int, int]]:
    """(key/value heads, first block, end block) of every chunk. A chunk's scores (B, heads, blocks, M, J) hold
    about scratch_budget elements: several blocks of all heads at long lengths, or one block of a few heads when a
    single block over every head is already larger (a window of 2 x 256 keys at 4,096 tokens)."""
    b, kh, nb, m, d = shape
    budget = scratch_budget(b * kh * nb * m * d)
    per_head_block = b * m * lay.key_pos.shape[1]
    heads = max(1, min(kh, budget // per_head_block))
    per = max(1, budget // (per_head_block * kh)) if heads == kh else 1  # query blocks per chunk
    return [(slice(h, min(h + heads, kh)), a, min(a + per, nb)) for a in range(0, nb, per) for h in range(0, kh, heads)]


def _keys(x: torch.Tensor, lay: Layout, a: int, z: int) -> list[torch.Tensor]:
    """Key (or value) pieces of query blocks a..z-1 gathered from x (B, K, T, D): (B, K, nc, J_i, D) each, the
    shared piece (B, K, G, D). Positions outside the sequence read a clamped (masked) key: no padded copy of x."""
    b, kh, _, d = x.shape
    p, out, col = lay.pieces, [], 0
    for n in lay.sizes[:len(lay.sizes) - (p.shared is not None)]:
        idx = lay.key_pos[a:z, col:col + n].reshape(-1)  # (nc·J_i,)
        out.append(x.index_select(2, idx).view(b, kh, z - a, n, d))
        col += n
    if p.shared is not None:
        out.append(x.index_select(2, lay.key_pos[0, col:]))  # (B, K, G, D)
    return out


def _product(qc: torch.Tensor, pieces: list[torch.Tensor], lay: Layout) -> torch.Tensor:
    """Row-by-key products of every piece, concatenated: qc (B, K, nc, M, D) -> (B, K, nc, M, J)."""
    b, kh, nc, m, d = qc.shape
    shared = lay.pieces.shared is not None
    parts = []
    for i, x in enumerate(pieces):
        if shared and i == len(pieces) - 1:  # (B, K, G, D): one product for all the chunk's rows
            parts.append((qc.reshape(b, kh, nc * m, d) @ x.transpose(-1, -2)).view(b, kh, nc, m, -1))
        else:
            parts.append(qc @ x.transpose(-1, -2))  # (B, K, nc, M, J_i)
    return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]


def _weighted(p: torch.Tensor, pieces: list[torch.Tensor], lay: Layout) -> torch.Tensor:
    """Sum over pieces of weights (B, K, nc, M, J) times their rows (values or keys) -> (B, K, nc, M, D)."""
    b, kh, nc, m, _ = p.shape
    shared = lay.pieces.shared is not None
    parts = p.split(lay.sizes, dim=-1) if len(pieces) > 1 else [p]
    out = None
    for i, (w, x) in enumerate(zip(parts, pieces)):
        if shared and i == len(pieces) - 1:
            o = (w.reshape(b, kh, nc * m, -1) @ x).view(b, kh, nc, m, -1)
        else:
            o = w @ x
        out = o if out is None else out.add_(o)
    return out


def _scatter(acc: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, lay: Layout, a: int, z: int,
             shared_acc: torch.Tensor | None) -> None:
    """acc (B, K, L, D) += weights^T @ rows for every piece: the key/value gradients of chunk a..z-1."""
    b, kh, nc, m, _ = w.shape
    d = rows.shape[-1]
    shared = lay.pieces.shared is not None
    parts = w.split(lay.sizes, dim=-1) if len(lay.sizes) > 1 else [w]
    col = 0
    for i, part in enumerate(parts):
        if shared and i == len(parts) - 1:  # (B, K, G, D), added to the G shared rows once at the end
            grad = part.reshape(b, kh, nc * m, -1).transpose(-1, -2) @ rows.reshape(b, kh, nc * m, d)  # (B,K,G,D)
            shared_acc.add_(grad.to(shared_acc.dtype))
        else:
            grad = part.transpose(-1, -2) @ rows  # (B, K, nc, J_i, D)
            idx = lay.key_pos[a:z, col:col + part.shape[-1]].reshape(-1)
            acc.index_add_(2, idx, grad.reshape(b, kh, -1, d).to(acc.dtype))
        col += part.shape[-1]


def _softmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dim of base-2 scores s (consumed), and its base-2 log-sum-exp.

    exp2 of pre-scaled scores rather than exp: on CPU exp2_ is 2.6x faster than exp_ (measured, in place both), and
    the softmax costs about as much as the two products of a chunk."""
    m = s.amax(dim=-1, keepdim=True)
    e = s.sub_(m).exp2_()
    z = e.sum(dim=-1, keepdim=True)
    return e.div_(z), (m + z.log2()).squeeze(-1)


def _add_product(acc: torch.Tensor, w: torch.Tensor, rows: torch.Tensor) -> None:
    """acc (B, K, T, D) += w (B, K, T, r) @ rows (B, K, r, D) in place: the dense rows' key/value gradients span
    every position, and an out-of-place product would allocate a full (B, K, T, D) temporary per row chunk."""
    b, kh, t, d = acc.shape
    acc.view(b * kh, t, d).baddbmm_(w.reshape(b * kh, t, -1), rows.to(acc.dtype).reshape(b * kh, -1, d))


class _BlockedAttention(torch.autograd.Function):
    """softmax(mask(q k^T)) v over the gathered keys, chunk by chunk; backward recomputes each chunk's scores
    from the saved log-sum-exp (Dao et al. 2022's identity dS = P ∘ (dP - rowsum(dO ∘ O)), dropout included)."""

    @staticmethod
    def forward(ctx, qb, kp, vp, blocked, lay, scale, dropout_p, seed, glob):
        # qb (B, K, nb, M, D); kp, vp (B, K, T, D); blocked (B|1, nb, M, J) bool;
        # glob: None or (dense query rows qg (B, K, R, D), their mask (B|1, R|1, T), grid into qb, (nb, M) bool)
        acc = torch.promote_types(qb.dtype, torch.float32)
        out = torch.empty_like(qb)
        lse = torch.empty(qb.shape[:-1], dtype=acc, device=qb.device)  # (B, K, nb, M)
        for c, (hs, a, z) in enumerate(_chunks(qb.shape, lay)):
            qc = qb[:, hs, a:z]  # (B, k, nc, M, D): k of the K key/value heads
            s = _product(qc, _keys(kp[:, hs], lay, a, z), lay).to(acc).mul_(scale * LOG2E)  # (B, k, nc, M, J)
            s.masked_fill_(blocked[:, None, a:z], NEG)
            probs, lse[:, hs, a:z] = _softmax(s)  # float32
            if dropout_p > 0:
                probs.mul_(dropout_keep(probs.shape, dropout_p, seed + c, probs.device))
            out[:, hs, a:z] = _weighted(probs.to(qb.dtype), _keys(vp[:, hs], lay, a, z), lay)
        lse_g = None
        if glob is not None:
            qg, gblocked, grid, _ = glob
            first = len(_chunks(qb.shape, lay))
            lse_g = torch.empty(qg.shape[:-1], dtype=acc, device=qg.device)  # (B, K, R)
            out_g = torch.empty_like(qg)
            for c, (a, z) in enumerate(_row_chunks(qg, kp.shape[2])):
                s = (qg[:, :, a:z] @ kp.transpose(-1, -2)).to(acc).mul_(scale * LOG2E)  # (B, K, r, T)
                m = _row_mask(gblocked, a, z)
                if m is not None:
                    s.masked_fill_(m, NEG)
                probs, lse_g[:, :, a:z] = _softmax(s)
                if dropout_p > 0:
                    probs.mul_(dropout_keep(probs.shape, dropout_p, seed + first + c, probs.device))
                out_g[:, :, a:z] = probs.to(qg.dtype) @ vp  # (B, K, r, D)
            out[:, :, grid[0], grid[1]] = out_g.view(*qg.shape[:2], *grid[0].shape, qg.shape[-1])
        ctx.save_for_backward(qb, kp, vp, blocked, out, lse, lse_g)
        ctx.lay, ctx.scale, ctx.dropout_p, ctx.seed, ctx.glob = lay, scale, dropout_p, seed, glob
        return out

    @staticmethod
    def backward(ctx, dout):
        qb, kp, vp, blocked, out, lse, lse_g = ctx.saved_tensors
        lay, scale, dropout_p, seed, glob = ctx.lay, ctx.scale, ctx.dropout_p, ctx.seed, ctx.glob
        acc = lse.dtype
        dout = dout.contiguous()
        # rowsum(dO ∘ O) = rowsum(P ∘ dP), as a batched dot product: no (B, K, nb, M, D) temporary
        delta = (dout.to(acc).unsqueeze(-2) @ out.to(acc).unsqueeze(-1)).view(out.shape[:-1])  # (B, K, nb, M)
        dq = torch.empty_like(qb)
        dk = torch.zeros(kp.shape, dtype=acc, device=kp.device)
        dv = torch.zeros(vp.shape, dtype=acc, device=vp.device)
        g = lay.pieces.shared.shape[0] if lay.pieces.shared is not None else 0
        dk_shared = torch.zeros(*kp.shape[:2], g, kp.shape[-1], dtype=acc, device=kp.device)
        dv_shared = torch.zeros_like(dk_shared)
        for c, (hs, a, z) in enumerate(_chunks(qb.shape, lay)):
            qc, doc = qb[:, hs, a:z], dout[:, hs, a:z]
            keys, values = _keys(kp[:, hs], lay, a, z), _keys(vp[:, hs], lay, a, z)
            s = _product(qc, keys, lay).to(acc).mul_(scale * LOG2E)
            s.masked_fill_(blocked[:, None, a:z], NEG)
            probs = s.sub_(lse[:, hs, a:z, :, None]).exp2_()  # (B, k, nc, M, J), in place: one scores buffer
            if glob is not None:  # rows overwritten by the dense rows contribute nothing here
                probs.masked_fill_(glob[3][a:z, :, None], 0.0)
            dp = _product(doc, values, lay).to(acc)  # dO v^T
            if dropout_p > 0:
                keep = dropout_keep(probs.shape, dropout_p, seed + c, probs.device)
                _scatter(dv[:, hs], (probs * keep).to(qb.dtype), doc, lay, a, z, dv_shared[:, hs])
                dp.mul_(keep)
            else:
                _scatter(dv[:, hs], probs.to(qb.dtype), doc, lay, a, z, dv_shared[:, hs])
            # gradient of the unscaled q k^T products; the scale enters dq and dk through it
            ds = probs.mul_(dp.sub_(delta[:, hs, a:z, :, None])).mul_(scale).to(qb.dtype)  # (B, k, nc, M, J)
            del dp
            dq[:, hs, a:z] = _weighted(ds, keys, lay)
            _scatter(dk[:, hs], ds, qc, lay, a, z, dk_shared[:, hs])
        if g:
            idx = lay.key_pos[0, -g:]
            dk.index_add_(2, idx, dk_shared)
            dv.index_add_(2, idx, dv_shared)
        if glob is not None:
            qg, gblocked, grid, _ = glob
            first = len(_chunks(qb.shape, lay))
            b, kh, r, d = qg.shape
            dout_g = dout[:, :, grid[0], grid[1]].reshape(b, kh, r, d)  # (B, K, R, D)
            out_g = out[:, :, grid[0], grid[1]].reshape(b, kh, r, d)
            delta_g = (dout_g.to(acc) * out_g.to(acc)).sum(-1)  # (B, K, R)
            dq_g = torch.empty_like(qg)
            for c, (a, z) in enumerate(_row_chunks(qg, kp.shape[2])):
                s = (qg[:, :, a:z] @ kp.transpose(-1, -2)).to(acc).mul_(scale * LOG2E)  # (B, K, r, T)
                m = _row_mask(gblocked, a, z)
                if m is not None:
                    s.masked_fill_(m, NEG)
                probs = s.sub_(lse_g[:, :, a:z, None]).exp2_()
                dp = (dout_g[:, :, a:z] @ vp.transpose(-1, -2)).to(acc)  # (B, K, r, T)
                if dropout_p > 0:
                    keep = dropout_keep(probs.shape, dropout_p, seed + first + c, probs.device)
                    _add_product(dv, (probs * keep).transpose(-1, -2), dout_g[:, :, a:z])
                    dp.mul_(keep)
                else:
                    _add_product(dv, probs.transpose(-1, -2), dout_g[:, :, a:z])
                ds = probs.mul_(dp.sub_(delta_g[:, :, a:z, None])).mul_(scale)  # (B, K, r, T) float32
                dq_g[:, :, a:z] = ds.to(qg.dtype) @ kp
                _add_product(dk, ds.transpose(-1, -2), qg[:, :, a:z])
            dq[:, :, grid[0], grid[1]] = dq_g.view(b, kh, *grid[0].shape, d)
        return dq, dk.to(kp.dtype), dv.to(vp.dtype), None, None, None, None, None, None


class BlockedPatternKernel(AttentionKernel):
    """Base of the exact sparse kernels: subclasses give the rule `allows` and the `pieces` that cover it."""

    kind = "pattern"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._layouts: dict[tuple, Layout] = {}

    # ---- what a subclass defines ---------------------------------------------------------------------------

    def allows(self, qpos: torch.Tensor, kpos: torch.Tensor, t: int, causal: bool) -> torch.Tensor:
        """Bool, broadcast of qpos and kpos: may query position qpos attend to key position kpos."""
        raise NotImplementedError

    def pieces(self, t: int, causal: bool) -> Pieces:
        """The keys each query block gathers; must cover `allows` (raise ConfigError for unusable lengths)."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------------------

    def pattern(self, t: int, s: int, causal: bool, device=None) -> torch.Tensor:
        """(T, S) bool: the exact mask this kernel computes (for tests and analysis; O(T²) memory)."""
        if t != s:
            raise ConfigError(f"attention kernel {self.name!r} is defined for self-attention (T == S), got {t} x {s}")
        self.pieces(t, causal)  # the same length checks as a forward pass
        pos = torch.arange(t, device=device)
        return self.allows(pos[:, None], pos[None, :], t, causal)

    def layout(self, t: int, causal: bool, device) -> Layout:
        key = (t, causal, str(device))
        lay = self._layouts.get(key)
        if lay is None:
            if len(self._layouts) >= 16:  # many distinct lengths (unpacked batches): keep the cache small
                self._layouts.clear()
            lay = self._layouts[key] = build_layout(self, t, causal, device)
        return lay

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, T) or None
        scale = scale if scale is not None else q.shape[-1] ** -0.5
        return blocked_attention(q, k, v, keep, self.layout(q.shape[2], is_causal, q.device), scale, dropout_p)
