"""SpanBERT span masking + SBO: span lengths ~ truncated Geo(0.2), 15% of tokens, spans inside real non-special
text with correct boundaries, one 80/10/10 decision per span, the SBO head's loss (by hand) and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import SpanConfig, SpanMasking, seeded_generator
from ptmkit.objectives.span import mean_span_length

MASK, V = 4, 1000
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
WORD_START = [True] * 5 + [i % 3 != 0 for i in range(5, V)]  # ids divisible by 3 continue a word


def _batch(b=64, t=512, pad_from=400):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[:, t // 2] = 3  # a [SEP] in the middle of every row
    att = torch.ones_like(ids)
    att[: b // 2, pad_from:] = 0
    ids[: b // 2, pad_from:] = 0
    ids[: b // 2, pad_from - 1] = 3
    return {"input_ids": ids, "attention_mask": att}


def _span(**kw):
    kw = {"whole_words": False, "sbo_weight": 0.0, **kw}
    return SpanMasking(SpanConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))


def _runs(chosen_row):
    """Maximal runs [start, end) of chosen positions in one row (plain loop: the reference)."""
    runs, start = [], None
    for t, c in enumerate(chosen_row.tolist() + [False]):
        if c and start is None:
            start = t
        elif not c and start is not None:
            runs.append((start, t))
            start = None
    return runs


def test_mean_of_the_truncated_geometric_is_3_8():
    assert mean_span_length(0.2, 10) == pytest.approx(3.797, abs=1e-3)  # SpanBERT §3.1: "mean 3.8"
    assert SpanConfig().length_probs().sum().item() == pytest.approx(1.0)


def test_span_lengths_follow_the_truncated_geometric():
    obj = _span()
    batch = _batch()
    _, spans, _ = obj.place(batch, seeded_generator(0, 0))
    placed = spans.placed
    drawn = spans.sampled_len[placed]  # every placed span's drawn length (the stopping rule looks only at the past)
    n = drawn.numel()
    assert n > 1000
    probs = SpanConfig().length_probs()
    freq = torch.bincount(drawn, minlength=11)[1:].double() / n
    for k in range(10):
        p = probs[k].item()
        assert abs(freq[k].item() - p) < 4 * math.sqrt(p * (1 - p) / n), (k + 1, freq[k].item(), p)
    sd = math.sqrt(sum((k + 1) ** 2 * probs[k].item() for k in range(10)) - 3.797 ** 2)
    assert abs(drawn.double().mean().item() - 3.797) < 4 * sd / math.sqrt(n)
    # realised lengths are the drawn ones, except the last span of a row, cut to the budget
    real = (spans.end - spans.start)[placed]
    trunc = spans.truncated[placed]
    assert torch.equal(real[~trunc], drawn[~trunc]) and (real[trunc] < drawn[trunc]).all()
    assert trunc.sum() <= batch["input_ids"].shape[0]  # at most one per row
    assert real.max() <= 10 and abs(real.double().mean().item() - 3.797) < 0.3


def test_total_rate_boundaries_and_no_crossing_of_padding_or_specials():
    obj = _span()
    batch = _batch()
    out = obj.corrupt(batch, seeded_generator(0, 1))
    ids, att = batch["input_ids"], batch["attention_mask"].bool()
    chosen = out["labels"] != -100
    maskable = att & ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (chosen & ~maskable).any()  # never a special token or padding
    rate = chosen.sum().item() / maskable.sum().item()
    assert abs(rate - 0.15) < 0.005, rate
    per_row = chosen.sum(1).double() / maskable.sum(1)
    assert (per_row - 0.15).abs().max() < 0.01  # the budget is per row
    n_spans = 0
    for b in range(ids.shape[0]):
        for s, e in _runs(chosen[b]):
            n_spans += 1
            assert e - s <= 10  # spans are never adjacent, so each run is one span
            assert att[b, s - 1] and att[b, e]  # both boundaries are real tokens ...
            assert not chosen[b, s - 1] and not chosen[b, e]  # ... and visible
            assert (out["span_left"][b, s:e] == s - 1).all() and (out["span_right"][b, s:e] == e).all()
    assert n_spans > 1000
    assert (out["span_left"][~chosen] == -1).all() and (out["span_right"][~chosen] == -1).all()


def test_replacement_is_decided_once_per_span():
    obj = _span(random_token_fraction=0.2, mask_token_fraction=0.6)
    batch = _batch()
    out = obj.corrupt(batch, seeded_generator(0, 2))
    chosen = out["labels"] != -100
    kinds = {"mask": 0, "keep": 0, "random": 0}
    for b in range(16):
        for s, e in _runs(chosen[b]):
            new, old = out["input_ids"][b, s:e], batch["input_ids"][b, s:e]
            if (new == MASK).all():
                kinds["mask"] += 1
            elif torch.equal(new, old):
                kinds["keep"] += 1
            else:
                assert not (new == MASK).any()  # a random span is random throughout
                kinds["random"] += 1
    n = sum(kinds.values())
    for k, want in (("mask", 0.6), ("keep", 0.2), ("random", 0.2)):
        assert abs(kinds[k] / n - want) < 4 * math.sqrt(want * (1 - want) / n), kinds


def test_whole_word_spans_start_and_end_at_word_boundaries():
    obj = _span(whole_words=True, word_start=WORD_START)
    batch = _batch(16, 256, pad_from=200)
    ids = batch["input_ids"]
    out = obj.corrupt(batch, seeded_generator(0, 3))
    chosen = out["labels"] != -100
    assert chosen.any()
    for b in range(ids.shape[0]):
        for s, e in _runs(chosen[b]):
            assert WORD_START[int(ids[b, s])]  # starts a word
            assert WORD_START[int(ids[b, e])] or ids[b, e] in SPECIAL  # the next token starts another
            assert sum(WORD_START[int(i)] for i in ids[b, s:e]) <= 10  # at most max_span_len words


def test_pure_and_seeded():
    batch = _batch(4, 64, pad_from=50)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _span()
    a, b = obj.corrupt(batch, seeded_generator(3, 1)), obj.corrupt(batch, seeded_generator(3, 1))
    c = obj.corrupt(batch, seeded_generator(3, 2))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["labels"], c["labels"])


class _Fixed(torch.nn.Module):
    """A stand-in masked-LM: fixed logits for the scored positions and fixed hidden states."""

    hidden_size = 2

    def __init__(self, logits, hidden, emb):
        super().__init__()
        self.logits, self.hidden = logits, hidden
        self.emb = torch.nn.Embedding(*emb.shape)
        self.emb.weight.data.copy_(emb)

    def input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, score_positions=None):
        return type("O", (), {"logits": self.logits, "last_hidden_state": self.hidden})()


def test_loss_hand_computed():
    # one span over positions 2..3, boundaries 1 and 4; vocabulary of 3 ids, H = 2 (loss() never reads the ids)
    batch = {"input_ids": torch.tensor([[2, 0, 4, 4, 1, 2]]), "labels": torch.tensor([[-100, -100, 0, 2, -100, -100]]),
             "span_left": torch.tensor([[-1, -1, 1, 1, -1, -1]]), "span_right": torch.tensor([[-1, -1, 4, 4, -1, -1]])}
    hidden = torch.arange(12.0).reshape(1, 6, 2)
    emb = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])  # (V, H)
    model = _Fixed(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), hidden, emb)
    obj = SpanMasking(SpanConfig(mask_token_id=1, vocab_size=3, special_token_ids=[1], whole_words=False,
                                 sbo_weight=0.5))
    head = obj.bind(model)["sbo"]
    seen = {}
    head.ffn.register_forward_hook(lambda module, inputs, output: seen.update(x=inputs[0]))
    with torch.no_grad():  # last LayerNorm: weight 0, bias (1, 0) -> y = (1, 0) whatever the input
        head.ffn[5].weight.zero_()
        head.ffn[5].bias.copy_(torch.tensor([1.0, 0.0]))
    loss, metrics = obj.loss(model, batch)
    # MLM: logits rows (0,0,0) -> target 0, (1,0,0) -> target 2
    mlm = (math.log(3) + -math.log(1 / (math.e + 2))) / 2
    # SBO: logits = E y = (1, 0, 2) for both tokens; targets 0 and 2
    z = math.e + 1 + math.e ** 2
    sbo = (-math.log(math.e / z) - math.log(math.e ** 2 / z)) / 2
    assert metrics["mlm_loss"] == pytest.approx(mlm, rel=1e-6)
    assert metrics["sbo_loss"] == pytest.approx(sbo, rel=1e-6)
    assert loss.item() == pytest.approx(mlm + 0.5 * sbo, rel=1e-6)
    # the head saw [x_{s-1}; x_{e+1}; p_i] for i = 0, 1: states of positions 1 and 4
    x = seen["x"]
    assert torch.equal(x[:, :2], hidden[0, [1, 1]]) and torch.equal(x[:, 2:4], hidden[0, [4, 4]])
    assert torch.equal(x[:, 4:], head.position.weight[[0, 1]].detach())


def test_sbo_head_gets_gradients_and_learns_with_an_explicit_optimizer():
    V_ = 64
    cfg = make_config("bert", dict(vocab_size=V_, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=64, dropout=0.0, attention_dropout=0.0))
    model = build_model("bert", cfg, "masked-lm")
    obj = SpanMasking(SpanConfig(mask_token_id=4, vocab_size=V_, special_token_ids=[0, 1, 2, 3, 4], whole_words=False))
    with pytest.raises(RuntimeError, match="bind"):
        obj.loss(model, obj.corrupt({"input_ids": torch.randint(5, V_, (2, 32))}, seeded_generator(0, 0)))
    module = obj.bind(model)
    assert obj.bind(model) is module and list(obj.modules()) == [module]  # once per model
    params = list(obj.parameters())
    assert params and all(any(p is q for q in module.parameters()) for p in params)
    assert not any(p is q for p in params for q in model.parameters())  # the head is the objective's own
    opt = torch.optim.Adam(params, lr=1e-2)  # only the SBO head trains here
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V_, (8, 32), generator=g)
    batch = obj.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, seeded_generator(0, 1))
    losses = []
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(30):
        loss, metrics = obj.loss(model, batch)
        opt.zero_grad()
        model.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        opt.step()
        losses.append(metrics["sbo_loss"])
    assert losses[-1] < losses[0] - 0.4, losses  # the tied output embeddings are frozen and small: a slow fall
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())


def test_bad_span_settings():
    with pytest.raises(ConfigError, match="geometric_p"):
        SpanConfig(geometric_p=0.0)
    with pytest.raises(ConfigError, match="max_span_len"):
        SpanConfig(max_span_len=0)
    with pytest.raises(ConfigError, match="whole_words needs the word_start"):
        SpanMasking(SpanConfig(mask_token_id=4, vocab_size=V))
    obj = _span(max_span_len=20)
    with pytest.raises(ConfigError, match="max_span_len 20"):
        obj.check_seq_len(16)
    with pytest.raises(ConfigError, match="max_span_len 20"):
        obj.corrupt({"input_ids": torch.randint(5, V, (2, 16))}, seeded_generator(0, 0))
    obj.check_seq_len(22)
