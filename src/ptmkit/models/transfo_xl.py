"""Transformer-XL (Dai et al. 2019): a decoder with segment-level recurrence and relative positional encoding.

Dai, Yang, Yang, Carbonell, Le, Salakhutdinov. "Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context." ACL 2019. Survey (Han et al. 2021) §4.1: the decoder family that lifts the fixed context length.

What sets it apart from GPT-2:
- **Segment-level recurrence** (§3.2). A long text is processed as consecutive segments of T tokens. Each layer
  keeps the states it received for the previous segment(s) as a memory of up to mem_len states and prepends them,
  detached (no gradient flows into an earlier segment), to its keys and values. The context therefore grows
  linearly with depth (about num_layers x mem_len tokens) at the cost of one segment's attention. `forward` takes
  `mems` and returns the memory for the next segment, so a caller streams a text segment after segment.
- **Relative positional encoding** (§3.3). No absolute positions (they would collide between segments): the logit of
  query i and key j is (q_i + u)·k_j + (q_i + v)·W_{k,R} R_{i-j} with sinusoidal R and two learned biases u, v shared
  by every layer ("global" biases, as the paper's code with untie_r=False), realigned with the rel-shift trick.
  Shared with XLNet in ptmkit/nn/relative_xl.py.
- **Causal mask over memory + segment**: a token sees the whole memory and its own past (not its future).
- **Post-norm blocks**, as the paper's experiments (pre_lnorm=False in the released code): attention -> residual ->
  LayerNorm, ReLU FFN -> residual -> LayerNorm, no final norm. Token embeddings are scaled by sqrt(H) and tied to the
  output layer. The paper's adaptive input/softmax (for 267k-word vocabularies) is left out: ptmkit tokenizers have
  small subword vocabularies, where a plain tied softmax is what one uses.

Dimension legend: B batch, T segment length, M memory length, S = M + T key length, R = S relative distances,
H hidden size, N heads, D head size, L layers, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, BackboneOutput, ModelOutput, init_normal
from ptmkit.models.heads import TaskModel
from ptmkit.nn.feedforward import ACTIVATIONS, MLP
from ptmkit.nn.relative_xl import past_relative_positions, relative_scores, update_memory


@dataclass
class TransfoXLConfig:
    vocab_size: int = 32000
    hidden_size: int = 410  # d_model (the paper's WikiText-103 base model: 16 layers x 410, 10 heads, d_inner 2100)
    num_layers: int = 16  # n_layer
    num_heads: int = 10  # n_head; head size = hidden_size // num_heads
    intermediate_size: int = 2100  # d_inner
    hidden_act: str = "relu"  # the paper's position-wise FFN uses ReLU
    segment_len: int = 150  # tgt_len: the most new tokens one forward takes; stream longer text as segments
    mem_len: int = 150  # states kept per layer for the next segment; 0 = no recurrence (a vanilla decoder)
    clamp_len: int = -1  # relative distances beyond clamp_len share its embedding; -1 = no clamp
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1  # residual, embedding, FFN and positional dropout
    attention_dropout: float = 0.0  # dropatt: on the attention probabilities
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        check_positive("TransfoXLConfig", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                       num_layers=self.num_layers, num_heads=self.num_heads,
                       intermediate_size=self.intermediate_size, layer_norm_eps=self.layer_norm_eps)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"TransfoXLConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                f"pick a head count that divides it (e.g. {max(1, self.hidden_size // 64)})"
            )
        if self.hidden_size % 2:
            raise ConfigError(f"TransfoXLConfig: hidden_size {self.hidden_size} must be even (sin/cos position pairs)")
        if self.segment_len < 1:
            raise ConfigError(f"TransfoXLConfig: segment_len (tokens per forward) must be >= 1, got {self.segment_len}")
        if self.mem_len < 0:
            raise ConfigError(
                f"TransfoXLConfig: mem_len must be >= 0 (states kept per layer; 0 = no memory), got {self.mem_len}"
            )
        if self.clamp_len == 0 or self.clamp_len < -1:
            raise ConfigError(
                f"TransfoXLConfig: clamp_len {self.clamp_len} would give every distance the same embedding; "
                "use -1 for no clamp or a positive distance"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"TransfoXLConfig: unknown hidden_act {self.hidden_act!r}; choose from {sorted(ACTIVATIONS)}"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"TransfoXLConfig: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class TransfoXLBackboneOutput(BackboneOutput):
    mems: tuple[torch.Tensor, ...] | None = None  # per layer (B, M', H): its input states, for the next segment


@dataclass
class TransfoXLOutput(ModelOutput):
    mems: tuple[torch.Tensor, ...] | None = None


class RelativeCausalAttention(nn.Module):
    """Relative multi-head attention over [memory; segment] (Transformer-XL §3.3, RelPartialLearnableMultiHeadAttn)."""

    def __init__(self, c: TransfoXLConfig):
        super().__init__()
        h, n, d = c.hidden_size, c.num_heads, c.head_dim
        self.num_heads, self.head_dim, self.scale = n, d, d ** -0.5
        self.qkv = nn.Linear(h, 3 * n * d, bias=False)  # rows [q; k; v] (the paper's qkv_net)
        # forward slices qkv's weight (q for the segment only, k/v for memory + segment) instead of calling it, so
        # a forward hook on it would never run: delta-tuning methods must refuse it (ptmkit.adapt.base.find_sites)
        self.weights_read_directly = ("qkv",)
        self.r = nn.Linear(h, n * d, bias=False)  # W_{k,R}: projects the sinusoidal relative positions
        self.o = nn.Linear(n * d, h, bias=False)
        self.drop_attn = nn.Dropout(c.attention_dropout)

    def fused_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """Rows of qkv that are q, k and v (the names delta-tuning methods use; see weights_read_directly)."""
        rows = torch.arange(self.qkv.out_features).view(3, -1)
        return {"qkv": {"q": rows[0], "k": rows[1], "v": rows[2]}}

    def forward(self, x: torch.Tensor, pos: torch.Tensor, blocked: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                mem: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H); pos (S, H) sinusoids of distances S-1..0; blocked (T, S) or (B, T, S) bool, True = may not
        attend; u, v (N, D); mem (B, M, H) or None. Returns (B, T, H), before the residual."""
        n, d = self.num_heads, self.head_dim
        cat = x if mem is None else torch.cat([mem.to(x.dtype), x], dim=1)  # (B, S, H): memory first
        w_q, w_kv = self.qkv.weight[: n * d], self.qkv.weight[n * d:]
        q = nn.functional.linear(x, w_q).unflatten(-1, (n, d))  # (B, T, N, D): only the segment asks
        k, val = nn.functional.linear(cat, w_kv).unflatten(-1, (2, n, d)).unbind(2)  # (B, S, N, D) each
        k_pos = self.r(pos.to(x.dtype)).unflatten(-1, (n, d))  # (R, N, D)
        s = k.shape[1]
        score = relative_scores(q, k, k_pos, u, v, zero_row=s - 1) * self.scale  # (B, N, T, S)
        mask = blocked[None, None] if blocked.dim() == 2 else blocked[:, None]  # (1 or B, 1, T, S)
        # finfo.min, not -inf: a row with every key blocked (left padding) becomes uniform instead of NaN.
        score = score.masked_fill(mask, torch.finfo(score.dtype).min)
        prob = self.drop_attn(score.softmax(dim=-1))
        out = torch.einsum("bnij,bjnd->bind", prob, val)  # (B, T, N, D)
        return self.o(out.flatten(-2))  # (B, T, H)


class TransfoXLLayer(nn.Module):
    """Post-norm block (the paper's default): LN(x + Drop(Attn(x, mem))), then LN(x + Drop(FFN(x)))."""

    def __init__(self, c: TransfoXLConfig):
        super().__init__()
        self.attn = RelativeCausalAttention(c)
        self.attn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.ffn = MLP(c.hidden_size, c.intermediate_size, c.hidden_act, dropout=c.dropout)
        self.ffn_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, pos, blocked, u, v, mem=None):
        x = self.attn_norm(x + self.drop(self.attn(x, pos, blocked, u, v, mem)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))


class TransfoXLEmbeddings(nn.Module):
    def __init__(self, c: TransfoXLConfig):
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.hidden_size)
        self.scale = math.sqrt(c.hidden_size)  # the paper's emb_scale: embeddings x sqrt(d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tok(input_ids) * self.scale  # (B, T, H)


def causal_blocks(t: int, m: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor:
    """(T, S) or (B, T, S) bool, True = may not attend: query i (absolute position m + i) sees the whole memory and
    keys up to itself. attention_mask: (B, T) 1 = token, 0 = padding (hidden from every query; memory stays
    visible), or (B, T, S) / (B, T, T) with 1 = may attend (a (B, T, T) mask leaves the memory visible)."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(m + t, device=device)[None, :]
    blocked = j > m + i  # (T, S): the future
    if attention_mask is None:
        return blocked
    keep = attention_mask.bool()
    b = keep.shape[0]
    if keep.dim() == 2:
        keep = keep[:, None, :].expand(b, t, t)  # (B, T, T)
    if keep.shape[-1] == t and m > 0:
        keep = torch.cat([keep.new_ones(b, t, m), keep], dim=-1)  # (B, T, S)
    if keep.shape[1:] != (t, m + t):
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} fits neither (B, {t}) nor "
                         f"(B, {t}, {t}) nor (B, {t}, {m + t}) for {t} tokens after {m} memory states")
    return blocked[None] | ~keep  # (B, T, S)


class TransfoXLBackbone(Backbone):
    takes_soft_prompt = False  # segment recurrence: a prompt in every segment would enter the memory
    family = "transfo-xl"
    causal = True

    def __init__(self, config: TransfoXLConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = TransfoXLEmbeddings(c)
        self.layers = nn.ModuleList(TransfoXLLayer(c) for _ in range(c.num_layers))
        self.r_w_bias = nn.Parameter(torch.zeros(c.num_heads, c.head_dim))  # u: global content bias (§3.3)
        self.r_r_bias = nn.Parameter(torch.zeros(c.num_heads, c.head_dim))  # v: global position bias
        self.drop = nn.Dropout(c.dropout)
        self.apply(self.init_weights)
        for p in (self.r_w_bias, self.r_r_bias):
            nn.init.normal_(p, std=c.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding; or (B, T, S) 1 = may attend
        position_ids: torch.Tensor | None = None,  # unsupported: positions are relative
        cache=None,  # unsupported: the memory (`mems`) plays the KV cache's role
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H), already scaled
        output_hidden_states: bool = False,
        mems: tuple[torch.Tensor, ...] | list[torch.Tensor] | None = None,  # per layer (B, M, H)
        mem_len: int | None = None,  # states to keep for the next segment (None = config.mem_len; 0 = none)
    ) -> TransfoXLBackboneOutput:
        c = self.config
        if position_ids is not None:
            raise ValueError("Transformer-XL uses relative positions only; position_ids is not supported")
        if cache is not None:
            raise ValueError("Transformer-XL has no KV cache; pass the previous segment's `mems` instead")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        b, t, _ = x.shape
        if t > c.segment_len:
            raise ValueError(
                f"a segment of {t} tokens exceeds segment_len {c.segment_len}: split the text into consecutive "
                "segments and pass each forward's `mems` to the next (ptmkit.data.streams), or raise segment_len"
            )
        if mems is not None and len(mems) == 0:
            mems = None
        if mems is not None:
            if len(mems) != len(self.layers):
                raise ValueError(f"mems has {len(mems)} entries; the model has {len(self.layers)} layers")
            if mems[0].shape[0] != b or mems[0].shape[-1] != c.hidden_size:
                raise ValueError(f"mems[0] is {tuple(mems[0].shape)} but the segment needs (B={b}, M, H={c.hidden_size}); "
                                 "was the memory made for another batch layout?")
        keep = c.mem_len if mem_len is None else mem_len
        if keep < 0:
            raise ValueError(f"mem_len must be >= 0, got {keep}")
        m = mems[0].shape[1] if mems is not None else 0
        blocked = causal_blocks(t, m, attention_mask, x.device)  # (T, S) or (B, T, S)
        pos = self.drop(past_relative_positions(m + t, c.hidden_size, c.clamp_len, x.device))  # (S, H)

        h = self.drop(x)
        new_mems: list[torch.Tensor] = []
        hidden: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            mem = mems[i] if mems is not None else None
            if keep > 0:
                new_mems.append(update_memory(mem, h, keep))  # a layer's memory is its input (§3.2)
            if output_hidden_states:
                hidden.append(h)
            h = layer(h, pos, blocked, self.r_w_bias, self.r_r_bias, mem)
        if output_hidden_states:
            hidden.append(h)
        return TransfoXLBackboneOutput(self.drop(h), tuple(hidden) if output_hidden_states else None,
                                       mems=tuple(new_mems) if new_mems else None)


class TransfoXLLMHead(TaskModel):
    """Causal LM head: the output layer is the token table (tied, Press & Wolf 2017), logits (B, T, V).

    Stream a text: `out = model(seg, mems=mems); mems = out.mems` for consecutive segments.
    """

    task = "causal-lm"

    def __init__(self, backbone: TransfoXLBackbone):
        super().__init__(backbone)
        c = backbone.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.lm_head.weight = backbone.input_embeddings().weight

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.backbone.input_embeddings().weight

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                output_hidden_states: bool = False, mems=None, mem_len: int | None = None,
                logits_to_keep: int = 0) -> TransfoXLOutput:
        out = self.backbone(input_ids, attention_mask, position_ids, cache, inputs_embeds, output_hidden_states,
                            mems=mems, mem_len=mem_len)
        h = out.last_hidden_state if logits_to_keep <= 0 else out.last_hidden_state[:, -logits_to_keep:]
        return TransfoXLOutput(self.lm_head(h), out.last_hidden_state, out.hidden_states, mems=out.mems)  # (B, T, V)


TRANSFO_XL_HEADS = {"causal-lm": TransfoXLLMHead}
