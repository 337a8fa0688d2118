"""XLNet parity with transformers: tiny random XLNetModel / XLNetLMHeadModel / XLNetFor{Sequence,Token}Classification,
converted and compared (outputs + every content-stream hidden state), with padding, with the two-stream path
(perm_mask + target_mapping), with segment ids, with mems from a previous segment; exported back and reproduced."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from torch.testing import assert_close

from ptmkit.models import load_model, save_model
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.xlnet import XLNetBackbone, XLNetConfig
from tests.parity.hf_tiny import randomise_norms_and_biases

V = 101
HF = {
    "base": T.XLNetModel,
    "permutation-lm": T.XLNetLMHeadModel,
    "sequence-classification": T.XLNetForSequenceClassification,
    "token-classification": T.XLNetForTokenClassification,
}
TOL = dict(atol=1e-5, rtol=1e-4)


def _config(**kw):
    return T.XLNetConfig(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0,
                         summary_last_dropout=0.0, mem_len=6, num_labels=3, **kw)


def _pair(tmp_path, task, **kw):
    torch.manual_seed(0)
    ref = randomise_norms_and_biases(HF[task](_config(**kw)).eval())
    ref.save_pretrained(tmp_path / "hf")
    return ref, load_model(tmp_path / "hf").eval()


def _main(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _inputs(padded: bool, b=3, t=10):
    ids = torch.randint(6, V, (b, t))
    mask = torch.ones_like(ids)
    if padded:  # XLNet pads on the left, so the last position (<cls>) is real
        mask[1, :3] = 0
        mask[2, :6] = 0
        ids = ids.masked_fill(mask == 0, 5)
    return ids, mask


def _perm_inputs(b=3, t=10, p=4):
    """A random factorisation order per row; the last p positions of the order are predicted (§2.3)."""
    order = torch.stack([torch.randperm(t) for _ in range(b)])  # (B, T) positions in factorisation order
    rank = order.argsort(-1)  # (B, T) rank of each position
    targets = order[:, -p:]  # (B, P)
    is_target = torch.zeros(b, t, dtype=torch.bool).scatter(1, targets, True)
    # i may not see j when j comes later in the order, or j is a target at or after i (self included for targets)
    perm = (rank[:, None, :] > rank[:, :, None]) | ((rank[:, None, :] == rank[:, :, None]) & is_target[:, None, :])
    mapping = torch.nn.functional.one_hot(targets, t).float()  # (B, P, T)
    return perm.float(), mapping


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("task", sorted(HF))
def test_import_export_parity(tmp_path, task, padded):
    ref, ours = _pair(tmp_path, task)
    ids, mask = _inputs(padded)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1  # two segments: exercises the relative segment encoding
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        got = ours(ids, mask, types, output_hidden_states=True)
    keep = mask.bool()
    if task == "sequence-classification":
        assert_close(_main(got), _main(want), **TOL)
    else:
        assert_close(_main(got)[keep], _main(want)[keep], **TOL)  # padding positions are don't-care
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for g, w in zip(got.hidden_states, want.hidden_states):
        assert_close(g[keep], w[keep], **TOL)

    save_model(ours, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["architectures"] == [type(ref).__name__] and cfg["model_type"] == "xlnet"
    back = type(ref).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert_close(_main(again), _main(want), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("task", ["base", "permutation-lm"])
def test_two_stream_parity(tmp_path, task, padded):
    ref, ours = _pair(tmp_path, task)
    ids, mask = _inputs(padded)
    perm, mapping = _perm_inputs()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, perm_mask=perm, target_mapping=mapping,
                   output_hidden_states=True)
        got = ours(ids, mask, perm_mask=perm, target_mapping=mapping, output_hidden_states=True)
    assert _main(got).shape[:2] == (3, 4)  # one output per prediction
    # predictions of padded positions are don't-care: keep the ones whose target is a real token
    target_real = mask.gather(1, mapping.argmax(-1)).bool()  # (B, P)
    assert_close(_main(got)[target_real], _main(want)[target_real], **TOL)
    # transformers interleaves (h, g) per layer; we keep the two streams apart
    want_h, want_g = want.hidden_states[0::2], want.hidden_states[1::2]
    for g, w in zip(got.hidden_states, want_h):
        assert_close(g[mask.bool()], w[mask.bool()], **TOL)
    for g, w in zip(got.query_hidden_states, want_g):
        assert_close(g[target_real], w[target_real], **TOL)


@pytest.mark.parametrize("task", ["base", "permutation-lm", "token-classification"])
def test_segment_recurrence_parity(tmp_path, task):
    ref, ours = _pair(tmp_path, task)
    first, second = torch.randint(6, V, (2, 8)), torch.randint(6, V, (2, 5))
    with torch.no_grad():
        w1 = ref(input_ids=first, use_mems=True)
        g1 = ours(first, use_mems=True)
        for g, w in zip(g1.mems, w1.mems):
            assert_close(g, w.transpose(0, 1), **TOL)  # transformers' mems are (M, B, H); ours (B, M, H)
        assert g1.mems[0].shape == (2, 6, 32)  # mem_len = 6
        w2 = ref(input_ids=second, mems=w1.mems, use_mems=True)
        g2 = ours(second, mems=g1.mems, use_mems=True)
    assert_close(_main(g2), _main(w2), **TOL)
    for g, w in zip(g2.mems, w2.mems):
        assert_close(g, w.transpose(0, 1), **TOL)
    # the memory changes the output: recurrence is really used
    with torch.no_grad():
        assert not torch.allclose(_main(ours(second)), _main(g2))


def test_recurrence_with_two_streams(tmp_path):
    ref, ours = _pair(tmp_path, "permutation-lm")
    first, second = torch.randint(6, V, (3, 8)), torch.randint(6, V, (3, 10))
    perm, mapping = _perm_inputs()
    with torch.no_grad():
        w1, g1 = ref(input_ids=first, use_mems=True), ours(first, use_mems=True)
        want = ref(input_ids=second, mems=w1.mems, perm_mask=perm, target_mapping=mapping).logits
        got = ours(second, mems=g1.mems, perm_mask=perm, target_mapping=mapping).logits
    assert_close(got, want, **TOL)


def test_mems_carry_no_gradient():
    m = XLNetBackbone(XLNetConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                  mem_len=4, dropout=0.0))
    out = m(torch.randint(0, V, (2, 6)), use_mems=True)
    assert all(not t.requires_grad for t in out.mems) and out.mems[0].shape == (2, 4, 32)
    out2 = m(torch.randint(0, V, (2, 3)), mems=out.mems, use_mems=True)
    assert out2.mems[0].shape == (2, 4, 32)


def test_query_stream_does_not_see_its_own_token(tmp_path):
    """Changing the token at a predicted position leaves that prediction unchanged (§2.3), though it changes the
    content stream at that position."""
    _, ours = _pair(tmp_path, "permutation-lm")
    ids = torch.randint(6, V, (1, 8))
    perm = torch.zeros(1, 8, 8)
    perm[:, :, 7] = 1.0  # nobody sees the last token
    mapping = torch.zeros(1, 1, 8)
    mapping[0, 0, 7] = 1.0
    other = ids.clone()
    other[0, 7] = (ids[0, 7] + 1 - 6) % (V - 6) + 6
    with torch.no_grad():
        a = ours(ids, perm_mask=perm, target_mapping=mapping).logits
        b = ours(other, perm_mask=perm, target_mapping=mapping).logits
    assert_close(a, b)


def test_config_validation_and_unsupported_checkpoints(tmp_path):
    from ptmkit.config import ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        XLNetConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="mem_len"):
        XLNetConfig(mem_len=-1)
    with pytest.raises(ConfigError, match="attn_type"):
        XLNetConfig(attn_type="uni")
    ref = T.XLNetModel(_config(bi_data=True))
    ref.save_pretrained(tmp_path / "bi")
    with pytest.raises(CheckpointError, match="bi_data"):
        load_model(tmp_path / "bi")
