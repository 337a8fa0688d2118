"""The forward pass shared by decoder-only families (GPT-2, LLaMA): causal masking, positions, KV cache.

Dimension legend: B batch, T new tokens, S cached + new tokens, H hidden size.
"""

from __future__ import annotations

import torch

from ptmkit.models.base import Backbone, BackboneOutput, stack_forward
from ptmkit.nn import KVCache, build_mask, positions_from_mask


class DecoderBackbone(Backbone):
    """Subclasses build self.embeddings, self.layers, self.norm_f and self.rotary (a module or None)."""

    causal = True

    def prefix_length(self) -> int:
        """Positions taken before the first token by learned prefixes: prefix-tuning's keys/values (ptmkit.adapt.
        prefix) act as that many cached tokens, as in Li & Liang 2021 and PEFT. 0 without one."""
        for block in self.layers:
            prefix = block.attn._modules.get("prefix")
            if prefix is not None and prefix.enabled:
                return prefix.length
        return 0

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device) -> KVCache:
        attn = self.layers[0].attn
        kv = max(block.attn.kv for block in self.layers)  # layers differ once heads are pruned (compress.prune.heads)
        return KVCache(len(self.layers), batch, kv, attn.d, max_len, dtype, device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S), covers cached tokens too
        position_ids: torch.Tensor | None = None,  # (B, T)
        cache: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        ref = input_ids if input_ids is not None else inputs_embeds
        b, t = ref.shape[0], ref.shape[1]
        past = cache.length if cache is not None else 0
        if attention_mask is not None and attention_mask.shape[-1] != past + t:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} tokens but the cache holds {past} and "
                f"{t} are new; pass a mask over all {past + t}"
            )
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                position_ids = positions_from_mask(attention_mask, past)  # left padding keeps positions 0..
            else:
                position_ids = torch.arange(past, past + t, device=ref.device)[None].expand(b, t)
            position_ids = position_ids + self.prefix_length()
        x = self.embeddings(input_ids, position_ids, None, inputs_embeds)  # (B, T, H)
        mask, is_causal = build_mask(attention_mask, t, past + t, causal=True, device=x.device)
        rotary = self.rotary(position_ids, x.dtype) if self.rotary is not None else None
        x, hidden = stack_forward(self.layers, x, mask, is_causal, rotary, cache, output_hidden_states)
        x = self.norm_f(x)
        if hidden is not None:
            hidden[-1] = x  # HF convention: the last hidden state is after the final norm
        if cache is not None:
            cache.advance(t)
        return BackboneOutput(x, tuple(hidden) if hidden else None, cache)
