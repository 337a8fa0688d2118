"""Megatron-BERT (Shoeybi et al. 2019, §3 and Figure 7): BERT with the layer norm moved to each sub-layer's input
(pre-norm), a final layer norm after the stack, and no norm on the embeddings. Shoeybi et al. found this placement
let BERT train stably at larger sizes and learning rates, and Geiping & Goldstein 2023 ("Cramming", §4.2) made it
the first change for BERT on a small budget (it tolerates a larger learning rate). transformers' MegatronBert*
classes hold the same layout, so these models export and import as model_type megatron-bert.

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ptmkit.models.bert import BertConfig, BertEncoder, post_norm_layers
from ptmkit.nn import Embeddings, PreNormBlock


@dataclass
class MegatronBertConfig(BertConfig):
    vocab_size: int = 29056  # Megatron's uncased vocabulary (transformers' default)
    max_position_embeddings: int = 512


class MegatronBertEncoder(BertEncoder):
    family = "megatron-bert"
    supports_tensor_parallel = True  # the blocks carry BERT's names (attn.qkv, attn.out, ffn.up, ffn.down)

    def __init__(self, config: MegatronBertConfig):
        nn.Module.__init__(self)
        self.config = c = config
        self.embeddings = Embeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings, c.type_vocab_size,
                                     norm=None, dropout=c.dropout, padding_idx=c.pad_token_id)
        self.layers = post_norm_layers(c, block=PreNormBlock)
        self.final_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # pre-norm blocks leave x unnormalised
        self.apply(self.init_weights)
