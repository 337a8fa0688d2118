"""Transformer-XL (Dai et al. 2019): the maths of segment-level recurrence and relative positions, config errors,
the contiguous stream iterator, and training through train() with the memory carried across steps.

There is no parity test against transformers (v5 no longer ships TransfoXL); instead the tests check what the paper
claims: recurrence over segments equals one pass with a window of mem_len + segment, no gradient reaches the memory,
no token sees its future, and mem_len = 0 is a model without memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ptmkit.config import ConfigError
from ptmkit.data.streams import StreamBatches
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.transfo_xl import TransfoXLLMHead
from ptmkit.nn.relative_xl import past_relative_positions, rel_shift
from ptmkit.objectives.recurrent_clm import RecurrentCausalLM, RecurrentCLMConfig, evaluate_stream
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig

V = 40
TINY = dict(vocab_size=V, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, dropout=0.0)


def _model(seed=0, **kw) -> TransfoXLLMHead:
    torch.manual_seed(seed)
    return build_model("transfo-xl", make_config("transfo-xl", {**TINY, **kw}), "causal-lm").eval()


def _ids(b=2, t=24, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def _stream(model, ids, seg, mem_len=None):
    """Run ids (B, n*seg) as consecutive segments, passing the memory along; logits (B, n*seg, V)."""
    mems, outs = None, []
    for s in range(0, ids.shape[1], seg):
        out = model(ids[:, s:s + seg], mems=mems, mem_len=mem_len)
        outs.append(out.logits)
        mems = out.mems
    return torch.cat(outs, dim=1)


def _window_mask(total, seg, mem):
    """(total, total) 1 = may attend: query p of segment s sees keys [s*seg - mem, p] (what recurrence gives)."""
    p = torch.arange(total)[:, None]
    k = torch.arange(total)[None, :]
    start = (p // seg) * seg - mem
    return (k >= start) & (k <= p)


# ---- (a) mem_len = 0 is the segment alone ---------------------------------------------------------------------------

def test_mem_len_zero_equals_each_segment_alone():
    model = _model(mem_len=0, segment_len=8)
    ids = _ids(t=16)
    out1 = model(ids[:, :8])
    assert out1.mems is None  # nothing to carry
    streamed = _stream(model, ids, 8)
    assert_close(streamed[:, 8:], model(ids[:, 8:]).logits)
    # the same weights with a memory: the second segment differs (so the check above can fail)
    with_mem = _stream(model, ids, 8, mem_len=8)
    assert not torch.allclose(with_mem[:, 8:], streamed[:, 8:], atol=1e-4)
    assert_close(with_mem[:, :8], streamed[:, :8])  # the first segment has no memory either way


# ---- (b) recurrence == one pass with a window of mem_len + segment ---------------------------------------------------

def test_two_segments_with_full_memory_equal_one_pass():
    seg = 8
    model = _model(segment_len=2 * seg, mem_len=seg)  # the memory covers the whole first segment
    ids = _ids(t=2 * seg)
    full = model(ids).logits  # (B, 2T, V)
    streamed = _stream(model, ids, seg)
    assert_close(streamed[:, :seg], full[:, :seg], rtol=1e-5, atol=1e-5)
    assert_close(streamed[:, seg:], full[:, seg:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mem", [3, 8, 12])
def test_recurrence_equals_one_pass_with_a_window_of_mem_plus_segment(mem):
    seg, n = 6, 4
    total = seg * n
    model = _model(segment_len=total, mem_len=mem)
    ids = _ids(t=total)
    streamed = _stream(model, ids, seg)
    window = _window_mask(total, seg, mem)[None].expand(ids.shape[0], -1, -1)
    windowed = model(ids, attention_mask=window).logits
    assert_close(streamed, windowed, rtol=1e-5, atol=1e-5)
    if mem < 2 * seg:  # a shorter memory really cuts context: the plain single pass differs
        assert not torch.allclose(streamed[:, -seg:], model(ids).logits[:, -seg:], atol=1e-4)


def test_memory_keeps_the_last_mem_len_states_of_each_layer_input():
    model = _model(segment_len=8, mem_len=5)
    ids = _ids(t=16)
    out1 = model(ids[:, :8], output_hidden_states=True)
    assert len(out1.mems) == TINY["num_layers"]
    for layer, m in enumerate(out1.mems):
        assert m.shape == (2, 5, 32)
        assert_close(m, out1.hidden_states[layer][:, -5:])  # the layer's input, not its output
    out2 = model(ids[:, 8:11], mems=out1.mems)
    assert out2.mems[0].shape == (2, 5, 32)  # 5 old + 3 new, the last 5 kept


def _positional_model(**kw):
    return _model(segment_len=16, initializer_range=0.5, **kw)  # at std 0.02 positions barely move the logits


def test_clamp_len_shares_far_distances():
    ids = _ids(t=16)
    plain = _positional_model()(ids).logits
    assert_close(_positional_model(clamp_len=16)(ids).logits, plain)  # no distance reaches 16
    clamped = _positional_model(clamp_len=2)(ids).logits
    assert_close(clamped[:, :3], plain[:, :3])  # the first 3 queries only see distances 0..2
    assert not torch.allclose(clamped[:, 3:], plain[:, 3:], atol=1e-3)


def test_rel_shift_matches_transformer_xl_pad_and_reshape():
    """Dai et al.'s `_rel_shift` (pad a zero column, reshape, drop a row) on the causal table, for visible keys."""
    b, n, t, m = 2, 3, 5, 4
    s = m + t
    x = torch.randn(b, n, t, s)  # scores against distances s-1 .. 0
    padded = torch.cat([x.new_zeros(b, n, t, 1), x], dim=-1).view(b, n, s + 1, t)[:, :, 1:].view(b, n, t, s)
    ours = rel_shift(x, s, zero_row=s - 1)
    visible = torch.arange(s)[None, :] <= m + torch.arange(t)[:, None]  # (T, S)
    assert_close(ours[..., visible], padded[..., visible])
    pos = past_relative_positions(s, 8, -1, "cpu")
    assert_close(pos[-1], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))  # last row: distance 0


# ---- (c) no gradient into the memory ---------------------------------------------------------------------------------

def test_no_gradient_flows_into_the_memory():
    model = _model(segment_len=8, mem_len=8).train()
    emb1 = (model.backbone.embeddings(_ids(t=8, seed=3)) + 0).detach().requires_grad_(True)  # segment 1 inputs
    out1 = model.backbone(inputs_embeds=emb1)
    assert all(not m.requires_grad for m in out1.mems)
    out2 = model(_ids(t=8, seed=4), mems=out1.mems)
    out2.logits.square().mean().backward()
    assert emb1.grad is None  # segment 2's loss never reached segment 1
    assert model.backbone.layers[0].attn.qkv.weight.grad is not None  # while the weights did get gradient
    out1.last_hidden_state.sum().backward()  # sanity: the leaf does receive gradient through its own segment
    assert emb1.grad is not None and emb1.grad.abs().sum() > 0


# ---- (d) causality ---------------------------------------------------------------------------------------------------

def test_changing_a_future_token_never_changes_earlier_outputs():
    model = _model(segment_len=8, mem_len=8)
    ids = _ids(t=16)
    base = _stream(model, ids, 8)
    for k in (0, 5, 8, 13):
        changed = ids.clone()
        changed[:, k] = (changed[:, k] + 1) % V
        out = _stream(model, changed, 8)
        assert_close(out[:, :k], base[:, :k])  # the past is untouched, in this segment and the previous one
        assert not torch.allclose(out[:, k:], base[:, k:], atol=1e-5)  # the token itself and what follows see it
    # and a change in the first segment reaches the second through the memory
    changed = ids.clone()
    changed[:, 2] = (changed[:, 2] + 1) % V
    assert not torch.allclose(_stream(model, changed, 8)[:, 8:], base[:, 8:], atol=1e-5)


# ---- configuration and input errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    (dict(mem_len=-1), "mem_len must be >= 0"),
    (dict(segment_len=0), "segment_len"),
    (dict(clamp_len=0), "clamp_len"),
    (dict(hidden_size=30, num_heads=4), "not divisible"),
    (dict(hidden_size=27, num_heads=3), "must be even"),
    (dict(hidden_act="swish2"), "unknown hidden_act"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(num_layers=0), "must be positive"),
    (dict(memlen=3), "unknown key"),
])
def test_invalid_configs_fail_at_construction(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        make_config("transfo-xl", {**TINY, **kw})


def test_input_errors_name_the_fix():
    model = _model(segment_len=8, mem_len=4)
    with pytest.raises(ValueError, match="exceeds segment_len 8.*split the text"):
        model(_ids(t=9))
    with pytest.raises(ValueError, match="relative positions only"):
        model(_ids(t=4), position_ids=torch.arange(4)[None])
    mems = model(_ids(t=4)).mems
    with pytest.raises(ValueError, match="mems has 2 entries; the model has 3 layers"):
        model(_ids(t=4), mems=mems[:2])
    with pytest.raises(ValueError, match="another batch layout"):
        model(_ids(b=3, t=4), mems=mems)


def test_registry_preset_and_save_load_round_trip(tmp_path):
    from ptmkit.models import from_preset

    mini = from_preset("transfo-xl-mini", task="causal-lm", config={"vocab_size": V})
    assert (mini.config.num_layers, mini.config.hidden_size, mini.config.mem_len) == (4, 256, 128)
    model = _model(segment_len=8, mem_len=4)
    save_model(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "ptmkit-transfo-xl"
    back = load_model(tmp_path / "m").eval()
    assert isinstance(back, TransfoXLLMHead) and back.tied
    ids = _ids(t=16)
    assert_close(_stream(back, ids, 8), _stream(model, ids, 8))
    clf = build_model("transfo-xl", make_config("transfo-xl", TINY), "sequence-classification", num_labels=3)
    assert clf(_ids(t=6), attention_mask=torch.ones(2, 6)).logits.shape == (2, 3)


# ---- the contiguous stream -------------------------------------------------------------------------------------------

def test_stream_lanes_are_contiguous_and_labels_cross_segments():
    tokens = np.arange(1000) % 997
    it = StreamBatches(tokens, batch_size=4, segment_len=10)
    lane = (1000 - 1) // 4
    first, second = next(it), next(it)
    assert first["input_ids"].shape == (4, 10) and bool(first["reset_memory"]) and not bool(second["reset_memory"])
    assert first["input_ids"][:, 0].tolist() == [0, lane, 2 * lane, 3 * lane]
    assert torch.equal(first["labels"][:, :-1], first["input_ids"][:, 1:])
    assert torch.equal(first["labels"][:, -1], second["input_ids"][:, 0])  # row i of step t+1 continues row i
    assert len(it) == lane // 10
    for _ in range(len(it) - 2):
        last = next(it)
    assert int(last["labels"].max()) <= 999
    again = next(it)  # the next pass starts over and says so
    assert bool(again["reset_memory"]) and torch.equal(again["input_ids"], first["input_ids"])


def test_stream_resumes_exactly_and_checks_its_layout():
    tokens = np.random.default_rng(0).integers(0, 50, 5000)
    it = StreamBatches(tokens, batch_size=3, segment_len=16)
    for _ in range(150):  # past the end of the first pass (104 batches)
        next(it)
    state = json.loads(json.dumps(it.state_dict()))  # as a checkpoint stores it
    expected = [next(it) for _ in range(5)]
    resumed = StreamBatches(tokens, batch_size=3, segment_len=16)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="same token shards, batch_size and segment_len"):
        StreamBatches(tokens, batch_size=4, segment_len=16).load_state_dict(state)
    with pytest.raises(ConfigError, match="shorter than one segment"):
        StreamBatches(tokens[:40], batch_size=4, segment_len=16)


def test_evaluation_scores_every_token_once_and_cold_segments_equal_no_memory():
    tokens = np.random.default_rng(1).integers(0, V, 203)
    model = _model(segment_len=8, mem_len=8)
    stream = lambda: StreamBatches(tokens, batch_size=2, segment_len=8, epochs=1, drop_last=False)  # noqa: E731
    with_mem = evaluate_stream(model, stream())
    cold = evaluate_stream(model, stream(), mem_len=0)
    assert with_mem["tokens"] == cold["tokens"] == 2 * ((203 - 1) // 2)
    nll, n = 0.0, 0  # cold by hand: every segment alone
    for batch in stream():
        with torch.no_grad():
            logits = model(batch["input_ids"]).logits
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum"))
        n += batch["labels"].numel()
    assert cold["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert with_mem["loss"] != pytest.approx(cold["loss"], rel=1e-6)


# ---- training through train() with the memory carried across steps ---------------------------------------------------

def _train(tmp_path, name, steps, resume=False, checkpoint_every=0):
    torch.manual_seed(0)
    # a repeating random "text": a token's successor is only predictable from context, which memory extends
    tokens = np.tile(np.random.default_rng(0).integers(0, V, 23), 200)
    model = build_model("transfo-xl", make_config("transfo-xl", {**TINY, "segment_len": 8, "mem_len": 16}),
                        "causal-lm")
    batches = StreamBatches(tokens, batch_size=4, segment_len=8)
    objective = RecurrentCausalLM(RecurrentCLMConfig(batch_size=4))
    train(model, objective, batches, tmp_path / name,
          TrainConfig(steps=steps, precision="fp32", log_every=1, eval_every=0, checkpoint_every=checkpoint_every,
                      progress_bar=False),
          OptimConfig(lr=3e-3, weight_decay=0.0), ScheduleConfig(warmup_steps=2, decay="constant"), resume=resume)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split") == "train"], objective


def test_loss_falls_when_training_with_memory(tmp_path):
    losses, objective = _train(tmp_path, "run", 40)
    assert int(objective.memory.length) == 16  # the memory was carried (and filled) across steps
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_resumed_run_restores_the_memory_and_the_loss_curve(tmp_path):
    full, _ = _train(tmp_path, "full", 8)
    _train(tmp_path, "split", 4, checkpoint_every=4)
    second, _ = _train(tmp_path, "split", 8, resume=True)
    assert second[-4:] == pytest.approx(full[-4:], rel=1e-5)  # the step after resume sees the saved memory


def test_recurrent_objective_needs_a_memory_model():
    gpt = build_model("gpt2", make_config("gpt2", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2)),
                      "causal-lm")
    with pytest.raises(ConfigError, match="transfo-xl"):
        RecurrentCausalLM().bind(gpt)
