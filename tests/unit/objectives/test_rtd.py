"""ELECTRA replaced-token detection: masking statistics, shared embeddings, no gradient through the sampling,
labels of reproduced tokens, a hand-computed loss with a fixed generator, config validation, checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config
from ptmkit.models.base import ModelOutput
from ptmkit.objectives import OBJECTIVES, ReplacedTokenDetection, RTDConfig, seeded_generator
from ptmkit.objectives.rtd import generator_config, sample_tokens
from ptmkit.train.checkpoint import OBJECTIVE_FILE, load_checkpoint, save_checkpoint
from ptmkit.train.loop import bind_objective

MASK, V = 4, 50
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


def _objective(**kw) -> ReplacedTokenDetection:
    return ReplacedTokenDetection(RTDConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))


def _model(embedding_size=16):
    cfg = make_config("electra", dict(vocab_size=V, embedding_size=embedding_size, hidden_size=32, num_layers=2,
                                      num_heads=2, intermediate_size=64, max_position_embeddings=32, dropout=0.0,
                                      attention_dropout=0.0))
    return build_model("electra", cfg, "replaced-token-detection")


def _batch(b=64, t=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[: b // 2, t - t // 4:] = 0
    ids[: b // 2, t - t // 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_masking_statistics():
    batch = _batch()
    out = _objective().corrupt(batch, seeded_generator(0, 0))
    chosen = out["labels"] != -100
    maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    n = int(maskable.sum())
    rate = chosen.sum().item() / n
    assert abs(rate - 0.15) < 3 * math.sqrt(0.15 * 0.85 / n)  # within 3 sigma of Bernoulli(0.15)
    assert not (chosen & ~maskable).any()  # never specials or padding
    assert torch.equal(out["labels"][chosen], batch["input_ids"][chosen])
    k = chosen.sum().item()
    frac_mask = (out["input_ids"][chosen] == MASK).float().mean().item()
    assert abs(frac_mask - 0.85) < 4 * math.sqrt(0.85 * 0.15 / k)
    unmasked = chosen & (out["input_ids"] != MASK)
    assert torch.equal(out["input_ids"][unmasked], batch["input_ids"][unmasked])  # no random tokens (unlike BERT)
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])
    noise = out["sample_noise"]
    assert noise.shape == batch["input_ids"].shape and 0 <= noise.min() and noise.max() < 1


def test_corrupt_is_pure_and_seeded():
    batch = _batch(4, 32)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _objective()
    a, b = obj.corrupt(batch, seeded_generator(7, 3)), obj.corrupt(batch, seeded_generator(7, 3))
    c = obj.corrupt(batch, seeded_generator(7, 4))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


def test_generator_shares_the_discriminators_embeddings():
    model, obj = _model(), _objective(generator_size_ratio=0.5)
    gen = obj.bind(model)
    emb, gemb = model.backbone.embeddings, gen.backbone.embeddings
    assert gemb is emb
    for name in ("tok", "pos", "segment", "norm"):
        for p, q in zip(getattr(gemb, name).parameters(), getattr(emb, name).parameters()):
            assert p is q  # the same tensor objects, not copies
    # the generator is half as wide as the discriminator and projects the shared 16-wide embeddings to its width
    assert gen.config.hidden_size == 16 and gen.config.embedding_size == 16 and gen.backbone.embeddings_project is None
    assert obj.bind(model) is gen  # binding again returns the same generator
    trained, aux = bind_objective(model, obj)
    assert aux is gen
    own = [p for n, p in gen.named_parameters() if not n.startswith("backbone.embeddings.")]
    assert len(list(trained.parameters())) == len(list(model.parameters())) + len(own)  # shared ones counted once


def test_generator_config_follows_electra():
    # ELECTRA-Base discriminator, generator 1/3 wide: 256 hidden, 4 heads of 64, 1024 feed-forward (Table 6)
    base = make_config("electra", dict(hidden_size=768, num_heads=12, intermediate_size=3072))
    g = generator_config(base, 768, 1 / 3)
    assert (g.hidden_size, g.num_heads, g.intermediate_size, g.num_layers, g.embedding_size) == (256, 4, 1024, 12, 768)
    small = make_config("electra", dict(embedding_size=128, hidden_size=256, num_heads=4, intermediate_size=1024))
    g = generator_config(small, 128, 0.25)
    assert (g.hidden_size, g.num_heads, g.intermediate_size, g.embedding_size) == (64, 1, 256, 128)


def test_narrow_generator_projects_embeddings():
    model, obj = _model(embedding_size=16), _objective(generator_size_ratio=0.25)
    gen = obj.bind(model)
    assert gen.config.hidden_size == 8 and gen.backbone.embeddings_project.weight.shape == (8, 16)
    assert gen.head.dense.weight.shape == (16, 8)  # back to the embedding width for the tied decoder


def test_no_gradient_reaches_the_generator_from_the_discriminator():
    model, obj = _model(), _objective(generator_size_ratio=0.5)
    gen = obj.bind(model)
    batch = obj.corrupt(_batch(4, 24), seeded_generator(0, 0))
    out = obj.losses(model, batch)
    assert out["is_replaced"].any()  # the discriminator had something to detect
    gen_own = [p for n, p in gen.named_parameters() if not n.startswith("backbone.embeddings.")]
    disc_own = [p for n, p in model.named_parameters() if not n.startswith("backbone.embeddings.")]
    shared = list(model.backbone.embeddings.parameters())
    grads = torch.autograd.grad(out["disc_loss"], gen_own + shared, retain_graph=True, allow_unused=True)
    assert all(g is None for g in grads[: len(gen_own)])  # nothing through the sampled tokens
    assert grads[len(gen_own)] is not None  # ...but the shared token embeddings do learn from the discriminator
    grads = torch.autograd.grad(out["gen_loss"], gen_own + disc_own, allow_unused=True)
    assert all(g is not None for g in grads[: len(gen_own)])
    assert all(g is None for g in grads[len(gen_own):])  # and the MLM loss never touches the discriminator's layers


class FixedGenerator(nn.Module):
    """Stands in for the generator: the same logits for every scored position (or a callable of the labels)."""

    def __init__(self, logits_fn):
        super().__init__()
        self.logits_fn = logits_fn

    def forward(self, input_ids, score_positions=None, **kw):
        return ModelOutput(self.logits_fn(input_ids, score_positions))


def test_tokens_reproduced_by_the_generator_are_labelled_original():
    model, obj = _model(), _objective()
    obj.bind(model)
    batch = obj.corrupt(_batch(8, 32), seeded_generator(0, 1))
    chosen = batch["labels"] != -100
    target = batch["labels"][chosen]

    def oracle(ids, where):  # all mass on the original token
        return F.one_hot(target, V).float() * 60.0 - 30.0

    obj.generator = FixedGenerator(oracle)
    out = obj.losses(model, batch)
    assert not out["is_replaced"].any()
    original = torch.where(chosen, batch["labels"], batch["input_ids"])
    assert torch.equal(out["replaced_ids"], original)

    k = int(target.mode().values)  # the commonest original among the chosen tokens

    def always_k(ids, where):  # every sample is token k: chosen positions whose original is k stay "original"
        return F.one_hot(torch.full_like(target, k), V).float() * 60.0 - 30.0

    obj.generator = FixedGenerator(always_k)
    out = obj.losses(model, batch)
    assert (out["replaced_ids"][chosen] == k).all()
    assert torch.equal(out["is_replaced"], chosen & (original != k))
    assert (chosen & (original == k)).sum() >= 2 and out["is_replaced"].any()  # both cases occur in this batch


def test_hand_computed_loss_with_a_fixed_generator():
    torch.manual_seed(0)
    model, obj = _model(), _objective(disc_weight=50.0)
    model.eval()
    obj.bind(model)
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3, 0], [2, 20, 21, 22, 23, 3, 0, 0]])
    attn = (ids != 0).long()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 4], labels[1, 3] = 11, 13, 22
    masked = torch.where(labels != -100, torch.full_like(ids, MASK), ids)
    noise = torch.rand(ids.shape)
    batch = {"input_ids": masked, "attention_mask": attn, "labels": labels, "sample_noise": noise}
    fixed = torch.randn(3, V) * 2  # the generator's logits for the 3 chosen positions, row-major order
    obj.generator = FixedGenerator(lambda ids, where: fixed.clone().requires_grad_())

    loss, metrics = obj.loss(model, batch)

    # by hand: the generator's MLM loss on the chosen positions
    targets = [11, 13, 22]
    gen = sum(-torch.log_softmax(fixed[i], -1)[t] for i, t in enumerate(targets)) / 3
    # the inverse-CDF draw of each replacement from its uniform
    disc_ids = ids.clone()
    for i, (b, t) in enumerate([(0, 2), (0, 4), (1, 3)]):
        probs, u, acc = torch.softmax(fixed[i], -1).tolist(), noise[b, t].item(), 0.0
        for tok, p in enumerate(probs):
            acc += p
            if u < acc:
                break
        disc_ids[b, t] = tok
    replaced = (disc_ids != ids).float()
    with torch.no_grad():
        logits = model(disc_ids, attention_mask=attn).logits
    bce = [-(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))
           for x, y, real in zip(logits.flatten(), replaced.flatten(), attn.flatten()) if real]
    disc = sum(bce) / len(bce)
    assert_close(torch.tensor(metrics["mlm_loss"]), gen, rtol=1e-5, atol=1e-6)
    assert_close(torch.tensor(metrics["rtd_loss"]), disc, rtol=1e-5, atol=1e-6)
    assert_close(loss.detach(), gen + 50.0 * disc, rtol=1e-5, atol=1e-5)
    assert metrics["predicted_tokens"] == 13.0


def test_sampling_follows_the_generator_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2]]).clamp_min(1e-30))  # token 1 impossible
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    draws = sample_tokens(logits.expand(20000, 4), u)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert freq[1] == 0
    assert_close(freq, torch.tensor([0.5, 0.0, 0.3, 0.2]), atol=0.015, rtol=0)
    assert sample_tokens(logits, torch.tensor([1.0 - 1e-9])).item() == 3  # rounding never leaves the vocabulary


def test_loss_needs_a_bound_generator_and_it_follows_eval_mode():
    model, obj = _model(), _objective()
    batch = obj.corrupt(_batch(2, 16), seeded_generator(0, 0))
    with pytest.raises(RuntimeError, match="bind"):
        obj.loss(model, batch)
    obj.bind(model)
    with pytest.raises(RuntimeError, match="not bound to this model"):
        obj.loss(_model(), batch)
    model.eval()
    obj.loss(model, batch)
    assert not obj.generator.training


@pytest.mark.parametrize("kw,msg", [
    (dict(mask_prob=0.0), "mask_prob must be in"),
    (dict(mask_prob=1.5), "mask_prob must be in"),
    (dict(generator_size_ratio=0.0), "generator_size_ratio must be in"),
    (dict(generator_size_ratio=1.5), "generator_size_ratio must be in"),
    (dict(disc_weight=0.0), "disc_weight"),
    (dict(disc_weight=-50.0), "disc_weight"),
    (dict(mask_token_fraction=1.2), "mask_token_fraction"),
    (dict(generator_size=0.25), "unknown key"),
])
def test_bad_configs_raise(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(RTDConfig, {"mask_token_id": MASK, "vocab_size": V, **kw})


def test_not_ready_configs_and_wrong_families_raise():
    with pytest.raises(ConfigError, match="mask_token_id and vocab_size must be set"):
        ReplacedTokenDetection(RTDConfig())
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        ReplacedTokenDetection(RTDConfig(mask_token_id=V, vocab_size=V))
    bert = make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    with pytest.raises(ConfigError, match="use model family electra"):
        build_model("bert", bert, "replaced-token-detection")
    assert OBJECTIVES["rtd"] == (RTDConfig, ReplacedTokenDetection)


def test_checkpoint_keeps_the_generator_and_shares_nothing_twice(tmp_path):
    from ptmkit.train.optim import OptimConfig, build_optimizer
    from ptmkit.train.precision import Precision
    from ptmkit.train.schedule import ScheduleConfig, build_scheduler

    def setup():
        model, obj = _model(), _objective(generator_size_ratio=0.5)
        trained, aux = bind_objective(model, obj)
        opt = build_optimizer(trained, OptimConfig())
        return model, obj, aux, opt, build_scheduler(opt, ScheduleConfig(), 10), Precision("fp32", "cpu")

    model, obj, aux, opt, sched, prec = setup()
    batch = obj.corrupt(_batch(2, 16), seeded_generator(0, 0))
    obj.loss(model, batch)[0].backward()
    opt.step()
    ckpt = save_checkpoint(tmp_path, 1, model, opt, sched, prec, {}, objective_module=aux)
    from safetensors.torch import load_file

    saved = load_file(ckpt / OBJECTIVE_FILE)
    assert saved and not any(k.startswith("backbone.embeddings.") for k in saved)  # shared tensors live in the model

    model2, obj2, aux2, opt2, sched2, prec2 = setup()
    load_checkpoint(ckpt, model2, opt2, sched2, prec2, objective_module=aux2)
    for (n, p), q in zip(aux.named_parameters(), aux2.parameters()):
        assert torch.equal(p, q), n
    assert aux2.backbone.embeddings is model2.backbone.embeddings  # still shared after loading
    with pytest.raises(ValueError, match="auxiliary networks"):
        load_checkpoint(ckpt, _model(), opt2, sched2, prec2)
