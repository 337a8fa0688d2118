"""ALBERT encoder and heads (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations"; survey §3.2/§5): BERT's post-norm Transformer with two parameter reductions — a factorised
embedding (vocabulary → E, then a linear map E → H; §3.1) and cross-layer parameter sharing (§3.1) — and a
sentence-order prediction (SOP) head next to the MLM head for pre-training (§3.1; the "sop" objective in
objectives/nsp.py).

Sharing is done with module identity: a shared sub-layer is one module object that several layers hold, so it
appears once in parameters() (the optimizer updates it once with the sum of every layer's gradient) while
state_dict() lists it under every layer that holds it (train/checkpoint.py and models/io.py deduplicate on save).

Dimension legend: B batch, T length, E embedding size, H hidden size, F feed-forward size, V vocabulary, C classes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.log import get as _get_logger
from ptmkit.models.base import Backbone, BackboneOutput, ModelOutput, stack_forward
from ptmkit.models.heads import MaskedLM, TaskModel, TokenClassifier
from ptmkit.nn import MLP, AttentionConfig, Embeddings, PostNormBlock, SelfAttention, build_mask

# What cross-layer sharing ties together (ALBERT §3.1, Table 4): "all" = the whole layer (ALBERT's default),
# "attention" = the self-attention projections only, "ffn" = the feed-forward network only, "none" = BERT-like.
# In the partial modes each layer keeps its own LayerNorms (a few thousand parameters; the paper counts only the
# sub-layers' weight matrices).
SHARE_MODES = ("all", "attention", "ffn", "none")


log = _get_logger(__name__)

@dataclass
class AlbertConfig:
    # Defaults: ALBERT-base (Lan et al. 2020 Table 1): E=128, H=768, 12 layers, 12 heads, FFN 3072, all shared;
    # the released SentencePiece vocabulary has 30000 pieces. ALBERT v2 trains without dropout (§4.7).
    vocab_size: int = 30000
    embedding_size: int = 128  # E: the factorised embedding width (§3.1); E << H is the point
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    share: str = "all"  # cross-layer parameter sharing: all | attention | ffn | none
    num_hidden_groups: int = 1  # share="all": consecutive layers split into this many groups, each sharing one layer
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu_new"  # the released ALBERT checkpoints use the tanh approximation of GELU
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0
    attention_dropout: float = 0.0
    classifier_dropout: float = 0.1  # before the SOP / sequence / token classifiers (HF classifier_dropout_prob)
    pad_token_id: int = 0
    initializer_range: float = 0.02
    attention_kernel: str = "sdpa"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.embedding_size > 0:
            raise ConfigError(
                f"{name}: embedding_size must be positive, got {self.embedding_size}; ALBERT factorises the "
                f"embedding as V x E then E x H, with E usually 128 (set e.g. embedding_size: 128)"
            )
        check_positive(
            name, vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{name}: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                f"pick a head count that divides it (e.g. {max(self.hidden_size // 64, 1)})"
            )
        if self.share not in SHARE_MODES:
            raise ConfigError(
                f"{name}: unknown share mode {self.share!r}; choose one of {list(SHARE_MODES)} (ALBERT's default is "
                "'all': every layer uses the same weights)"
            )
        if self.num_hidden_groups < 1:
            raise ConfigError(f"{name}: num_hidden_groups must be >= 1, got {self.num_hidden_groups}")
        if self.share != "all" and self.num_hidden_groups != 1:
            raise ConfigError(
                f"{name}: num_hidden_groups={self.num_hidden_groups} applies to share='all' only (it splits the "
                f"layers into groups that each share one layer); set share: all or num_hidden_groups: 1"
            )
        if self.num_layers % self.num_hidden_groups:
            divisors = [g for g in range(1, self.num_layers + 1) if self.num_layers % g == 0]
            raise ConfigError(
                f"{name}: num_hidden_groups {self.num_hidden_groups} does not divide num_layers {self.num_layers}; "
                f"each group must hold the same number of layers: use one of {divisors}"
            )
        if self.type_vocab_size < 0:
            raise ConfigError(f"{name}: type_vocab_size must be >= 0, got {self.type_vocab_size}")
        for field_name in ("dropout", "attention_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, field_name) < 1.0:
                raise ConfigError(f"{name}: {field_name} must be in [0, 1), got {getattr(self, field_name)}")

    @property
    def layers_per_group(self) -> int:
        return self.num_layers // self.num_hidden_groups

    def group_of(self, layer: int) -> int:
        """The group whose weights layer `layer` uses (transformers' AlbertTransformer: consecutive layers)."""
        return layer // self.layers_per_group


def albert_layers(c: AlbertConfig) -> nn.ModuleList:
    """c.num_layers post-norm blocks where shared sub-layers are the *same* module objects (ALBERT §3.1).

    share="all": one block per group, repeated for the group's consecutive layers; "attention" / "ffn": one
    SelfAttention / MLP held by every block; "none": independent blocks (BERT).
    """

    def attention() -> SelfAttention:
        return SelfAttention(AttentionConfig(c.hidden_size, c.num_heads, dropout=c.attention_dropout,
                                             kernel=c.attention_kernel))

    def ffn() -> MLP:
        return MLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def block(attn: SelfAttention, mlp: MLP) -> PostNormBlock:
        norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        return PostNormBlock(attn, mlp, norm1, norm2, c.dropout)

    if c.share == "all":
        groups = [block(attention(), ffn()) for _ in range(c.num_hidden_groups)]
        return nn.ModuleList(groups[c.group_of(i)] for i in range(c.num_layers))
    shared_attn = attention() if c.share == "attention" else None
    shared_ffn = ffn() if c.share == "ffn" else None
    return nn.ModuleList(block(shared_attn or attention(), shared_ffn or ffn()) for _ in range(c.num_layers))


class AlbertEncoder(Backbone):
    family = "albert"
    causal = False

    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.config = c = config
        # ALBERT §3.1: token, position and segment embeddings are E wide (V x E instead of V x H) ...
        self.embeddings = Embeddings(
            c.vocab_size, c.embedding_size, c.max_position_embeddings, c.type_vocab_size,
            norm=nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps), dropout=c.dropout, padding_idx=c.pad_token_id,
        )
        # ... then projected E → H (HF `embedding_hidden_mapping_in`; present even when E == H, as in ALBERT's code).
        self.embeddings_project = nn.Linear(c.embedding_size, c.hidden_size)
        self.layers = albert_layers(c)
        self.apply(self.init_weights)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding; or (B, T, T) bool
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, E)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        ref = input_ids if input_ids is not None else inputs_embeds
        b, t = ref.shape[0], ref.shape[1]
        if position_ids is None:
            position_ids = torch.arange(t, device=ref.device)[None].expand(b, t)  # (B, T)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)  # (B, T, E)
        x = self.embeddings_project(x)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=x.device)
        # hidden_states[0] is the projected embedding output, as in transformers' AlbertModel
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        return BackboneOutput(x, tuple(hidden) if hidden else None)

    def hf_export_form(self, model: nn.Module) -> nn.Module:
        """`model` (this backbone or a task model around it) as Hugging Face can hold it: HF's ALBERT shares whole
        layers only, so share="attention"/"ffn" exports an unshared copy that computes the same function."""
        if self.config.share not in ("attention", "ffn"):
            return model
        log.info("ALBERT share=%s has no Hugging Face form; exporting the equivalent unshared model", self.config.share)
        model = copy.deepcopy(model)
        getattr(model, "backbone", model).unshare()
        return model

    def unshare(self) -> "AlbertEncoder":
        """Give every layer its own copy of the weights it shares (share becomes "none"); the function is unchanged.

        Use it to export a share="attention"/"ffn" model to Hugging Face's format (which can express only whole-layer
        groups), or to fine-tune layers apart. In place; returns self.
        """
        self.layers = nn.ModuleList(copy.deepcopy(block) for block in self.layers)
        self.config = dataclasses.replace(self.config, share="none", num_hidden_groups=1)
        return self


# ---- heads ---------------------------------------------------------------------------------------------------------


@dataclass
class AlbertPreTrainingOutput(ModelOutput):
    pair_logits: torch.Tensor | None = None  # (B, 2) sentence-order logits: 1 = the two segments were swapped


class SentenceOrderHead(nn.Module):
    """ALBERT §3.1 SOP classifier on the pooled [CLS] state: pooler (dense H → H + tanh, HF `albert.pooler`),
    dropout, linear H → 2 (HF `sop_classifier.classifier`). Same shape as objectives/nsp.py's PairHead."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.pool = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.pool(cls_state))))  # (B, H) -> (B, 2)


class AlbertPreTraining(MaskedLM):
    """ALBERT's pre-training model (HF AlbertForPreTraining): the MLM head (dense H → E, activation, LayerNorm,
    decoder tied to the E-wide word embeddings + bias) and the SOP head on the [CLS] state.

    The "sop" objective (objectives/nsp.py) trains `pair_head` in place of building its own classifier, so a
    pre-trained SOP head keeps training and is exported with the model (Lan et al. 2020 §4: loss = MLM + SOP).
    """

    task = "masked-lm-sop"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        c = backbone.config
        self.pair_head = SentenceOrderHead(c.hidden_size, getattr(c, "classifier_dropout", 0.1))
        self._init_head(self.pair_head)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                score_positions: torch.Tensor | None = None, output_hidden_states: bool = False
                ) -> AlbertPreTrainingOutput:
        out = super().forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, score_positions,
                              output_hidden_states)
        pair = self.pair_head(out.last_hidden_state[:, 0])  # (B, 2)
        return AlbertPreTrainingOutput(out.logits, out.last_hidden_state, out.hidden_states, pair_logits=pair)


class AlbertSequenceClassifier(TaskModel):
    """HF AlbertForSequenceClassification: pooler (dense + tanh on [CLS]), dropout, linear to C classes.

    Unlike ptmkit's generic SequenceClassifier there is no dropout before the pooler. num_labels == 1: regression.
    """

    task = "sequence-classification"

    def __init__(self, backbone: Backbone, num_labels: int, dropout: float | None = None):
        super().__init__(backbone)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        c = backbone.config
        self.num_labels = num_labels
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.drop = nn.Dropout(c.classifier_dropout if dropout is None else dropout)
        self.out = nn.Linear(c.hidden_size, num_labels)
        self._init_head(self.dense, self.out)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_hidden_states)
        pooled = torch.tanh(self.dense(out.last_hidden_state[:, 0]))  # (B, H)
        return ModelOutput(self.out(self.drop(pooled)), out.last_hidden_state, out.hidden_states)  # (B, C)


class AlbertTokenClassifier(TokenClassifier):
    """HF AlbertForTokenClassification: dropout (classifier_dropout) then a linear layer on every position."""

    def __init__(self, backbone: Backbone, num_labels: int):
        super().__init__(backbone, num_labels, dropout=backbone.config.classifier_dropout)


# The family's own heads, by task (masked-lm uses the generic MaskedLM: with E-wide embeddings its dense maps H → E).
ALBERT_HEADS = {
    "masked-lm-sop": AlbertPreTraining,
    "sequence-classification": AlbertSequenceClassifier,
    "token-classification": AlbertTokenClassifier,
}
