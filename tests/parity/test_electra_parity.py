"""ELECTRA parity with transformers: tiny random ElectraModel/ElectraFor* (embedding_size != hidden_size), converted,
compared (logits + every hidden state), exported back and reproduced by transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from ptmkit.models import load_model, save_model
from ptmkit.models.convert.base import CheckpointError
from tests.parity.hf_tiny import randomise_norms_and_biases

V = 101
HF = {
    "base": T.ElectraModel,
    "replaced-token-detection": T.ElectraForPreTraining,
    "masked-lm": T.ElectraForMaskedLM,
    "sequence-classification": T.ElectraForSequenceClassification,
    "token-classification": T.ElectraForTokenClassification,
}
OURS = {
    "base": "ElectraEncoder",
    "replaced-token-detection": "ReplacedTokenDetector",
    "masked-lm": "ElectraMaskedLM",
    "sequence-classification": "ElectraSequenceClassifier",
    "token-classification": "TokenClassifier",
}


def _config(embedding_size=32, **kw):
    return T.ElectraConfig(vocab_size=V, embedding_size=embedding_size, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3, **kw)


def _inputs(padded: bool):
    ids = torch.randint(3, V, (3, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 8:] = 0
        mask[2, 5:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def _main(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _check(tmp_path, ref, padded):
    randomise_norms_and_biases(ref.eval()).save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _inputs(padded)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, mask, output_hidden_states=True)
    keep = mask.bool()
    if isinstance(ref, T.ElectraForSequenceClassification):
        assert_close(_main(got), _main(want), atol=1e-5, rtol=1e-4)
    else:
        assert_close(_main(got)[keep], _main(want)[keep], atol=1e-5, rtol=1e-4)  # padding is don't-care
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert_close(g[keep], w[keep], atol=1e-5, rtol=1e-4)

    save_model(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == [type(ref).__name__] and cfg["embedding_size"] == ref.config.embedding_size
    back = type(ref).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask)
    assert_close(_main(again), _main(want), atol=1e-6, rtol=1e-5)
    return ours


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("task", sorted(HF))
def test_electra_import_export_parity(tmp_path, task, padded):
    ours = _check(tmp_path, HF[task](_config()), padded)
    assert type(ours).__name__ == OURS[task]
    backbone = getattr(ours, "backbone", ours)
    assert backbone.embeddings.tok.weight.shape == (V, 32) and backbone.embeddings_project is not None


@pytest.mark.parametrize("task", ["base", "masked-lm", "replaced-token-detection"])
def test_electra_equal_widths_have_no_projection(tmp_path, task):
    ours = _check(tmp_path, HF[task](_config(embedding_size=64)), padded=True)
    assert getattr(ours, "backbone", ours).embeddings_project is None
    assert not any("embeddings_project" in k for k in load_file(tmp_path / "ours" / "model.safetensors"))


@pytest.mark.parametrize("task", ["masked-lm", "replaced-token-detection"])
def test_generator_head_uses_gelu_whatever_hidden_act(tmp_path, task):
    # transformers hard-codes gelu in ElectraGeneratorPredictions; the discriminator head follows hidden_act
    _check(tmp_path, HF[task](_config(hidden_act="gelu_new")), padded=False)


def test_discriminator_checkpoint_fine_tunes_with_a_fresh_classifier(tmp_path):
    ref = randomise_norms_and_biases(T.ElectraForPreTraining(_config()).eval())
    ref.save_pretrained(tmp_path / "hf")
    clf = load_model(tmp_path / "hf", task="sequence-classification", num_labels=2)
    assert clf.load_report["checkpoint_task"] == "replaced-token-detection"
    assert set(clf.load_report["fresh"]) == {"dense.weight", "dense.bias", "out.weight", "out.bias"}
    assert all(k.startswith("discriminator_predictions.") for k in clf.load_report["dropped"])
    assert_close(clf.backbone.embeddings_project.weight, ref.electra.embeddings_project.weight)


def test_old_checkpoint_with_tied_generator_copy_loads(tmp_path):
    ref = randomise_norms_and_biases(T.ElectraForMaskedLM(_config()).eval())
    ref.save_pretrained(tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["generator_lm_head.weight"] = sd["electra.embeddings.word_embeddings.weight"].clone()  # as older saves did
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _inputs(False)
    with torch.no_grad():
        assert_close(ours(ids, mask).logits, ref(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)


def test_untied_generator_is_refused(tmp_path):
    ref = T.ElectraForMaskedLM(_config())
    ref.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):
        load_model(tmp_path / "hf")
