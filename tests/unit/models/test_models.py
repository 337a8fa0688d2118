"""Model construction, heads, configs and checkpoint I/O errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.models import PRESETS, TASKS, build_model, from_preset, load_model, make_config, save_model
from ptmkit.models.convert.base import CheckpointError

TINY = {
    "bert": dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=32),
    "roberta": dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=34),
    "gpt2": dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32),
    "llama": dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48),
}


def _tasks(family):
    lm = "causal-lm" if family in ("gpt2", "llama") else "masked-lm"
    return ["base", lm, "sequence-classification", "token-classification"]


@pytest.mark.parametrize("family", sorted(TINY))
def test_save_load_round_trip_every_task(tmp_path, family):
    for task in _tasks(family):
        model = build_model(family, make_config(family, TINY[family]), task, num_labels=3).eval()
        save_model(model, tmp_path / task)
        back = load_model(tmp_path / task).eval()
        assert type(back) is type(model)
        ids = torch.randint(3, 50, (2, 7))
        out_a, out_b = model(ids), back(ids)
        a = out_a.logits if hasattr(out_a, "logits") and out_a.logits is not None else out_a.last_hidden_state
        b = out_b.logits if hasattr(out_b, "logits") and out_b.logits is not None else out_b.last_hidden_state
        assert_close(a, b)


def test_masked_lm_scores_only_requested_positions():
    model = build_model("bert", make_config("bert", TINY["bert"]), "masked-lm").eval()
    ids = torch.randint(3, 50, (2, 9))
    where = torch.zeros(2, 9, dtype=torch.bool)
    where[0, 2] = where[1, 5] = where[1, 7] = True
    full = model(ids).logits
    part = model(ids, score_positions=where).logits
    assert part.shape == (3, 50)
    assert_close(part, full[where])


def test_base_checkpoint_into_classifier_reports_fresh_head(tmp_path):
    base = build_model("bert", make_config("bert", TINY["bert"]), "masked-lm")
    save_model(base, tmp_path / "m")
    clf = load_model(tmp_path / "m", task="sequence-classification", num_labels=2)
    assert clf.load_report["fresh"] == ["dense.weight", "dense.bias", "out.weight", "out.bias"]
    assert "cls.predictions.bias" in clf.load_report["dropped"]
    assert_close(clf.backbone.embeddings.tok.weight, base.backbone.embeddings.tok.weight)


def test_untied_llama_round_trips_lm_head(tmp_path):
    cfg = make_config("llama", {**TINY["llama"], "tie_word_embeddings": False})
    model = build_model("llama", cfg, "causal-lm")
    assert not model.tied
    save_model(model, tmp_path / "m")
    assert "lm_head.weight" in load_file(tmp_path / "m" / "model.safetensors")
    assert_close(load_model(tmp_path / "m").lm_head.weight, model.lm_head.weight)


def test_presets_build():
    for name in PRESETS:
        if name.endswith("-base") or name.endswith("-small"):
            continue  # large presets are exercised by the benchmark
        model = from_preset(name)
        assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("family,kw,msg", [
    ("bert", dict(hidden_size=30, num_heads=4), "not divisible"),
    ("bert", dict(num_layers=0), "must be positive"),
    ("gpt2", dict(hidden_size=-8), "must be positive"),
    ("llama", dict(num_heads=6, num_kv_heads=4, hidden_size=48), "must divide"),
    ("llama", dict(vocab_size=0), "must be positive"),
    ("bert", dict(hiden_size=32), "unknown key"),
    ("bert", dict(hidden_size="32"), "expected an integer"),
    ("nope", {}, "unsupported model family"),
])
def test_invalid_configs_fail_at_construction(family, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        make_config(family, kw)


def test_task_family_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="needs an encoder"):
        build_model("gpt2", make_config("gpt2", TINY["gpt2"]), "masked-lm")
    with pytest.raises(ConfigError, match="needs a decoder"):
        build_model("bert", make_config("bert", TINY["bert"]), "causal-lm")


@pytest.fixture
def saved_bert(tmp_path):
    model = build_model("bert", make_config("bert", TINY["bert"]), "masked-lm")
    save_model(model, tmp_path / "m")
    return tmp_path / "m"


def _edit_weights(path, fn):
    sd = load_file(path / "model.safetensors")
    fn(sd)
    save_file(sd, path / "model.safetensors")


def test_missing_tensors_are_listed(saved_bert):
    _edit_weights(saved_bert, lambda sd: sd.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: \['bert.encoder.layer.1.output.dense.weight'\]"):
        load_model(saved_bert)


def test_unexpected_tensors_are_listed(saved_bert):
    _edit_weights(saved_bert, lambda sd: sd.__setitem__("bert.encoder.layer.2.output.dense.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unexpected tensors: .*layer.2.output.dense.weight"):
        load_model(saved_bert)


def test_misshaped_tensors_are_listed(saved_bert):
    _edit_weights(saved_bert, lambda sd: sd.__setitem__("bert.embeddings.word_embeddings.weight", torch.zeros(51, 32)))
    with pytest.raises(CheckpointError, match=r"word_embeddings.*checkpoint \(51, 32\), model \(50, 32\)"):
        load_model(saved_bert)


def test_unsupported_architecture_and_model_type(saved_bert):
    cfg = json.loads((saved_bert / "config.json").read_text())
    (saved_bert / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForQuestionAnswering"]}))
    with pytest.raises(CheckpointError, match="supported: .*BertForMaskedLM"):
        load_model(saved_bert)
    (saved_bert / "config.json").write_text(json.dumps({**cfg, "model_type": "no-such-model"}))
    with pytest.raises(CheckpointError, match="supported: .*'bert'.*'llama'"):
        load_model(saved_bert)


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "empty")


def test_pytorch_bin_is_read_with_weights_only(saved_bert):
    sd = load_file(saved_bert / "model.safetensors")
    (saved_bert / "model.safetensors").unlink()
    torch.save(sd, saved_bert / "pytorch_model.bin")
    assert load_model(saved_bert) is not None

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, saved_bert / "pytorch_model.bin")
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        load_model(saved_bert)


def test_sharded_safetensors(saved_bert):
    sd = load_file(saved_bert / "model.safetensors")
    (saved_bert / "model.safetensors").unlink()
    names = sorted(sd)
    half = len(names) // 2
    save_file({k: sd[k] for k in names[:half]}, saved_bert / "model-1.safetensors")
    save_file({k: sd[k] for k in names[half:]}, saved_bert / "model-2.safetensors")
    index = {"weight_map": {k: ("model-1.safetensors" if i < half else "model-2.safetensors") for i, k in enumerate(names)}}
    (saved_bert / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_model(saved_bert) is not None


def test_every_task_is_known():
    assert set(TASKS) == {"base", "masked-lm", "causal-lm", "sequence-classification", "token-classification",
                          "replaced-token-detection", "seq2seq-lm", "permutation-lm", "masked-lm-sop",
                          "knowledge-masked-lm", "kg-embedding", "image-text-contrastive", "image-reconstruction",
                          "vl-pretraining"}
