"""Vision-language pre-training (objectives/vlp.py, ipot.py, codebook.py): row-task, token, patch and negative-sampling
rates under a fixed seed, UNITER's at-least-one rule, purity, IPOT's marginals and optimality, the k-means codebook,
a tiny two-stream run whose loss (with word-region alignment) falls, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.nn.patches import patchify
from ptmkit.objectives import VisionLanguagePretraining, VLPConfig, seeded_generator
from ptmkit.objectives.codebook import fit_codebook, load_codebook, save_codebook
from ptmkit.objectives.ipot import ipot, wra_distance
from ptmkit.objectives.vlp import draw_negatives
from ptmkit.train.loop import bind_objective

MASK, V = 4, 200
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


def _model(family="visualbert", **over):
    size = dict(num_layers=1) if family == "visualbert" else dict(num_text_layers=1, num_image_layers=1,
                                                                  num_cross_layers=1)
    base = dict(vocab_size=V, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=64,
                image_size=32, patch_size=8, num_visual_classes=8, dropout=0.0, attention_dropout=0.0)
    cfg = make_config(family, {**base, **size, **over})
    return build_model(family, cfg, "vl-pretraining")


def _objective(model=None, **kw):
    obj = VisionLanguagePretraining(VLPConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))
    obj.bind(model if model is not None else _model())
    return obj


def _batch(b=600, t=64, real=48):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, real - 1] = 2, 3
    mask = (torch.arange(t) < real).long().expand(b, t).clone()
    ids[:, real:] = 0
    pixels = torch.randn(b, 3, 32, 32, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def _near(got: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(got - p) < sigmas * math.sqrt(p * (1 - p) / n)


def test_corruption_rates_and_row_tasks():
    batch = _batch()
    out = _objective().corrupt(batch, seeded_generator(0, 0))
    b = len(batch["input_ids"])
    chosen = out["labels"] != -100  # (B, T)
    itm_rows = out["itm_labels"] != -100
    mrm_rows = out["image_mask"].any(1)
    mlm_rows = chosen.any(1)
    # one task per row, each a third of the rows (rows with none of their task drawn get one: every row is seen)
    assert not (mlm_rows & mrm_rows).any() and not (mlm_rows & itm_rows).any() and not (mrm_rows & itm_rows).any()
    assert (mlm_rows | mrm_rows | itm_rows).all()
    for rows in (mlm_rows, mrm_rows, itm_rows):
        assert _near(rows.float().mean().item(), 1 / 3, b), rows.float().mean()
    # MLM rows: 15% of the real, non-special tokens; 80/10/10; labels are the originals
    maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    eligible = maskable & mlm_rows[:, None]
    n = int(eligible.sum())
    assert _near(chosen.sum().item() / n, 0.15, n) and not (chosen & ~maskable).any()
    assert torch.equal(out["labels"][chosen], batch["input_ids"][chosen])
    new, old = out["input_ids"][chosen], batch["input_ids"][chosen]
    k = int(chosen.sum())
    frac_mask, frac_same = (new == MASK).float().mean().item(), (new == old).float().mean().item()
    for got, want in ((frac_mask, 0.8), (frac_same, 0.1), (1 - frac_mask - frac_same, 0.1)):
        assert _near(got, want, k), (got, want)
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])
    # MRM rows: 15% of the 16 patches
    patches = out["image_mask"][mrm_rows]
    assert _near(patches.float().mean().item(), 0.15, patches.numel())
    # ITM rows: half get another row's image, labelled 0; every other row keeps its own image
    negative = itm_rows & (out["itm_labels"] == 0)
    assert _near(negative.sum().item() / itm_rows.sum().item(), 0.5, int(itm_rows.sum()))
    same = (out["pixel_values"] == batch["pixel_values"]).flatten(1).all(1)  # (B,)
    assert torch.equal(same, ~negative)
    flat = batch["pixel_values"].flatten(1)
    for i in negative.nonzero().flatten()[:20]:  # a negative's image is another row's, exactly
        assert (flat == out["pixel_values"][i].flatten()).all(1).sum() == 1


def test_short_captions_still_get_a_masked_token_and_a_masked_patch():
    """UNITER's data code masks at least one word (region) of a masked row: 2-token captions still teach."""
    batch = _batch(b=300, t=4, real=4)
    out = _objective(region_mask_prob=0.01).corrupt(batch, seeded_generator(1, 0))
    chosen = (out["labels"] != -100).sum(1)
    patches = out["image_mask"].sum(1)
    itm = out["itm_labels"] != -100
    assert ((chosen >= 1) | (patches >= 1) | itm).all()  # every MLM / MRM row has a target
    assert (chosen[chosen > 0] <= 2).all()


def test_corruption_is_pure_and_seeded():
    batch = _batch(b=8, t=16, real=12)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _objective()
    a, b, c = (obj.corrupt(batch, seeded_generator(7, s)) for s in (3, 3, 4))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in ("labels", "image_mask", "itm_labels"))


def test_negatives_are_never_the_own_image_and_uniform_over_the_others():
    b = 5
    counts = torch.zeros(b, b)
    for s in range(400):
        src = draw_negatives(b, torch.ones(b, dtype=torch.bool), seeded_generator(0, s))
        counts[torch.arange(b), src] += 1
    assert counts.diagonal().sum() == 0
    off = counts[~torch.eye(b, dtype=torch.bool)]  # 100 expected each
    assert off.min() > 60 and off.max() < 140, counts


def test_ipot_plan_matches_the_marginals_and_the_exact_optimum():
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 7, 9, generator=g)
    text = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4]).bool()
    image = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 9]).bool()
    plan = ipot(cost, text, image, beta=0.1, iterations=300)
    for i in range(3):
        nt, ni = int(text[i].sum()), int(image[i].sum())
        torch.testing.assert_close(plan[i].sum(1)[:nt], torch.full((nt,), 1 / nt), atol=1e-4, rtol=0)
        torch.testing.assert_close(plan[i].sum(0)[:ni], torch.full((ni,), 1 / ni), atol=1e-4, rtol=0)
        assert plan[i, nt:].abs().sum() == 0 and plan[i, :, ni:].abs().sum() == 0  # padding carries nothing
    # with as many tokens as regions the optimal plan is a permutation / n (Birkhoff): IPOT reaches its cost
    square = torch.rand(1, 6, 6, generator=g)
    ones = torch.ones(1, 6, dtype=torch.bool)
    plan = ipot(square, ones, ones, beta=0.1, iterations=500)
    r, c = linear_sum_assignment(square[0].numpy())
    exact = float(square[0][r, c].sum()) / 6
    assert abs(float((plan * square).sum()) - exact) < 1e-3, (float((plan * square).sum()), exact)


def test_wra_distance_is_small_for_aligned_states_and_differentiates_through_the_cost():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    image = torch.cat([text.detach()[:1], torch.randn(1, 5, 16, generator=g)])[:, torch.randperm(5)]
    ones = torch.ones(2, 5, dtype=torch.bool)
    d = wra_distance(text, image, ones, ones)
    assert d[0] < 1e-2 < d[1]  # the same states in another order: transport finds the matching
    d.sum().backward()
    assert text.grad.abs().sum() > 0


def test_codebook_recovers_planted_centres_and_refuses_another_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 12, generator=g) * 5
    points = centres.repeat(200, 1) + 0.1 * torch.randn(1000, 12, generator=g)
    fitted = fit_codebook(points, 5, seed=0)
    assert torch.cdist(centres, fitted).min(1).values.max() < 0.1
    layout = {"patch_size": 2, "num_channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    save_codebook(tmp_path / "cb.safetensors", fitted, layout)
    assert torch.equal(load_codebook(tmp_path / "cb.safetensors", layout), fitted)
    with pytest.raises(ConfigError, match=r"patch_size 2 .*this run: 4.*fit a new one"):
        load_codebook(tmp_path / "cb.safetensors", {**layout, "patch_size": 4})
    model = _model()
    with pytest.raises(ConfigError, match="set model.config.num_visual_classes to 5"):
        model.set_codebook(fitted)  # 5 codewords of 12 pixels; the model predicts 8 of 8 x 8 x 3


def test_two_stream_loss_with_word_region_alignment_falls():
    torch.manual_seed(0)
    model = _model("lxmert", image_size=16, max_position_embeddings=8)
    words = torch.arange(5, 13)  # a language of 8 words, each with its own picture
    pictures = torch.randn(len(words), 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model.set_codebook(fit_codebook(patchify(pictures, 8).flatten(0, 1), 8))
    obj = _objective(model, wra_weight=0.1)
    trained, _ = bind_objective(model, obj)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses, wra = [], []
    for step in range(80):
        pick = torch.randint(0, len(words), (16,), generator=g)
        caps = torch.stack([torch.full_like(pick, 2), words[pick], words[pick], torch.full_like(pick, 3)], -1)
        batch = {"input_ids": caps, "attention_mask": torch.ones_like(caps), "pixel_values": pictures[pick]}
        loss, metrics = obj.loss(model, obj.corrupt(batch, seeded_generator(0, step)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        wra.append(metrics.get("wra_loss"))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert any(w is not None for w in wra)


def test_refusals_name_the_fix():
    with pytest.raises(ConfigError, match="not divisible by patch_size 8.*use a patch size that divides it"):
        make_config("visualbert", dict(image_size=30, patch_size=8))
    model = _model()
    with pytest.raises(ValueError, match="exceed the text side's 64 positions; lower data.seq_len"):
        model(torch.full((1, 65), 7), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="resize the images to image_size 32"):
        model(torch.full((1, 5), 7), torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="summing to 1"):
        VLPConfig(mask_token_id=MASK, vocab_size=V, mlm_rows=0.5, mrm_rows=0.5, itm_rows=0.5)
    unbound = VisionLanguagePretraining(VLPConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL))
    with pytest.raises(RuntimeError, match="call objective.bind"):
        unbound.corrupt(_batch(b=2, t=8, real=6), seeded_generator(0, 0))
    obj = _objective(model)
    batch = obj.corrupt(_batch(b=4, t=8, real=6), seeded_generator(0, 0))
    with pytest.raises(ConfigError, match="codebook is not fitted.*ptm pretrain fits it"):
        obj.loss(model, batch)  # a fresh model's codebook is all zeros: no region classes
    clip = build_model("clip", make_config("clip", dict(
        text=dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        vision=dict(image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        projection_dim=16)), "image-text-contrastive")
    with pytest.raises(ConfigError, match="model family visualbert or lxmert"):
        unbound.bind(clip)
