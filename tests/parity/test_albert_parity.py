"""ALBERT parity with transformers: tiny random AlbertModel/AlbertFor* (E=32 < H=64, shared layers) converted and
compared (logits, SOP logits, every hidden state), exported back and reproduced by transformers; layer groups, the
sharing modes HF cannot express, and old checkpoint layouts."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.convert.base import CheckpointError
from tests.parity.hf_tiny import V, hf_config, randomise_norms_and_biases

HF = {
    "base": T.AlbertModel,
    "masked-lm": T.AlbertForMaskedLM,
    "masked-lm-sop": T.AlbertForPreTraining,
    "sequence-classification": T.AlbertForSequenceClassification,
    "token-classification": T.AlbertForTokenClassification,
}
OURS = {
    "base": "AlbertEncoder",
    "masked-lm": "MaskedLM",
    "masked-lm-sop": "AlbertPreTraining",
    "sequence-classification": "AlbertSequenceClassifier",
    "token-classification": "AlbertTokenClassifier",
}


def _config(layers=2, groups=1, num_labels=2, **kw):
    """num_labels: the classifiers' classes; AlbertForPreTraining's SOP classifier reads it too, so 2 there."""
    cfg = hf_config("albert")
    cfg.num_hidden_layers, cfg.num_hidden_groups, cfg.num_labels = layers, groups, num_labels
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _inputs(padded: bool):
    ids = torch.randint(3, V, (3, 12))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # a sentence pair, as SOP sees it
    if padded:
        mask[1, 8:] = 0
        mask[2, 5:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, types


def _main(out):
    for name in ("logits", "prediction_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    raise AssertionError(f"no main output in {type(out).__name__}")


def _run_hf(model, ids, mask, types, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types, **kw)


def _check(tmp_path, ref, padded=True):
    """ref -> HF dir -> ptmkit: outputs equal; ptmkit -> our dir -> transformers: outputs equal again."""
    randomise_norms_and_biases(ref.eval()).save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask, types = _inputs(padded)
    want = _run_hf(ref, ids, mask, types, output_hidden_states=True)
    with torch.no_grad():
        got = ours(ids, mask, types, output_hidden_states=True)
    keep = mask.bool()
    if isinstance(ref, T.AlbertForSequenceClassification):
        assert_close(_main(got), _main(want), atol=1e-5, rtol=1e-4)
    else:
        assert_close(_main(got)[keep], _main(want)[keep], atol=1e-5, rtol=1e-4)  # padding is don't-care
    if isinstance(ref, T.AlbertForPreTraining):
        assert_close(got.pair_logits, want.sop_logits, atol=1e-5, rtol=1e-4)
    n = ref.config.num_hidden_layers + 1
    assert len(got.hidden_states) == len(want.hidden_states) == n
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert_close(g[keep], w[keep], atol=1e-5, rtol=1e-4)

    save_model(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == [type(ref).__name__]
    assert cfg["embedding_size"] == 32 and cfg["num_hidden_groups"] == ref.config.num_hidden_groups
    back = type(ref).from_pretrained(tmp_path / "ours").eval()
    again = _run_hf(back, ids, mask, types)
    assert_close(_main(again), _main(want), atol=1e-6, rtol=1e-5)
    if isinstance(ref, T.AlbertForPreTraining):
        assert_close(again.sop_logits, want.sop_logits, atol=1e-6, rtol=1e-5)
    return ours


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("task", sorted(HF))
def test_albert_import_export_parity(tmp_path, task, padded):
    ours = _check(tmp_path, HF[task](_config(num_labels=3 if "classification" in task else 2)), padded)
    assert type(ours).__name__ == OURS[task]
    backbone = getattr(ours, "backbone", ours)
    assert backbone.config.share == "all" and backbone.config.embedding_size == 32
    assert backbone.layers[0] is backbone.layers[1]  # the checkpoint's one layer group is one module here
    assert backbone.embeddings.tok.weight.shape == (V, 32)
    assert backbone.embeddings_project.weight.shape == (64, 32)


@pytest.mark.parametrize("task", ["base", "masked-lm-sop"])
def test_layer_groups(tmp_path, task):
    # 4 layers in 2 groups: layers 0-1 run group 0, layers 2-3 run group 1 (transformers' AlbertTransformer)
    ours = _check(tmp_path, HF[task](_config(layers=4, groups=2)))
    b = getattr(ours, "backbone", ours)
    assert b.config.num_hidden_groups == 2
    assert b.layers[0] is b.layers[1] and b.layers[2] is b.layers[3] and b.layers[1] is not b.layers[2]
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert {re.search(r"albert_layer_groups\.(\d+)\.", k).group(1) for k in saved if "layer_groups" in k} == {"0", "1"}


def test_every_layer_its_own_group_is_unshared(tmp_path):
    _check(tmp_path, T.AlbertModel(_config(layers=3, groups=3)))


@pytest.mark.parametrize("share", ["none", "all"])
def test_ptmkit_models_export_to_transformers(tmp_path, share):
    """A model built here (not imported) exports; share="none" becomes num_hidden_groups = num_layers."""
    cfg = make_config("albert", dict(vocab_size=V, embedding_size=32, hidden_size=64, num_layers=3, num_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, share=share))
    ours = randomise_norms_and_biases(build_model("albert", cfg, "masked-lm-sop").eval())
    save_model(ours, tmp_path / "ours")
    hf_cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert hf_cfg["num_hidden_groups"] == (3 if share == "none" else 1)
    back = T.AlbertForPreTraining.from_pretrained(tmp_path / "ours").eval()
    ids, mask, types = _inputs(True)
    want = _run_hf(back, ids, mask, types)
    with torch.no_grad():
        got = ours(ids, mask, types)
    keep = mask.bool()
    assert_close(got.logits[keep], want.prediction_logits[keep], atol=1e-5, rtol=1e-4)
    assert_close(got.pair_logits, want.sop_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("share", ["attention", "ffn"])
def test_partial_sharing_export_is_refused_until_unshared(tmp_path, share):
    cfg = make_config("albert", dict(vocab_size=V, embedding_size=32, hidden_size=64, num_layers=3, num_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, share=share))
    ours = randomise_norms_and_biases(build_model("albert", cfg, "masked-lm").eval())
    with pytest.raises(CheckpointError, match=rf"share='{share}' cannot be represented in Hugging Face.*unshare"):
        save_model(ours, tmp_path / "refused")
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    ids, mask, types = _inputs(True)
    with torch.no_grad():
        before = ours(ids, mask, types).logits
    ours.backbone.unshare()  # the fix the error names: same function, one copy of the weights per layer
    save_model(ours, tmp_path / "ours")
    back = T.AlbertForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    keep = mask.bool()
    assert_close(_run_hf(back, ids, mask, types).logits[keep], before[keep], atol=1e-5, rtol=1e-4)


def test_pretraining_checkpoint_fine_tunes_with_its_pooler(tmp_path):
    ref = randomise_norms_and_biases(T.AlbertForPreTraining(_config()).eval())
    ref.save_pretrained(tmp_path / "hf")
    clf = load_model(tmp_path / "hf", task="sequence-classification", num_labels=2)
    assert clf.load_report["checkpoint_task"] == "masked-lm-sop"
    assert set(clf.load_report["fresh"]) == {"out.weight", "out.bias"}  # the pre-trained pooler is kept
    assert_close(clf.dense.weight, ref.albert.pooler.weight)
    assert {k.split(".")[0] for k in clf.load_report["dropped"]} == {"predictions", "sop_classifier"}


def test_old_checkpoint_with_tied_decoder_copies_loads(tmp_path):
    ref = randomise_norms_and_biases(T.AlbertForMaskedLM(_config()).eval())
    ref.save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["predictions.decoder.weight"] = sd["albert.embeddings.word_embeddings.weight"].clone()  # as older saves did
    sd["predictions.decoder.bias"] = sd["predictions.bias"].clone()
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask, types = _inputs(False)
    with torch.no_grad():
        assert_close(ours(ids, mask, types).logits, _run_hf(ref, ids, mask, types).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change,match", [
    (dict(inner_group_num=2), "inner_group_num=2"),
    (dict(num_hidden_layers=3, num_hidden_groups=2), "does not divide"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings"),
])
def test_unsupported_layouts_are_refused(tmp_path, change, match):
    T.AlbertModel(_config()).save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "hf")
