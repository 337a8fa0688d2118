"""The target-module matcher shared by every model transform."""

from __future__ import annotations

import pytest
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.nn.targets import match_modules, pattern_matches


def _bert():
    cfg = make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16))
    return build_model("bert", cfg, "sequence-classification", num_labels=2)


@pytest.mark.parametrize("pattern, name, hit", [
    ("qkv", "backbone.layers.0.attn.qkv", True),
    ("attn.out", "backbone.layers.1.attn.out", True),
    ("out", "backbone.layers.1.attn.layout", False),  # whole components only
    ("backbone.layers.0.ffn.up", "backbone.layers.0.ffn.up", True),
    ("layers.*.ffn.up", "backbone.layers.1.ffn.up", False),  # a glob covers the full name
    ("*.layers.*.ffn.up", "backbone.layers.1.ffn.up", True),
    (r"re:.*layers\.[01]\.attn\.(qkv|out)", "backbone.layers.1.attn.out", True),
    (r"re:layers\.0", "backbone.layers.0", False),  # a regex must match the whole name
])
def test_pattern_grammar(pattern, name, hit):
    assert pattern_matches(pattern, name) is hit


def test_matches_in_model_order_with_types_and_exclusions():
    model = _bert()
    got = [n for n, _ in match_modules(model, ["qkv", "ffn.up"], types=(nn.Linear,))]
    assert got == ["backbone.layers.0.attn.qkv", "backbone.layers.0.ffn.up", "backbone.layers.1.attn.qkv",
                   "backbone.layers.1.ffn.up"]
    got = [n for n, _ in match_modules(model, "*.attn.*", types=(nn.Linear,), exclude=["layers.0.attn.qkv"])]
    assert got == ["backbone.layers.0.attn.out", "backbone.layers.1.attn.qkv", "backbone.layers.1.attn.out"]


def test_a_pattern_that_matches_nothing_is_an_error_listing_the_modules():
    model = _bert()
    with pytest.raises(ConfigError, match=r"'query' matches no Linear module of SequenceClassifier.*qkv \(x2\)"):
        match_modules(model, ["qkv", "query"], types=(nn.Linear,))
    with pytest.raises(ConfigError, match="at least one"):
        match_modules(model, [])
    with pytest.raises(ConfigError, match="no Conv1d submodules"):
        match_modules(model, "qkv", types=(nn.Conv1d,))
