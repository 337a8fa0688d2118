"""TransE (models/transe.py, objectives/transe.py) trained through the engine (recipes/knowledge.py): it learns a
planted graph well enough to infer held-out triples (Hits@1 = 1, filtered); the corruption and the norm constraint
behave as Bordes et al. describe; graphs with triples on unknown entities are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.analysis.link_prediction import filtered_ranks
from ptmkit.config import ConfigError
from ptmkit.data.kg import HELD_OUT, KnowledgeGraph
from ptmkit.models.transe import TransE, TransEConfig, entity_table, load_transe
from ptmkit.objectives import seeded_generator
from ptmkit.objectives.transe import TransEObjective, TransEObjectiveConfig
from ptmkit.recipes.knowledge import TransEModelSection, TransERunConfig, train_transe
from ptmkit.train.loop import TrainConfig
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig


def planted_graph(n: int = 10) -> KnowledgeGraph:
    """a_i -r0-> b_i -r1-> c_i for every i, and the composition a_i -r2-> c_i for i < 7; (a_i, r2, c_i) for i >= 7
    are held out: TransE can only get them right by learning r2 = r0 + r1 from the seven it sees."""
    names = [f"{x}{i}" for x in "abc" for i in range(n)]
    triples, held = [], []
    for i in range(n):
        triples += [(f"a{i}", "r0", f"b{i}"), (f"b{i}", "r1", f"c{i}"), (f"a{i}", "r2", f"c{i}")]
        held += [False, False, i >= 7]
    return KnowledgeGraph.from_records({e: e for e in names}, ["r0", "r1", "r2"], triples, held)


def test_transe_learns_a_planted_graph_to_hits_at_1(tmp_path):
    kg = planted_graph()
    kg.save(tmp_path / "kg")
    cfg = TransERunConfig(
        kg=str(tmp_path / "kg"), model=TransEModelSection(dim=16, p_norm=2), batch_size=8,
        train=TrainConfig(steps=1000, precision="fp32", eval_every=0, checkpoint_every=0, log_every=100,
                          progress_bar=False),
        optim=OptimConfig(lr=0.02, weight_decay=0.0), schedule=ScheduleConfig(warmup_steps=0, decay="constant"),
        out=str(tmp_path / "run"))
    summary = train_transe(cfg)
    lp = summary["link_prediction"]
    assert lp["triples"] == 3 and lp["hits@1"] == 1.0 and lp["mrr"] == 1.0, lp
    model, meta = load_transe(tmp_path / "run" / "embeddings")
    assert meta["kg_fingerprint"] == kg.fingerprint
    assert torch.equal(entity_table(tmp_path / "run" / "embeddings"), model.entity.weight)
    norms = model.entity.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # the vectors handed on keep the norm constraint


def test_corruption_replaces_head_or_tail_and_the_loss_is_the_margin_ranking():
    obj = TransEObjective(TransEObjectiveConfig(margin=1.0, negatives=4, num_entities=30))
    triples = torch.tensor([[0, 0, 10], [1, 1, 11], [2, 2, 12]])
    batch = obj.corrupt({"triples": triples}, seeded_generator(0, 0))
    neg = batch["negatives"]  # (3, 4, 3)
    assert torch.equal(neg[..., 1], triples[:, None, 1].expand(3, 4))  # the relation is kept
    same_head, same_tail = neg[..., 0] == triples[:, None, 0], neg[..., 2] == triples[:, None, 2]
    assert (same_head | same_tail).all()  # one side replaced (or drawn equal by chance), never both
    assert torch.equal(obj.corrupt({"triples": triples}, seeded_generator(0, 0))["negatives"], neg)  # seeded
    model = TransE(TransEConfig(num_entities=30, num_relations=3, dim=8)).eval()
    loss, metrics = obj.loss(model, batch)
    d_pos, d_neg = model(triples), model(neg)
    torch.testing.assert_close(loss, torch.relu(1.0 + d_pos[:, None] - d_neg).mean())
    model.train()
    with torch.no_grad():
        model.entity.weight.mul_(3.0)
    obj.loss(model, batch)  # training renormalises the entities first (Algorithm 1)
    torch.testing.assert_close(model.entity.weight.norm(dim=1), torch.ones(30))


def test_filtered_ranking_ignores_other_true_answers():
    model = TransE(TransEConfig(num_entities=4, num_relations=1, dim=2, p_norm=2))
    with torch.no_grad():  # 0 + r lands on 1, then 2 is next: (0, r, 2) ranks second unless (0, r, 1) is known
        model.entity.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.1, 0.0], [5.0, 5.0]]))
        model.relation.weight.copy_(torch.tensor([[1.0, 0.0]]))
    test = np.array([[0, 0, 2]])
    tail_rank = lambda known: int(filtered_ranks(model, test, known)[1])  # noqa: E731  (heads first, then tails)
    assert tail_rank(test) == 2
    assert tail_rank(np.array([[0, 0, 2], [0, 0, 1]])) == 1


def test_graphs_refuse_triples_on_unknown_entities():
    with pytest.raises(ConfigError, match="triple 1 \\(Q1, P1, Q9\\) refers to unknown entity 'Q9'; add it to the "
                                          "entity list or drop the triple"):
        KnowledgeGraph.from_records({"Q1": "a", "Q2": "b"}, ["P1"], [("Q1", "P1", "Q2"), ("Q1", "P1", "Q9")])
    with pytest.raises(ConfigError, match="refers to unknown relation 'P7'"):
        KnowledgeGraph.from_records({"Q1": "a", "Q2": "b"}, ["P1"], [("Q1", "P7", "Q2")])
    with pytest.raises(ConfigError, match="triple 0 \\(0, 0, 5\\) refers to tail entity 5, but the graph has 2 .*"
                                          "rebuild the graph"):
        KnowledgeGraph(["Q1", "Q2"], ["a", "b"], ["P1"], np.array([[0, 0, 5]]))
    with pytest.raises(ConfigError, match="transe: num_entities must be set"):
        TransEObjective(TransEObjectiveConfig())


def test_a_saved_graph_round_trips_and_detects_tampering(tmp_path):
    kg = planted_graph()
    kg.save(tmp_path / "kg")
    back = KnowledgeGraph.load(tmp_path / "kg")
    assert back.fingerprint == kg.fingerprint and back.entities == kg.entities
    assert (back.split == HELD_OUT).sum() == 3
    rows = np.load(tmp_path / "kg" / "triples.npy")
    rows[0, 2] = 1
    np.save(tmp_path / "kg" / "triples.npy", rows)
    with pytest.raises(ValueError, match="do not match the fingerprint"):
        KnowledgeGraph.load(tmp_path / "kg")
