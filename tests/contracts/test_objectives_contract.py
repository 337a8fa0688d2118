"""Contract: every registered objective trains a tiny model for a few steps and its loss falls."""

from __future__ import annotations

import functools

import pytest
import torch

from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.config import from_dict
from ptmkit.train.loop import bind_objective
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective

V = 64
# Updates per objective (default 100). RTD's discriminator must learn to spot the odd token out, a comparison
# that a 2-layer model picks up only after ~300 updates on this language (MLM/CLM just copy a visible token).
# NSP/SOP add a pair loss that starts at log 2 and falls slowly (SOP cannot fall at all here: both halves of a row
# are the same word), so the MLM part must carry the halving; whole-word masking sometimes hides a whole row (a
# row of one "##" piece is one word), which makes its curve noisy. Both need ~200 updates.
STEPS = {"rtd": 400, "nsp": 200, "sop": 200, "wwm": 200, "kepler": 300}
# KEPLER adds its knowledge-embedding loss over LAMA's graph, whose descriptions are mostly [UNK] in this 64-word
# vocabulary: that term stays noisy, so the MLM half must carry the halving, which the shared encoder reaches after
# ~250 updates (the KE gradients reach the same encoder).
# RTD's total is MLM + 50 x RTD; across initialisations it ends between 0.45 and 0.55 of its start after 400 updates
# (the discriminator term falls from log 2 only once replaced tokens become detectable), so its bar is 0.6.
FALL = {"rtd": 0.6}
# vlp (VisualBERT/UNITER: MLM + masked region modelling + image-text matching, one task per row): with one random
# picture per word, every term is memorising 60 pictures; the image-conditioned MLM part falls first (4.2 -> 3.6 after
# 100 updates, 3.1 after 200), region regression and matching only later: the total reaches ~0.8 of its start after
# 150 updates.
STEPS["vlp"] = 150
FALL["vlp"] = 0.9


def _model(task):
    if task == "image-text-contrastive":  # CLIP (objectives/clip.py): a tiny dual encoder on 16 x 16 images
        cfg = make_config("clip", dict(
            text=dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                      max_position_embeddings=8, pad_token_id=0, bos_token_id=1, eos_token_id=3),
            vision=dict(image_size=16, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
            projection_dim=32))
        return build_model("clip", cfg, task)
    if task == "vl-pretraining":  # single-stream VisualBERT on 16 x 16 images (4 patches), codebook of the patterns
        from ptmkit.nn.patches import patchify
        from ptmkit.objectives.codebook import fit_codebook

        cfg = make_config("visualbert", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2,
                                             intermediate_size=128, max_position_embeddings=8, image_size=16,
                                             patch_size=8, num_visual_classes=4, dropout=0.0, attention_dropout=0.0))
        model = build_model("visualbert", cfg, task)
        model.set_codebook(fit_codebook(patchify(_PATTERNS, 8).flatten(0, 1), 4))
        return model
    if task == "masked-lm":
        cfg = make_config("bert", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                       max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))
        return build_model("bert", cfg, task)
    if task == "replaced-token-detection":  # ELECTRA: embeddings narrower than the encoder, as in ELECTRA-Small
        cfg = make_config("electra", dict(vocab_size=V, embedding_size=32, hidden_size=64, num_layers=2, num_heads=2,
                                          intermediate_size=128, max_position_embeddings=32, dropout=0.0,
                                          attention_dropout=0.0))
        return build_model("electra", cfg, task)
    if task == "permutation-lm":  # XLNet: two-stream attention (objectives/plm.py)
        cfg = make_config("xlnet", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                        dropout=0.0))
        return build_model("xlnet", cfg, task)
    if task == "seq2seq-lm":  # encoder-decoder objectives (T5 span corruption, BART denoising, MASS): a tiny BART
        cfg = make_config("bart", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                       max_position_embeddings=64, dropout=0.0, pad_token_id=0, bos_token_id=2,
                                       eos_token_id=3, decoder_start_token_id=3))
        return build_model("bart", cfg, task)
    if task == "knowledge-masked-lm":  # ERNIE (objectives/dea.py): 2 BERT layers + 1 aggregator, one entity per word
        cfg = make_config("ernie-thu", dict(vocab_size=V, hidden_size=64, num_layers=3, num_knowledge_layers=1,
                                            num_heads=2, intermediate_size=128, max_position_embeddings=32,
                                            dropout=0.0, attention_dropout=0.0, num_entities=V, entity_size=16,
                                            entity_heads=2))
        return build_model("ernie-thu", cfg, task)
    if task == "image-reconstruction":  # VQ-VAE (objectives/vqvae.py): 16 x 16 images -> 4 x 4 codes of 32
        cfg = make_config("vqvae", dict(image_size=16, num_downsamples=2, hidden_size=32, residual_hidden_size=16,
                                        codebook_size=32, embedding_dim=16))
        return build_model("vqvae", cfg, task)
    if task == "kg-embedding":  # TransE (objectives/transe.py): entities are the words, three relations
        from ptmkit.models.transe import TransE, TransEConfig

        return TransE(TransEConfig(num_entities=V, num_relations=3, dim=32))
    if task == "base":  # sentence-embedding objectives (SimCSE): an encoder backbone; dropout is SimCSE's augmentation
        cfg = make_config("bert", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                       max_position_embeddings=32, dropout=0.1, attention_dropout=0.1))
        return build_model("bert", cfg, task)
    cfg = make_config("llama", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    return build_model("llama", cfg, task)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer():
    """A WordPiece tokenizer of <= V ids, for objectives that read the vocabulary (word starts, [CLS]/[SEP])."""
    from ptmkit.data.tokenizer import Tokenizer

    texts = ["the cat sat on the mat. a dog ran in the park! the bird sang in a tree."] * 20
    return Tokenizer.train(texts, "wordpiece", V, min_frequency=1)


@functools.lru_cache(maxsize=1)
def _seq2seq_tokenizer():
    """The tiny WordPiece tokenizer plus T5's sentinel tokens <extra_id_0..7> (span corruption reads them)."""
    from ptmkit.data.tokenizer import Tokenizer

    texts = ["the cat sat on the mat. a dog ran in the park! the bird sang in a tree."] * 20
    return Tokenizer.train(texts, "wordpiece", V, special_tokens=[f"<extra_id_{i}>" for i in range(8)],
                           min_frequency=1)


@functools.lru_cache(maxsize=1)
def _tiny_index() -> str:
    """A flat passage index of the tiny language's sentences, embedded by a random 2-layer BERT (REALM's retriever)."""
    import tempfile
    from pathlib import Path

    from ptmkit.models import save_model
    from ptmkit.retrieval.encoder import DenseEncoder
    from ptmkit.retrieval.passage_index import PassageIndex

    root = Path(tempfile.mkdtemp(prefix="ptmkit-realm-contract-"))
    enc = root / "encoder"
    torch.manual_seed(0)
    save_model(_model("base"), enc)
    _tiny_tokenizer().save(enc)
    (root / "corpus.txt").write_text("the cat sat on the mat.\na dog ran in the park!\nthe bird sang in a tree.\n")
    return str(PassageIndex.build(root / "corpus.txt", DenseEncoder.from_dir(enc), show_progress=False).save(root / "index"))


_PATTERNS = torch.randn(V, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # one random image per word
# image autoencoders (VQ-VAE): each word a 4 x 4 mosaic of random colours, which a 4 x 4 grid of codes can hold
# (per-pixel noise cannot pass a code bottleneck); the loss reaches ~0.35 of its start after 200 updates
_MOSAICS = torch.nn.functional.interpolate(torch.randn(V, 3, 4, 4, generator=torch.Generator().manual_seed(7)),
                                           scale_factor=4, mode="nearest")
STEPS["vqvae"] = 200


def contract_batch(objective, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch an objective reads, built from (B, T) token ids: tokens and padding mask, plus what its `inputs` name
    (the data the pipeline would add): images (each row's word has its own random picture), entity links (every other
    token is a mention of the entity numbered like the word) or knowledge-graph triples (a planted graph: word w
    relates by r to word (3w + r) mod V)."""
    inputs = getattr(objective, "inputs", ())
    if getattr(objective, "task", "") == "image-reconstruction":  # pixels only
        return {"pixel_values": _MOSAICS[ids[:, 0]]}
    if inputs == ("pixel_values",):  # image-text pairs: caption [bos, word, eos], image a fixed pattern of the word
        words = ids[:, 0]
        noise = torch.randn(len(words), 3, 16, 16, generator=torch.Generator().manual_seed(int(words.sum())))
        captions = torch.stack([torch.ones_like(words), words, torch.full_like(words, 3)], -1)  # (B, 3)
        return {"pixel_values": _PATTERNS[words] + 0.3 * noise, "input_ids": captions,
                "attention_mask": torch.ones_like(captions)}
    if inputs == ("image_codes",):  # text-to-image: caption [1, word, 3] (text ids < 47), 2 x 2 codes fixed by the word
        words = ids[:, 0] % (V - 17)
        captions = torch.stack([torch.ones_like(words), words, torch.full_like(words, 3)], -1)  # (B, 3)
        codes = (words[:, None] * torch.tensor([1, 3, 5, 7])) % 16  # (B, 4)
        return {"input_ids": captions, "attention_mask": torch.ones_like(captions), "image_codes": codes.view(-1, 2, 2)}
    if inputs == ("triples",):
        h = ids[:, 0]
        r = h % 3
        return {"triples": torch.stack([h, r, (3 * h + r) % V], -1)}
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "entity_ids" in inputs:
        batch["entity_ids"] = torch.where(torch.arange(ids.shape[1]) % 2 == 0, ids, torch.zeros_like(ids))
    return batch


def contract_objective(name):
    """Objective `name` at the contract size, built as `ptm pretrain` builds it where it reads the vocabulary or an
    index (other tests of every objective reuse this)."""
    cfg_cls, obj_cls = OBJECTIVES[name]
    params = {}
    fields = cfg_cls.__dataclass_fields__
    if "mask_token_id" in fields:
        params.update(mask_token_id=3, vocab_size=V, special_token_ids=[0, 1, 2, 3])
    if "codebook_size" in fields:  # text-to-image: 47 text ids + begin-of-image + 16 codes = the tiny model's 64
        params.update(vocab_size=V - 17, codebook_size=16)
    if "num_entities" in fields:  # TransE draws negatives among the graph's entities
        params.update(num_entities=V)
    if hasattr(obj_cls, "from_retriever"):  # retrieval-augmented (REALM): a passage index over the tiny language
        objective = build_objective(ObjectiveSection(name=name, params={"index": _tiny_index(), "k": 2}),
                                    _tiny_tokenizer(), V, seq_len=16)
    elif hasattr(obj_cls, "from_tokenizer"):  # reads the vocabulary: built as `ptm pretrain` builds it
        tokenizer = _seq2seq_tokenizer() if obj_cls.task == "seq2seq-lm" else _tiny_tokenizer()
        # (the entity objective reads its dictionary from the shared data root: missing data fails, naming the path)
        objective = build_objective(ObjectiveSection(name=name), tokenizer, V, seq_len=16)
    else:
        objective = obj_cls(from_dict(cfg_cls, params))
    return objective


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_loss_falls(name):
    objective = contract_objective(name)
    model = _model(objective.task)
    trained, _ = bind_objective(model, objective)  # + auxiliary networks the objective owns (ELECTRA's generator)
    opt = torch.optim.AdamW(trained.parameters(), lr=2e-3)
    # a learnable language: each sequence repeats one random word, so any visible token predicts the rest. Where the
    # objective reads the vocabulary, the word is one that starts a word: a row of "##" pieces is one long word, which
    # whole-word masking hides entirely or not at all
    g = torch.Generator().manual_seed(0)
    cls = OBJECTIVES[name][1]
    pool = torch.arange(4, V)
    if hasattr(cls, "from_tokenizer") and cls.task != "seq2seq-lm":
        pool = torch.tensor([i for i in range(4, V) if not _tiny_tokenizer().id_to_token(i).startswith("##")])
    losses = []
    for step in range(STEPS.get(name, 100)):
        ids = pool[torch.randint(len(pool), (16, 1), generator=g)].expand(16, 16).contiguous()
        batch = objective.corrupt(contract_batch(objective, ids), seeded_generator(0, step))
        loss, metrics = objective.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        assert set(metrics) >= {"loss"}
    assert sum(losses[-5:]) / 5 < FALL.get(name, 0.5) * sum(losses[:5]) / 5, losses
