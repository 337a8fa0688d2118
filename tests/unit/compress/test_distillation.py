"""Distillation objectives: every term is zero when the student is the teacher, the recorded attention reproduces
the kernel's output, the teacher is never trained or saved, training lowers the loss, and a teacher that cannot teach
this student is an error that says why."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ptmkit.compress.distill import DISTILLERS, student_from_teacher, teacher_layers
from ptmkit.compress.distill.base import layer_map
from ptmkit.compress.distill.losses import relation_kl, soft_cross_entropy, soft_kl
from ptmkit.models.record import record
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import MaskedLM, MLMConfig
from ptmkit.objectives.classification import TaskObjective
from ptmkit.train.module import TrainingModule

VOCAB = 96


def _bert(layers=4, hidden=64, heads=4, task="sequence-classification", num_labels=3, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    cfg = make_config("bert", dict(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                                   intermediate_size=2 * hidden, max_position_embeddings=64,
                                   dropout=0.0, attention_dropout=0.0))
    model = build_model("bert", cfg, task, num_labels=num_labels if task == "sequence-classification" else None)
    _sharpen(model)
    return model


def _sharpen(model, factor=15.0):
    """BERT's N(0, 0.02) initialisation gives near-uniform attention, where every distribution looks alike and a
    wrong mask or a wrong average would go unnoticed: scaled q/k/v weights make the attention peaked."""
    from ptmkit.models.record import self_attentions
    with torch.no_grad():
        for a in self_attentions(model):
            a.qkv.weight.mul_(factor)


def _batch(b=4, t=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 8:] = 0  # one padded row: the terms must ignore its padding
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (b,), generator=g)}


OPTIONS = {"distilbert": {}, "pkd": {}, "tinybert": {}, "minilm": {"relations": ["qk", "vv", "qq", "kk"]}}


def _objective(method, teacher, **options):
    cfg_cls, cls = DISTILLERS[method]
    return cls(cfg_cls(**{**OPTIONS[method], **options}), TaskObjective(), teacher)


@pytest.mark.parametrize("method", sorted(DISTILLERS))
def test_every_term_is_zero_when_the_student_is_the_teacher(method):
    teacher = _bert().eval()
    student = copy.deepcopy(teacher).train()  # training mode: the terms (evaluation returns the task loss alone)
    obj = _objective(method, teacher)
    obj.bind(student)
    _, metrics = obj.loss(student, _batch())
    terms = {k: v for k, v in metrics.items() if k.endswith("_loss") and k != "hard_loss"}
    assert terms, metrics
    assert all(abs(v) < 1e-5 for v in terms.values()), terms


def test_tinybert_prediction_stage_and_soft_losses_are_zero_at_the_teacher():
    teacher = _bert().eval()
    obj = _objective("tinybert", teacher, stage="prediction")
    _, metrics = obj.loss(copy.deepcopy(teacher).train(), _batch())
    assert metrics["prediction_loss"] == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(5, 7)
    # KL = soft cross-entropy minus the teacher's entropy (times T^2): same gradients, zero at the teacher
    p = F.softmax(logits / 3, -1)
    entropy = -(p * p.log()).sum(-1).mean() * 9
    other = torch.randn(5, 7)
    assert_close(soft_kl(other, logits, 3.0), soft_cross_entropy(other, logits, 3.0) - entropy)


@pytest.mark.parametrize("family,padded", [("bert", True), ("llama", True), ("llama", False)])
def test_recorded_kernel_inputs_reproduce_the_attention_output(family, padded):
    """scores(), allowed() and expanded() must be what the kernel computed: softmax over the allowed keys of the
    scores, times the values, equals the kernel's own output (padding, causality and GQA included)."""
    torch.manual_seed(0)
    over = dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                max_position_embeddings=64)
    if family == "llama":
        over["num_kv_heads"] = 2
    model = build_model(family, make_config(family, over)).eval()
    _sharpen(model)
    batch = _batch() if padded else {k: v[1:] for k, v in _batch().items()}  # without padding: the causal flag
    outputs = []
    from ptmkit.models.record import self_attentions
    handles = [a.kernel.register_forward_hook(lambda m, i, o: outputs.append(o)) for a in self_attentions(model)]
    with record(model, attention=True) as rec:
        model(batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    assert len(rec.kernels) == 2 and rec.calls == 1 and len(rec.hidden_states) == 3
    for call, out in zip(rec.kernels, outputs):
        probs = call.scores().masked_fill(~call.allowed(), float("-inf")).softmax(-1)  # (B, H, T, S)
        real = batch["attention_mask"].bool()  # padded queries' outputs are not defined the same way everywhere
        assert_close((probs @ call.expanded(call.v))[real[:, None].expand(-1, probs.shape[1], -1)],
                     out[real[:, None].expand(-1, probs.shape[1], -1)], atol=1e-5, rtol=1e-4)


def test_minilm_qk_relation_is_the_kl_of_the_attention_distributions():
    teacher, student = _bert(seed=0).eval(), _bert(layers=2, seed=1).eval()
    batch = _batch()
    with record(teacher, attention=True) as t:
        teacher(batch["input_ids"], attention_mask=batch["attention_mask"])
    with record(student, attention=True) as s:
        student(batch["input_ids"], attention_mask=batch["attention_mask"])
    tc, sc = t.kernels[-1], s.kernels[-1]
    allowed = tc.allowed()
    # with R = H relation heads of size D and the model's scale 1/sqrt(D), the q-k relation IS the attention
    p = tc.scores().masked_fill(~allowed, float("-inf")).log_softmax(-1)
    q = sc.scores().masked_fill(~allowed, float("-inf")).log_softmax(-1)
    kl = (p.exp() * (p - q)).nan_to_num(0.0).sum(-1)  # (B, H, T)
    real = batch["attention_mask"].bool()[:, None].expand_as(kl)
    expected = kl[real].mean()
    got = relation_kl((sc.q, sc.k), (tc.q, tc.k), allowed, batch["attention_mask"])
    assert expected > 0.05  # distinct distributions (sharpened), so a wrong mask or average shows
    assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_evaluation_returns_the_students_own_loss():
    teacher = _bert().eval()
    student = _bert(layers=2, seed=4).eval()
    loss, metrics = _objective("distilbert", teacher).loss(student, _batch())
    assert set(metrics) == {"loss"} and loss.item() == pytest.approx(TaskObjective().loss(student, _batch())[0].item())


def test_minilm_works_across_widths_and_head_counts():
    teacher = _bert(hidden=64, heads=4).eval()
    student = _bert(layers=2, hidden=32, heads=2, seed=3)
    obj = _objective("minilm", teacher, relation_heads=8)
    obj.bind(student)
    loss, metrics = obj.loss(student, _batch())
    assert loss.item() > 0 and {"relation_qk_loss", "relation_vv_loss"} <= set(metrics)


@pytest.mark.parametrize("method", sorted(DISTILLERS))
def test_training_the_student_lowers_the_distillation_loss_and_never_touches_the_teacher(method):
    teacher = _bert().eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = student_from_teacher(teacher, 2) if method != "tinybert" else _bert(layers=2, hidden=32, heads=4, seed=5)
    if method == "tinybert":
        obj = _objective(method, teacher)
    else:
        with torch.no_grad():  # start away from the teacher, so there is something to learn
            for p in student.parameters():
                p.add_(0.05 * torch.randn_like(p))
        obj = _objective(method, teacher)
    module = TrainingModule(student, obj)
    names = set(module.state_dict())
    assert not any("teacher" in n for n in names)  # never saved with the student
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in student.parameters()) + \
        sum(p.numel() for p in teacher.parameters())  # never optimised either
    if method == "tinybert":  # its width projection trains with the student and is checkpointed with it
        assert any(n.startswith("objective.") for n in names)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    batch = _batch()
    losses = []
    for _ in range(25):
        loss, _ = module(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in teacher.parameters())


def test_distilbert_distils_a_masked_lm_on_the_masked_positions():
    teacher = _bert(task="masked-lm").eval()
    student = student_from_teacher(teacher, 2).train()
    mlm = MaskedLM(MLMConfig(mask_token_id=4, vocab_size=VOCAB, special_token_ids=[0, 1, 2, 3]))
    cfg_cls, cls = DISTILLERS["distilbert"]
    obj = cls(cfg_cls(), mlm, teacher)
    obj.bind(student)
    batch = obj.corrupt({k: v for k, v in _batch().items() if k != "labels"}, torch.Generator().manual_seed(0))
    loss, metrics = obj.loss(student, batch)
    assert {"hard_loss", "soft_loss", "cosine_loss"} <= set(metrics) and loss.requires_grad
    # teacher against itself: zero distillation terms on the same masked positions
    _, same = cls(cfg_cls(), mlm, teacher).loss(copy.deepcopy(teacher).train(), batch)
    assert same["soft_loss"] == pytest.approx(0.0, abs=1e-5) and same["cosine_loss"] == pytest.approx(0.0, abs=1e-5)


def test_student_from_teacher_keeps_the_chosen_layers():
    teacher = _bert(layers=6)
    assert teacher_layers(6, 3) == [1, 3, 5] and teacher_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    student = student_from_teacher(teacher, 3)
    assert student.backbone.config.num_layers == 3 and len(teacher.backbone.layers) == 6
    for i, j in enumerate([1, 3, 5]):
        for (n, a), (_, b) in zip(student.backbone.layers[i].state_dict().items(),
                                  teacher.backbone.layers[j].state_dict().items()):
            assert torch.equal(a, b), n
    assert student.backbone.layers[0].attn.qkv.weight is not teacher.backbone.layers[1].attn.qkv.weight
    with pytest.raises(ConfigError, match="increasing, distinct"):
        student_from_teacher(teacher, [3, 1])
    with pytest.raises(ConfigError, match="1 to 6 layers"):
        student_from_teacher(teacher, 7)


def test_layer_maps():
    assert layer_map(3, 6, "uniform") == [2, 4, 6] and layer_map(3, 6, "last") == [4, 5, 6]
    from ptmkit.compress.distill.pkd import pkd_layers
    assert pkd_layers(6, 12, "skip") == [2, 4, 6, 8, 10] and pkd_layers(6, 12, "last") == [7, 8, 9, 10, 11]


def test_a_teacher_that_cannot_teach_this_student_is_an_error():
    teacher = _bert()
    with pytest.raises(ConfigError, match="vocabulary"):
        _objective("distilbert", teacher).bind(_bert(vocab=VOCAB + 8))
    with pytest.raises(ConfigError, match="does not fit this task"):
        _objective("distilbert", teacher).bind(_bert(num_labels=2))
    with pytest.raises(ConfigError, match="masked-lm model"):
        _objective("distilbert", _bert(task="masked-lm")).bind(_bert())
    with pytest.raises(ConfigError, match="head count"):
        _objective("tinybert", teacher).bind(_bert(layers=2, heads=2))
    with pytest.raises(ConfigError, match="cosine_weight 0"):
        _objective("distilbert", teacher).bind(_bert(layers=2, hidden=32))
    with pytest.raises(ConfigError, match="relation heads must divide"):
        _objective("minilm", teacher, relation_heads=5).bind(_bert(layers=2))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        DISTILLERS["pkd"][0](temperature=0)
    with pytest.raises(ConfigError, match="stage must be one of"):
        DISTILLERS["tinybert"][0](stage="task")
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        DISTILLERS["distilbert"][0](soft_weight=0, hard_weight=0, cosine_weight=0)
