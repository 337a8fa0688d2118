"""Activation checkpointing: same loss and gradients as without it (dropout included) for every objective's model
and every family, less saved activation memory, unchanged state-dict names, and errors for bad settings."""

from __future__ import annotations

import copy

import pytest
import torch

from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config
from ptmkit.models.registry import FAMILIES
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing, is_checkpointed, transformer_blocks
from ptmkit.train.loop import bind_objective
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective
from tests.contracts.test_model_families import TINY as FAMILY_TINY, _inputs as family_inputs
from tests.contracts.test_objectives_contract import V, _model, _seq2seq_tokenizer, _tiny_tokenizer, contract_batch


def _objective(name):
    cfg_cls, obj_cls = OBJECTIVES[name]
    if hasattr(obj_cls, "from_tokenizer"):
        tok = _seq2seq_tokenizer() if obj_cls.task == "seq2seq-lm" else _tiny_tokenizer()
        # the entity objective reads its dictionary from the shared data root; a missing file is an error
        return build_objective(ObjectiveSection(name=name), tok, V, seq_len=16)
    params = {}
    if "mask_token_id" in cfg_cls.__dataclass_fields__:
        params.update(mask_token_id=3, vocab_size=V, special_token_ids=[0, 1, 2, 3])
    if "num_entities" in cfg_cls.__dataclass_fields__:
        params.update(num_entities=V)
    return obj_cls(from_dict(cfg_cls, params))


def _with_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1  # the recomputation must redraw the same dropout masks
    return model


def _grads(name, checkpointing):
    torch.manual_seed(0)
    objective = _objective(name)
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


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_checkpointing_gives_the_same_loss_and_gradients_for_every_objective(name):
    if OBJECTIVES[name][1].task == "kg-embedding":
        pytest.skip("TransE is two embedding tables: no Transformer blocks to checkpoint")
    loss, grads = _grads(name, False)
    loss_ac, grads_ac = _grads(name, True)
    torch.testing.assert_close(loss_ac, loss, rtol=0, atol=1e-6)
    assert grads_ac.keys() == grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads_ac[n], grads[n], rtol=1e-5, atol=1e-6, msg=n)


FAMILY_CONFIG = dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_blocks_to_checkpoint_and_keeps_its_state_dict(family):
    extra = {"t5-encoder": {}, "xlnet": {}}.get(family, {})
    pixels = FAMILY_TINY.get(family, ({}, "", "tokens"))[2] in ("image", "image-text")
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
    main = lambda out: out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits_per_image  # noqa: E731
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
