"""Feature-based transfer: the head reads the frozen backbone's features — the last layer's, or ELMo's scalar mix
of every layer — pooled as the model's classifier would, and replaces the model's own head."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit import adapt
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from tests.contracts.test_delta_methods import _perturb
from tests.contracts.test_model_families import TINY, _build


def _classifier(family: str, task: str = "sequence-classification"):
    torch.manual_seed(0)
    return build_model(family, make_config(family, TINY[family][0]), task, num_labels=3).eval()


def _batch():
    ids = torch.randint(6, 101, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_scalar_mix_is_elmos_weighted_sum_of_every_layer(pooling):
    model = _classifier("bert")
    ids, mask = _batch()
    states = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states  # embeddings + 2 layers
    adapt.apply(model, "feature", {"mix": True, "pooling": pooling, "head": "linear"})
    _perturb(model)
    head = model.feature_head
    w = head.mix.weights.softmax(0)
    mixed = head.mix.gamma * (w[0] * states[0] + w[1] * states[1] + w[2] * states[2])  # (B, T, H)
    if pooling == "cls":
        feats = mixed[:, 0]
    else:
        m = mask[..., None].float()
        feats = (mixed * m).sum(1) / m.sum(1)
    out = model(ids, attention_mask=mask)
    assert_close(out.logits, head.out(feats))
    assert out.hidden_states is None  # asked for internally, not returned unless the caller asks


def test_decoder_features_are_the_last_real_token():
    model = _classifier("gpt2")
    ids, mask = _batch()
    h = model.backbone(ids, mask).last_hidden_state
    adapt.apply(model, "feature")
    _perturb(model)
    expected = model.feature_head.out(torch.stack([h[0, 7], h[1, 4]]))
    assert_close(model(ids, attention_mask=mask).logits, expected)


def test_token_classification_gets_a_label_per_position():
    model = _classifier("bert", "token-classification")
    ids, mask = _batch()
    adapt.apply(model, "feature", {"head": "mlp", "mix": True})
    assert model(ids, attention_mask=mask).logits.shape == (2, 8, 3)


def test_mlp_head_has_the_dense_layer_and_only_the_head_trains():
    model = _classifier("bert")
    adapt.apply(model, "feature", {"head": "mlp"})
    adapt.freeze_except(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["feature_head.dense.weight", "feature_head.dense.bias", "feature_head.out.weight",
                         "feature_head.out.bias"]


def test_feature_transfer_needs_a_classifier():
    with pytest.raises(ConfigError, match="trains a classifier on frozen features"):
        adapt.apply(_build("bert"), "feature")
    with pytest.raises(ConfigError, match="head must be linear or mlp"):
        adapt.apply(_classifier("bert"), "feature", {"head": "svm"})


def test_freeze_except_names_modules_from_the_root():
    model = _classifier("bert")
    adapt.apply(model, "lora")
    adapt.freeze_except(model, ["out"])  # the head's out layer, not every attention output projection
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"out.weight", "out.bias"} <= trainable
    assert not any(n.startswith("backbone.") and ".lora." not in n for n in trainable)
    with pytest.raises(ConfigError, match="has no module 'head'"):
        adapt.freeze_except(model, ["head"])

