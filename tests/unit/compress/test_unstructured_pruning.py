"""Unstructured pruning (ptmkit.compress.prune.unstructured): one-shot magnitude pruning reaches exactly the stated
sparsity, globally on the globally smallest weights or per matrix, ties broken by position; the cubic schedule is Zhu
& Gupta's; gradual pruning through the engine keeps pruned weights exactly zero under AdamW and resumes bit for bit;
movement pruning's scores learn through the straight-through mask; a finalized model saves, loads in ptmkit and in
transformers with the same logits; bad settings are errors that name the fix."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.utils import parametrize

from ptmkit.compress.prune import magnitude
from ptmkit.compress.prune.magnitude import GradualMagnitudeConfig, GradualMagnitudePruner, MagnitudeConfig
from ptmkit.compress.prune.masks import finalize, mask_of, prune_count, resolve
from ptmkit.compress.prune.movement import SoftMovementConfig, SoftScoredMask
from ptmkit.compress.prune.schedule import CubicSchedule
from ptmkit.compress.prune.unstructured import UNSTRUCTURED, make_config, prune, report
from ptmkit.config import ConfigError
from ptmkit.models import build_model, load_model, make_config as model_config, save_model
from ptmkit.objectives import MaskedLM, MLMConfig
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig
from tests.batches import ListBatches

V = 101
TINY = dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
            max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
# per layer: q, k, v (64 x 64 each, parts of the fused qkv), attn.out (64 x 64), ffn.up (128 x 64), ffn.down (64 x 128)
MATRICES, WEIGHTS = 12, 2 * (4 * 64 * 64 + 2 * 128 * 64)


def _bert():
    torch.manual_seed(0)
    return build_model("bert", model_config("bert", TINY), "masked-lm")


def _effective(matrices) -> torch.Tensor:
    """Every targeted effective weight (masked while masks are attached), flat, in model order."""
    with torch.no_grad():
        return torch.cat([m.view(m.module.weight).flatten() for m in matrices])


def _kept(matrices) -> torch.Tensor:
    return torch.cat([m.kept().flatten() for m in matrices])


def _scores(model, seed=1) -> None:
    """Random importance scores (fresh ones are all equal: every ranking would be a tie)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scores"):
                p.copy_(torch.randn(p.shape, generator=g))


# ---- one-shot magnitude pruning --------------------------------------------------------------------------------------

def test_global_one_shot_prunes_exactly_the_globally_smallest_weights():
    model = _bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    matrices = resolve(model, None, (), "test")
    assert len(matrices) == MATRICES and {m.label.rsplit("[", 1)[-1] for m in matrices[:3]} == {"q]", "k]", "v]"}
    flat = _effective(matrices).abs()
    k = prune_count(0.37, flat.numel())
    assert k == round(0.37 * WEIGHTS)
    expected = torch.ones(flat.numel(), dtype=torch.bool)
    expected[torch.sort(flat, stable=True).indices[:k]] = False  # brute force: a full sort of every |w|

    magnitude.apply(model, MagnitudeConfig(sparsity=0.37, scope="global"))
    assert torch.equal(_effective(matrices) != 0, expected)
    r = report(model)
    assert (r["zeros"], r["size"]) == (k, WEIGHTS)
    assert len({row["zeros"] for row in r["matrices"].values()}) > 1  # one threshold: matrices differ in sparsity
    # masking leaves the stored weights, the embeddings, the biases and the head as they were
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name.replace("parametrizations.weight.original", "weight")]), name


def test_per_layer_one_shot_gives_every_matrix_the_exact_sparsity_and_breaks_ties_by_position():
    model = _bert()
    down = model.backbone.layers[0].ffn.down
    with torch.no_grad():
        down.weight.fill_(0.5)  # every |w| tied
    matrices = resolve(model, None, (), "test")
    per_matrix = [m.view(m.module.weight).detach().abs().flatten() for m in matrices]
    magnitude.apply(model, MagnitudeConfig(sparsity=0.3, scope="layer"))

    r = report(model)
    assert len(r["matrices"]) == MATRICES
    for (label, row), m, w in zip(r["matrices"].items(), matrices, per_matrix):
        k = math.floor(0.3 * row["size"] + 0.5)
        assert row["zeros"] == k, label
        gone = ~m.kept().flatten()
        if m.module is not down:  # the pruned ones are this matrix's k smallest
            k_smallest = torch.sort(w, stable=True).indices[:k]
            assert torch.equal(gone.nonzero().flatten(), k_smallest.sort().values), label
    tied = down.weight.detach().flatten()
    assert torch.equal(tied == 0, torch.arange(tied.numel()) < round(0.3 * tied.numel()))  # the first k, row-major
    # the documented rounding: nearest integer, halves up
    assert (prune_count(0.25, 10), prune_count(0.5, 3), prune_count(0.0, 7), prune_count(0.999, 10)) == (3, 2, 0, 10)


def test_default_targets_split_every_fused_projection_of_a_gqa_swiglu_decoder():
    torch.manual_seed(0)
    model = build_model("llama", model_config("llama", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=4,
                                                              num_kv_heads=2, intermediate_size=96,
                                                              max_position_embeddings=64)), "causal-lm")
    magnitude.apply(model, MagnitudeConfig(sparsity=0.5))
    r = report(model)
    parts = [label.split(".", 3)[-1] for label in r["matrices"]][:7]
    assert parts == ["attn.qkv[q]", "attn.qkv[k]", "attn.qkv[v]", "attn.out", "ffn.gate_up[gate]", "ffn.gate_up[up]",
                     "ffn.down"] and len(r["matrices"]) == 14
    assert [row["size"] for row in r["matrices"].values()][:3] == [64 * 64, 32 * 64, 32 * 64]  # GQA: smaller k, v
    assert all(row["zeros"] == prune_count(0.5, row["size"]) for row in r["matrices"].values())
    assert mask_of(model.lm_head) is None


# ---- the cubic schedule ----------------------------------------------------------------------------------------------

def test_cubic_schedule_is_zhu_and_gupta_and_reaches_the_final_sparsity():
    s = CubicSchedule(initial=0.1, final=0.8, start=10, end=50, every=10)
    for t in (10, 20, 30, 37, 49):
        assert s.value(t) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - (t - 10) / 40) ** 3)
    assert s.value(0) == 0.1 and s.value(50) == 0.8 and s.value(10 ** 6) == 0.8
    assert [t for t in range(100) if s.updates_at(t)] == [10, 20, 30, 40, 50]
    assert s.level(37) == s.value(30) and s.level(5) == 0.1 and s.level(60) == 0.8
    uneven = CubicSchedule(final=0.5, end=25, every=10)  # dt does not divide the span: the end still prunes to s_f
    assert [t for t in range(40) if uneven.updates_at(t)] == [0, 10, 20, 25] and uneven.level(25) == 0.5
    once = CubicSchedule(final=0.5, start=3, end=3)
    assert [t for t in range(10) if once.updates_at(t)] == [3] and once.value(3) == 0.5


# ---- gradual pruning through the engine ------------------------------------------------------------------------------


def _objective() -> MaskedLM:
    return MaskedLM(MLMConfig(mask_prob=0.3, mask_token_id=1, vocab_size=V))


def _batches(n: int = 3) -> ListBatches:
    g = torch.Generator().manual_seed(5)
    return ListBatches([_objective().corrupt({"input_ids": torch.randint(3, V, (4, 16), generator=g)}, g)
                        for _ in range(n)])


def _train(tmp_path, name, steps, make_pruner, resume=False, checkpoint_every=0, weight_decay=0.1):
    model = _bert()
    pruner = make_pruner(model)
    train(model, _objective(), _batches(), tmp_path / name,
          TrainConfig(steps=steps, precision="fp32", log_every=1, eval_every=0, checkpoint_every=checkpoint_every,
                      progress_bar=False),
          OptimConfig(lr=1e-2, weight_decay=weight_decay), ScheduleConfig(warmup_steps=0, decay="constant"),
          on_step=pruner, resume=resume)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return model, pruner, [r for r in rows if r.get("split") == "train"]


GRADUAL = GradualMagnitudeConfig(CubicSchedule(final=0.6, start=1, end=5, every=2))  # masks change at steps 1, 3, 5


def test_gradual_pruning_keeps_pruned_weights_zero_through_adamw_steps(tmp_path):
    init = _effective(resolve(_bert(), None, (), "test"))
    snapshots = {}

    def make(model):
        pruner = GradualMagnitudePruner(model, GRADUAL)

        def on_step(t):
            pruner(t)
            snapshots[t] = _kept(pruner.matrices).clone()
        return on_step

    model, _, _ = _train(tmp_path, "run", 8, make)
    matrices = resolve(model, None, (), "test")
    # the masks only grow, to round(s_t n) of each matrix at each update step
    for t in range(1, 8):
        assert not (snapshots[t] & ~snapshots[t - 1]).any(), f"a pruned weight came back at step {t}"
    for t in (1, 3, 5):
        level = GRADUAL.schedule.value(t)
        assert int((~snapshots[t]).sum()) == sum(prune_count(level, m.view(m.module.weight).numel()) for m in matrices)
    # three AdamW steps (decay 0.1, momentum from before pruning) after the last update: the pruned weights are exactly
    # zero, the kept ones trained, and the stored weights behind the mask did move (the mask is what holds them at 0)
    w, kept = _effective(matrices), _kept(matrices)
    assert torch.equal(w == 0, ~kept) and torch.equal(kept, snapshots[7])
    assert not torch.equal(w[kept], init[kept])
    stored = torch.cat([m.original().detach().flatten() for m in matrices])
    assert (stored[~kept] != init[~kept]).any()
    for row in report(model)["matrices"].values():
        assert row["zeros"] == prune_count(0.6, row["size"])
    finalize(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(_effective(matrices), w)


def test_gradual_pruning_resumed_run_has_the_same_masks_and_weights(tmp_path):
    make = lambda model: GradualMagnitudePruner(model, GRADUAL)  # noqa: E731
    full, _, _ = _train(tmp_path, "full", 8, make)
    _train(tmp_path, "split", 4, make, checkpoint_every=4)  # interrupted between the updates of steps 3 and 5
    resumed, _, _ = _train(tmp_path, "split", 8, make, resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert list(a) == list(b) and any(k.endswith("parametrizations.weight.0.mask") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- movement pruning ------------------------------------------------------------------------------------------------

def _movement(model, final, scope="layer"):
    pruner = prune(model, "movement", {"schedule": {"final": final, "end": 0}, "scope": scope})
    _scores(model)
    pruner(0)
    return pruner


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_movement_mask_keeps_the_top_scores_and_scores_get_straight_through_gradients(scope):
    model = _bert()
    pruner = _movement(model, 0.4, scope)
    matrices = pruner.matrices
    s = torch.cat([m.view(m.masker.importance()).detach().flatten() for m in matrices])
    kept = _kept(matrices)
    if scope == "global":
        assert torch.equal(kept, s > torch.sort(s).values[prune_count(0.4, s.numel()) - 1])
    else:
        for m in matrices:
            sm = m.view(m.masker.importance()).detach().flatten()
            assert int((~m.kept()).sum()) == prune_count(0.4, sm.numel())
            assert sm[m.kept().flatten()].min() > sm[~m.kept().flatten()].max()
    assert torch.equal(_effective(matrices) == 0, ~kept)

    ids = torch.randint(3, V, (2, 12))
    model(ids).logits.logsumexp(-1).mean().backward()
    for m in {id(m.module): m for m in matrices}.values():
        p = m.module.parametrizations.weight
        score_grad, weight_grad, w, keep = p[0].scores.grad, p.original.grad, p.original.detach(), p[0].mask
        assert score_grad is not None and score_grad.abs().sum() > 0
        # straight-through: dL/dS = dL/dW' * W, and dL/dW = dL/dW' * M, so they agree on the kept weights
        torch.testing.assert_close(score_grad[keep], weight_grad[keep] * w[keep])
        assert (weight_grad[~keep] == 0).all() and (score_grad[~keep] != 0).any()  # a pruned weight's score learns


def test_movement_pruning_trains_lowers_the_loss_and_reaches_the_sparsity(tmp_path):
    cfg = make_config("movement", {"schedule": {"final": 0.5, "end": 6, "every": 1}, "score_scale": 10.0})
    model, pruner, rows = _train(tmp_path, "run", 12, lambda model: prune(model, "movement", cfg), weight_decay=0.0)
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    scores = torch.cat([m.masker.scores.detach().flatten() for m in pruner.matrices])
    assert scores.abs().max() > 0  # the scores trained with the model, through the engine's optimizer
    for row in report(model)["matrices"].values():
        assert row["zeros"] == prune_count(0.5, row["size"])


def test_soft_movement_penalty_joins_the_loss_and_drives_the_sparsity(tmp_path):
    def run(penalty):
        cfg = SoftMovementConfig(CubicSchedule(final=0.1, end=3, every=1), penalty=penalty, score_scale=50.0)
        return _train(tmp_path, f"penalty-{penalty}", 8, lambda model: prune(model, "soft-movement", cfg),
                      weight_decay=0.0)

    model, pruner, rows = run(10.0)
    assert rows[0]["movement_penalty"] == 0.0 and rows[-1]["movement_penalty"] > 0  # lambda_t rises with tau_t
    masks = [m for m in model.modules() if isinstance(m, SoftScoredMask)]
    by_hand = torch.stack([10.0 * torch.sigmoid(m.importance()).mean() for m in masks]).mean()
    torch.testing.assert_close(SoftScoredMask.collect_auxiliary(masks)[0], by_hand)
    pruner(8)
    for m in pruner.matrices:
        assert torch.equal(m.kept(), torch.sigmoid(m.view(m.masker.importance())) > 0.1)
    unpenalised, bare_pruner, _ = run(0.0)
    bare_pruner(8)
    # the sparsity is not set but learned: the penalty pushes the scores under the threshold (here ~0.77 against
    # ~0.11 from the task's gradient alone)
    assert 0 < report(unpenalised)["sparsity"] + 0.3 < report(model)["sparsity"] < 1


# ---- finalize, save, load --------------------------------------------------------------------------------------------

def test_finalized_model_saves_and_loads_in_ptmkit_and_transformers(tmp_path):
    import transformers  # a test dependency (tests/parity): missing, it fails rather than skips
    model = _bert().eval()
    _movement(model, 0.7)
    ids = torch.randint(3, V, (3, 12))
    with torch.no_grad():
        want = model(ids).logits
    finalize(model)
    assert set(model.state_dict()) == set(_bert().state_dict())  # no masks, no scores: a plain model
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
    save_model(model, tmp_path / "pruned")
    loaded = load_model(tmp_path / "pruned").eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)
    r = report(loaded)
    assert r["zeros"] == sum(prune_count(0.7, row["size"]) for row in r["matrices"].values())
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(UNSTRUCTURED))
def test_every_registered_method_builds_from_a_dict_and_finalizes(name, tmp_path):
    from ptmkit.compress.prune.ticket import save_masks

    model = _bert()
    schedule = {"final": 0.1 if name == "soft-movement" else 0.45, "end": 2, "every": 1}
    values = {"sparsity": 0.45} if name in ("magnitude", "random-mask") else {"schedule": schedule}
    if name == "ticket":  # a mask saved from a magnitude-pruned copy of the same model
        donor = _bert()
        prune(donor, "magnitude", {"sparsity": 0.45, "targets": ["qkv", "ffn.up"]})
        values = {"path": str(save_masks(donor, tmp_path / "masks.safetensors"))}
    pruner = prune(model, name, {**values, "targets": ["qkv", "ffn.up"]})
    assert [m.label.split(".", 3)[-1] for m in pruner.matrices] == ["attn.qkv[q]", "attn.qkv[k]", "attn.qkv[v]",
                                                                     "ffn.up"] * 2  # the fused qkv by part
    assert mask_of(model.backbone.layers[0].ffn.down) is None and mask_of(model.head.dense) is None
    pruner(2)
    if name != "soft-movement":  # soft movement's sparsity comes from training, not from a number
        assert pruner.sparsity() == pytest.approx(0.45, abs=1e-3)
    finalize(model)
    assert mask_of(model.backbone.layers[0].attn.qkv) is None


# ---- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: MagnitudeConfig(sparsity=1.0), r"sparsity must be a fraction in \[0, 1\)"),
    (lambda: MagnitudeConfig(sparsity=-0.1), r"sparsity must be a fraction in \[0, 1\)"),
    (lambda: MagnitudeConfig(scope="rows"), "scope must be 'global'"),
    (lambda: CubicSchedule(final=0.5, start=10, end=5), r"end \(step 5\) is before start \(step 10\).*end >= start"),
    (lambda: CubicSchedule(final=1.2, end=5), r"final must be a fraction in \[0, 1\)"),
    (lambda: CubicSchedule(initial=0.5, final=0.2, end=5), "below initial"),
    (lambda: CubicSchedule(final=0.5, end=5, every=0), "every must be >= 1"),
    (lambda: SoftMovementConfig(CubicSchedule(final=0.0, end=3)), "must end above 0"),
    (lambda: make_config("movement", {"schedule": {"final": 0.5, "end": 3}, "sparsity": 0.5}), "unknown key"),
    (lambda: prune(_bert(), "lottery", {}), "unknown unstructured pruning method"),
    (lambda: magnitude.apply(_bert(), MagnitudeConfig(targets=["attn.nonexistent"])), "matches no Linear"),
    (lambda: magnitude.apply(_bert(), MagnitudeConfig(exclude=["*layers.*"])), "leaves no Linear"),
    (lambda: finalize(_bert()), "carries no pruning masks"),
])
def test_bad_input_is_an_error_that_names_the_fix(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_pruning_a_pruned_model_twice_is_an_error():
    model = magnitude.apply(_bert(), MagnitudeConfig(sparsity=0.2))
    with pytest.raises(ConfigError, match="already carries a pruning mask.*finalize"):
        magnitude.apply(model, MagnitudeConfig(sparsity=0.5))


def test_saving_with_masks_attached_says_to_finalize(tmp_path):
    from ptmkit.compress.prune import unstructured
    from ptmkit.models import build_model, make_config, save_model

    model = build_model("bert", make_config("bert", dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                                         intermediate_size=64, max_position_embeddings=32)))
    unstructured.prune(model, "magnitude", {"sparsity": 0.5})
    with pytest.raises(ConfigError, match="finalize"):
        save_model(model, tmp_path / "m")


def test_finalizing_a_copy_leaves_the_original_masked_and_working():
    """copy.deepcopy shares torch's parametrized class between copy and original: baking the copy (to save the best
    model mid-training) must not take the weight away from the model that goes on training."""
    import copy

    from ptmkit.compress.prune import unstructured
    from ptmkit.models import build_model, make_config

    model = build_model("bert", make_config("bert", dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                                         intermediate_size=64, max_position_embeddings=32))).eval()
    unstructured.prune(model, "magnitude", {"sparsity": 0.5})
    plain = unstructured.finalize(copy.deepcopy(model))
    ids = torch.randint(0, 64, (2, 5))
    assert torch.equal(model(ids).last_hidden_state, plain(ids).last_hidden_state)
    assert unstructured.report(model)["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_a_ticket_is_the_saved_mask_fixed_through_training_and_random_masks_differ(tmp_path):
    from ptmkit.compress.prune.ticket import masks_of, save_masks

    donor = _bert()
    prune(donor, "magnitude", {"sparsity": 0.6, "scope": "global"})
    path = save_masks(donor, tmp_path / "m.safetensors")
    model = _bert()  # the same initial weights: the rewound ticket
    pruner = prune(model, "ticket", {"path": str(path)})
    assert all(torch.equal(a, masks_of(model)[k]) for k, a in masks_of(donor).items())
    assert pruner.sparsity() == pytest.approx(0.6, abs=1e-3)
    random_pruner = prune(_bert(), "random-mask", {"sparsity": 0.6})
    assert random_pruner.sparsity() == pytest.approx(0.6, abs=1e-3)
    with pytest.raises(ConfigError, match="give path"):
        prune(_bert(), "ticket", {})
    other = build_model("bert", model_config("bert", {**TINY, "hidden_size": 48}), "masked-lm")
    with pytest.raises(ConfigError, match="mask of .* is"):
        prune(other, "ticket", {"path": str(path)})
