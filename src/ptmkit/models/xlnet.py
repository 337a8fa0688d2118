"""XLNet (Yang et al. 2019): a bidirectional Transformer-XL pre-trained by permutation language modelling.

Yang, Dai, Yang, Carbonell, Salakhutdinov, Le. "XLNet: Generalized Autoregressive Pretraining for Language
Understanding." NeurIPS 2019. Survey (Han et al. 2021) §3/§4: the permutation-LM family.

What sets it apart from BERT:
- **Two-stream self-attention** (§2.3). The content stream h is an ordinary bidirectional stack whose attention
  a permutation mask restricts (each token sees the tokens before it in the factorisation order, and itself).
  The query stream g starts from one learned vector and sees the content of earlier tokens but never its own
  token: it knows *where* it predicts (through the relative positions of its attention) but not *what*.
  Both streams share every weight. The query stream runs only for the positions a target mapping selects.
- **Relative positional encoding** (Transformer-XL, Dai et al. 2019 §3.3): no absolute position embeddings;
  attention logits are content (q + u)·k + position (q + v)·W_r R_{i-j} + segment (q + s)·e_{same/diff segment}
  with learned per-head biases u = r_w_bias, v = r_r_bias, s = r_s_bias and sinusoidal R. The relative machinery
  (R, rel-shift, content + position logits, memory update) is shared with Transformer-XL: ptmkit/nn/relative_xl.py.
- **Segment recurrence** (Transformer-XL §3.2): each layer's input states of the previous segment (`mems`)
  are prepended to its keys and values, without gradient; mem_len bounds how many are kept.
- Post-norm blocks (attention → residual → LayerNorm, FFN → residual → LayerNorm), as BERT.

The maths follows transformers' `modeling_xlnet.py` so converted checkpoints agree to float tolerance; tensors are
batch-first here (transformers keeps the original sequence-first layout inside the model; its `mems` are
(M, B, H), ours (B, M, H)).

Dimension legend: B batch, T segment length, M memory length, S = M + T key length, R = S + T relative
distances, P predicted positions (target mapping rows), H hidden size (d_model), N heads, D head size, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, BackboneOutput, ModelOutput, init_normal
from ptmkit.models.heads import TaskModel
from ptmkit.nn.feedforward import ACTIVATIONS, MLP
from ptmkit.nn.relative_xl import relative_positions, relative_scores, update_memory

SUMMARY_TYPES = ("last", "first", "mean")


@dataclass
class XLNetConfig:
    vocab_size: int = 32000
    hidden_size: int = 1024  # d_model
    num_layers: int = 24  # n_layer
    num_heads: int = 16  # n_head; head size d_head = hidden_size // num_heads
    intermediate_size: int = 4096  # d_inner
    hidden_act: str = "gelu"  # ff_activation
    attn_type: str = "bi"  # "bi": bidirectional XLNet (the only type supported here)
    mem_len: int = 512  # states kept per layer for segment recurrence; 0 = keep all (transformers' None)
    reuse_len: int = 0  # tokens of the current segment that go into the memory; 0 = all
    clamp_len: int = -1  # clamp relative distances to [-clamp_len, clamp_len]; <= 0 = no clamp
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    initializer_range: float = 0.02
    summary_type: str = "last"  # sequence classification reads this token's state (XLNet puts <cls> last)
    summary_last_dropout: float = 0.1
    pad_token_id: int = 5
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        check_positive("XLNetConfig", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                       num_layers=self.num_layers, num_heads=self.num_heads,
                       intermediate_size=self.intermediate_size, layer_norm_eps=self.layer_norm_eps)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"XLNetConfig: hidden_size (d_model) {self.hidden_size} is not divisible by num_heads (n_head) "
                f"{self.num_heads}; pick a head count that divides it (e.g. {max(1, self.hidden_size // 64)})"
            )
        if self.hidden_size % 2:
            raise ConfigError(f"XLNetConfig: hidden_size {self.hidden_size} must be even (sin/cos position pairs)")
        if self.attn_type != "bi":
            raise ConfigError(
                f"XLNetConfig: attn_type {self.attn_type!r} is not supported; XLNet pre-training and fine-tuning "
                "use 'bi' (bidirectional attention restricted by the permutation mask)"
            )
        if self.mem_len < 0 or self.reuse_len < 0:
            raise ConfigError(f"XLNetConfig: mem_len and reuse_len must be >= 0 (0 = no limit), "
                              f"got {self.mem_len}, {self.reuse_len}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"XLNetConfig: unknown hidden_act {self.hidden_act!r}; choose from {sorted(ACTIVATIONS)}")
        if self.summary_type not in SUMMARY_TYPES:
            raise ConfigError(f"XLNetConfig: summary_type {self.summary_type!r} must be one of {SUMMARY_TYPES}")
        for name in ("dropout", "summary_last_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"XLNetConfig: {name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class XLNetBackboneOutput(BackboneOutput):
    # last_hidden_state is the query stream's output (B, P, H) when a target mapping is given, else the content
    # stream's (B, T, H); hidden_states are always the content stream's (embeddings, then each layer).
    query_hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, P, H) each, with a target mapping
    mems: tuple[torch.Tensor, ...] | None = None  # per layer (B, M', H): its input states, for the next segment


@dataclass
class XLNetOutput(ModelOutput):
    query_hidden_states: tuple[torch.Tensor, ...] | None = None
    mems: tuple[torch.Tensor, ...] | None = None


class TwoStreamRelativeAttention(nn.Module):
    """Relative multi-head attention shared by the content and the query stream (XLNet §2.3, Transformer-XL §3.3)."""

    def __init__(self, c: XLNetConfig):
        super().__init__()
        h, n, d = c.hidden_size, c.num_heads, c.head_dim
        self.num_heads, self.head_dim, self.scale = n, d, d ** -0.5
        self.q = nn.Linear(h, n * d, bias=False)
        self.k = nn.Linear(h, n * d, bias=False)
        self.v = nn.Linear(h, n * d, bias=False)
        self.r = nn.Linear(h, n * d, bias=False)  # W_{k,R}: projects the sinusoidal relative positions
        self.o = nn.Linear(n * d, h, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(n, d))  # u: content bias (Transformer-XL eq. term c)
        self.r_r_bias = nn.Parameter(torch.zeros(n, d))  # v: position bias (term d)
        self.r_s_bias = nn.Parameter(torch.zeros(n, d))  # b: segment bias (XLNet §2.5, relative segment encodings)
        self.seg_embed = nn.Parameter(torch.zeros(2, n, d))  # s_+ (same segment), s_- (different segment)
        self.norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return proj(x).unflatten(-1, (self.num_heads, self.head_dim))  # (..., L, N, D)

    def core(self, q, k, v, k_pos, seg_diff, blocked) -> torch.Tensor:
        """q (B, T, N, D); k, v (B, S, N, D); k_pos (R, N, D); seg_diff (B, T, S) bool: key in another segment;
        blocked (B, T, S) bool: True = may not attend. Returns (B, T, N, D)."""
        score = relative_scores(q, k, k_pos, self.r_w_bias, self.r_r_bias)  # (B, N, T, S): content + position
        if seg_diff is not None:
            seg = torch.einsum("bind,snd->bnis", q + self.r_s_bias, self.seg_embed)  # (B, N, T, 2)
            score = score + torch.where(seg_diff[:, None], seg[..., 1:], seg[..., :1])  # (B, N, T, S)
        score = score * self.scale
        if blocked is not None:
            # A fixed very negative value (transformers subtracts 1e30): a fully blocked row becomes uniform.
            score = score.masked_fill(blocked[:, None], -1e30 if score.dtype == torch.float32 else -65500.0)
        prob = self.drop(score.softmax(dim=-1))
        return torch.einsum("bnij,bjnd->bind", prob, v)  # (B, T, N, D)

    def _post(self, residual: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        return self.norm(residual + self.drop(self.o(vec.flatten(-2))))  # post-norm

    def forward(self, h, g, blocked_h, blocked_g, pos, seg_diff, mem=None, target_mapping=None):
        """h (B, T, H) content stream; g (B, P, H) query stream or None; pos (R, H); mem (B, M, H) or None;
        target_mapping (B, P, T): row p selects the position the p-th query predicts."""
        cat = h if mem is None else torch.cat([mem, h], dim=1)  # (B, S, H): memory first
        k, v = self._heads(self.k, cat), self._heads(self.v, cat)  # (B, S, N, D)
        k_pos = self._heads(self.r, pos.to(self.r.weight.dtype))  # (R, N, D)
        out_h = self._post(h, self.core(self._heads(self.q, h), k, v, k_pos, seg_diff, blocked_h))
        if g is None:
            return out_h, None
        q_g = self._heads(self.q, g)  # (B, P, N, D)
        q_g = torch.einsum("bpnd,bpt->btnd", q_g, target_mapping)  # (B, T, N, D): each query at its position
        vec = self.core(q_g, k, v, k_pos, seg_diff, blocked_g)  # (B, T, N, D)
        vec = torch.einsum("btnd,bpt->bpnd", vec, target_mapping)  # (B, P, N, D)
        return out_h, self._post(g, vec)


class XLNetLayer(nn.Module):
    """Two-stream attention then a post-norm FFN, both applied to each stream with the same weights."""

    def __init__(self, c: XLNetConfig):
        super().__init__()
        self.attn = TwoStreamRelativeAttention(c)
        self.ffn = MLP(c.hidden_size, c.intermediate_size, c.hidden_act, dropout=c.dropout)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.drop(self.ffn(x)))

    def forward(self, h, g, blocked_h, blocked_g, pos, seg_diff, mem=None, target_mapping=None):
        h, g = self.attn(h, g, blocked_h, blocked_g, pos, seg_diff, mem, target_mapping)
        return self._ff(h), (None if g is None else self._ff(g))


class XLNetEmbeddings(nn.Module):
    """The token table, and the learned start vector g⁰ of the query stream (XLNet §2.3: it knows no content)."""

    def __init__(self, c: XLNetConfig):
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.hidden_size)
        self.mask = nn.Parameter(torch.zeros(c.hidden_size))  # transformers: mask_emb (1, 1, H)


def attention_blocks(attention_mask, perm_mask, b: int, t: int, m: int, device):
    """(content stream, query stream) boolean masks (B, T, S), True = may not attend; (None, None) = no mask.

    attention_mask: (B, T) 1 = token, 0 = padding (padding keys are hidden from every query), or (B, T, T) with
    1 = may attend. perm_mask (B, T, T): 1 = query i may not see token j (transformers' convention), i.e. j comes
    after i in the factorisation order, or j is i itself for a predicted token. The memory is always visible.
    The content stream differs from the query stream in one way: a position always sees itself (§2.3).
    """
    if attention_mask is None and perm_mask is None:
        return None, None
    blocked = torch.zeros(b, t, t, dtype=torch.bool, device=device)
    if attention_mask is not None:
        keep = attention_mask.bool()
        blocked |= ~(keep if keep.dim() == 3 else keep[:, None, :])
    if perm_mask is not None:
        blocked |= perm_mask > 0
    blocked_g = torch.cat([blocked.new_zeros(b, t, m), blocked], dim=-1)  # (B, T, S)
    itself = torch.cat([torch.zeros(t, m, dtype=torch.bool, device=device),
                        torch.eye(t, dtype=torch.bool, device=device)], dim=-1)  # (T, S)
    return blocked_g & ~itself, blocked_g


class XLNetBackbone(Backbone):
    takes_soft_prompt = False  # perm_mask and target_mapping are (B, T, T) over the tokens: a prompt would shift them
    family = "xlnet"
    causal = False

    def __init__(self, config: XLNetConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = XLNetEmbeddings(c)
        self.layers = nn.ModuleList(XLNetLayer(c) for _ in range(c.num_layers))
        self.drop = nn.Dropout(c.dropout)
        self.apply(self.init_weights)

    def init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        init_normal(module, std)
        if isinstance(module, TwoStreamRelativeAttention):
            for p in (module.r_w_bias, module.r_r_bias, module.r_s_bias, module.seg_embed):
                nn.init.normal_(p, std=std)
        elif isinstance(module, XLNetEmbeddings):
            nn.init.normal_(module.mask, std=std)

    def cache_mem(self, h: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """The memory for the next segment (Transformer-XL §3.2): previous memory + this input, the last mem_len
        states, detached (no gradient flows into an earlier segment)."""
        c = self.config
        cur = h[:, : c.reuse_len] if c.reuse_len > 0 else h
        if c.mem_len > 0:
            return update_memory(prev, cur, c.mem_len)
        return (cur if prev is None else torch.cat([prev, cur], dim=1)).detach()  # (B, M + T, H): keep all

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding; or (B, T, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T) segment ids
        position_ids: torch.Tensor | None = None,  # unsupported: XLNet has only relative positions
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H)
        output_hidden_states: bool = False,
        mems: tuple[torch.Tensor, ...] | list[torch.Tensor] | None = None,  # per layer (B, M, H)
        perm_mask: torch.Tensor | None = None,  # (B, T, T) 1 = i may not see j
        target_mapping: torch.Tensor | None = None,  # (B, P, T) one-hot rows: the positions to predict
        use_mems: bool = False,  # return the memory for the next segment
    ) -> XLNetBackboneOutput:
        if position_ids is not None:
            raise ValueError("XLNet uses relative positions only; position_ids is not supported")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embeddings.tok(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        b, t, _ = x.shape
        if mems is not None and len(mems) != len(self.layers):
            raise ValueError(f"mems has {len(mems)} entries; the model has {len(self.layers)} layers")
        m = mems[0].shape[1] if mems is not None else 0
        blocked_h, blocked_g = attention_blocks(attention_mask, perm_mask, b, t, m, x.device)

        h = self.drop(x)
        g = None
        if target_mapping is not None:
            target_mapping = target_mapping.to(x.dtype)
            g = self.drop(self.embeddings.mask.expand(b, target_mapping.shape[1], -1))  # (B, P, H)
        seg_diff = None
        if token_type_ids is not None:
            # Relative segment encoding (§2.5): only "same segment or not" matters; the memory counts as segment 0.
            cat_ids = torch.cat([token_type_ids.new_zeros(b, m), token_type_ids], dim=1)  # (B, S)
            seg_diff = token_type_ids[:, :, None] != cat_ids[:, None, :]  # (B, T, S)
        pos = self.drop(relative_positions(t, m + t, self.config.hidden_size, self.config.clamp_len, x.device))

        new_mems: list[torch.Tensor] = []
        hidden: list[torch.Tensor] = []
        query_hidden: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            mem = mems[i] if mems is not None else None
            if use_mems:
                new_mems.append(self.cache_mem(h, mem))  # a layer's memory is its input
            if output_hidden_states:
                hidden.append(h)
                if g is not None:
                    query_hidden.append(g)
            h, g = layer(h, g, blocked_h, blocked_g, pos, seg_diff, mem, target_mapping)
        if output_hidden_states:
            hidden.append(h)
            if g is not None:
                query_hidden.append(g)
        out = self.drop(g if g is not None else h)
        return XLNetBackboneOutput(
            out, tuple(hidden) if output_hidden_states else None,
            query_hidden_states=tuple(query_hidden) if query_hidden else None,
            mems=tuple(new_mems) if use_mems else None,
        )


class _XLNetTask(TaskModel):
    def _run(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states,
             mems, perm_mask, target_mapping, use_mems) -> XLNetBackboneOutput:
        return self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                             output_hidden_states, mems=mems, perm_mask=perm_mask, target_mapping=target_mapping,
                             use_mems=use_mems)

    @staticmethod
    def _output(logits, out: XLNetBackboneOutput) -> XLNetOutput:
        return XLNetOutput(logits, out.last_hidden_state, out.hidden_states,
                           query_hidden_states=out.query_hidden_states, mems=out.mems)


class XLNetLMHead(_XLNetTask):
    """Permutation LM head (§2): the output layer is tied to the token table and has its own bias.

    With a target mapping, logits are (B, P, V) for the query stream's P predictions; without, (B, T, V).
    """

    task = "permutation-lm"

    def __init__(self, backbone: XLNetBackbone):
        super().__init__(backbone)
        c = backbone.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size)  # transformers: lm_loss
        self.lm_head.weight = backbone.input_embeddings().weight  # tied, as in every released XLNet
        nn.init.zeros_(self.lm_head.bias)

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.backbone.input_embeddings().weight

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False, mems=None, perm_mask=None,
                target_mapping=None, use_mems: bool = False) -> XLNetOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states,
                        mems, perm_mask, target_mapping, use_mems)
        return self._output(self.lm_head(out.last_hidden_state), out)  # (B, P or T, V)


class XLNetSequenceClassifier(_XLNetTask):
    """Sequence summary (the <cls> token, which XLNet places last) → dense → tanh → dropout → logits (B, C)."""

    task = "sequence-classification"

    def __init__(self, backbone: XLNetBackbone, num_labels: int):
        super().__init__(backbone)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        c = backbone.config
        self.num_labels = num_labels
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)  # transformers: sequence_summary.summary
        self.drop = nn.Dropout(c.summary_last_dropout)
        self.out = nn.Linear(c.hidden_size, num_labels)  # transformers: logits_proj
        self._init_head(self.dense, self.out)

    def summary(self, h: torch.Tensor) -> torch.Tensor:
        kind = self.backbone.config.summary_type
        if kind == "last":
            return h[:, -1]  # XLNet pads on the left, so the last position is <cls>
        return h[:, 0] if kind == "first" else h.mean(dim=1)  # (B, H)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False, mems=None, perm_mask=None,
                target_mapping=None, use_mems: bool = False) -> XLNetOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states,
                        mems, perm_mask, target_mapping, use_mems)
        pooled = self.drop(torch.tanh(self.dense(self.summary(out.last_hidden_state))))  # (B, H)
        return self._output(self.out(pooled), out)  # (B, C)


class XLNetTokenClassifier(_XLNetTask):
    """A linear layer on every position's state (the backbone already applied its output dropout)."""

    task = "token-classification"

    def __init__(self, backbone: XLNetBackbone, num_labels: int):
        super().__init__(backbone)
        if num_labels < 2:
            raise ValueError(f"token classification needs num_labels >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.out = nn.Linear(backbone.config.hidden_size, num_labels)  # transformers: classifier
        self._init_head(self.out)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False, mems=None, perm_mask=None,
                target_mapping=None, use_mems: bool = False) -> XLNetOutput:
        out = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states,
                        mems, perm_mask, target_mapping, use_mems)
        return self._output(self.out(out.last_hidden_state), out)  # (B, T or P, C)


XLNET_HEADS = {
    "permutation-lm": XLNetLMHead,
    "sequence-classification": XLNetSequenceClassifier,
    "token-classification": XLNetTokenClassifier,
}
