"""Cross-layer sharing of a trained model: exactly the stated groups become one module, the parameter count falls by
the tied blocks, the shared block is the mean (or the first), the model still trains, and bad groups are errors."""

from __future__ import annotations

import copy

import pytest
import torch

from ptmkit.compress import share
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config


def _bert(layers=4):
    torch.manual_seed(0)
    return build_model("bert", make_config("bert", dict(vocab_size=64, hidden_size=32, num_layers=layers, num_heads=2,
                                                        intermediate_size=64, max_position_embeddings=32)),
                       "sequence-classification", num_labels=2)


def test_groups_tie_blocks_and_average_them():
    model = _bert()
    before = copy.deepcopy(model)
    block_params = sum(p.numel() for p in model.backbone.layers[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    share.apply(model, share.ShareConfig(num_groups=2))
    layers = model.backbone.layers
    assert layers[0] is layers[1] and layers[2] is layers[3] and layers[0] is not layers[2]
    assert sum(p.numel() for p in model.parameters()) == total - 2 * block_params  # one block fewer per group
    mean = (before.backbone.layers[2].attn.qkv.weight + before.backbone.layers[3].attn.qkv.weight) / 2
    assert torch.allclose(layers[2].attn.qkv.weight, mean)
    assert share.shared_groups(model) == [[0, 1], [2, 3]]
    ids = torch.randint(0, 64, (2, 8))
    loss = model(ids).logits.sum()
    loss.backward()  # one gradient per shared block, summed over its positions
    assert layers[0].attn.qkv.weight.grad is not None


def test_first_init_and_all_shared_equals_repeating_one_block():
    model = _bert(layers=3).eval()
    first = copy.deepcopy(model.backbone.layers[0])
    share.apply(model, share.ShareConfig(num_groups=1, init="first"))
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        x = model.backbone.embeddings(ids, torch.arange(8)[None])
    for _ in range(3):  # the shared model runs block 0 three times (ALBERT)
        x = first(x, None, False, None, None, 0)
    assert torch.allclose(model.backbone(ids).last_hidden_state, x, atol=1e-6)


def test_bad_groups_are_errors():
    with pytest.raises(ConfigError, match="exactly once"):
        share.apply(_bert(), share.ShareConfig(groups=[[0, 1], [1, 2, 3]]))
    with pytest.raises(ConfigError, match="exactly once"):
        share.apply(_bert(), share.ShareConfig(groups=[[0, 1], [2]]))
    with pytest.raises(ConfigError, match="exceeds"):
        share.apply(_bert(), share.ShareConfig(num_groups=5))
    with pytest.raises(ConfigError, match="init must be"):
        share.ShareConfig(init="median")
    model = share.apply(_bert(), share.ShareConfig())
    with pytest.raises(ConfigError, match="already shared"):
        share.apply(model, share.ShareConfig())


def test_a_shared_model_saves_loads_tied_and_exports_to_transformers(tmp_path):
    import transformers as T

    from ptmkit.models import load_model, save_model

    model = share.apply(_bert(), share.ShareConfig(num_groups=2)).eval()
    save_model(model, tmp_path / "m")
    back = load_model(tmp_path / "m").eval()
    assert back.backbone.layers[0] is back.backbone.layers[1] and share.shared_groups(back) == [[0, 1], [2, 3]]
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in model.parameters())
    ids = torch.randint(1, 64, (2, 8))
    with torch.no_grad():
        ours = model(ids).logits
        assert torch.equal(back(ids).logits, ours)
        hf = T.BertForSequenceClassification.from_pretrained(tmp_path / "m").eval()  # untied copies: an ordinary BERT
        assert torch.allclose(hf(ids).logits, ours, atol=1e-5)
    # copies trained apart no longer form one layer: loading them tied would change the model
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / "m" / "model.safetensors")
    key = next(k for k in sd if "layer.1." in k and k.endswith("weight"))
    sd[key] = sd[key] + 1
    save_file(sd, tmp_path / "m" / "model.safetensors")
    from ptmkit.models.convert.base import CheckpointError
    with pytest.raises(CheckpointError, match="differ"):
        load_model(tmp_path / "m")
