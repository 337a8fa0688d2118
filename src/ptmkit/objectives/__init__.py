"""Pre-training objectives, one file each; OBJECTIVES maps a YAML name to (config class, objective class)."""

from ptmkit.objectives.base import Objective, seeded_generator
from ptmkit.objectives.clm import CausalLM, CLMConfig
from ptmkit.objectives.mlm import MaskedLM, MLMConfig
from ptmkit.objectives.plm import PermutationLM, PLMConfig
from ptmkit.objectives.rtd import ReplacedTokenDetection, RTDConfig
from ptmkit.objectives.entity import DictionarySpanFinder, EntityConfig, EntityMasking, SpanFinder
from ptmkit.objectives.nsp import NextSentencePrediction, NSPConfig, SentenceOrderPrediction, SOPConfig
from ptmkit.objectives.span import SpanConfig, SpanMasking
from ptmkit.objectives.wwm import WholeWordMasking, WWMConfig
from ptmkit.objectives.unilm import UniLM, UniLMConfig
from ptmkit.objectives.glm import GLM, GLMConfig
from ptmkit.objectives.span_corruption import SpanCorruption, SpanCorruptionConfig
from ptmkit.objectives.denoising import Denoising, DenoisingConfig, NoiseTransform
from ptmkit.objectives.mass import MASS, MASSConfig
from ptmkit.objectives.simcse import SimCSE, SimCSEConfig
from ptmkit.objectives.clip import CLIPContrastive, CLIPLossConfig
from ptmkit.objectives.xlm import MMLMConfig, MultilingualMLM, TLMConfig, TranslationLM
from ptmkit.objectives.transe import TransEObjective, TransEObjectiveConfig
from ptmkit.objectives.dea import DEAConfig, DenoisingEntityAutoEncoder
from ptmkit.objectives.kepler import KEPLER, KEPLERConfig
from ptmkit.objectives.linking import EntityLinker
from ptmkit.objectives.realm import REALM, REALMConfig
from ptmkit.objectives.vlp import VisionLanguagePretraining, VLPConfig
from ptmkit.objectives.vqvae import VQVAELossConfig, VQVAEObjective
from ptmkit.objectives.text_to_image import TextToImageConfig, TextToImageLM

OBJECTIVES = {
    "mlm": (MLMConfig, MaskedLM),
    "clm": (CLMConfig, CausalLM),
    "plm": (PLMConfig, PermutationLM),  # XLNet permutation LM (needs model family xlnet)
    "rtd": (RTDConfig, ReplacedTokenDetection),
    "wwm": (WWMConfig, WholeWordMasking),
    "span": (SpanConfig, SpanMasking),
    "entity": (EntityConfig, EntityMasking),
    "nsp": (NSPConfig, NextSentencePrediction),
    "sop": (SOPConfig, SentenceOrderPrediction),
    "unilm": (UniLMConfig, UniLM),
    "glm": (GLMConfig, GLM),
    "span_corruption": (SpanCorruptionConfig, SpanCorruption),  # T5 (encoder-decoder)
    "denoising": (DenoisingConfig, Denoising),  # BART noising transforms (encoder-decoder)
    "mass": (MASSConfig, MASS),  # MASS (encoder-decoder)
    "mmlm": (MMLMConfig, MultilingualMLM),  # XLM multilingual MLM (lang ids -> segment table)
    "tlm": (TLMConfig, TranslationLM),  # XLM translation LM over [src ; tgt] pairs
    "simcse": (SimCSEConfig, SimCSE),  # unsupervised SimCSE: contrastive sentence embeddings (encoder backbone)
    "clip": (CLIPLossConfig, CLIPContrastive),  # CLIP: symmetric image-text InfoNCE (family clip, images section)
    # knowledge-enhanced pre-training (survey §5.3; `ptm kg`, docs/knowledge.md)
    "transe": (TransEObjectiveConfig, TransEObjective),  # TransE margin ranking over a triple stream (ptm kg transe)
    "dea": (DEAConfig, DenoisingEntityAutoEncoder),  # ERNIE: MLM + denoising entity auto-encoder (family ernie-thu)
    "kepler": (KEPLERConfig, KEPLER),  # KEPLER: MLM + knowledge embedding over encoded entity descriptions
    # retrieval-augmented pre-training (survey §4.2; docs/knowledge.md): the recipe loads objective.params.index
    "realm": (REALMConfig, REALM),  # REALM: masked LM marginalised over k retrieved passages, trainable retriever
    # single-/two-stream vision-language encoders (families visualbert, lxmert; images section): image-conditioned MLM,
    # masked region feature regression and classification, image-text matching, optional word-region alignment
    "vlp": (VLPConfig, VisionLanguagePretraining),
    # text-to-image (survey §5.2, DALL·E / CogView; docs/multimodal.md)
    "vqvae": (VQVAELossConfig, VQVAEObjective),  # VQ-VAE image tokenizer: reconstruction + commitment (family vqvae)
    "text-to-image": (TextToImageConfig, TextToImageLM),  # DALL·E: causal LM over [text ; image codes] (gpt2/llama)
}

__all__ = ["OBJECTIVES", "MMLMConfig", "MultilingualMLM", "TLMConfig", "TranslationLM", "PermutationLM", "PLMConfig",
           "Objective", "seeded_generator", "MaskedLM", "MLMConfig", "CausalLM", "CLMConfig",
           "ReplacedTokenDetection", "RTDConfig",
           "WholeWordMasking", "WWMConfig", "SpanMasking", "SpanConfig", "EntityMasking", "EntityConfig",
           "SpanFinder", "DictionarySpanFinder", "NextSentencePrediction", "NSPConfig",
           "SentenceOrderPrediction", "SOPConfig", "UniLM", "UniLMConfig", "GLM", "GLMConfig",
           "SpanCorruption", "SpanCorruptionConfig", "Denoising", "DenoisingConfig", "NoiseTransform",
           "MASS", "MASSConfig", "SimCSE", "SimCSEConfig", "CLIPContrastive", "CLIPLossConfig",
           "TransEObjective", "TransEObjectiveConfig", "DenoisingEntityAutoEncoder", "DEAConfig", "KEPLER",
           "KEPLERConfig", "EntityLinker", "REALM", "REALMConfig", "VisionLanguagePretraining", "VLPConfig"]
