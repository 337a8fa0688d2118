"""An efficient attention kernel survives a save/load round trip (config.json keys + its own tensors), and the
exported directory still loads in transformers as the plain dense model."""

from __future__ import annotations

import json
import logging

import torch
from torch.testing import assert_close

from ptmkit.models import build_model, load_model, make_config, save_model


def _bert(kernel: str, options: dict):
    cfg = make_config("bert", dict(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                   attention_kernel=kernel, attention_options=options))
    return build_model("bert", cfg, "masked-lm").eval()


def test_kernel_with_learned_tensors_round_trips(tmp_path, caplog):
    torch.manual_seed(0)
    model = _bert("linformer", {"proj_len": 8, "max_len": 64, "init": "gaussian"})
    kernel_tensors = [k for k in model.state_dict() if ".attn.kernel." in k]
    assert kernel_tensors, "linformer should own projection tensors"
    with caplog.at_level(logging.WARNING):
        save_model(model, tmp_path / "m")
    assert "no Hugging Face equivalent" in caplog.text
    hf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert hf["ptmkit_attention_kernel"] == "linformer" and hf["ptmkit_attention_options"]["proj_len"] == 8
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.backbone.config.attention_kernel == "linformer"
    for k in kernel_tensors:
        assert torch.equal(loaded.state_dict()[k], model.state_dict()[k])
    ids = torch.randint(5, 100, (2, 32))
    assert_close(loaded(ids).logits, model(ids).logits)


def test_pattern_kernel_round_trips_and_dense_checkpoints_are_unchanged(tmp_path):
    model = _bert("sliding_window", {"window": 4})
    save_model(model, tmp_path / "sw")
    assert load_model(tmp_path / "sw").backbone.config.attention_options == {"window": 4}
    save_model(_bert("sdpa", {}), tmp_path / "dense")
    hf = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert not any(k.startswith("ptmkit_") for k in hf)


def test_transformers_loads_the_export_as_a_dense_model(tmp_path):
    import transformers

    save_model(_bert("sliding_window", {"window": 4}), tmp_path / "sw")
    hf_model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "sw")
    assert hf_model.config.ptmkit_attention_kernel == "sliding_window"
