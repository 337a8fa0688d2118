"""The model registries: families (config, backbone, checkpoint adapter), tasks (heads) and presets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ptmkit.config import ConfigError, from_dict
from ptmkit.models.bert import BertConfig, BertEncoder
from ptmkit.models.convert.base import Adapter
from ptmkit.models.convert.bert import BertAdapter, RobertaAdapter
from ptmkit.models.convert.electra import ElectraAdapter
from ptmkit.models.convert.gpt2 import GPT2Adapter
from ptmkit.models.convert.llama import LlamaAdapter
from ptmkit.models.electra import ELECTRA_HEADS, ElectraConfig, ElectraEncoder
from ptmkit.models.gpt import GPT2Config, GPT2Decoder
from ptmkit.models.heads import (
    CausalLM, DecoderSequenceClassifier, MaskedLM, SequenceClassifier, TaskModel, TokenClassifier,
)
from ptmkit.models.llama import LlamaConfig, LlamaDecoder
from ptmkit.models.roberta import RobertaConfig, RobertaEncoder
from ptmkit.models.megatron_bert import MegatronBertConfig, MegatronBertEncoder
from ptmkit.models.convert.megatron_bert import MegatronBertAdapter
from ptmkit.models.bart import BartConfig, BartEncoderDecoder
from ptmkit.models.convert.bart import BartAdapter, MBartAdapter
from ptmkit.models.convert.t5 import T5Adapter, T5EncoderAdapter
from ptmkit.models.mbart import MBartConfig, MBartEncoderDecoder
from ptmkit.models.seq2seq import Seq2SeqLM
from ptmkit.models.t5 import T5Config, T5Encoder, T5EncoderDecoder
from ptmkit.models.convert.xlnet import XLNetAdapter
from ptmkit.models.xlnet import XLNET_HEADS, XLNetBackbone, XLNetConfig
from ptmkit.models.convert.transfo_xl import TransfoXLAdapter
from ptmkit.models.transfo_xl import TRANSFO_XL_HEADS, TransfoXLBackbone, TransfoXLConfig
from ptmkit.nn.kernels.bigbird import seed_layers
from ptmkit.models.albert import ALBERT_HEADS, AlbertConfig, AlbertEncoder
from ptmkit.models.convert.albert import AlbertAdapter
from ptmkit.models.convert.mixtral import MixtralAdapter
from ptmkit.models.clip import CLIP_HEADS, CLIPConfig, CLIPModel
from ptmkit.models.convert.clip import CLIPAdapter
from ptmkit.models.convert.vit import ViTAdapter
from ptmkit.models.vit import ViTConfig, ViTEncoder
from ptmkit.models.convert.ernie import ErnieAdapter
from ptmkit.models.ernie import ERNIE_HEADS, ErnieConfig, ErnieEncoder
from ptmkit.models.convert.vqvae import VQVAEAdapter
from ptmkit.models.vqvae import VQVAE, VQVAE_HEADS, VQVAEConfig
from ptmkit.models.convert.vl import lxmert_adapter, visualbert_adapter
from ptmkit.models.lxmert import LxmertConfig, LxmertEncoder
from ptmkit.models.visualbert import VisualBertConfig, VisualBertEncoder
from ptmkit.models.vl_heads import VL_HEADS


@dataclass(frozen=True)
class Family:
    config: type
    backbone: type
    adapter: Adapter
    heads: dict[str, type] = field(default_factory=dict)  # task -> the family's own head, over the generic one


FAMILIES: dict[str, Family] = {
    "bert": Family(BertConfig, BertEncoder, BertAdapter()),
    "roberta": Family(RobertaConfig, RobertaEncoder, RobertaAdapter()),
    # BERT with pre-norm blocks and a final norm (Shoeybi et al. 2019): the pre-norm encoder, exported as MegatronBert
    "megatron-bert": Family(MegatronBertConfig, MegatronBertEncoder, MegatronBertAdapter()),
    "gpt2": Family(GPT2Config, GPT2Decoder, GPT2Adapter()),
    "llama": Family(LlamaConfig, LlamaDecoder, LlamaAdapter()),
    "electra": Family(ElectraConfig, ElectraEncoder, ElectraAdapter(), heads=ELECTRA_HEADS),
    # Encoder-decoders (survey §4.1): one model_type may hold several families; config.json's
    # architectures picks the family (T5EncoderModel -> t5-encoder).
    "t5": Family(T5Config, T5EncoderDecoder, T5Adapter(), heads={"seq2seq-lm": Seq2SeqLM}),
    "t5-encoder": Family(T5Config, T5Encoder, T5EncoderAdapter()),
    "bart": Family(BartConfig, BartEncoderDecoder, BartAdapter(), heads={"seq2seq-lm": Seq2SeqLM}),
    "mbart": Family(MBartConfig, MBartEncoderDecoder, MBartAdapter(), heads={"seq2seq-lm": Seq2SeqLM}),
    # XLNet (survey §3/§4): two-stream relative attention with segment recurrence; its LM head is permutation-lm.
    "xlnet": Family(XLNetConfig, XLNetBackbone, XLNetAdapter(), heads=XLNET_HEADS),
    # Transformer-XL (survey §4.1): a decoder with segment-level recurrence (mems) and relative positions.
    "transfo-xl": Family(TransfoXLConfig, TransfoXLBackbone, TransfoXLAdapter(), heads=TRANSFO_XL_HEADS),
    # ALBERT (Lan et al. 2020): factorised embeddings, cross-layer sharing, MLM + sentence-order pre-training head.
    "albert": Family(AlbertConfig, AlbertEncoder, AlbertAdapter(), heads=ALBERT_HEADS),
    # Vision (survey §5.2): ViT (Dosovitskiy et al. 2021) and CLIP's image-text dual encoder (Radford et al. 2021)
    "vit": Family(ViTConfig, ViTEncoder, ViTAdapter()),
    "clip": Family(CLIPConfig, CLIPModel, CLIPAdapter(), heads=CLIP_HEADS),
    # THU-ERNIE (Zhang et al. 2019): BERT layers, then aggregator layers fusing TransE entity embeddings (no HF form)
    "ernie-thu": Family(ErnieConfig, ErnieEncoder, ErnieAdapter(), heads=ERNIE_HEADS),
    # Vision-language encoders (survey §5.2) over caption tokens and image patches: single-stream (VisualBERT,
    # VL-BERT, UNITER: one encoder) and two-stream (ViLBERT, LXMERT: two streams joined by co-attention)
    "visualbert": Family(VisualBertConfig, VisualBertEncoder, visualbert_adapter(), heads=VL_HEADS),
    "lxmert": Family(LxmertConfig, LxmertEncoder, lxmert_adapter(), heads=VL_HEADS),
    # Text-to-image (survey §5.2, DALL·E / CogView): the VQ-VAE image tokenizer (van den Oord et al. 2017), no HF form
    "vqvae": Family(VQVAEConfig, VQVAE, VQVAEAdapter(), heads=VQVAE_HEADS),
}

# Checkpoint forms of a family's Mixture-of-Experts variant (its config's `moe`), by family. transformers' only sparse
# decoder of this kind is Mixtral, a LLaMA with a SparseMoE in every block: a llama model with moe saves as model_type
# "mixtral" and a Mixtral checkpoint loads as family llama. Families absent here (BERT, GPT-2) have no such form.
# Each adapter's check_export(config) says why a particular MoE setup cannot be written.
MOE_ADAPTERS: dict[str, Adapter] = {"llama": MixtralAdapter()}

def classifier_dropout(config) -> float:
    """Dropout before a classification layer: the config's classifier_dropout, else its hidden dropout (as
    transformers' BertForSequenceClassification), else 0.1."""
    value = getattr(config, "classifier_dropout", None)
    return value if value is not None else getattr(config, "dropout", 0.1)


def _sequence_classifier(backbone, num_labels: int):
    if backbone.causal:  # GPT-style: the last real token's state, no pooler (transformers' *ForSequenceClassification)
        return DecoderSequenceClassifier(backbone, num_labels)
    return SequenceClassifier(backbone, num_labels, dropout=classifier_dropout(backbone.config))


@dataclass(frozen=True)
class Task:
    """A head kind: how its generic head is built and what a backbone needs for it. A task only some families have
    (build None) says which in `only`; a family's own head for a task (Family.heads) takes precedence."""

    build: Callable[[Any, int | None], Any] | None = None  # (backbone, num_labels) -> task model
    needs: str = "any"  # encoder | decoder | any
    labels: bool = False  # needs num_labels
    only: str = ""


TASKS: dict[str, Task] = {
    "base": Task(lambda backbone, n: backbone),
    "masked-lm": Task(lambda backbone, n: MaskedLM(backbone), needs="encoder"),
    "causal-lm": Task(lambda backbone, n: CausalLM(
        backbone, tie_word_embeddings=getattr(backbone.config, "tie_word_embeddings", True)), needs="decoder"),
    "sequence-classification": Task(_sequence_classifier, labels=True),
    "token-classification": Task(lambda backbone, n: TokenClassifier(
        backbone, n, dropout=classifier_dropout(backbone.config)), labels=True),
    # ELECTRA's discriminator (objectives/rtd.py)
    "replaced-token-detection": Task(only="a discriminator head (use model family electra)"),
    # encoder-decoder language model (models/seq2seq.py)
    "seq2seq-lm": Task(only="an encoder-decoder family (t5, bart, mbart)"),
    # XLNet's two-stream LM head (models/xlnet.py, objectives/plm.py)
    "permutation-lm": Task(only="the two-stream xlnet family"),
    # CLIP's contrastive pre-training trains the dual encoder itself (models/clip.py, objectives/clip.py)
    "image-text-contrastive": Task(only="an image-text dual encoder (use model family clip)"),
    # masked LM + masked region modelling + image-text matching heads (models/vl_heads.py, objectives/vlp.py)
    "vl-pretraining": Task(only="a vision-language encoder (use model family visualbert or lxmert)"),
    # ALBERT's pre-training model (models/albert.py, objectives/nsp.py); the sop objective adds its own head elsewhere
    # a masked LM that also reads aligned entity ids (models/ernie.py; objectives/dea.py)
    "knowledge-masked-lm": Task(only="an encoder with an entity input: use model family ernie-thu"),
    # knowledge-graph embeddings (models/transe.py, objectives/transe.py): not a Transformer head
    # a VQ-VAE image tokenizer reconstructing its input (models/vqvae.py, objectives/vqvae.py)
    "image-reconstruction": Task(only="an image autoencoder (use model family vqvae)"),
    "kg-embedding": Task(only="the TransE model of ptmkit.models.transe (train it with `ptm kg transe`)"),
    "masked-lm-sop": Task(only="ALBERT's pre-training model (MLM + sentence-order head): use model family albert, or "
                               "task masked-lm with other encoders (the sop objective adds its own head)"),
}

# Sizes as data. "mini" is the shape used by the demo and tests of speed; base/small follow the papers.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-tiny": ("bert", dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512)),
    "bert-mini": ("bert", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)),
    "megatron-bert-mini": ("megatron-bert", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)),
    "bert-base": ("bert", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)),
    "roberta-base": ("roberta", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)),
    "gpt2-mini": ("gpt2", dict(hidden_size=256, num_layers=4, num_heads=4)),
    "gpt2-small": ("gpt2", dict(hidden_size=768, num_layers=12, num_heads=12)),
    "llama-mini": ("llama", dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688,
                                 vocab_size=32000, max_position_embeddings=2048)),
    # ELECTRA Table 6: Small has 128-wide embeddings under a 256-wide encoder; Base shares BERT-Base's shape.
    "electra-small": ("electra", dict(embedding_size=128, hidden_size=256, num_layers=12, num_heads=4,
                                      intermediate_size=1024)),
    "electra-base": ("electra", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)),
    "t5-mini": ("t5", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)),
    # Raffel et al. 2020 §3.1 (T5-Small, 60M); v1.1-Small: gated-GELU, untied head, 8+8 layers of 6 heads x 64.
    "t5-small": ("t5", dict(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=2048)),
    "t5-v1_1-small": ("t5", dict(hidden_size=512, num_layers=8, num_heads=6, head_dim=64, intermediate_size=1024,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "bart-mini": ("bart", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)),
    # Lewis et al. 2020 §3: BART-Base has 6 encoder and 6 decoder layers at width 768.
    "bart-base": ("bart", dict(hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072)),
    "xlnet-mini": ("xlnet", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, mem_len=128)),
    # Yang et al. 2019 §3.1 / Table 7: XLNet-Base has BERT-Base's shape; memory length 384 in pre-training.
    "xlnet-base": ("xlnet", dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, mem_len=384)),
    # docs/architectures/transformer_xl.md: 4 x 256, segments of 128 tokens with a 128-state memory per layer.
    "transfo-xl-mini": ("transfo-xl", dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                                           segment_len=128, mem_len=128)),
    # Lan et al. 2020 Table 1: ALBERT-base is BERT-base's encoder shape with E=128 and every layer shared (12M params).
    "albert-base": ("albert", dict(embedding_size=128, hidden_size=768, num_layers=12, num_heads=12,
                                   intermediate_size=3072, share="all")),
    "albert-mini": ("albert", dict(embedding_size=128, hidden_size=256, num_layers=4, num_heads=4,
                                   intermediate_size=1024, share="all")),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unsupported model family {name!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[name]


def make_config(family_name: str, overrides: dict[str, Any] | None = None):
    """Build a family config from a dict; unknown keys and wrong types are errors."""
    return from_dict(family(family_name).config, overrides or {}, where=f"{family_name} model config")


def from_preset(preset: str, task: str = "base", **overrides):
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    fam, params = PRESETS[preset]
    return build_model(fam, make_config(fam, {**params, **overrides.pop("config", {})}), task, **overrides)


def build_model(family_name: str, config, task: str = "base", num_labels: int | None = None):
    """A freshly initialised model: the family's backbone plus the head for `task`."""
    backbone = family(family_name).backbone(config)
    # BigBird draws its random blocks per layer (Zaheer et al. 2020): layer i gets seed + i, fixed by the architecture
    # alone, so a model rebuilt from its directory attends exactly as the trained one did.
    seed_layers(backbone)
    return attach_head(backbone, task, num_labels)


def attach_head(backbone, task: str, num_labels: int | None = None):
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    spec = TASKS[task]
    if spec.labels and num_labels is None:
        raise ConfigError(f"task {task!r} needs num_labels")
    own = FAMILIES[backbone.family].heads.get(task) if backbone.family in FAMILIES else None
    if own is not None:  # e.g. ELECTRA's generator MLM head, discriminator and gelu classifier
        return own(backbone, num_labels) if spec.labels else own(backbone)
    if spec.build is None:
        raise ConfigError(f"{task} needs {spec.only}; {backbone.family} has no such head")
    if task != "base" and getattr(backbone, "is_encoder_decoder", False):
        raise ConfigError(f"{backbone.family} is an encoder-decoder; its tasks are base and seq2seq-lm, not {task!r}")
    if spec.needs == "encoder" and backbone.causal:
        raise ConfigError(f"{backbone.family} is a decoder; {task} needs an encoder (bert, roberta)")
    if spec.needs == "decoder" and not backbone.causal:
        raise ConfigError(f"{backbone.family} is an encoder; {task} needs a decoder (gpt2, llama)")
    return spec.build(backbone, num_labels)


def task_of(model) -> str:
    return model.task if isinstance(model, TaskModel) else "base"


def backbone_of(model):
    return model.backbone if isinstance(model, TaskModel) else model


def hf_export_form(model):
    """The model as a Hugging Face checkpoint can hold it. A family whose ptmkit form has no HF equivalent but an
    equal-function one declares `hf_export_form(model)` on its backbone (ALBERT's partial sharing -> unshared)."""
    backbone = backbone_of(model)
    return backbone.hf_export_form(model) if hasattr(backbone, "hf_export_form") else model
