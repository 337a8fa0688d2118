"""Task heads on any backbone: masked LM, causal LM (+ generation), sequence and token classification.

Dimension legend: B batch, T length, H hidden size, V vocabulary, N scored positions, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ptmkit.models.base import Backbone, ModelOutput, init_normal
from ptmkit.models.pooling import POOLINGS, pool
from ptmkit.nn.feedforward import get_activation


class MLMHead(nn.Module):
    """BERT §A.1 masked-LM head: dense → activation → LayerNorm → tied decoder + output bias.

    With factorised embeddings (ELECTRA §3.2, ALBERT §3.1) the tied decoder is E wide, so dense maps H → E.
    """

    def __init__(self, hidden: int, vocab: int, activation: str, eps: float, embedding_size: int | None = None):
        super().__init__()
        e = embedding_size or hidden
        self.dense = nn.Linear(hidden, e)
        self.act = get_activation(activation)
        self.norm = nn.LayerNorm(e, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.dense(h)))
        return nn.functional.linear(h, decoder_weight, self.bias)  # (..., V)


class TaskModel(nn.Module):
    """A backbone plus a head. `task` names the head in registries and checkpoint architectures."""

    task: str = ""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    @property
    def config(self):
        return self.backbone.config

    def _init_head(self, *modules: nn.Module) -> None:
        for m in modules:
            m.apply(lambda x: init_normal(x, self.backbone.config.initializer_range))


class MaskedLM(TaskModel):
    task = "masked-lm"
    head_activation: str | None = None  # None = the backbone's hidden_act; a family may fix it (ELECTRA: gelu)

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        c = backbone.config
        eps = getattr(c, "layer_norm_eps", 1e-12)
        act = self.head_activation or getattr(c, "hidden_act", "gelu")
        self.head = MLMHead(c.hidden_size, c.vocab_size, act, eps, backbone.input_embeddings().embedding_dim)
        self._init_head(self.head)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        score_positions: torch.Tensor | None = None,  # bool (B, T): only these get logits
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states)
        h = out.last_hidden_state  # (B, T, H)
        # The vocabulary projection dominates small models' cost: scoring only the masked positions
        # (typically 15%) skips most of it. Logits are then (N, V) in row-major order of score_positions.
        if score_positions is not None:
            h = h[score_positions]  # (N, H)
        logits = self.head(h, self.backbone.input_embeddings().weight)
        return ModelOutput(logits, out.last_hidden_state, out.hidden_states)


class CausalLM(TaskModel):
    task = "causal-lm"

    def __init__(self, backbone: Backbone, tie_word_embeddings: bool = True):
        super().__init__(backbone)
        c = backbone.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if tie_word_embeddings:
            self.lm_head.weight = backbone.input_embeddings().weight  # Press & Wolf 2017: tied in/out embeddings
        else:
            self._init_head(self.lm_head)

    @property
    def tied(self) -> bool:
        return self.lm_head.weight is self.backbone.input_embeddings().weight

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,  # > 0: only the last n positions get logits (generation)
    ) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, position_ids, cache, inputs_embeds, output_hidden_states)
        h = out.last_hidden_state if logits_to_keep <= 0 else out.last_hidden_state[:, -logits_to_keep:]
        return ModelOutput(self.lm_head(h), out.last_hidden_state, out.hidden_states, out.cache)  # (B, T, V)

    def generate(self, input_ids, **kwargs) -> torch.Tensor:
        from ptmkit.models.generate import generate

        return generate(self, input_ids, **kwargs)


class SequenceClassifier(TaskModel):
    """Encoder classifier (BERT §4.1): dense+tanh "pooler" on the first token, dropout, linear to C classes.

    num_labels == 1 means regression (e.g. STS-B scores). pooling="mean" feeds the pooler the masked mean of the
    token vectors instead of the first token's (Sentence-BERT's pooling): MLM never trains the [CLS] position, so a
    model pre-trained by MLM alone has its knowledge in the token vectors. transformers has no such classifier: its
    export keeps the weights and names the pooling in config.json (`ptmkit_pooling`), which only ptmkit reads.
    """

    task = "sequence-classification"

    def __init__(self, backbone: Backbone, num_labels: int, dropout: float = 0.1, pooling: str = "cls"):
        super().__init__(backbone)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        h = backbone.config.hidden_size
        self.pooling = pooling
        self.num_labels = num_labels
        self.dense = nn.Linear(h, h)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(h, num_labels)
        self._init_head(self.dense, self.out)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states)
        first = pool(out.last_hidden_state, attention_mask, self.pooling)  # (B, H)
        pooled = torch.tanh(self.dense(self.drop(first)))  # (B, H)
        return ModelOutput(self.out(self.drop(pooled)), out.last_hidden_state, out.hidden_states)  # (B, C)


class DecoderSequenceClassifier(TaskModel):
    """Decoder classifier (GPT-1 §3.3): a linear layer on the last real token's state."""

    task = "sequence-classification"

    def __init__(self, backbone: Backbone, num_labels: int):
        super().__init__(backbone)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        self.num_labels = num_labels
        self.score = nn.Linear(backbone.config.hidden_size, num_labels, bias=False)
        self._init_head(self.score)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, position_ids, None, inputs_embeds, output_hidden_states)
        h = out.last_hidden_state  # (B, T, H)
        if attention_mask is None:
            last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device)
        else:
            # index of the last real token, for right or left padding alike
            idx = torch.arange(h.shape[1], device=h.device)
            last = (attention_mask.bool() * idx).argmax(-1)  # (B,)
        pooled = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
        return ModelOutput(self.score(pooled), out.last_hidden_state, out.hidden_states)


class TokenClassifier(TaskModel):
    """Per-token labels (NER, POS): dropout then a linear layer on every position."""

    task = "token-classification"

    def __init__(self, backbone: Backbone, num_labels: int, dropout: float = 0.1):
        super().__init__(backbone)
        if num_labels < 2:
            raise ValueError(f"token classification needs num_labels >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(backbone.config.hidden_size, num_labels)
        self._init_head(self.out)

    def forward(self, input_ids=None, attention_mask=None, *args, output_hidden_states: bool = False, **kwargs):
        out = self.backbone(input_ids, attention_mask, *args, output_hidden_states=output_hidden_states, **kwargs)
        return ModelOutput(self.out(self.drop(out.last_hidden_state)), out.last_hidden_state, out.hidden_states)
