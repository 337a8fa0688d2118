"""ERNIE's denoising entity auto-encoder (objectives/dea.py): the alignment corruption has the paper's proportions,
predictions range over the sequence's own entities, and MLM + dEA falls on a tiny corpus; without entity links the
objective says how to make them."""

from __future__ import annotations

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import seeded_generator
from ptmkit.objectives.dea import DEAConfig, DenoisingEntityAutoEncoder
from ptmkit.train.loop import bind_objective

V, E = 64, 40


def _objective(**kw):
    return DenoisingEntityAutoEncoder(DEAConfig(mask_token_id=3, vocab_size=V, special_token_ids=[0, 1, 2, 3], **kw))


def _model():
    torch.manual_seed(0)
    cfg = make_config("ernie-thu", dict(vocab_size=V, hidden_size=64, num_layers=2, num_knowledge_layers=1,
                                        num_heads=2, intermediate_size=128, max_position_embeddings=32, dropout=0.0,
                                        attention_dropout=0.0, num_entities=E, entity_size=16, entity_heads=2))
    model = build_model("ernie-thu", cfg, "knowledge-masked-lm")
    with torch.no_grad():  # unit-length entity vectors, as TransE hands them on (objectives/transe.py)
        table = model.backbone.entity_embeddings.weight
        table[1:] = torch.nn.functional.normalize(torch.randn_like(table[1:]), dim=-1)
    return model


def _corpus(step: int, b: int = 16, t: int = 24):
    """A tiny corpus: sentences of random words in which words 4..43 are entity names (entity = word - 3), aligned at
    every third position, so a sequence holds several different entities to choose among."""
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(4, V, (b, t), generator=g)
    named = (torch.arange(t) % 3 == 0) & (ids < 4 + E)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "entity_ids": torch.where(named, ids - 3, torch.zeros_like(ids))}


def test_alignment_corruption_has_the_papers_proportions():
    obj = _objective()
    ids = torch.randint(4, V, (64, 128))
    entities = torch.randint(1, E + 1, ids.shape)
    out = obj.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids), "entity_ids": entities},
                      seeded_generator(0, 0))
    dropped = (out["entity_ids"] == 0).float().mean().item()
    replaced = out["entity_replaced"].float().mean().item()
    assert abs(dropped - 0.15) < 0.01 and abs(replaced - 0.05) < 0.01, (dropped, replaced)
    assert torch.equal(out["entity_labels"], entities)  # every alignment is reconstructed, corrupted or not
    assert abs((out["labels"] != -100).float().mean().item() - 0.15) < 0.01  # BERT's MLM alongside


def test_predictions_range_over_the_sequences_own_entities():
    obj, model = _objective(), _model()
    bind_objective(model, obj)
    batch = obj.corrupt(_corpus(0), seeded_generator(0, 0))
    model.eval()
    with torch.no_grad():
        loss, metrics = obj.loss(model, batch)
        o = obj.losses(model, batch)
    # the dEA loss is at most log(#entities in the row): a uniform guess over the row's candidates, not over all E
    rows = batch["entity_labels"]
    worst = max(len(torch.unique(r[r > 0])) for r in rows)
    assert 0 < o["dea"].item() < torch.log(torch.tensor(float(worst))).item() + 2.0
    torch.testing.assert_close(loss, o["mlm"] + o["dea"])
    assert metrics["aligned_tokens"] == float((rows > 0).sum())


def test_dea_loss_falls_on_a_tiny_corpus():
    obj, model = _objective(), _model()
    trained, _ = bind_objective(model, obj)
    opt = torch.optim.AdamW(trained.parameters(), lr=2e-3)
    dea = []
    for step in range(60):
        loss, metrics = obj.loss(model, obj.corrupt(_corpus(step), seeded_generator(0, step)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        dea.append(metrics["dea_loss"])
    first, last = sum(dea[:5]) / 5, sum(dea[-5:]) / 5
    assert last < 0.5 * first, dea


def test_without_entity_links_or_an_ernie_model_the_objective_says_what_to_do():
    obj = _objective()
    ids = torch.randint(4, V, (2, 8))
    with pytest.raises(ConfigError, match="no entity_ids; link the corpus once with `ptm kg link.* data.entities"):
        obj.corrupt({"input_ids": ids}, seeded_generator(0, 0))
    bert = build_model("bert", make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2,
                                                        intermediate_size=64)), "masked-lm")
    with pytest.raises(ConfigError, match="model family ernie-thu"):
        obj.bind(bert)
    with pytest.raises(ConfigError, match="entity_replace_prob and entity_drop_prob .* sum to at most 1"):
        _objective(entity_replace_prob=0.5, entity_drop_prob=0.6)
