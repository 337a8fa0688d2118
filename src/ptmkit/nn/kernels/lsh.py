"""LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer", ICLR): queries and keys are hashed by
random rotations into buckets, and each query attends only to keys of its own bucket, in chunks, O(T C) per round.

    h(x) = argmax([x R ; -x R]),   R (D, n_buckets / 2) random   (angular LSH, paper §3)

Per hash round: queries and keys are ordered by (bucket, position); every bucket's run is cut into chunks of C, and
each query chunk attends the key chunk of the same rank in its bucket and the one before it (paper: "within a chunk
and one chunk back"). Rounds are combined by their log-sum-exp (paper eq. 4 with the normaliser of each round).
A token does not attend to itself unless nothing else is available (paper §3, "shared-QK": self-attention is masked
with a large negative score, -1e5, not -inf). Causal attention masks keys after the query inside the chunks.

Two departures from Reformer, both needed because ptmkit layers project keys separately from queries (Reformer ties
k = q / |q|): queries and keys are hashed with the same rotations but ordered separately, and chunks never straddle
two buckets (each bucket's run is padded to a multiple of C). So chunk membership depends only on a token's rank
inside its bucket, which depends only on earlier tokens: causal outputs never depend on the future (with Reformer's
chunks across bucket boundaries a future token's bucket shifts where every later chunk starts). Rotations are drawn
once and kept in a buffer (Reformer redraws them every pass), so outputs are reproducible.
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length (= T), D head dim,
R hash rounds, U buckets, L laid-out length (bucket runs padded to multiples of C), N = L / C chunks, C chunk length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.base import AttentionKernel, expand_kv, key_padding
from ptmkit.nn.kernels.recompute import chunk_rows, dropout_keep, wide

SELF_SCORE = -1e5  # Reformer's score for a token attending to itself: used only when nothing else is visible


@dataclass
class LSHOptions:
    n_buckets: int = 32  # U buckets per round; Reformer uses about 2 T / chunk_len
    n_hashes: int = 2  # R hash rounds (more rounds: fewer missed neighbours, R times the cost)
    chunk_len: int = 64  # C: queries per chunk; each chunk sees 2 C keys of its bucket
    seed: int | None = None  # None = rotations from the global torch RNG at build; int = a fixed draw

    def __post_init__(self) -> None:
        where = "attention kernel 'lsh'"
        if self.n_buckets < 1 or (self.n_buckets > 1 and self.n_buckets % 2):
            raise ConfigError(
                f"{where}: n_buckets must be 1 (no hashing) or even (angular LSH draws n_buckets / 2 rotations and "
                f"takes the argmax over [xR, -xR]), got {self.n_buckets}; Reformer uses about 2 x seq_len / chunk_len"
            )
        if self.n_hashes < 1:
            raise ConfigError(f"{where}: n_hashes must be >= 1 (hash rounds), got {self.n_hashes}")
        if self.chunk_len < 1:
            raise ConfigError(f"{where}: chunk_len must be >= 1, got {self.chunk_len}; 32-128 is usual")


def bucket_layout(bq: torch.Tensor, bk: torch.Tensor, n_buckets: int, c: int):
    """Slots of queries and keys in a layout where every bucket owns a run of whole chunks.

    bq, bk: (..., T) bucket ids. Returns (slot_q, slot_k) (..., T) slot of every query/key, (q_at, k_at) (..., L)
    position held by every slot (-1 = empty), chunk_start (..., N) True where a chunk begins its bucket's run.
    A query/key's slot is its bucket's run offset + its rank among the bucket's queries/keys in position order.
    """
    t = bq.shape[-1]
    pos = torch.arange(t, device=bq.device)

    def ranks(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = (b * t + pos).argsort(dim=-1)  # (..., T) by (bucket, position)
        counts = F.one_hot(b, n_buckets).sum(dim=-2)  # (..., U)
        starts = counts.cumsum(-1) - counts  # (..., U) first sorted index of every bucket
        rank_sorted = torch.arange(t, device=b.device) - starts.gather(-1, b.gather(-1, order))  # (..., T)
        return torch.empty_like(order).scatter_(-1, order, rank_sorted), counts  # rank of every token (..., T)

    rq, cq = ranks(bq)
    rk, ck = ranks(bk)
    run = (torch.maximum(cq, ck) + c - 1) // c * c  # (..., U) each bucket's run: whole chunks
    offset = run.cumsum(-1) - run  # (..., U)
    length = int(run.sum(-1).max())  # L: the longest layout over batch, heads and rounds
    slot_q = offset.gather(-1, bq) + rq  # (..., T)
    slot_k = offset.gather(-1, bk) + rk
    empty = torch.full((*bq.shape[:-1], length), -1, dtype=torch.long, device=bq.device)  # (..., L)
    q_at = empty.scatter(-1, slot_q, pos.expand_as(slot_q))  # (..., L) query position in every slot
    k_at = empty.scatter(-1, slot_k, pos.expand_as(slot_k))
    n = length // c
    starts = torch.zeros((*bq.shape[:-1], n + 1), dtype=torch.bool, device=bq.device)
    chunk_start = starts.scatter(-1, offset // c, True)[..., :n]  # (..., N) (an empty run's offset is the next's)
    return slot_q, slot_k, q_at, k_at, chunk_start


class LSHAttention(AttentionKernel):
    """Reformer LSH attention: n_hashes rounds of angular LSH, bucket-chunked attention, rounds merged by LSE."""

    Options = LSHOptions
    kind = "approximate"
    causal = True
    name = "lsh"

    def __init__(self, cfg):
        super().__init__(cfg)
        o = self.options
        g = None if o.seed is None else torch.Generator().manual_seed(o.seed)
        rot = torch.randn(o.n_hashes, self.head_dim, max(o.n_buckets // 2, 1), generator=g)  # (R, D, U/2)
        self.register_buffer("rotations", rot)

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket ids (B, H, R, T) of vectors x (B, H, T, D): angular LSH, one random rotation per round."""
        b, h, t, _ = x.shape
        if self.options.n_buckets == 1:
            return torch.zeros(b, h, self.options.n_hashes, t, dtype=torch.long, device=x.device)
        xr = torch.einsum("bhtd,rdu->bhrtu", x.float(), self.rotations.float())  # (B, H, R, T, U/2)
        return torch.cat([xr, -xr], dim=-1).argmax(dim=-1)  # (B, H, R, T)

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        self.check_call(q, k, is_causal)
        keep = key_padding(mask, self.name)  # (B, S) or None
        k, v = expand_kv(q, k, v)  # (B, H, S, D)
        b, h, t, d = q.shape
        o = self.options
        c = min(o.chunk_len, t)
        scale = scale if scale is not None else d ** -0.5
        with torch.no_grad():
            _, _, q_at, k_at, chunk_start = bucket_layout(self.hash(q), self.hash(k), o.n_buckets, c)
        seed = int(torch.randint(0, 2**62, ())) if dropout_p > 0 else 0  # dropout masks are regenerated in backward
        lay = _Layout(q_at, k_at, chunk_start, c, keep, is_causal, scale, dropout_p, seed)
        # chunks per pass: a pass holds about two (B, H, n, C, 2C) score buffers plus the gathered rows
        groups = max(1, chunk_rows(q, 4 * c) // c)
        with torch.autocast(q.device.type, enabled=False):  # the backward pass recomputes in the inputs' dtype
            out = _LSHAttention.apply(q, k, v, lay, groups)  # (B, H, T, D) float32 (float64 for double inputs)
        return out.to(q.dtype)


@dataclass
class _Layout:
    """One call's bucket layout and settings (no gradient flows through any of it)."""

    q_at: torch.Tensor  # (B, H, R, L) query position in every slot, -1 = empty
    k_at: torch.Tensor  # (B, H, R, L) key position in every slot
    chunk_start: torch.Tensor  # (B, H, R, N) True where a chunk begins its bucket's run
    c: int  # chunk length C
    keep: torch.Tensor | None  # (B, S) bool key padding
    causal: bool
    scale: float
    dropout_p: float
    seed: int

    def windows(self, r: int, a: int, z: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Chunks a..z-1 of round r: query positions (B, H, n, C) and key positions of each chunk's window (the
        previous chunk of its bucket's run, then its own; B, H, n, 2C), -1 = none; gathered queries (B, H, n, C, D),
        window keys and values (B, H, n, 2C, D), the values at the queries' own positions, and the scores
        (B, H, n, C, 2C) float32 with disallowed pairs at -inf."""
        b, h, t, d = q.shape
        c, n = self.c, z - a
        qpos = self.q_at[:, :, r, a * c:z * c].reshape(b, h, n, c)  # (B, H, n, C)
        kpos = self.k_at[:, :, r, a * c:z * c].reshape(b, h, n, c)
        if a > 0:
            prev = self.k_at[:, :, r, (a - 1) * c:(z - 1) * c].reshape(b, h, n, c)
        else:  # the first chunk has no previous one
            prev = F.pad(self.k_at[:, :, r, :(n - 1) * c].reshape(b, h, n - 1, c), (0, 0, 1, 0), value=-1)
        prev = prev.masked_fill(self.chunk_start[:, :, r, a:z, None], -1)  # a run's first chunk: no previous
        kpos_w = torch.cat([prev, kpos], dim=-1)  # (B, H, n, 2C)

        def gather(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x (B, H, T, D) at pos (B, H, n, J)
            idx = pos.clamp_min(0).reshape(b, h, -1, 1).expand(-1, -1, -1, d)
            return x.gather(2, idx).view(*pos.shape, d)

        qg, kw, vw, v_self = gather(q, qpos), gather(k, kpos_w), gather(v, kpos_w), gather(v, qpos)
        allowed = (kpos_w >= 0)[..., None, :] & (qpos >= 0)[..., :, None]  # (B, H, n, C, 2C)
        allowed &= kpos_w[..., None, :] != qpos[..., :, None]  # no attending to oneself (Reformer §3)
        if self.causal:
            allowed &= kpos_w[..., None, :] <= qpos[..., :, None]
        if self.keep is not None:
            kept = self.keep[:, None, :].expand(b, h, t).gather(2, kpos_w.clamp_min(0).reshape(b, h, -1))
            allowed &= kept.view(b, h, n, 1, 2 * c)  # padding is never seen
        scores = wide((qg * self.scale) @ kw.transpose(-2, -1)).masked_fill_(~allowed, float("-inf"))
        return qpos, kpos_w, qg, kw, vw, v_self, scores

    def dropout_keep(self, shape, r: int, a: int, device) -> torch.Tensor:
        """The inverted-dropout mask of pass (round r, first chunk a), the same in forward and backward."""
        return dropout_keep(shape, self.dropout_p, self.seed + r * self.q_at.shape[-1] + a, device)

    def passes(self, groups: int):
        rounds, n = self.q_at.shape[2], self.q_at.shape[-1] // self.c
        return [(r, a, min(a + groups, n)) for r in range(rounds) for a in range(0, n, groups)]


def _rows(pos: torch.Tensor, t: int) -> torch.Tensor:
    """Index (B, H, n·C) of query positions (B, H, n, C) into a (B, H, T + 1, ...) buffer: empty slots (-1) go to
    the spare row T, so writing them disturbs no real position."""
    return torch.where(pos >= 0, pos, t).reshape(*pos.shape[:2], -1)


class _LSHAttention(torch.autograd.Function):
    """Every round's chunked attention merged by log-sum-exp, computed pass by pass (a round's group of chunks);
    the backward pass recomputes each pass's scores from the saved merged log-sum-exp L (flash attention's
    identity dS = P ∘ (dP - rowsum(dO ∘ O)) with P = exp(S - L) over the union of all rounds' windows and self
    slots), so no (T x 2C) scores or gathered copies are kept."""

    @staticmethod
    def forward(ctx, q, k, v, lay, groups):
        b, h, t, d = q.shape
        wd = wide(q[:, :, :0]).dtype  # float32 (float64 for double inputs)
        acc = torch.zeros(b, h, t + 1, d, dtype=wd, device=q.device)  # merged output, spare row T
        # L in float64: a query that sees only its self slots has L = SELF_SCORE + log(rounds) ~ -1e5, where float32
        # keeps 3 decimals, and exp(SELF_SCORE - L) would be off by 0.4%
        lse = torch.full((b, h, t + 1), float("-inf"), dtype=torch.float64, device=q.device)  # merged L
        for r, a, z in lay.passes(groups):
            qpos, _, _, _, vw, v_self, scores = lay.windows(r, a, z, q, k, v)
            # log-sum-exp over the window and the self slot (score SELF_SCORE): finite even when nothing is allowed
            m = torch.logaddexp(scores.logsumexp(dim=-1).double(), torch.tensor(SELF_SCORE, dtype=torch.float64))
            probs = scores.sub_(m[..., None].to(wd)).exp_()  # (B, H, n, C, 2C)
            if lay.dropout_p > 0:
                probs.mul_(lay.dropout_keep(probs.shape, r, a, probs.device))
            part = probs.to(vw.dtype) @ vw + torch.exp(SELF_SCORE - m)[..., None].to(v.dtype) * v_self
            # merge into the running result by log-sum-exp (each position appears once per round)
            idx = _rows(qpos, t)  # (B, H, n·C)
            old = lse.gather(2, idx)
            new = torch.logaddexp(old, m.reshape(b, h, -1))
            keep_old = torch.exp(old - new)[..., None].to(wd)
            take = torch.exp(m.reshape(b, h, -1) - new)[..., None].to(wd)
            idx_d = idx[..., None].expand(-1, -1, -1, d)
            merged = acc.gather(2, idx_d).mul_(keep_old).add_(part.reshape(b, h, -1, d).to(wd) * take)
            acc.scatter_(2, idx_d, merged)
            lse.scatter_(2, idx, new)
        out = acc[:, :, :t]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.lay, ctx.groups = lay, groups
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        lay = ctx.lay
        b, h, t, d = q.shape
        dout = wide(dout)
        # rowsum(dO ∘ O) as a batched dot product: no (B, H, T, D) temporary
        delta = (dout.unsqueeze(-2) @ out.unsqueeze(-1)).view(b, h, t)  # (B, H, T)
        dq = torch.zeros(b, h, t, d, dtype=dout.dtype, device=q.device)
        dk, dv = torch.zeros_like(dq), torch.zeros_like(dq)
        for r, a, z in lay.passes(ctx.groups):
            qpos, kpos_w, qg, kw, vw, _, scores = lay.windows(r, a, z, q, k, v)
            n, c = z - a, lay.c
            # empty slots read row 0 with a zero gradient and a zero weight: they add nothing anywhere
            valid = (qpos >= 0).unsqueeze(-1)  # (B, H, n, C, 1)
            qidx = qpos.clamp_min(0).reshape(b, h, -1)  # (B, H, n·C)
            qidx_d = qidx[..., None].expand(-1, -1, -1, d)
            kidx_d = kpos_w.clamp_min(0).reshape(b, h, -1, 1).expand(-1, -1, -1, d)  # (B, H, n·2C, D)
            big_l = lse.gather(2, _rows(qpos, t)).view(b, h, n, c, 1)  # merged L of each query (float64)
            probs = scores.sub_(big_l.to(scores.dtype)).exp_()  # (B, H, n, C, 2C): P = exp(S - L), 0 if disallowed
            do = dout.gather(2, qidx_d).view(b, h, n, c, d).mul_(valid)  # (B, H, n, C, D)
            dp = do @ wide(vw).transpose(-2, -1)  # (B, H, n, C, 2C)
            if lay.dropout_p > 0:
                keep = lay.dropout_keep(probs.shape, r, a, probs.device)
                dv_w = (probs * keep).transpose(-2, -1) @ do
                dp.mul_(keep)
            else:
                dv_w = probs.transpose(-2, -1) @ do  # (B, H, n, 2C, D)
            dv.scatter_add_(2, kidx_d, dv_w.reshape(b, h, -1, d))
            p_self = torch.exp(SELF_SCORE - big_l).to(do.dtype)  # (B, H, n, C, 1): the self slot's share
            dv.scatter_add_(2, qidx_d, (p_self * do).reshape(b, h, -1, d))
            ds = probs.mul_(dp.sub_(delta.gather(2, qidx).view(b, h, n, c, 1))).mul_(lay.scale)  # (B, H, n, C, 2C)
            dq.scatter_add_(2, qidx_d, (ds @ wide(kw)).reshape(b, h, -1, d))
            dk.scatter_add_(2, kidx_d, (ds.transpose(-2, -1) @ wide(qg)).reshape(b, h, -1, d))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None
