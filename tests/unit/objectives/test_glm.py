"""GLM blank infilling: Part A / Part B layout on a hand example (2-D positions, attention), Part B holds a
shuffled permutation of the sampled spans, A + B reconstruct the text exactly, ~15% coverage with Poisson(3) spans,
no leak from Part B into Part A or from later B tokens (through a real tiny BERT), the loss by hand, config errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import GLM, OBJECTIVES, GLMConfig, seeded_generator
from ptmkit.objectives.glm import PART_A, PART_B
from ptmkit.train.loop import bind_objective

PAD, START, END, MASK, V = 0, 2, 3, 4, 60
SPECIAL = [0, 1, 2, 3, 4]


def _glm(**kw):
    return GLM(GLMConfig(mask_token_id=MASK, start_token_id=START, end_token_id=END, vocab_size=V,
                         special_token_ids=SPECIAL, **kw))


class FixedSpans(GLM):
    """GLM with spans given by hand (start, end) per row; the shuffle still comes from the generator."""

    def __init__(self, spans, **kw):
        super().__init__(GLMConfig(mask_token_id=MASK, start_token_id=START, end_token_id=END, vocab_size=V,
                                   special_token_ids=SPECIAL, **kw))
        self.spans = spans

    def place(self, batch, generator, part_b_len):
        B, T = batch["input_ids"].shape
        K = max(len(r) for r in self.spans)
        start = torch.full((B, K), -1)
        end = torch.full((B, K), -1)
        span_of = torch.full((B, T), -1)
        for b, row in enumerate(self.spans):
            for k, (s, e) in enumerate(row):
                start[b, k], end[b, k] = s, e
                span_of[b, s:e] = k
        return span_of, start, end, start >= 0


def _bert():
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=64, dropout=0.0, attention_dropout=0.0))
    return build_model("bert", cfg, "masked-lm").eval()


def _reference_mask(part):
    """The GLM attention rule written as loops."""
    L = len(part)
    m = [[False] * L for _ in range(L)]
    for i in range(L):
        for j in range(L):
            if part[i] == PART_A:
                m[i][j] = part[j] == PART_A
            elif part[i] == PART_B:
                m[i][j] = part[j] == PART_A or (part[j] == PART_B and j <= i)
    return m


def test_hand_example():
    # x = 10 11 12 13 14 15 16 17 ; spans [1, 3) = "11 12" and [5, 6) = "15"; Part B budget 2*ceil(.15*8) = 4 + ...
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    obj = FixedSpans([[(1, 3), (5, 6)]], target_len=6)
    out = obj.corrupt({"input_ids": ids}, seeded_generator(0, 0))
    a = [10, MASK, 13, 14, MASK, 16, 17]  # Part A: positions 0..6, [MASK]s at 1 and 4
    blocks = {  # span -> (inputs, targets, position 1, position 2)
        (1, 3): ([START, 11, 12], [11, 12, END], [1, 1, 1], [1, 2, 3]),
        (5, 6): ([START, 15], [15, END], [4, 4], [1, 2]),
    }
    first = (1, 3) if out["input_ids"][0, 8].item() == 11 else (5, 6)  # the shuffle picks the order
    order = [first, (5, 6) if first == (1, 3) else (1, 3)]
    b_in = sum((blocks[s][0] for s in order), [])
    b_out = sum((blocks[s][1] for s in order), [])
    b_p1 = sum((blocks[s][2] for s in order), [])
    b_p2 = sum((blocks[s][3] for s in order), [])
    L = 8 + 6
    assert out["input_ids"].shape == (1, L)
    assert out["input_ids"][0].tolist() == a + b_in + [PAD] * 2
    assert out["labels"][0].tolist() == [-100] * 7 + b_out + [-100] * 2
    assert out["position_ids"][0].tolist() == list(range(7)) + b_p1 + [0] * 2
    assert out["block_position_ids"][0].tolist() == [0] * 7 + b_p2 + [0] * 2
    assert out["part"][0].tolist() == [PART_A] * 7 + [PART_B] * 5 + [0] * 2
    assert out["attention_mask"][0].tolist() == [1] * 12 + [0] * 2
    assert out["self_attention_mask"][0].tolist() == _reference_mask(out["part"][0].tolist())
    # both orders occur over seeds
    firsts = {FixedSpans([[(1, 3), (5, 6)]], target_len=6).corrupt({"input_ids": ids}, seeded_generator(0, s))
              ["input_ids"][0, 8].item() for s in range(20)}
    assert firsts == {11, 15}


def _random_batch(b=32, t=64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]-like specials never enter a span
    att = torch.ones_like(ids)
    att[: b // 2, 50:] = 0
    ids[: b // 2, 50:] = PAD
    return {"input_ids": ids, "attention_mask": att}


def _parse(out, row):
    """Part A tokens and the Part B blocks [(position 1, span tokens)] of one row, in Part B order."""
    part = out["part"][row]
    a = out["input_ids"][row][part == PART_A].tolist()
    b_in = out["input_ids"][row][part == PART_B].tolist()
    b_out = out["labels"][row][part == PART_B].tolist()
    p1 = out["position_ids"][row][part == PART_B].tolist()
    p2 = out["block_position_ids"][row][part == PART_B].tolist()
    blocks = []
    for k, (x, y, q, r) in enumerate(zip(b_in, b_out, p1, p2)):
        if r == 1:
            assert x == START
            blocks.append((q, []))
        else:
            assert x == blocks[-1][1][-1] and q == blocks[-1][0]  # input = previous target (teacher forcing)
        if y == END:
            assert k + 1 == len(b_in) or p2[k + 1] == 1
        else:
            blocks[-1][1].append(y)
        assert r == len(blocks[-1][1]) + (y == END)  # position 2 counts 1, 2, .. within the block
    return a, blocks


def test_spans_in_b_are_a_shuffled_permutation_and_a_plus_b_reconstructs_the_text():
    obj = _glm()
    batch = _random_batch()
    shuffled = 0
    for step in range(10):
        _, start, end, placed = obj.place(batch, seeded_generator(1, step), obj.cfg.part_b_len(64))
        out = obj.corrupt(batch, seeded_generator(1, step))
        for row in range(batch["input_ids"].shape[0]):
            real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            a, blocks = _parse(out, row)
            # the spans of Part B are exactly the sampled spans (as token positions in the original)
            sampled = sorted((s, e) for s, e, p in zip(start[row].tolist(), end[row].tolist(),
                                                       placed[row].tolist()) if p)
            mask_at = [i for i, x in enumerate(a) if x == MASK]
            assert sorted(q for q, _ in blocks) == mask_at  # one block per [MASK], each once
            by_q = dict(blocks)
            recon, spans = [], []
            for x in a:
                if x == MASK:
                    toks = by_q[mask_at[len(spans)]]
                    spans.append((len(recon), len(recon) + len(toks)))
                    recon.extend(toks)
                else:
                    recon.append(x)
            assert recon == real  # A + B give back the original text exactly
            assert spans == sampled
            # Part B is in a random order: not always sorted by position
            order = [q for q, _ in blocks]
            shuffled += order != sorted(order)
            p2 = out["block_position_ids"][row]
            assert (p2[out["part"][row] == PART_A] == 0).all()
    assert shuffled > 50


def test_coverage_and_span_lengths():
    obj = _glm()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, V, (64, 256), generator=g)
    covered, maskable, lengths = 0, 0, []
    for step in range(5):
        _, start, end, placed = obj.place({"input_ids": ids}, seeded_generator(2, step), obj.cfg.part_b_len(256))
        covered += int((end - start)[placed].sum())
        maskable += ids.numel()
        # all spans but the last placed in each row (that one is cut to the budget)
        last = placed.long().cumsum(1) == placed.long().sum(1, keepdim=True)
        lengths += (end - start)[placed & ~last].tolist()
    assert abs(covered / maskable - 0.15) < 0.005
    probs = obj.cfg.length_probs()
    want = float((torch.arange(1, 11) * probs).sum())  # mean of the zero-truncated Poisson(3) cut at 10: ~3.15
    assert abs(sum(lengths) / len(lengths) - want) < 0.15
    assert abs(want - 3 / (1 - math.exp(-3))) < 0.02


def test_attention_matches_the_rule_and_padding_is_never_seen():
    obj = _glm()
    out = obj.corrupt(_random_batch(4, 40), seeded_generator(0, 0))
    for row in range(4):
        assert out["self_attention_mask"][row].tolist() == _reference_mask(out["part"][row].tolist())


def test_no_leak_from_b_into_a_or_from_later_b_tokens():
    model = _bert()
    obj = _glm()
    bind_objective(model, obj)
    ids = torch.randint(5, V, (1, 24), generator=torch.Generator().manual_seed(5))
    out = obj.corrupt({"input_ids": ids}, seeded_generator(0, 1))
    part = out["part"][0]
    b_pos = (part == PART_B).nonzero().flatten().tolist()
    with torch.no_grad():
        h = obj.forward(model, out).last_hidden_state
        for k in b_pos:
            o2 = dict(out)
            o2["input_ids"] = out["input_ids"].clone()
            o2["input_ids"][0, k] = (o2["input_ids"][0, k] + 7) % (V - 5) + 5
            h2 = obj.forward(model, o2).last_hidden_state
            torch.testing.assert_close(h2[0, :k], h[0, :k])  # all of A and earlier B tokens are unaffected
            assert (h2[0, k] - h[0, k]).abs().amax() > 1e-4
        a0 = int((part == PART_A).nonzero()[3])
        o3 = dict(out)
        o3["input_ids"] = out["input_ids"].clone()
        o3["input_ids"][0, a0] = (o3["input_ids"][0, a0] + 7) % (V - 5) + 5
        h3 = obj.forward(model, o3).last_hidden_state
    real = part > 0
    assert ((h3[0, real] - h[0, real]).abs().amax(-1) > 1e-4).all()  # every token sees Part A


def test_loss_by_hand_and_block_positions_are_trained():
    model = _bert()
    obj = _glm()
    bind_objective(model, obj)
    out = obj.corrupt(_random_batch(4, 40), seeded_generator(0, 2))
    loss, metrics = obj.loss(model, out)
    tok = model.backbone.embeddings.tok
    x = tok(out["input_ids"]) + obj.block_position(out["block_position_ids"])
    logits = model(None, attention_mask=out["self_attention_mask"], position_ids=out["position_ids"],
                   inputs_embeds=x).logits  # (B, L, V)
    labels = out["labels"]
    where = labels != -100
    want = -torch.log_softmax(logits.float(), -1)[where].gather(1, labels[where][:, None]).mean()
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    assert metrics["predicted_tokens"] == float(where.sum())
    loss.backward()
    assert obj.block_position.weight.grad is not None and obj.block_position.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="bind"):
        _glm().loss(model, out)


def test_documents_are_not_crossed():
    obj = _glm(mask_prob=0.3)
    ids = torch.randint(5, V, (8, 40), generator=torch.Generator().manual_seed(0))
    docs = (torch.arange(40) >= 17).long().expand(8, 40)
    span_of, start, end, placed = obj.place({"input_ids": ids, "document_ids": docs}, seeded_generator(0, 0), 12)
    assert not ((start[placed] < 17) & (end[placed] > 17)).any()
    assert not (span_of[:, 17] >= 0).any()
    out = obj.corrupt({"input_ids": ids, "document_ids": docs}, seeded_generator(0, 0))
    assert out["self_attention_mask"].sum() < _glm(mask_prob=0.3).corrupt(
        {"input_ids": ids}, seeded_generator(0, 0))["self_attention_mask"].sum()


def test_from_tokenizer_and_config_errors():
    tok = SimpleNamespace(mask_id=4, cls_id=2, eos_id=3, pad_id=0, token_to_id=lambda t: {"[sop]": 7}.get(t))
    base = dict(vocab_size=V, special_token_ids=SPECIAL)
    obj = GLM.from_tokenizer(GLMConfig(**base), tok)
    assert (obj.cfg.start_token_id, obj.cfg.end_token_id, obj.cfg.mask_token_id) == (2, 3, 4)
    assert GLM.from_tokenizer(GLMConfig(start_token="[sop]", **base), tok).cfg.start_token_id == 7
    with pytest.raises(ConfigError, match="'\\[gmask\\]' is not in the tokenizer"):
        GLM.from_tokenizer(GLMConfig(start_token="[gmask]", **base), tok)
    with pytest.raises(ConfigError, match="no token for start"):
        GLM.from_tokenizer(GLMConfig(**base), SimpleNamespace(**{**vars(tok), "cls_id": None}))
    with pytest.raises(ConfigError, match="no mask token"):
        GLM.from_tokenizer(GLMConfig(**base), SimpleNamespace(**{**vars(tok), "mask_id": None}))
    with pytest.raises(ConfigError, match="start_token_id is not set"):
        GLM(GLMConfig(mask_token_id=4, end_token_id=3, **base))
    with pytest.raises(ConfigError, match=r"mask_prob must be in \(0, 1\)"):
        GLMConfig(mask_prob=1.5)
    with pytest.raises(ConfigError, match="poisson_lambda"):
        GLMConfig(poisson_lambda=0)
    with pytest.raises(ConfigError, match="target_len"):
        GLMConfig(target_len=1)
    with pytest.raises(ConfigError, match="target_len 4 cannot hold"):
        _glm(target_len=4).check_seq_len(64)
    with pytest.raises(ConfigError, match="max_span_len 10"):
        _glm().check_seq_len(8)
    assert OBJECTIVES["glm"] == (GLMConfig, GLM)


def test_roberta_positions_are_offset_past_padding():
    torch.manual_seed(0)
    cfg = make_config("roberta", dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                      max_position_embeddings=34, dropout=0.0, attention_dropout=0.0))
    model = build_model("roberta", cfg, "masked-lm")
    obj = _glm()
    bind_objective(model, obj)
    ids = torch.randint(5, V, (2, 32), generator=torch.Generator().manual_seed(0))
    out = obj.corrupt({"input_ids": ids}, seeded_generator(0, 0))
    loss, _ = obj.loss(model, out)  # positions 0..31 become 2..33: inside RoBERTa's 34-row table
    assert torch.isfinite(loss)
