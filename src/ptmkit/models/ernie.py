"""ERNIE's knowledgeable encoder (Zhang, Han, Liu, Jiang, Sun, Liu 2019, "ERNIE: Enhanced Language Representation
with Informative Entities", ACL; thunlp's ERNIE, not Baidu's ERNIE whose entity masking is objectives/entity.py).

Tokens pass through a T-Encoder (BERT layers), then a K-Encoder of aggregator layers (§3.3) that also carry the
knowledge-graph embeddings (TransE, models/transe.py) of the entities aligned to the text: ERNIE aligns each entity
mention's embedding with the mention's first token. An aggregator layer runs

    w̃ = MH-ATT(w)                                  token self-attention (a BERT attention sub-layer)
    ẽ = MH-ATT(e)                                  entity self-attention among the sequence's aligned entities
    h_j = σ(W̃_t w̃_j + W̃_e ẽ_k + b̃)               information fusion, for token j aligned with entity k (Eq. 7)
    h_j = σ(W̃_t w̃_j + b̃)                          for a token without an entity (Eq. 8)
    w_j = W_t h_j + b_t,  e_k = W_e h_j + b_e       split back into the token and entity streams

with σ = GELU. Like BERT's layers (and thunlp's released code, which builds the aggregator from BERT's layer
classes), each sub-layer keeps BERT's residual connection and LayerNorm around the paper's formulas. So the *plain
encoder path* is exact: with no aligned entity (`entity_ids` None or all 0) an aggregator layer computes exactly the
BERT layer made of its token attention and its (W̃_t, W_t) feed-forward, and the whole model equals the BERT encoder
of `num_layers` layers with those weights (tests/unit/models/test_ernie.py checks it bit for bit). This is also what
fine-tuning through the generic heads (sequence/token classification, no entity input) runs.

The entity table (num_entities + 1 rows, row 0 = "no entity") starts from a TransE file and stays frozen by default:
ERNIE keeps its TransE embeddings fixed during pre-training.

Hugging Face parity: transformers has no THU-ERNIE (its "ernie" model_type is Baidu's ERNIE 1.0-3.0, a BERT with task
embeddings), so there is no parity test; a model directory uses ptmkit's own names and model_type ptmkit-ernie-thu
(models/convert/ernie.py), which only ptmkit loads.

Dimension legend: B batch, T length, H hidden size, F intermediate size, K entity embedding size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.base import Backbone, BackboneOutput, ModelOutput, stack_forward
from ptmkit.models.bert import BertConfig, bert_embeddings, post_norm_layers
from ptmkit.models.heads import MaskedLM
from ptmkit.models.transe import entity_table
from ptmkit.nn import AttentionConfig, PostNormBlock, SelfAttention, build_mask


def _file_shape(path: str) -> tuple[int, int]:
    """(E, K) of the 'entity' table of a TransE output, read from the safetensors header only."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / "entity_embeddings.safetensors"
    if not p.is_file():
        raise ConfigError(f"ernie-thu: entity_embeddings file {p} not found; train TransE first (`ptm kg transe`, "
                          "which writes entity_embeddings.safetensors) or fix the path")
    with safe_open(str(p), "pt") as f:
        if "entity" not in f.keys():
            raise ConfigError(f"ernie-thu: {p} has no 'entity' table (found {sorted(f.keys())}); pass a file written "
                              "by `ptm kg transe`")
        shape = f.get_slice("entity").get_shape()
    if len(shape) != 2:
        raise ConfigError(f"ernie-thu: the 'entity' table of {p} has shape {shape}, not (entities, width)")
    return int(shape[0]), int(shape[1])


@dataclass
class ErnieConfig(BertConfig):
    """BERT's fields (num_layers = T-Encoder + K-Encoder layers, so the token path is as deep as that BERT) plus the
    knowledge side. ERNIE-base: 6 T + 6 K layers, 100-d TransE entities with 4 entity heads."""

    num_knowledge_layers: int = 1  # M: the last M layers are aggregators (the K-Encoder)
    # entities besides table row 0 ("no entity"); with entity_embeddings 0 takes the file's count, another number
    # must equal it
    num_entities: int = 0
    entity_size: int = 100  # K, the entity embedding width (ERNIE: 100-d TransE); must equal the file's width
    entity_heads: int = 4  # heads of the entity self-attention
    entity_embeddings: str | None = None  # a TransE output (directory or .safetensors) the entity table starts from
    freeze_entities: bool = True  # keep the TransE vectors fixed while pre-training, as ERNIE does

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_knowledge_layers <= self.num_layers:
            raise ConfigError(
                f"ernie-thu: num_knowledge_layers must be between 1 and num_layers ({self.num_layers}), got "
                f"{self.num_knowledge_layers}: the K-Encoder needs at least one aggregator layer to fuse entities "
                "into the text (with none the model is plain BERT: use model family bert)")
        if self.entity_size < 1 or self.num_entities < 0:
            raise ConfigError(f"ernie-thu: entity_size must be >= 1 and num_entities >= 0, got {self.entity_size}, "
                              f"{self.num_entities}")
        if self.entity_embeddings is not None:
            rows, width = _file_shape(self.entity_embeddings)
            if width != self.entity_size:
                raise ConfigError(
                    f"ernie-thu: entity_embeddings {self.entity_embeddings} holds {width}-wide vectors but "
                    f"entity_size is {self.entity_size}; set model.config.entity_size to {width}, or train TransE "
                    f"with dim {self.entity_size}")
            if self.num_entities not in (0, rows):
                raise ConfigError(
                    f"ernie-thu: entity_embeddings {self.entity_embeddings} holds {rows} entities but num_entities is "
                    f"{self.num_entities}; set num_entities to {rows} (or 0 to take the file's), or use the TransE "
                    "file of the knowledge graph the entity links were made with")
            self.num_entities = rows
        if self.entity_size % self.entity_heads:
            raise ConfigError(f"ernie-thu: entity_size {self.entity_size} is not divisible by entity_heads "
                              f"{self.entity_heads}; pick a head count that divides it")


class Aggregator(nn.Module):
    """One K-Encoder layer (§3.3): `token` is a BERT post-norm block whose attention, norms and feed-forward are the
    token side (W̃_t = token.ffn.up, W_t = token.ffn.down); the entity side adds its attention, its fusion weights
    (W̃_e = ent_up, W_e = ent_down) and norms. The last layer has no entity output (nothing reads it), so it has no
    W_e: parameters that could never receive a gradient."""

    def __init__(self, c: ErnieConfig, token: PostNormBlock, entity_output: bool = True):
        super().__init__()
        self.token = token
        k = c.entity_size
        self.ent_attn = SelfAttention(AttentionConfig(k, c.entity_heads, dropout=c.attention_dropout))
        self.ent_norm1 = nn.LayerNorm(k, eps=c.layer_norm_eps)
        self.ent_up = nn.Linear(k, c.intermediate_size, bias=False)  # W̃_e (b̃ is the token side's up bias)
        if entity_output:
            self.ent_down = nn.Linear(c.intermediate_size, k)  # W_e, b_e
            self.ent_norm2 = nn.LayerNorm(k, eps=c.layer_norm_eps)

    def forward(self, w: torch.Tensor, e: torch.Tensor, mask, ent_mask, aligned: torch.Tensor):
        """w (B, T, H) tokens, e (B, T, K) entities at their first tokens, aligned (B, T) bool."""
        blk, ffn = self.token, self.token.ffn
        w = blk.norm1(w + blk.drop(blk.attn(w, mask)))  # w̃ (B, T, H)
        e = self.ent_norm1(e + blk.drop(self.ent_attn(e, ent_mask)))  # ẽ (B, T, K)
        # Eq. 7 / Eq. 8: the entity term joins only where an entity is aligned; torch.where adds an exact 0 elsewhere
        fused = ffn.up(w) + torch.where(aligned[..., None], self.ent_up(e), 0.0)  # (B, T, F) pre-activation
        h = ffn.drop(ffn.act(fused))  # h_j
        w = blk.norm2(w + blk.drop(ffn.down(h)))  # (B, T, H)
        if not hasattr(self, "ent_down"):  # the last layer
            return w, None
        e = self.ent_norm2(e + blk.drop(self.ent_down(h)))  # (B, T, K)
        return w, torch.where(aligned[..., None], e, 0.0)  # entity states only where an entity is


class ErnieEncoder(Backbone):
    family = "ernie-thu"
    causal = False
    takes_soft_prompt = False  # virtual tokens would shift the entity alignment

    def __init__(self, config: ErnieConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = bert_embeddings(c, c.hidden_size)
        blocks = post_norm_layers(c)  # every layer's token side, built as BERT builds them
        n_text = c.num_layers - c.num_knowledge_layers
        self.layers = nn.ModuleList(blocks[:n_text])  # T-Encoder (sparse MoE feed-forwards where c.moe says)
        if c.moe is not None:  # the fusion reads the feed-forward's first matrix: aggregators stay dense
            blocks = post_norm_layers(dataclasses.replace(c, moe=None, entity_embeddings=None))
        self.knowledge_layers = nn.ModuleList(  # K-Encoder
            Aggregator(c, b, entity_output=i < c.num_knowledge_layers - 1) for i, b in enumerate(blocks[n_text:]))
        self.entity_embeddings = nn.Embedding(c.num_entities + 1, c.entity_size, padding_idx=0)
        self.apply(self.init_weights)
        if c.entity_embeddings is not None:
            with torch.no_grad():
                self.entity_embeddings.weight[1:] = entity_table(c.entity_embeddings)  # entity i -> row i + 1
        self.entity_embeddings.weight.requires_grad_(not c.freeze_entities)

    def default_positions(self, input_ids, b: int, t: int, device) -> torch.Tensor:
        return torch.arange(t, device=device)[None].expand(b, t)  # (B, T)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, or (B, T, T) packed documents
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H)
        output_hidden_states: bool = False,
        entity_ids: torch.Tensor | None = None,  # (B, T): entity number + 1 at a mention's first token, 0 elsewhere
    ) -> BackboneOutput:
        ref = input_ids if input_ids is not None else inputs_embeds
        b, t = ref.shape[0], ref.shape[1]
        if position_ids is None:
            position_ids = self.default_positions(input_ids, b, t, ref.device)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=x.device)
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        if entity_ids is None:  # no entity input: each aggregator computes its BERT layer (the plain encoder path)
            for layer in self.knowledge_layers:
                x = layer.token(x, mask)
                if hidden is not None:
                    hidden.append(x)
            return BackboneOutput(x, tuple(hidden) if hidden else None)
        if entity_ids.shape != (b, t):
            raise ValueError(f"entity_ids must be (B, T) = {(b, t)} like input_ids, got {tuple(entity_ids.shape)}")
        if entity_ids.device.type == "cpu" and entity_ids.numel() and \
                not 0 <= int(entity_ids.min()) <= int(entity_ids.max()) <= self.config.num_entities:
            raise ValueError(f"entity_ids must be in [0, {self.config.num_entities}] (0 = no entity); the links were "
                             "made with another knowledge graph than the entity table's")
        aligned = entity_ids > 0  # (B, T)
        e = self.entity_embeddings(entity_ids)  # (B, T, K), zeros where no entity
        keys = aligned if attention_mask is None or attention_mask.dim() == 3 else aligned & attention_mask.bool()
        ent_allowed = keys[:, None, :].expand(b, t, t)  # (B, T, T): attend to the sequence's entities only
        if attention_mask is not None and attention_mask.dim() == 3:
            ent_allowed = ent_allowed & attention_mask.bool()  # packed documents' entities stay apart too
        ent_mask, _ = build_mask(ent_allowed, t, t, causal=False, device=x.device)  # + the diagonal: no empty rows
        for layer in self.knowledge_layers:
            x, e = layer(x, e, mask, ent_mask, aligned)
            if hidden is not None:
                hidden.append(x)
        return BackboneOutput(x, tuple(hidden) if hidden else None)


class ErnieMaskedLM(MaskedLM):
    """BERT's masked-LM head on the knowledgeable encoder, taking `entity_ids` (the dEA objective's model)."""

    task = "knowledge-masked-lm"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                score_positions: torch.Tensor | None = None, output_hidden_states: bool = False,
                entity_ids: torch.Tensor | None = None):
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_hidden_states, entity_ids=entity_ids)
        h = out.last_hidden_state  # (B, T, H)
        if score_positions is not None:
            h = h[score_positions]  # (N, H): only the masked positions get logits
        logits = self.head(h, self.backbone.input_embeddings().weight)
        return ModelOutput(logits, out.last_hidden_state, out.hidden_states)


ERNIE_HEADS = {"knowledge-masked-lm": ErnieMaskedLM}
