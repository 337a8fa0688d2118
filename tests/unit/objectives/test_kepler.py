"""KEPLER's joint objective (objectives/kepler.py): loss = MLM + KE, where KE scores TransE distances between the
encoder's own encodings of entity descriptions, so the KE term's gradient reaches the encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.data.kg import KnowledgeGraph
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.models.registry import backbone_of
from ptmkit.objectives import seeded_generator
from ptmkit.objectives.kepler import KEPLER, KEPLERConfig, encode_descriptions
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective
from ptmkit.train.loop import bind_objective

TEXTS = ["the red cat sat on the mat . a blue dog ran in the park ! the green bird sang in a tree ."] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, "wordpiece", 80, min_frequency=1)


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    words = ["cat", "dog", "bird", "mat", "park", "tree"]
    ents = {f"Q{i}": w for i, w in enumerate(words)}
    triples = [("Q0", "P1", "Q3"), ("Q1", "P1", "Q4"), ("Q2", "P1", "Q5"), ("Q0", "P2", "Q1")]
    kg = KnowledgeGraph.from_records(ents, ["P1", "P2"], triples,
                                     descriptions=[f"the red {w} . it sat on the [MASK] in the park" for w in words])
    d = tmp_path_factory.mktemp("kg") / "kg"
    kg.save(d)
    return d


def _setup(tok, kg_dir):
    obj = build_objective(ObjectiveSection("kepler", {"kg": str(kg_dir), "triples_per_batch": 3, "negatives": 2,
                                                      "description_len": 10}), tok, tok.vocab_size, seq_len=16)
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))
    model = build_model("bert", cfg, "masked-lm")
    bind_objective(model, obj)
    ids = torch.tensor([tok.encode(TEXTS[0])[:16]] * 4)
    batch = obj.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, seeded_generator(0, 0))
    return obj, model, batch


def test_descriptions_are_tokenised_once_with_the_mask_token_and_cut_keeping_the_end(tok, kg_dir):
    kg = KnowledgeGraph.load(kg_dir)
    ids, lengths = encode_descriptions(kg, tok, 10)
    full = tok.encode(kg.descriptions[0].replace("[MASK]", tok.id_to_token(tok.mask_id)))
    assert tok.mask_id in full and len(full) > 10
    assert lengths[0] == 10 and ids[0, :9].tolist() == full[:9] and ids[0, 9] == full[-1]  # [CLS] ... [SEP]


def test_joint_loss_is_mlm_plus_ke_from_encoded_descriptions(tok, kg_dir):
    obj, model, batch = _setup(tok, kg_dir)
    model.eval()
    loss, metrics = obj.loss(model, batch)
    from ptmkit.objectives.masking import masked_lm_loss

    mlm, _ = masked_lm_loss(model, batch)
    # KE by hand: encode each description, take the first token's top-layer state, TransE distance, Eq. 2
    desc, mask = batch["ke_descriptions"][0], batch["ke_description_mask"][0]
    emb = backbone_of(model)(desc, mask).last_hidden_state[:, 0]
    rel = obj.relations.weight

    def d(t):
        return (emb[t[..., 0]] + rel[t[..., 1]] - emb[t[..., 2]]).norm(dim=-1)

    pos, neg = batch["ke_positive"][0], batch["ke_negative"][0]
    ke = -F.logsigmoid(4.0 - d(pos)).mean() - F.logsigmoid(d(neg) - 4.0).mean(1).mean()
    torch.testing.assert_close(loss, mlm + ke)
    assert metrics["ke_loss"] == pytest.approx(ke.item(), rel=1e-5)
    assert pos.shape == (3, 3) and neg.shape == (3, 2, 3) and desc.shape[0] <= 6
    assert (desc[:, 0] == tok.cls_id).all()  # descriptions start with the token KEPLER reads


def test_the_ke_gradient_reaches_the_encoder(tok, kg_dir):
    obj, model, batch = _setup(tok, kg_dir)
    ke, _ = obj.ke_loss(model, batch)
    ke.backward()
    encoder = backbone_of(model)
    for name in ("layers.0.attn.qkv.weight", "layers.1.ffn.up.weight", "embeddings.tok.weight"):
        g = encoder.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert obj.relations.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.head.parameters())  # the KE term does not touch the MLM head


def test_bad_settings_are_named(tok, kg_dir):
    with pytest.raises(ConfigError, match="kepler: p_norm must be 1 or 2"):
        KEPLERConfig(p_norm=3)
    with pytest.raises(ConfigError, match="description_len must be >= 3"):
        KEPLERConfig(description_len=2)
    with pytest.raises(FileNotFoundError, match="not a knowledge-graph directory"):
        build_objective(ObjectiveSection("kepler", {"kg": str(kg_dir.parent / "missing")}), tok, tok.vocab_size)
    kg = KnowledgeGraph.load(kg_dir)
    with pytest.raises(ConfigError, match="kepler: 2 descriptions for 6 entities"):
        KEPLER(KEPLERConfig(mask_token_id=3, vocab_size=80), kg, torch.zeros(2, 4, dtype=torch.long),
               torch.ones(2, dtype=torch.long))
