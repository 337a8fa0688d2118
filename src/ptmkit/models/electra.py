"""ELECTRA encoder and heads (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as Discriminators Rather
Than Generators"; survey §3.2/§4): BERT's post-norm Transformer with embeddings that may be narrower than the
hidden size (E → H projection), a replaced-token-detection (discriminator) head and a generator MLM head.

The training objective that pairs a small generator with the discriminator lives in objectives/rtd.py.

Dimension legend: B batch, T length, E embedding size, H hidden size, V vocabulary, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, BackboneOutput, ModelOutput, stack_forward
from ptmkit.models.bert import BertConfig, bert_embeddings, post_norm_layers
from ptmkit.models.heads import MaskedLM, TaskModel
from ptmkit.nn import Embeddings, build_mask
from ptmkit.nn.feedforward import get_activation


@dataclass
class ElectraConfig(BertConfig):
    # Defaults: ELECTRA-Small's discriminator (paper Table 6) except embedding_size, which follows hidden_size
    # unless set (ELECTRA-Small: 128 with hidden 256; Base and Large: equal to hidden).
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    embedding_size: int | None = None  # None = hidden_size

    def __post_init__(self) -> None:
        if self.embedding_size is None:
            self.embedding_size = self.hidden_size
        super().__post_init__()
        check_positive(type(self).__name__, embedding_size=self.embedding_size)


class ElectraEncoder(Backbone):
    family = "electra"
    supports_tensor_parallel = True  # ptmkit.parallel.tensor splits its blocks
    causal = False

    def __init__(self, config: ElectraConfig, embeddings: Embeddings | None = None):
        """`embeddings`: share an existing module instead of building one. ELECTRA §3.2: the generator uses the
        discriminator's token, position and segment embeddings (and their LayerNorm), as in the released code."""
        super().__init__()
        self.config = c = config
        if embeddings is not None and embeddings.tok.embedding_dim != c.embedding_size:
            raise ConfigError(
                f"ElectraEncoder: shared embeddings are {embeddings.tok.embedding_dim} wide but embedding_size is "
                f"{c.embedding_size}; set embedding_size to the shared module's width"
            )
        self.embeddings = embeddings if embeddings is not None else bert_embeddings(c, c.embedding_size)
        # ELECTRA §3.2 / HF `embeddings_project`: a linear map E → H when the embeddings are narrower.
        narrow = c.embedding_size != c.hidden_size
        self.embeddings_project = nn.Linear(c.embedding_size, c.hidden_size) if narrow else None
        self.layers = post_norm_layers(c)
        own = [self.embeddings_project, self.layers] if embeddings is not None else [self]
        for module in own:  # a shared embeddings module keeps its (possibly trained) weights
            if module is not None:
                module.apply(self.init_weights)

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
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=x.device)
        # hidden_states[0] is the projected embedding output, as in transformers' ElectraModel
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        return BackboneOutput(x, tuple(hidden) if hidden else None)


class ElectraMaskedLM(MaskedLM):
    """The generator (HF ElectraForMaskedLM): dense H → E, gelu, LayerNorm(E), decoder tied to the E-wide word
    embeddings + bias. transformers' ElectraGeneratorPredictions always uses gelu, whatever hidden_act says."""

    head_activation = "gelu"


class DiscriminatorHead(nn.Module):
    """ELECTRA §2 discriminator: per token, dense H → H, activation, dense H → 1 (a logit for "replaced")."""

    def __init__(self, hidden: int, activation: str):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = get_activation(activation)
        self.prediction = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.act(self.dense(h))).squeeze(-1)  # (B, T)


class ReplacedTokenDetector(TaskModel):
    """The discriminator (HF ElectraForPreTraining): logits (B, T) > 0 mean "this token was replaced"."""

    task = "replaced-token-detection"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        c = backbone.config
        self.head = DiscriminatorHead(c.hidden_size, getattr(c, "hidden_act", "gelu"))
        self._init_head(self.head)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states)
        return ModelOutput(self.head(out.last_hidden_state), out.last_hidden_state, out.hidden_states)  # (B, T)


class ElectraSequenceClassifier(TaskModel):
    """HF ElectraForSequenceClassification: on the first token, dropout → dense → gelu → dropout → out_proj.

    (BERT's pooler uses tanh; ELECTRA's released fine-tuning code uses gelu.) num_labels == 1 means regression.
    """

    task = "sequence-classification"

    def __init__(self, backbone: Backbone, num_labels: int, dropout: float | None = None):
        super().__init__(backbone)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        c = backbone.config
        self.num_labels = num_labels
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.drop = nn.Dropout(c.dropout if dropout is None else dropout)
        self.out = nn.Linear(c.hidden_size, num_labels)
        self._init_head(self.dense, self.out)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states: bool = False) -> ModelOutput:
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states)
        x = self.drop(out.last_hidden_state[:, 0])  # (B, H): the [CLS] token
        x = self.drop(nn.functional.gelu(self.dense(x)))
        return ModelOutput(self.out(x), out.last_hidden_state, out.hidden_states)  # (B, C)


# The family's own heads, by task (the registry uses the generic head for tasks not listed here).
ELECTRA_HEADS = {
    "masked-lm": ElectraMaskedLM,
    "replaced-token-detection": ReplacedTokenDetector,
    "sequence-classification": ElectraSequenceClassifier,
}
