"""T5 span corruption: T5's exact noise/span counts, noise fraction and mean span length, unique ordered sentinels,
inputs + targets reconstruct the original, fixed padded shapes, config errors, and the loss by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models.encdec import shift_right
from ptmkit.objectives import SpanCorruption, SpanCorruptionConfig, seeded_generator
from ptmkit.objectives.span_corruption import noise_counts, output_lengths, random_spans_noise_mask, reconstruct
from ptmkit.objectives.seq2seq import seq2seq_loss
from tests.unit.objectives.seq2seq_stub import StubSeq2Seq, hand_loss

V, PAD, EOS = 200, 0, 1
SENTINELS = [V - 1 - i for i in range(40)]  # <extra_id_0> = 199, counting down as in T5


def _obj(**kw):
    return SpanCorruption(SpanCorruptionConfig(sentinel_ids=SENTINELS, eos_token_id=EOS, pad_token_id=PAD, **kw))


def _batch(b=32, t=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 150, (b, t), generator=g)
    att = torch.ones_like(ids)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    att[torch.arange(t)[None, :] >= lengths[:, None]] = 0
    return {"input_ids": ids.masked_fill(att == 0, PAD), "attention_mask": att}


def _t5_counts(length, noise_density=0.15, mean_noise_span_length=3.0):
    """The counts of T5's random_spans_noise_mask (HF run_t5_mlm_flax.py), in numpy."""
    num_noise_tokens = int(np.round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
    return num_noise_tokens, max(num_noise_spans, 1)


def _runs(mask_row):
    runs, start = [], None
    for i, m in enumerate(mask_row + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append(i - start)
            start = None
    return runs


@pytest.mark.parametrize("density,mean", [(0.15, 3.0), (0.5, 8.0), (0.3, 1.0)])
def test_counts_match_t5(density, mean):
    n = torch.arange(2, 700)
    noise, spans = noise_counts(n, density, mean)
    for length, a, b in zip(n.tolist(), noise.tolist(), spans.tolist()):
        want = _t5_counts(length, density, mean)
        assert (a, b) == (want[0], min(want[1], length - want[0])), length


def test_mask_structure_fraction_and_span_lengths():
    lengths = torch.tensor([512] * 200 + [37] * 200)
    mask = random_spans_noise_mask(lengths, 512, 0.15, 3.0, torch.Generator().manual_seed(0))
    span_lengths = []
    for full, n in zip(mask.tolist(), lengths.tolist()):
        row = full[:n]
        nt, ns = _t5_counts(n)
        runs = _runs(row)
        assert sum(row) == nt and len(runs) == ns  # exactly T5's counts
        assert not row[0] and row[-1]  # non-noise first, noise last (T5's interleaving)
        assert not any(full[n:])  # padding is never noise
        span_lengths += runs
    assert abs(mask[:200].float().mean().item() - 0.15) < 0.002  # 77 / 512
    assert abs(np.mean(span_lengths) - 3.0) < 0.1
    # the segmentation is random: away from the row's ends (the first token is never noise, the last always is)
    # every position is noise about 15% of the time
    p = mask[:200, 20:490].float().mean(0)
    assert p.min() > 0.04 and p.max() < 0.3 and abs(p.mean().item() - 0.15) < 0.01


def test_inputs_targets_sentinels_and_reconstruction():
    obj, batch = _obj(), _batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = obj.corrupt(batch, seeded_generator(0, 1))
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # pure
    S, L, _ = output_lengths(128, 0.15, 3.0)
    assert out["input_ids"].shape == (32, S) and out["labels"].shape == (32, L) and S == 128 - 19 + 6 + 1
    for r in range(32):
        real = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        inp = out["input_ids"][r][out["attention_mask"][r].bool()].tolist()
        tgt = [t for t in out["labels"][r].tolist() if t != -100]
        assert inp[-1] == EOS and tgt[-1] == EOS
        assert (out["input_ids"][r][len(inp):] == PAD).all()
        s_in = [t for t in inp if t in SENTINELS]
        s_tgt = [t for t in tgt if t in SENTINELS]
        assert s_in == s_tgt == SENTINELS[: len(s_in)]  # unique, in order <extra_id_0>, <extra_id_1>, ...
        if len(real) >= 2:
            nt, ns = _t5_counts(len(real))
            assert len(s_in) == ns and len(tgt) == nt + ns + 1 and len(inp) == len(real) - nt + ns + 1
            assert tgt[0] == SENTINELS[0]
        assert reconstruct(inp, tgt, SENTINELS, EOS) == real


def test_seeded_and_fixed_shapes():
    obj, batch = _obj(), _batch()
    a, b = obj.corrupt(batch, seeded_generator(0, 3)), obj.corrupt(batch, seeded_generator(0, 3))
    c = obj.corrupt(batch, seeded_generator(0, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])
    short = obj.corrupt({k: v[:, :64] for k, v in batch.items()}, seeded_generator(0, 3))
    assert short["input_ids"].shape[1] == output_lengths(64, 0.15, 3.0)[0]


def test_config_errors():
    with pytest.raises(ConfigError, match="noise_density"):
        SpanCorruptionConfig(noise_density=0.0)
    with pytest.raises(ConfigError, match="mean_noise_span_length"):
        SpanCorruptionConfig(mean_noise_span_length=0.5)
    with pytest.raises(ConfigError, match="sentinel"):
        SpanCorruption(SpanCorruptionConfig(eos_token_id=1, pad_token_id=0))
    obj = SpanCorruption(SpanCorruptionConfig(sentinel_ids=[99, 98], eos_token_id=1, pad_token_id=0))
    with pytest.raises(ConfigError, match=r"26 noise spans.*26 sentinels"):
        obj.check_seq_len(512)
    obj.check_seq_len(32)  # 2 spans at most


def test_from_tokenizer_reads_sentinels_and_names_the_need():
    texts = ["the cat sat on the mat. a dog ran in the park!"] * 10
    plain = Tokenizer.train(texts, "wordpiece", 60, min_frequency=1)
    with pytest.raises(ConfigError, match=r"<extra_id_0>.*26 for 512-token rows"):
        SpanCorruption.from_tokenizer(SpanCorruptionConfig(), plain)
    tok = Tokenizer.train(texts, "wordpiece", 80, special_tokens=[f"<extra_id_{i}>" for i in range(3)],
                          min_frequency=1)
    obj = SpanCorruption.from_tokenizer(SpanCorruptionConfig(), tok)
    assert obj.cfg.sentinel_ids == [tok.token_to_id(f"<extra_id_{i}>") for i in range(3)]
    assert (obj.cfg.eos_token_id, obj.cfg.pad_token_id) == (tok.eos_id, tok.pad_id)
    with pytest.raises(ConfigError, match="5 sentinels"):
        obj.check_seq_len(100)


def test_loss_by_hand():
    obj = _obj()
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [30, 31, 32, 33, 34, 35, 0, 0, 0, 0, 0, 0]])
    att = (ids != 0).long()
    batch = obj.corrupt({"input_ids": ids, "attention_mask": att}, seeded_generator(0, 0))
    model = StubSeq2Seq(V, decoder_start_token_id=PAD, pad_token_id=PAD)
    loss, metrics = seq2seq_loss(model, batch)
    fed = model.calls[0]["decoder_input_ids"]
    assert torch.equal(fed, shift_right(batch["labels"], PAD, PAD))
    for r in range(2):  # teacher forcing by hand: [start] + targets[:-1]
        tgt = [t for t in batch["labels"][r].tolist() if t != -100]
        assert fed[r, : len(tgt)].tolist() == [PAD] + tgt[:-1]
    logits = model(None, decoder_input_ids=fed).logits
    assert loss.item() == pytest.approx(hand_loss(logits, batch["labels"]), rel=1e-5)
    assert metrics["predicted_tokens"] == float((batch["labels"] != -100).sum())
