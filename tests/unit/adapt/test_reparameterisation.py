"""Prefix-tuning's MLP and P-tuning's prompt encoder are for training only: `bake` replaces each by the table it
computes, with the same outputs and without the extra parameters; prompt initialisation from text or vocabulary."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ptmkit import adapt
from ptmkit.config import ConfigError
from tests.contracts.test_delta_methods import _perturb
from tests.contracts.test_model_families import _build, _inputs


@pytest.mark.parametrize("method,options", [("prefix", {"projection_hidden": 32}), ("ptuning", {"encoder": "lstm"}),
                                            ("ptuning", {"encoder": "mlp"})])
def test_bake_keeps_the_outputs_and_drops_the_encoder(method, options):
    model = _build("gpt2").eval()
    adapt.apply(model, method, {"num_virtual_tokens": 4, **options})
    _perturb(model)
    args, kw, _ = _inputs("gpt2", padded=True)
    before = model(*args, **kw).logits
    n_before = len(adapt.delta_parameters(model))
    adapt.bake(model)
    assert_close(model(*args, **kw).logits, before, atol=1e-6, rtol=1e-5)
    assert len(adapt.delta_parameters(model)) < n_before  # only the table is left
    assert not any("mlp" in n or "lstm" in n or "encoder.mlp" in n for n in adapt.delta_parameters(model))


def test_prompt_starts_from_the_embeddings_of_its_text():
    model = _build("bert")
    adapt.apply(model, "prompt", {"num_virtual_tokens": 5, "init": "text", "init_ids": [7, 8]})
    table = model.backbone.input_embeddings().weight
    assert_close(model.backbone.prompt.embedding, table[torch.tensor([7, 8, 7, 8, 7])])


def test_prompt_text_init_needs_its_ids_and_valid_ones():
    with pytest.raises(ConfigError, match="needs init_text"):
        adapt.apply(_build("bert"), "prompt", {"init": "text"})
    with pytest.raises(ConfigError, match="must be tokenised into init_ids"):
        adapt.apply(_build("bert"), "prompt", {"init": "text", "init_text": "great movie"})
    with pytest.raises(ConfigError, match="below the vocabulary size"):
        adapt.apply(_build("bert"), "prompt", {"init": "text", "init_ids": [10 ** 6]})


def test_the_heads_see_only_the_real_tokens():
    model = _build("bert").eval()
    args, kw, _ = _inputs("bert", padded=True)
    t = args[0].shape[1]
    adapt.apply(model, "prompt", {"num_virtual_tokens": 3})
    out = model(*args, **kw, output_hidden_states=True)
    assert out.logits.shape[1] == t and all(h.shape[1] == t for h in out.hidden_states)


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_removing_a_soft_prompt_gives_back_the_base_model(method):
    model = _build("gpt2").eval()
    args, kw, _ = _inputs("gpt2", padded=True)
    base = model(*args, **kw).logits
    adapt.apply(model, method, {"num_virtual_tokens": 3})
    _perturb(model)
    assert (model(*args, **kw).logits - base).abs().max() > 1e-4
    adapt.remove(model, method)
    assert not adapt.delta_parameters(model) and not model.backbone._forward_pre_hooks
    assert_close(model(*args, **kw).logits, base)


def test_the_prefix_table_follows_the_weights_and_copies():
    """After an optimizer step a call outside the model's forward reads fresh prefixes, and a trained model copies."""
    import copy

    model = _build("gpt2")
    adapt.apply(model, "prefix", {"num_virtual_tokens": 3, "projection_hidden": 16})
    adapt.freeze_except(model)
    args, kw, _ = _inputs("gpt2", padded=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(*args, **kw).logits.pow(2).mean().backward()
    opt.step()
    twin = copy.deepcopy(model)  # the graph of the last forward is not copied
    fresh = model.prefix_encoder.compute()
    assert_close(model.prefix_encoder.current(), fresh)
    assert_close(twin.prefix_encoder.current(), fresh)


def test_the_space_before_the_slot_goes_with_the_label_word():
    from ptmkit.adapt.prompts import Template

    assert Template("{text_a} It was {mask}.").space_before_slot == " "
    assert Template("{text_a}\nSentiment:{mask}").space_before_slot == ""
