"""MASS: one contiguous fragment of ~50% of each row, 80/10/10 on the encoder side, decoder inputs = the fragment
shifted right with [MASK] elsewhere, labels on the fragment only, config errors, and the loss by hand."""

from __future__ import annotations

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.objectives import MASS, MASSConfig, seeded_generator
from ptmkit.objectives.seq2seq import seq2seq_loss
from tests.unit.objectives.seq2seq_stub import StubSeq2Seq, hand_loss

PAD, MASK, V = 0, 4, 500
SPECIAL = [0, 1, 2, 3, 4]


def _mass(**kw):
    return MASS(MASSConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))


def _batch(b=256, t=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, t), generator=g)
    n = torch.randint(1, t + 1, (b,), generator=g)
    n[:8] = t
    att = (torch.arange(t)[None, :] < n[:, None]).long()
    return {"input_ids": ids.masked_fill(att == 0, PAD), "attention_mask": att}


def test_fragment_is_contiguous_with_half_the_length_and_uniform_start():
    batch = _batch()
    out = _mass().corrupt(batch, seeded_generator(0, 0))
    for r in range(len(batch["input_ids"])):
        n = int(batch["attention_mask"][r].sum())
        where = (out["labels"][r] != -100).nonzero().squeeze(1).tolist()
        m = max(1, round(n * 0.5))
        assert len(where) == m and where == list(range(where[0], where[0] + m))  # one contiguous fragment
        assert 0 <= where[0] <= n - m
    lots = _mass().corrupt({k: v[:8].repeat(64, 1) for k, v in batch.items()}, seeded_generator(0, 1))
    u = (lots["labels"] != -100).float().argmax(1).float()
    assert abs(u.mean().item() - 16.0) < 1.5 and u.min() == 0 and u.max() >= 30  # uniform over 0..32


def test_encoder_80_10_10_and_decoder_alignment():
    batch = _batch()
    ids = batch["input_ids"]
    out = _mass().corrupt(batch, seeded_generator(0, 0))
    frag = out["labels"] != -100
    enc = out["input_ids"]
    assert torch.equal(enc[~frag], ids[~frag])  # outside the fragment: unchanged
    assert torch.equal(out["labels"][frag], ids[frag])
    n = frag.sum().item()
    masked = (enc[frag] == MASK).sum().item() / n
    kept = (enc[frag] == ids[frag]).sum().item() / n
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # (a random token equal to the original is rare)
    assert not torch.isin(enc[frag & (enc != MASK) & (enc != ids)], torch.tensor(SPECIAL)).any()
    dec = out["decoder_input_ids"]
    for r in range(32):
        where = frag[r].nonzero().squeeze(1).tolist()
        u, v = where[0], where[-1] + 1
        assert dec[r, u] == MASK and dec[r, u + 1: v].tolist() == ids[r, u: v - 1].tolist()  # shifted right
        assert (dec[r, :u] == MASK).all() and (dec[r, v:] == MASK).all()  # every other position masked
    assert torch.equal(out["attention_mask"], batch["attention_mask"])
    again = _mass().corrupt(batch, seeded_generator(0, 0))
    assert all(torch.equal(out[k], again[k]) for k in out)


def test_config_errors():
    with pytest.raises(ConfigError, match="fragment_ratio"):
        MASSConfig(fragment_ratio=0.0)
    with pytest.raises(ConfigError, match="sum to at most 1"):
        MASSConfig(mask_token_fraction=0.9, random_token_fraction=0.2)
    with pytest.raises(ConfigError, match="mask token"):
        MASS(MASSConfig(vocab_size=V))


def test_loss_by_hand():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 0, 0]])
    batch = _mass(mask_token_fraction=1.0, random_token_fraction=0.0).corrupt(
        {"input_ids": ids, "attention_mask": (ids != 0).long()}, seeded_generator(0, 0))
    # written out by hand for this draw: fragments x[3:6] of row 0 (3 = round(6 / 2) tokens), x[2:4] of row 1
    assert batch["labels"].tolist() == [[-100, -100, -100, 13, 14, 15], [-100, -100, 22, 23, -100, -100]]
    assert batch["input_ids"].tolist() == [[10, 11, 12, MASK, MASK, MASK], [20, 21, MASK, MASK, 0, 0]]
    assert batch["decoder_input_ids"].tolist() == [[MASK, MASK, MASK, MASK, 13, 14], [MASK, MASK, MASK, 22, MASK, MASK]]
    model = StubSeq2Seq(V)
    loss, metrics = seq2seq_loss(model, batch)
    assert torch.equal(model.calls[0]["decoder_input_ids"], batch["decoder_input_ids"])
    logits = model(None, decoder_input_ids=batch["decoder_input_ids"]).logits
    assert loss.item() == pytest.approx(hand_loss(logits, batch["labels"]), rel=1e-5)
    assert metrics["predicted_tokens"] == 5.0
