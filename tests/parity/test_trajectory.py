"""Training-trajectory parity with transformers (issue 20): if ptmkit's pre-training gains little, it must not be the
engine. The same converted weights, trained on the same pre-drawn batches by ptmkit's engine (its optimizer groups,
clipping and schedule) and by a plain transformers + torch loop (the HF Trainer's recipe: AdamW with no decay on
biases and LayerNorm weights, clip_grad_norm_, get_linear_schedule_with_warmup), give the same loss at every one of
50 steps. And ptmkit's default initialisation trains like transformers' `_init_weights`: the loss curves of 3 seeds
each agree within their seed-to-seed spread."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from ptmkit.models import build_model, load_model, make_config
from ptmkit.objectives.clm import CausalLM
from ptmkit.objectives.mlm import MaskedLM, MLMConfig
from ptmkit.train.logging import read_metrics
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig
from tests.parity.hf_tiny import hf_config

V = 101
MASK, SPECIAL = 4, [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]: never masked, never drawn as text
STEPS, BATCH, LENGTH, LR, WARMUP = 50, 8, 32, 5e-3, 5


def _corpus(n: int, seed: int) -> torch.Tensor:
    """(n, LENGTH) token sequences from a random sparse bigram model (each token has a few likely successors):
    structure a tiny model learns within tens of steps, so the loss curves have a shape to compare."""
    g = torch.Generator().manual_seed(seed)
    content = V - len(SPECIAL)
    logits = torch.randn(content, content, generator=g) * 3.0
    probs = torch.softmax(logits, dim=-1)
    ids = torch.empty(n, LENGTH, dtype=torch.long)
    ids[:, 0] = torch.randint(0, content, (n,), generator=g)
    for t in range(1, LENGTH):  # generating the corpus, once; not a training hot path
        ids[:, t] = torch.multinomial(probs[ids[:, t - 1]], 1, generator=g).squeeze(1)
    return ids + len(SPECIAL)


def _batches(objective: str, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Pre-drawn batches with their targets: MLM masking (80/10/10) or next-token labels, fixed once."""
    ids = _corpus(steps * BATCH, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mlm = MaskedLM(MLMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL))
    out = []
    for chunk in ids.split(BATCH):
        batch = {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        out.append(mlm.corrupt(batch, g) if objective == "mlm" else CausalLM().corrupt(batch, g))
    return out


class _Listed:
    """The engine's batch iterator over a fixed list (with the resumable-position protocol)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return {k: v.clone() for k, v in self.batches[self.i - 1].items()}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def _ptmkit_losses(model, objective: str, batches, run_dir, steps: int, lr: float = LR) -> list[float]:
    obj = MaskedLM(MLMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL)) if objective == "mlm" \
        else CausalLM()
    train(model, obj, _Listed(batches), run_dir,
          TrainConfig(steps=steps, precision="fp32", log_every=1, eval_every=0, checkpoint_every=steps,
                      keep_last=1, progress_bar=False),
          OptimConfig(lr=lr, weight_decay=0.01, grad_clip=1.0),
          ScheduleConfig(warmup_steps=WARMUP, warmup="linear_from_zero", decay="linear"))
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def _transformers_losses(hf_model, objective: str, batches, steps: int) -> list[float]:
    """The HF Trainer's optimisation, written out: its no-decay rule (biases and LayerNorm weights), torch AdamW,
    global-norm clipping at 1.0, get_linear_schedule_with_warmup."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = {n for n in get_parameter_names(hf_model, [nn.LayerNorm]) if "bias" not in n}
    named = list(hf_model.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": 0.01},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    sched = T.get_linear_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=steps)

    def loss(batch):  # transformers' causal LM shifts the labels itself: it gets the tokens (ptmkit's are shifted)
        labels = batch["labels"] if objective == "mlm" else batch["input_ids"]
        return hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss

    return _optimise(hf_model, loss, opt, sched, batches[:steps])


def _optimise(model, loss_fn, opt, sched, batches) -> list[float]:
    """Forward, backward, clip the global norm at 1.0, step, schedule: the loop every trajectory here runs."""
    model.train()
    losses = []
    for batch in batches:
        loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


CASES = {"bert": ("mlm", T.BertForMaskedLM), "gpt2": ("clm", T.GPT2LMHeadModel)}


@pytest.mark.parametrize("family", sorted(CASES))
def test_fifty_steps_match_transformers_loss_for_loss(tmp_path, family):
    objective, hf_class = CASES[family]
    torch.manual_seed(0)
    hf_model = hf_class(hf_config(family)).eval()  # dropout 0 in the tiny configs; fp32
    hf_model.save_pretrained(tmp_path / "init", safe_serialization=True)
    ours = load_model(tmp_path / "init")  # the identical weights, converted
    batches = _batches(objective, STEPS, seed=1)
    theirs_losses = _transformers_losses(hf_model, objective, batches, STEPS)
    ours_losses = _ptmkit_losses(ours, objective, batches, tmp_path / "run", STEPS)
    assert len(ours_losses) == len(theirs_losses) == STEPS
    rel = [abs(a - b) / abs(b) for a, b in zip(ours_losses, theirs_losses)]
    worst = max(range(STEPS), key=rel.__getitem__)
    print(f"{family}: loss {theirs_losses[0]:.4f} -> {theirs_losses[-1]:.4f} over {STEPS} steps; largest relative "
          f"difference {rel[worst]:.2e} at step {worst + 1}")
    assert theirs_losses[-1] < theirs_losses[0] - 0.1  # it learned: the comparison covers a moving trajectory
    assert rel[worst] < 1e-3, (family, worst + 1, ours_losses[worst], theirs_losses[worst])


INIT_STEPS, SEEDS, WINDOW = 300, (0, 1, 2), 25


def _engine_parts_losses(model, objective: str, batches, steps: int) -> list[float]:
    """The engine's optimizer, schedule and clipping without its per-step bookkeeping (metrics file, progress,
    checkpoint): 1,800 steps per family cost seconds instead of minutes. The loop itself is the one the test above
    matched to transformers."""
    from ptmkit.train.optim import build_optimizer
    from ptmkit.train.schedule import build_scheduler

    obj = MaskedLM(MLMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL)) if objective == "mlm" \
        else CausalLM()
    opt = build_optimizer(model, OptimConfig(lr=LR, weight_decay=0.01, grad_clip=1.0))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=WARMUP, warmup="linear_from_zero"), steps)
    return _optimise(model, lambda batch: obj.loss(model, batch)[0], opt, sched, batches[:steps])


def _curve(losses: list[float]) -> list[float]:
    """Means over consecutive windows of WINDOW steps: the curve without step-to-step noise."""
    return [sum(losses[i:i + WINDOW]) / WINDOW for i in range(0, len(losses), WINDOW)]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(CASES))
def test_default_init_trains_like_transformers_init(tmp_path, family):
    objective, hf_class = CASES[family]
    batches = _batches(objective, INIT_STEPS, seed=7)
    curves: dict[str, list[list[float]]] = {"ptmkit": [], "transformers": []}
    ptm_cfg = make_config(family, load_model_config(family))
    for seed in SEEDS:
        torch.manual_seed(seed)
        ours = build_model(family, ptm_cfg, "masked-lm" if objective == "mlm" else "causal-lm")
        curves["ptmkit"].append(_curve(_engine_parts_losses(ours, objective, batches, INIT_STEPS)))
        torch.manual_seed(seed)
        hf_class(hf_config(family)).save_pretrained(tmp_path / f"hf{seed}", safe_serialization=True)
        theirs = load_model(tmp_path / f"hf{seed}")  # transformers' _init_weights, trained by the same engine
        curves["transformers"].append(_curve(_engine_parts_losses(theirs, objective, batches, INIT_STEPS)))
    for w in range(len(curves["ptmkit"][0])):
        at = {k: [c[w] for c in v] for k, v in curves.items()}
        means = {k: sum(v) / len(v) for k, v in at.items()}
        spread = max(max(v) - min(v) for v in at.values())
        print(f"{family} steps {w * WINDOW + 1}-{(w + 1) * WINDOW}: ptmkit {means['ptmkit']:.4f}, transformers "
              f"{means['transformers']:.4f}, seed spread {spread:.4f}")
        assert abs(means["ptmkit"] - means["transformers"]) <= spread, (w, at)


def load_model_config(family: str) -> dict:
    """The tiny HF config as ptmkit config fields (the same architecture, built by ptmkit's own init)."""
    c = hf_config(family)
    if family == "bert":
        return dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                    num_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                    max_position_embeddings=c.max_position_embeddings, dropout=0.0, attention_dropout=0.0)
    return dict(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_layers=c.n_layer, num_heads=c.n_head,
                max_position_embeddings=c.n_positions, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
