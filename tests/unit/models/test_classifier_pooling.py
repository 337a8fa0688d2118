"""Mean pooling for the encoder's sequence classifier: the masked mean of the token vectors feeds the pooler instead
of the first token's (MLM never trains [CLS]); saved under ptmkit_pooling in config.json and restored on load."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.io import set_pooling

SMALL = dict(vocab_size=60, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
             max_position_embeddings=32, dropout=0.0, attention_dropout=0.0)


def _classifier(pooling: str = "mean"):
    torch.manual_seed(0)
    model = build_model("bert", make_config("bert", SMALL), "sequence-classification", num_labels=3).eval()
    set_pooling(model, pooling, "bert")
    return model


def test_mean_pooling_feeds_the_pooler_the_masked_mean():
    model = _classifier()
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 20, 3, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        h = model.backbone(ids, mask).last_hidden_state
        mean = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        expected = model.out(torch.tanh(model.dense(mean)))
    assert torch.allclose(out.logits, expected, atol=1e-6)
    # padding does not count: the same sentence alone, without padding, gets the same logits
    with torch.no_grad():
        alone = model(ids[1:, :3], attention_mask=mask[1:, :3]).logits
    assert torch.allclose(alone, out.logits[1:], atol=1e-5)
    cls = _classifier("cls")
    with torch.no_grad():
        assert not torch.allclose(cls(ids, attention_mask=mask).logits, out.logits)


def test_pooling_survives_save_and_load_and_warns_that_transformers_cannot_run_it(tmp_path, caplog):
    model = _classifier()
    with caplog.at_level(logging.WARNING, logger="ptmkit"):
        save_model(model, tmp_path / "m")
    assert "no Hugging Face classifier" in caplog.text
    assert json.loads((tmp_path / "m" / "config.json").read_text())["ptmkit_pooling"] == "mean"
    back = load_model(tmp_path / "m").eval()
    ids = torch.tensor([[2, 10, 11, 3, 0]])
    with torch.no_grad():
        assert back.pooling == "mean"
        assert torch.allclose(back(ids, attention_mask=(ids != 0).long()).logits,
                              model(ids, attention_mask=(ids != 0).long()).logits, atol=1e-6)
    # an explicit choice wins over the saved one; a new head starts at [CLS] unless asked
    assert load_model(tmp_path / "m", pooling="cls").pooling == "cls"
    assert load_model(tmp_path / "m", task="sequence-classification", num_labels=3).pooling == "mean"
    save_model(_classifier("cls"), tmp_path / "c")
    assert "ptmkit_pooling" not in json.loads((tmp_path / "c" / "config.json").read_text())


def test_mean_pooling_is_refused_where_the_family_has_its_own_classifier():
    torch.manual_seed(0)
    electra = build_model("electra", make_config("electra", SMALL), "sequence-classification", num_labels=2)
    with pytest.raises(ConfigError, match="pooling='mean' is for the sequence classifier of encoders"):
        set_pooling(electra, "mean", "electra")
    set_pooling(electra, "cls", "electra")  # what it does anyway: accepted
    with pytest.raises(ConfigError, match="pooling must be one of"):
        set_pooling(_classifier(), "max", "bert")
