"""Megatron-BERT (Shoeybi et al. 2019, §3 and Figure 7): BERT with the layer norm moved to each sub-layer's input
(pre-norm), a final layer norm after the stack, and no norm on the embeddings. Shoeybi et al. found this placement
let BERT train stably at larger sizes and learning rates, and Geiping & Goldstein 2023 ("Cramming", §4.2) made it
the first change for BERT on a small budget (it tolerates a larger learning rate). transformers' MegatronBert*
classes hold the same layout, so these models export and import as model_type megatron-bert.

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.models.base import BackboneOutput, stack_forward
from ptmkit.models.bert import BertConfig, BertEncoder, post_norm_layers
from ptmkit.nn import Embeddings, PreNormBlock, build_mask


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

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        ref = input_ids if input_ids is not None else inputs_embeds
        b, t = ref.shape[0], ref.shape[1]
        if position_ids is None:
            position_ids = self.default_positions(input_ids, b, t, ref.device)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=x.device)
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        x = self.final_norm(x)
        if hidden:
            hidden[-1] = x  # as transformers: the last hidden state is the normalised one
        return BackboneOutput(x, tuple(hidden) if hidden else None)
