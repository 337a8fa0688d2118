"""Activation checkpointing: same loss and gradients as without it (dropout included) for every objective's model
and every family, less saved activation memory, unchanged state-dict names, and errors for bad settings."""

from __future__ import annotations

import copy

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.models.registry import FAMILIES
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing, is_checkpointed, transformer_blocks
from ptmkit.train.loop import bind_objective
from tests.contracts.test_model_families import TINY as FAMILY_TINY, _inputs as family_inputs
from tests.contracts.test_objectives_contract import V, _model, contract_batch, contract_objective


def _with_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1  # the recomputation must redraw the same dropout masks
    return model


def _grads(name, checkpointing):
    objective = contract_objective(name)  # first: a cached build (REALM's index) must not shift the model's seed
    torch.manual_seed(0)
    model = _with_dropout(_model(objective.task))
    trained, _ = bind_objective(model, objective)
    if checkpointing:
        assert apply_activation_checkpointing(trained) >= 2
    ids = torch.randint(4, V, (4, 16), generator=torch.Generator().manual_seed(1))
    batch = objective.corrupt(contract_batch(objective, ids), seeded_generator(0, 0))
    torch.manual_seed(2)
    loss, _ = objective.loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trained.named_parameters() if p.grad is not None}


# models with no Transformer block stack: TransE (two embedding tables) and the VQ-VAE (convolutions); checkpointing
# them is refused (test_models_without_blocks_are_refused_by_name)
NO_BLOCKS = ("kg-embedding", "image-reconstruction")


@pytest.mark.parametrize("name", sorted(n for n, (_, obj) in OBJECTIVES.items() if obj.task not in NO_BLOCKS))
def test_checkpointing_gives_the_same_loss_and_gradients_for_every_objective(name):
    loss, grads = _grads(name, False)
    loss_ac, grads_ac = _grads(name, True)
    torch.testing.assert_close(loss_ac, loss, rtol=0, atol=1e-6)
    assert grads_ac.keys() == grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads_ac[n], grads[n], rtol=1e-5, atol=1e-6, msg=n)


FAMILY_CONFIG = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_models_without_blocks_are_refused_by_name():
    for task in NO_BLOCKS:
        with pytest.raises(ConfigError, match="has no `layers` block stack to checkpoint"):
            apply_activation_checkpointing(_model(task))


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if FAMILY_TINY.get(f, ({}, ""))[1] not in NO_BLOCKS))
def test_every_family_has_blocks_to_checkpoint_and_keeps_its_state_dict(family):
    extra = {"t5-encoder": {}, "xlnet": {}}.get(family, {})
    pixels = FAMILY_TINY.get(family, ({}, "", "tokens"))[2] in ("image", "image-text", "vision-language")
    config = FAMILY_TINY[family][0] if pixels else {**FAMILY_CONFIG, **extra}  # vision families: their own sizes
    model = build_model(family, make_config(family, config), "base")
    names = list(model.state_dict())
    n_blocks = len({id(b) for b in transformer_blocks(model)})  # a shared block (ALBERT) is one module, wrapped once
    assert apply_activation_checkpointing(model) == n_blocks > 0
    assert all(is_checkpointed(b) for b in transformer_blocks(model))
    assert list(model.state_dict()) == names  # checkpoints and HF export see the same tensors
    assert apply_activation_checkpointing(model) == 0  # idempotent

    copied = copy.deepcopy(model)  # the wrapped forward follows the copy, not the original
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(1.0)
    ids = torch.randint(0, V, (2, 8))
    kw = {"decoder_input_ids": ids} if getattr(model, "is_encoder_decoder", False) else {}
    args = family_inputs(family, padded=False)[0] if pixels else [ids]
    model.eval(), copied.eval()
    def main(out):  # the output every family has: final states, CLIP's similarities, a VL pair's pooled vector
        for field in ("last_hidden_state", "logits_per_image", "pooler_output"):
            if hasattr(out, field):
                return getattr(out, field)
        raise AssertionError(f"{type(out).__name__}: no output to compare")

    a = main(model(*args, **kw))
    b = main(copied(*args, **kw))
    assert not torch.allclose(a, b)


def test_every_kth_block_and_bad_settings():
    cfg = make_config("gpt2", dict(vocab_size=V, hidden_size=32, num_layers=6, num_heads=2))
    model = build_model("gpt2", cfg, "causal-lm")
    assert apply_activation_checkpointing(model, every=2) == 3
    assert [is_checkpointed(b) for b in transformer_blocks(model)] == [True, False] * 3
    with pytest.raises(ConfigError, match="every must be an integer >= 1"):
        apply_activation_checkpointing(model, every=0)
    with pytest.raises(ConfigError, match="no `layers` block stack"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_checkpointing_cuts_saved_activation_memory():
    from torch.distributed._tools.mem_tracker import MemTracker

    def saved_activations(every):
        torch.manual_seed(0)
        cfg = make_config("bert", dict(vocab_size=V, hidden_size=64, num_layers=6, num_heads=2, intermediate_size=256,
                                       max_position_embeddings=128))
        model = build_model("bert", cfg, "base")
        if every:
            apply_activation_checkpointing(model, every)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            loss = model(torch.randint(0, V, (4, 128))).last_hidden_state.square().mean()
            current = tracker.get_tracker_snapshot("current")[torch.device("cpu")]
            loss.backward()
        return next(v for k, v in current.items() if str(k).endswith("ACT"))

    full, every_block, every_other = saved_activations(0), saved_activations(1), saved_activations(2)
    assert every_block < 0.15 * full  # only each block's input is kept
    assert 0.35 * full < every_other < 0.65 * full  # half the blocks keep their activations


def test_memory_benchmark_ends_with_its_result_line(capsys):
    import json
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import activation_memory
    finally:
        sys.path.pop(0)
    result = activation_memory.main(["--layers", "2", "--seq-len", "32", "--batch-size", "1", "--rounds", "1",
                                     "--family", "gpt2"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == json.loads(json.dumps(result))
    assert {"benchmark", "ours", "reference", "ratio", "unit"} <= set(line)
    assert line["ours"] < line["reference"] and line["results"]["every_2"]["activation_saving"] > 0
