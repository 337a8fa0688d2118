"""TernaryBERT: TWN ternarisation (values, threshold, scale), straight-through training, 2-bit storage whose model
computes what training simulated, and ternary training with a distilling teacher through `ptm finetune`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.compress.quant import convert, load_quantized, quantize, report, save_quantized
from ptmkit.compress.quant.ternary import TernaryLinear, fake_quant_per_token, ternarize
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir  # noqa: F401  (fixtures)
from tests.unit.recipes.test_finetune_distill import teacher, tiny_model  # noqa: F401


def _bert():
    torch.manual_seed(0)
    return build_model("bert", make_config("bert", dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
                                                        intermediate_size=64, max_position_embeddings=32,
                                                        initializer_range=0.1)),
                       "sequence-classification", num_labels=2)


def test_ternarize_is_twn_row_by_row():
    w = torch.randn(5, 40)
    t, a = ternarize(w)
    assert set(t.unique().tolist()) <= {-1.0, 0.0, 1.0} and a.shape == (5, 1)
    for r in range(5):  # brute force, row by row: D = 0.7 mean|w|, a = mean of the |w| above it
        row = w[r]
        keep = row.abs() > 0.7 * row.abs().mean()
        assert torch.equal(t[r] != 0, keep) and torch.equal(t[r][keep], torch.sign(row[keep]))
        assert a[r, 0] == pytest.approx(row.abs()[keep].mean().item(), rel=1e-6)


def test_per_token_fake_quant_rounds_each_token_to_256_levels_and_passes_gradients():
    x = torch.randn(3, 7, 16, requires_grad=True)
    y = fake_quant_per_token(x)
    for tok in y.detach().reshape(-1, 16):
        assert tok.unique().numel() <= 256
    assert (y - x).abs().max() <= ((x.amax(-1) - x.amin(-1)) / 255).max() / 2 + 1e-6
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through


def test_ternary_training_converts_to_2_bit_storage_with_the_same_outputs(tmp_path):
    model = quantize(_bert(), "ternary")
    layers = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert layers and report(model).weight_bits and set(report(model).weight_bits.values()) == {2}
    ids = torch.randint(1, 64, (4, 9))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(ids).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        simulated = model(ids).logits
        int2 = convert(copy.deepcopy(model))
        real = int2(ids).logits
    assert torch.allclose(real, simulated, rtol=1e-2, atol=1e-2), (real, simulated)
    save_quantized(int2, tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["method"] == "ternary" and set(cfg["weight_bits"].values()) == {2}
    back = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(back(ids).logits, real)
    qdata = {k: v for k, v in load_file(str(tmp_path / "q" / "model.safetensors")).items() if k.endswith(".qdata")}
    assert qdata and all(v.dtype == torch.uint8 for v in qdata.values())  # four 2-bit values per byte


def test_ternary_bert_distils_from_its_full_precision_teacher(teacher, sst_dir, tmp_path):  # noqa: F811
    from ptmkit.recipes.evaluate import evaluate
    from ptmkit.recipes.finetune import finetune

    out = tmp_path / "run"
    res = finetune(_cfg(teacher, sst_dir, out, compress="ternary", teacher=str(teacher), distill="tinybert",
                        distill_options={"stage": "all"}, epochs=2.0, lr=1e-3))
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert {"hidden_loss", "attention_loss", "prediction_loss"} <= set(train[0])
    assert json.loads((out / "best" / "config.json").read_text())["quantization_config"]["method"] == "ternary"
    again = evaluate(out / "best", data_dir=sst_dir, precision="fp32", show_progress=False)
    assert abs(again["metrics"]["accuracy"] - res["dev"]["accuracy"]) <= 0.05


def test_bad_ternary_settings_are_errors():
    with pytest.raises(ConfigError, match="activation_bits must be 8"):
        quantize(_bert(), "ternary", {"activation_bits": 4})
    with pytest.raises(ConfigError, match="no ternary layers|nothing to convert"):
        convert(quantize(_bert(), "int8-dynamic"))
