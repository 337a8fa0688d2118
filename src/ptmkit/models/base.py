"""What every model family shares: output records, weight initialisation, the backbone interface.

Dimension legend: B batch, T length, H hidden size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.nn.attention import KVCache


@dataclass
class BackboneOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each layer's
    cache: KVCache | None = None


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: KVCache | None = None


class Backbone(nn.Module):
    """A family's Transformer stack without a task head. Subclasses set family, causal and config."""

    family: str = ""
    causal: bool = False
    # Soft prompts (ptmkit.adapt.prompt) go before the input embeddings: the backbone takes inputs_embeds and a
    # (B, T) padding mask and returns one state per input position. Families where that is not so say False.
    takes_soft_prompt: bool = True

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def virtual_positions(self) -> int:
        """Positions that delta-tuning methods place before the first token: a soft prompt's virtual tokens
        (ptmkit.adapt.prompt, stored as this backbone's `prompt`) and, in a decoder, a prefix's (prefix_length). A
        position limit must hold them as well as the tokens."""
        prompt = self._modules.get("prompt")
        n = prompt.length if prompt is not None and prompt.enabled else 0
        return n + (self.prefix_length() if hasattr(self, "prefix_length") else 0)

    def input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tok

    def init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.initializer_range)


def init_normal(module: nn.Module, std: float) -> None:
    """BERT/GPT-2 initialisation: N(0, std) weights, zero biases, unit norms (Devlin et al. 2019)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm) or type(module).__name__ == "RMSNorm":
        if getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def stack_forward(layers, x, mask, is_causal, rotary, cache, output_hidden_states):
    """Run the blocks in order, collecting hidden states when asked."""
    hidden = [x] if output_hidden_states else None
    for i, block in enumerate(layers):
        x = block(x, mask, is_causal, rotary, cache, i)
        if hidden is not None:
            hidden.append(x)
    return x, hidden
