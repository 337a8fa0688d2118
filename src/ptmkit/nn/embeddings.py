"""Input embeddings: token + learned absolute position + segment (token type), then optional norm.

BERT (Devlin et al. 2019 §3) sums all three and applies LayerNorm; GPT-2 sums token and position;
LLaMA uses tokens only (positions enter attention through rotary embeddings).
"""

from __future__ import annotations

import torch
from torch import nn


class Embeddings(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_positions: int = 0,  # 0 = no learned position table
        type_vocab_size: int = 0,  # 0 = no segment embeddings
        norm: nn.Module | None = None,
        dropout: float = 0.0,
        padding_idx: int | None = None,
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, hidden_size, padding_idx=padding_idx)
        self.pos = nn.Embedding(max_positions, hidden_size) if max_positions > 0 else None
        self.segment = nn.Embedding(type_vocab_size, hidden_size) if type_vocab_size > 0 else None
        self.norm = norm
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor | None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B|1, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H): prompt tuning feeds embeddings directly
    ) -> torch.Tensor:
        x = self.tok(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        if self.pos is not None:
            if position_ids is None:
                raise ValueError("this model has learned positions: position_ids are required")
            # The check reads the max back from the device: free on CPU, but a sync per step on GPU (and a graph
            # break under torch.compile), so it runs on the host only; on an accelerator an out-of-range position
            # fails in the embedding kernel instead. (Sequence length is no proxy: GLM's Part B reuses positions.)
            on_host = position_ids.device.type == "cpu" and not torch.compiler.is_compiling()
            if on_host and int(position_ids.max()) >= self.pos.num_embeddings:
                raise ValueError(
                    f"position {int(position_ids.max())} is beyond the model's {self.pos.num_embeddings} "
                    "learned positions; truncate the input to max_position_embeddings"
                )
            x = x + self.pos(position_ids)
        if self.segment is not None:
            x = x + (self.segment(token_type_ids) if token_type_ids is not None else self.segment.weight[0])
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)
