"""Shared model building blocks: attention (+ kernel registry), positions, norms, feed-forward, embeddings."""

from ptmkit.nn.attention import (
    ATTENTION, AttentionConfig, CrossAttention, CrossKVCache, KVCache, SelfAttention, add_bias, build_mask,
)
from ptmkit.nn.block import PostNormBlock, PostNormDecoderBlock, PreNormBlock, PreNormDecoderBlock
from ptmkit.nn.embeddings import Embeddings
from ptmkit.nn.feedforward import ACTIVATIONS, MLP, GatedMLP
from ptmkit.nn.moe import MoEConfig, SparseMoE, collect_moe, moe_layers
from ptmkit.nn.norms import RMSNorm, make_norm
from ptmkit.nn.positions import RotaryEmbedding, SinusoidalPositions, apply_rotary, positions_from_mask
from ptmkit.nn.relative import RelativeBiasConfig, RelativePositionBias, relative_position_bucket

__all__ = [
    "ATTENTION", "AttentionConfig", "KVCache", "SelfAttention", "build_mask", "PostNormBlock",
    "PreNormBlock", "Embeddings", "ACTIVATIONS", "MLP", "GatedMLP", "RMSNorm", "make_norm",
    "RotaryEmbedding", "SinusoidalPositions", "apply_rotary", "positions_from_mask",
    "CrossAttention", "CrossKVCache", "add_bias", "PostNormDecoderBlock", "PreNormDecoderBlock",
    "RelativeBiasConfig", "RelativePositionBias", "relative_position_bucket",
    "MoEConfig", "SparseMoE", "collect_moe", "moe_layers",
]
