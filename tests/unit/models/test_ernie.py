"""THU-ERNIE's knowledgeable encoder (models/ernie.py): with no aligned entity it is exactly the BERT encoder of its
token weights; entities change the tokens' states; the entity table starts from a TransE file and stays frozen; bad
configurations fail naming the problem and the fix."""

from __future__ import annotations

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, load_model, make_config, save_model
from ptmkit.models.transe import TransE, TransEConfig, save_transe

V, E = 50, 12
SHAPE = dict(vocab_size=V, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
             max_position_embeddings=32, dropout=0.0, attention_dropout=0.0)


def _ernie(**kw):
    torch.manual_seed(0)
    cfg = make_config("ernie-thu", {**SHAPE, "num_knowledge_layers": 2, "num_entities": E, "entity_size": 16,
                                    "entity_heads": 2, **kw})
    return build_model("ernie-thu", cfg, "knowledge-masked-lm").eval()


def _bert_with_the_token_weights(ernie):
    """The BERT encoder whose layer i is ERNIE's T-layer i, then the token side of each aggregator."""
    bert = build_model("bert", make_config("bert", SHAPE), "base").eval()
    n_text = len(ernie.backbone.layers)
    state = {}
    for name, t in ernie.backbone.state_dict().items():
        if name.startswith("knowledge_layers."):
            _, j, part, rest = name.split(".", 3)
            if part != "token":
                continue
            name = f"layers.{n_text + int(j)}.{rest}"
        elif name.startswith("entity_embeddings"):
            continue
        state[name] = t
    bert.load_state_dict(state)  # strict: every BERT tensor comes from ERNIE
    return bert


def test_no_aligned_entity_is_exactly_the_plain_bert_path():
    ernie = _ernie()
    with torch.no_grad():  # give the entity side real weights: its zero contribution must come from the gating
        for p in ernie.backbone.knowledge_layers.parameters():
            p.add_(0.1 * torch.randn_like(p))
    bert = _bert_with_the_token_weights(ernie)
    ids = torch.randint(5, V, (3, 11))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    with torch.no_grad():
        want = bert(ids, mask).last_hidden_state
        fused = ernie.backbone(ids, mask, entity_ids=torch.zeros_like(ids)).last_hidden_state  # through the fusion
        plain = ernie.backbone(ids, mask).last_hidden_state  # no entity input at all
        entities = torch.zeros_like(ids)
        entities[:, [1, 5]] = torch.tensor([[3, 7], [1, 12], [4, 4]])
        linked = ernie.backbone(ids, mask, entity_ids=entities).last_hidden_state
    assert torch.equal(fused, want) and torch.equal(plain, want)  # bit for bit, not approximately
    assert not torch.allclose(linked, want)  # entities do reach the tokens
    # a token's state changes only through attention, so every position moves, but padding rules still hold
    assert torch.isfinite(linked).all()


def test_entity_table_starts_from_transe_frozen(tmp_path):
    transe = TransE(TransEConfig(num_entities=E, num_relations=2, dim=16))
    save_transe(transe, tmp_path / "emb")
    m = _ernie(entity_embeddings=str(tmp_path / "emb"), num_entities=0)
    table = m.backbone.entity_embeddings.weight
    assert m.config.num_entities == E and table.shape == (E + 1, 16)
    assert torch.equal(table[1:], transe.entity.weight) and torch.equal(table[0], torch.zeros(16))
    assert not table.requires_grad  # ERNIE keeps the TransE vectors fixed
    save_model(m, tmp_path / "model")
    back = load_model(tmp_path / "model")  # the weights hold the table; the file is not read again
    assert back.config.entity_embeddings is None and torch.equal(back.backbone.entity_embeddings.weight, table)
    clf = load_model(tmp_path / "model", task="sequence-classification", num_labels=2)  # fine-tuning: plain path
    assert clf(torch.randint(5, V, (2, 6))).logits.shape == (2, 2)


def test_bad_configurations_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="num_knowledge_layers must be between 1 and num_layers .* at least one "
                                          "aggregator .* use model family bert"):
        _ernie(num_knowledge_layers=0)
    with pytest.raises(ConfigError, match="num_knowledge_layers must be between 1 and num_layers \\(4\\)"):
        _ernie(num_knowledge_layers=5)
    save_transe(TransE(TransEConfig(num_entities=E, num_relations=2, dim=20)), tmp_path / "emb20")
    with pytest.raises(ConfigError, match="holds 20-wide vectors but entity_size is 16; set model.config.entity_size "
                                          "to 20, or train TransE with dim 16"):
        _ernie(entity_embeddings=str(tmp_path / "emb20"))
    save_transe(TransE(TransEConfig(num_entities=7, num_relations=2, dim=16)), tmp_path / "emb7")
    with pytest.raises(ConfigError, match="holds 7 entities but num_entities is 12; set num_entities to 7"):
        _ernie(entity_embeddings=str(tmp_path / "emb7"))
    with pytest.raises(ConfigError, match="entity_embeddings file .*nowhere.* not found; train TransE first"):
        _ernie(entity_embeddings=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="entity_size 16 is not divisible by entity_heads 3"):
        _ernie(entity_heads=3)
    m = _ernie()
    with pytest.raises(ValueError, match=r"entity_ids must be in \[0, 12\]"):
        m(torch.randint(5, V, (1, 4)), entity_ids=torch.full((1, 4), 13))
