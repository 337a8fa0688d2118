"""Parity with transformers: convert tiny random HF models, compare outputs, export back, compare again."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit.models import load_model, save_model
from tests.parity.hf_tiny import HF_CLASSES, V, make_reference

CASES = sorted(HF_CLASSES)


def _inputs(family: str, padded: bool):
    ids = torch.randint(3, V, (3, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 8:] = 0  # right padding
        mask[2, 5:] = 0
        pad = 1 if family == "roberta" else 0
        ids = ids.masked_fill(mask == 0, pad)
    return ids, mask


def _main_output(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("family,task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_import_export_parity(tmp_path, family, task, padded):
    ref = make_reference(family, task)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids, mask = _inputs(family, padded)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        got = ours(ids, mask, output_hidden_states=True)
    keep = mask.bool()
    want_main, got_main = _main_output(want), _main_output(got)
    if task == "sequence-classification":
        assert_close(got_main, want_main, atol=1e-5, rtol=1e-4)
    else:
        assert_close(got_main[keep], want_main[keep], atol=1e-5, rtol=1e-4)  # padding positions are don't-care
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert_close(g[keep], w[keep], atol=1e-5, rtol=1e-4)

    # export: transformers loads our directory unchanged and reproduces its own outputs
    save_model(ours, tmp_path / "ours")
    back = type(ref).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask)
    assert_close(_main_output(again), want_main, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "llama-tied-mqa", "llama-bias"])
def test_left_padded_decoder_matches_with_explicit_positions(tmp_path, family):
    ref = make_reference(family, "causal-lm")
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids = torch.randint(3, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, mask).logits  # ptmkit derives the same positions from the mask by default
    assert_close(got[mask.bool()], want[mask.bool()], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama", "llama-tied-mqa", "llama-bias"])
def test_greedy_generation_matches_transformers(tmp_path, family):
    ref = make_reference(family, "causal-lm")
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    prompt = torch.randint(3, V, (1, 6))
    want = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                        eos_token_id=None, pad_token_id=0)
    got = ours.generate(prompt, max_new_tokens=12)
    assert got.tolist() == want.tolist()
