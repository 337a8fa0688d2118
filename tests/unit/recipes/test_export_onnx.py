"""`ptm export-onnx`: a model directory becomes an ONNX graph with dynamic batch and length whose outputs ONNX Runtime
reproduces; int8 through ONNX Runtime's quantiser; the tokenizer travels with it; bad input is an error."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ptmkit.cli.main import main as ptm
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.recipes.export_onnx import export_onnx
from tests.unit.recipes.test_finetune import tiny_model  # noqa: F401  (fixture: a tiny BERT + tokenizer)


def _save(family, task, path, tok_from, **over):
    torch.manual_seed(0)
    vocab = Tokenizer.load(tok_from).vocab_size
    base = dict(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    model = build_model(family, make_config(family, {**base, **over}), task,
                        num_labels=3 if task == "sequence-classification" else None)
    save_model(model, path)
    Tokenizer.load(tok_from).save(path)
    return path


@pytest.mark.parametrize("family,task", [("bert", "sequence-classification"), ("bert", "base"),
                                         ("llama", "causal-lm")])
def test_the_exported_graph_gives_ptmkits_outputs_at_any_shape(family, task, tiny_model, tmp_path):  # noqa: F811
    over = {"num_kv_heads": 1} if family == "llama" else {}
    src = _save(family, task, tmp_path / "m", tiny_model, **over)
    report = export_onnx(src, tmp_path / "onnx", int8=True)
    assert report["fp32"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "onnx" / "tokenizer.json").is_file() and (tmp_path / "onnx" / "config.json").is_file()
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["int8"]["bytes"] < report["fp32"]["bytes"]
    # a shape the export never saw, checked here independently of the recipe's own check
    model = load_model(src).eval()
    ids = torch.randint(5, model.config.vocab_size, (5, 33))
    mask = torch.ones_like(ids)
    mask[2, 20:] = 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed.update({i.name: np.zeros_like(feed["input_ids"]) for i in session.get_inputs() if i.name not in feed})
    got = session.run(None, feed)[0]
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        ref = (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).numpy()
    real = mask.bool().numpy()
    if got.ndim == 3:  # per-token outputs: padded positions are not defined the same way everywhere
        got, ref = got[real], ref[real]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    q = report["int8"]
    assert q["relative_error"] < 0.1, q  # int8 weights: a few percent on a tiny random model


def test_the_cli_and_bad_input(tiny_model, tmp_path, capsys):  # noqa: F811
    src = _save("bert", "sequence-classification", tmp_path / "m", tiny_model)
    assert ptm(["export-onnx", str(src), "--out", str(tmp_path / "o")]) == 0
    assert "model.onnx" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="holds|already"):
        export_onnx(src, tmp_path / "o")
    with pytest.raises(ConfigError, match="model's own directory"):
        export_onnx(src, src)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(tmp_path / "nowhere", tmp_path / "o2")
