"""Sliding-window perplexity against transformers, on the same tiny models and token stream: exactly the token-level
reference computed with the transformers model, and the transformers perplexity guide's own code within the one
token per window that the guide leaves out of its count. Pseudo-perplexity against one-token-at-a-time scoring."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T

from ptmkit.analysis.lm_eval import causal_perplexity, pseudo_perplexity, windows
from ptmkit.models import load_model
from tests.parity.hf_tiny import V, hf_config, randomise_norms_and_biases

WINDOW, STRIDE = 32, 12


def _hf_and_ours(family, tmp_path):
    torch.manual_seed(0)
    hf = (T.GPT2LMHeadModel if family == "gpt2" else T.LlamaForCausalLM)(hf_config(family)).eval()
    randomise_norms_and_biases(hf)
    hf.save_pretrained(tmp_path / family)
    return hf, load_model(tmp_path / family).eval()


def _ids(n=150):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _reference_tokens(hf, ids):
    """Per-token reference with transformers: each token (but the first) scored once, from the window that the
    guide assigns it to, with the context that window gives it."""
    nll, count = 0.0, 0
    for begin, end, scored in windows(len(ids), WINDOW, STRIDE):
        logits = hf(ids[None, begin:end]).logits[0].float()  # (L, V)
        pred = logits[end - begin - scored - 1:end - begin - 1]  # the positions predicting the scored tokens
        nll += float(torch.nn.functional.cross_entropy(pred, ids[end - scored:end], reduction="sum"))
        count += scored
    return math.exp(nll / count), count


@torch.no_grad()
def _guide(hf, ids):
    """The transformers perplexity guide (docs: perplexity of fixed-length models), verbatim but for the names."""
    seq_len, nll_sum, n_tokens, prev_end_loc = ids.numel(), 0.0, 0, 0
    for begin_loc in range(0, seq_len, STRIDE):
        end_loc = min(begin_loc + WINDOW, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[None, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        neg_log_likelihood = hf(input_ids, labels=target_ids).loss
        num_valid_tokens = (target_ids != -100).sum().item()
        num_loss_tokens = num_valid_tokens - target_ids.size(0)
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sliding_window_perplexity_matches_transformers(family, tmp_path):
    hf, ours = _hf_and_ours(family, tmp_path)
    ids = _ids()
    got = causal_perplexity(ours, ids, window=WINDOW, stride=STRIDE, batch_size=3, show_progress=False)
    ref, count = _reference_tokens(hf, ids)
    assert got["tokens"] == count == len(ids) - 1  # every token but the first, once
    assert got["perplexity"] == pytest.approx(ref, rel=1e-5)
    guide, guide_count = _guide(hf, ids)
    assert guide_count == count - (got["windows"] - 1)  # the guide's count: one short per window after the first
    assert got["perplexity"] == pytest.approx(guide, rel=2e-3)  # and so a hair off its weighting


def test_windows_cover_every_token_once():
    for n, w, s in [(100, 32, 12), (33, 32, 1), (5, 32, 16)]:
        scored = sorted(t for b, e, k in windows(n, w, s) for t in range(e - k, e))
        assert scored == list(range(1, n)), (n, w, s)
    # disjoint windows (stride = window): a window's first token has no context and is not scored
    scored = sorted(t for b, e, k in windows(64, 32, 32) for t in range(e - k, e))
    assert scored == [t for t in range(1, 64) if t != 32]


@torch.no_grad()
def test_pseudo_perplexity_equals_masking_one_token_at_a_time(tmp_path):
    torch.manual_seed(0)
    hf = T.BertForMaskedLM(hf_config("bert")).eval()
    randomise_norms_and_biases(hf)
    hf.save_pretrained(tmp_path / "bert")
    ours = load_model(tmp_path / "bert").eval()
    g = torch.Generator().manual_seed(5)
    sents = [[1] + torch.randint(5, V, (n,), generator=g).tolist() + [2] for n in (3, 9, 6)]
    got = pseudo_perplexity(ours, sents, mask_id=4, special_ids=[1, 2], batch_size=7, show_progress=False)
    total, count = 0.0, 0
    for s in sents:
        for p in range(1, len(s) - 1):
            x = torch.tensor([s])
            x[0, p] = 4
            total += float(hf(x).logits[0, p].log_softmax(-1)[s[p]])
            count += 1
    assert got["tokens"] == count and got["pseudo_perplexity"] == pytest.approx(math.exp(-total / count), rel=1e-5)
