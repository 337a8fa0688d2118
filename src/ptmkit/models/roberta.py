"""RoBERTa encoder (Liu et al. 2019): BERT's architecture with positions offset past the padding index.

Only the position numbering differs from BERT; the training recipe (dynamic masking, no NSP,
byte-level BPE) lives in objectives/ and data/.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.models.bert import BertConfig, BertEncoder


@dataclass
class RobertaConfig(BertConfig):
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1


class RobertaEncoder(BertEncoder):
    family = "roberta"
    supports_tensor_parallel = True  # ptmkit.parallel.tensor splits its blocks

    def default_positions(self, input_ids, b, t, device) -> torch.Tensor:
        # fairseq numbering: real tokens count from pad_token_id + 1, padding keeps pad_token_id.
        pad = self.config.pad_token_id
        if input_ids is None:
            return (torch.arange(t, device=device) + pad + 1)[None].expand(b, t)
        real = input_ids.ne(pad).long()
        return real.cumsum(-1) * real + pad  # (B, T)
