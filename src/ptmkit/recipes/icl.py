"""In-context learning (Brown et al. 2020, GPT-3 §2): classify by prompting a causal LM with k labelled
demonstrations and the query, and reading the label words' scores at the slot; no weight changes.

For each k and each seed, k demonstrations are drawn from the training split, filled into the template with their
label word, and joined; every eval example is then that prefix plus its own text up to the slot. Contextual
calibration (Zhao et al. 2021, "Calibrate Before Use"): the label-word probabilities of content-free inputs
("N/A", "", "[MASK]") under the same demonstrations estimate the prompt's bias, and each prediction is divided by
it (W = diag(p_cf)^-1). Both raw and calibrated accuracy are reported, with the majority-class baseline.

The demonstrations are the same for every query of a (k, seed), so their keys and values are computed once and
shared through the KV cache: each batch runs only its queries' tokens (what makes 16-shot prompting of a 135M
model affordable on a CPU). Writes OUT/results.json, metrics.jsonl (one line per k and seed) and icl.png.
An interrupted evaluation continues with resume=True (`ptm icl --resume`): the (k, seed) runs already in
metrics.jsonl are kept and only the others are scored.

Dimension legend: B queries, P prefix tokens, T query tokens, H hidden, C classes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit import atomic, outputs
from ptmkit.adapt.prompts import Template, Verbalizer, parse_words
from ptmkit.config import ConfigError, to_dict
from ptmkit.data.task_data import TaskSpec, _labelled, _subset, _take, canonical_task, load_split
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models.heads import CausalLM
from ptmkit.recipes.evaluate import _device, _pad_id, load_adapted
from ptmkit.train.logging import progress
from ptmkit.train.precision import Precision

CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al. 2021 §4
RUN_MARKERS = ("results.json", "metrics.jsonl")
# what a resumed evaluation may change: presentation only; everything else must match the interrupted one
_RESUMABLE_CHANGES = ("overwrite", "show_progress", "batch_size", "device")


@dataclass
class ICLConfig:
    model: str  # a causal LM's model directory (e.g. SmolLM2 converted with ptm convert)
    task: str  # a GLUE classification task or table
    out: str
    template: str  # e.g. "Review: {text_a}\nSentiment: {mask}" (the slot ends it)
    verbalizer: list[str]  # one label word per class, in label order
    shots: list[int] = field(default_factory=lambda: [0, 1, 4, 8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # demonstration draws per k (k = 0: one run)
    separator: str = "\n\n"  # between demonstrations, and before the query
    data_dir: str | None = None
    train_split: str = "train"  # where demonstrations come from
    eval_split: str = "dev"
    text_fields: list[str] | None = None  # task=table
    label_field: str | None = None
    columns: list[str] | None = None
    max_eval_examples: int | None = None  # a seeded subset of the eval split
    batch_size: int = 16
    precision: str = "auto"  # bf16 where the device has it natively, else fp32 (train/precision.py)
    device: str = "auto"
    overwrite: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.task = canonical_task(self.task)
        self.verbalizer = parse_words(self.verbalizer)
        Template(self.template)  # a bad template fails before anything is loaded
        if not self.shots or any(k < 0 for k in self.shots):
            raise ConfigError(f"icl: shots must be a list of counts >= 0, got {self.shots}")
        if not self.seeds:
            raise ConfigError("icl: give at least one seed")
        if self.batch_size < 1:
            raise ConfigError(f"icl: batch_size must be >= 1, got {self.batch_size}")


class PromptScorer:
    """Label-word scores at the slot for queries that share one prefix (its keys/values cached once)."""

    def __init__(self, model: CausalLM, label_ids: list[int], pad_id: int, precision: Precision,
                 device: torch.device):
        self.model, self.pad_id, self.precision, self.device = model, pad_id, precision, device
        self.label_ids = torch.tensor(label_ids, device=device)
        self._prefix: tuple[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] | None = None  # last prefix's K/V

    def _prefix_kv(self, prefix: list[int], dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (L, 1, K, S, D) of the demonstrations, computed once for all the batches that share them.
        S may exceed the prefix's tokens: a soft prompt (ptmkit.adapt.prompt) puts its own in front of them."""
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            one = self.model.backbone.new_cache(1, len(prefix), dtype, self.device)
            self.model.backbone(torch.tensor([prefix], device=self.device), cache=one)
            self._prefix = (key, (one.k[:, :, :, : one.length], one.v[:, :, :, : one.length]))
        return self._prefix[1]

    @torch.no_grad()
    def __call__(self, prefix: list[int], queries: list[list[int]]) -> torch.Tensor:
        """Log-probabilities (B, C) of the label words after prefix + each query (the slot's position)."""
        bb, lm_head = self.model.backbone, self.model.lm_head
        b, t = len(queries), max(len(q) for q in queries)
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        qmask = torch.zeros((b, t), dtype=torch.long)
        for i, q in enumerate(queries):  # right padding: the prefix is shared, the queries follow it
            ids[i, : len(q)] = torch.tensor(q)
            qmask[i, : len(q)] = 1
        ids, qmask = ids.to(self.device), qmask.to(self.device)
        p = len(prefix)
        with self.precision.autocast():
            cache = None
            if p:
                dtype = next(self.model.parameters()).dtype
                k, v = self._prefix_kv(prefix, dtype)  # the demonstrations, once
                s = k.shape[3]  # cached positions: the prefix's tokens (and a soft prompt's)
                cache = bb.new_cache(b, s + t, dtype, self.device)
                cache.k[:, :, :, :s], cache.v[:, :, :, :s] = k, v  # (L, B, K, S, D) broadcast
                cache.length = s
            mask = torch.cat([torch.ones(b, p, dtype=torch.long, device=self.device), qmask], dim=1)  # (B, P+T)
            h = bb(ids, attention_mask=mask, cache=cache).last_hidden_state  # (B, T, H)
            last = h[torch.arange(b, device=self.device), qmask.sum(1) - 1]  # (B, H): each query's slot
            logits = lm_head(last).float()  # (B, V)
        return logits.log_softmax(-1)[:, self.label_ids]  # (B, C)


def _encode(tok: Tokenizer, text: str, specials: bool) -> list[int]:
    return tok.encode(text, add_special_tokens=specials)


def _demonstrations(template: Template, train, idx: np.ndarray, words: list[str], sep: str) -> str:
    parts = [template.fill(train.examples[i].text_a, train.examples[i].text_b, words[train.examples[i].label])
             for i in idx]
    return sep.join(parts) + sep if parts else ""


def _accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float((pred == gold).mean())


def finished_runs(out: Path, cfg: ICLConfig) -> list[dict]:
    """The (k, seed) records of an interrupted evaluation in `out`, refusing one started with other settings."""
    saved = out / "config.json"
    if not saved.is_file():
        raise ConfigError(f"resume: {out} holds no in-context evaluation (config.json missing); start it without "
                          "--resume")
    old, new = json.loads(saved.read_text()), to_dict(cfg)
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise ConfigError(f"resume: {out} was started with other settings: "
                          + ", ".join(f"{k}={old.get(k)!r} (now {new[k]!r})" for k in changed)
                          + "; resume with the same options, or start again with --overwrite")
    done = []
    path = out / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written when it stopped: that run is scored again
            break
    return done


def icl(cfg: ICLConfig, resume: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    done = finished_runs(out, cfg) if resume else []
    if not resume:
        outputs.check_free(out, RUN_MARKERS, overwrite=cfg.overwrite, kind="in-context evaluation",
                           resume_flag="--resume")
    spec = TaskSpec(cfg.task, cfg.data_dir, cfg.text_fields, cfg.label_field, False, columns=cfg.columns)
    train, _ = load_split(spec, cfg.train_split)
    dev, dev_path = load_split(spec, cfg.eval_split, label_names=train.label_names)
    if not _labelled(dev):
        raise ValueError(f"{dev_path}: the eval split has no labels to score against")
    dev = _take(dev, _subset(len(dev), cfg.max_eval_examples, 0))
    names = list(train.label_names)
    template = Template(cfg.template)
    if template.pair and dev.examples[0].text_b is None:
        raise ConfigError(f"icl: the template uses {{text_b}} but {cfg.task} has one text column")
    device = _device(cfg.device)
    model = load_adapted(cfg.model)
    if not isinstance(model, CausalLM):
        raise ConfigError(f"icl: {cfg.model} is a {getattr(model, 'task', 'base')} model; in-context learning "
                          "prompts a causal LM (causal-lm), e.g. SmolLM2 converted with ptm convert")
    model.to(device).eval()
    tok = Tokenizer.load(cfg.model)
    template.before_slot(dev.examples[0].text_a, dev.examples[0].text_b)  # a causal LM: the slot must end it
    verbalizer = Verbalizer(cfg.verbalizer, tok, space=template.space_before_slot, names=names)
    scorer = PromptScorer(model, verbalizer.ids, _pad_id(tok), Precision(cfg.precision, device), device)
    gold = np.array([e.label for e in dev.examples])
    queries = [_encode(tok, template.before_slot(e.text_a, e.text_b)[0], False) for e in dev.examples]
    content_free = [_encode(tok, template.before_slot(c, c if template.pair else None)[0], False)
                    for c in CONTENT_FREE]
    max_pos = getattr(model.config, "max_position_embeddings", None)
    finished = {(r["shots"], r["seed"]) for r in done}
    runs = [(k, s) for k in cfg.shots for s in (cfg.seeds if k > 0 else cfg.seeds[:1]) if (k, s) not in finished]
    n_batches = sum(-(-len(queries) // cfg.batch_size) for _ in runs)
    records = list(done)
    if cfg.overwrite and not resume:  # everything is validated: only now does the run touch its folder
        outputs.discard(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic.write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    bar = progress(n_batches, desc="icl", enabled=cfg.show_progress)
    # the kept runs, rewritten in one step (a torn last line of the interrupted run is dropped), then appended to
    atomic.write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in done))
    with open(out / "metrics.jsonl", "a") as metrics:
        for k, seed in runs:
            if k > len(train.examples):
                raise ConfigError(f"icl: {k} shots but the training split has {len(train.examples)} examples")
            idx = np.random.default_rng(seed).choice(len(train.examples), size=k, replace=False)
            prefix = _encode(tok, _demonstrations(template, train, idx, cfg.verbalizer, cfg.separator), True) \
                if k else _encode(tok, "", True)
            longest = len(prefix) + max(len(q) for q in queries) + model.backbone.virtual_positions()
            if max_pos is not None and longest > max_pos:
                raise ConfigError(f"icl: {k} demonstrations make prompts of up to {longest} tokens, more than the "
                                  f"model's {max_pos} positions; use fewer shots or a shorter template")
            scores = []
            for i in range(0, len(queries), cfg.batch_size):
                scores.append(scorer(prefix, queries[i: i + cfg.batch_size]))
                bar.update(1)
            logp = torch.cat(scores).cpu()  # (N, C)
            p = logp.softmax(-1)  # renormalised over the label words
            p_cf = scorer(prefix, content_free).cpu().softmax(-1).mean(0)  # (C,) the prompt's bias
            raw = _accuracy(p.argmax(-1).numpy(), gold)
            calibrated = _accuracy((p / p_cf).argmax(-1).numpy(), gold)
            rec = {"shots": k, "seed": seed, "accuracy": raw, "calibrated_accuracy": calibrated,
                   "content_free_probs": [round(float(x), 4) for x in p_cf], "prefix_tokens": len(prefix),
                   "demonstrations": [int(i) for i in idx]}
            records.append(rec)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
    bar.close()
    majority = int(np.bincount([e.label for e in train.examples], minlength=len(names)).argmax())
    table = {}
    for k in cfg.shots:
        rows = [r for r in records if r["shots"] == k]
        table[str(k)] = {key: {"mean": float(np.mean([r[key] for r in rows])),
                               "std": float(np.std([r[key] for r in rows])), "runs": len(rows)}
                         for key in ("accuracy", "calibrated_accuracy")}
    results = {"task": cfg.task, "model": cfg.model, "eval_split": cfg.eval_split, "eval_examples": len(gold),
               "template": cfg.template, "verbalizer": dict(zip(names, cfg.verbalizer)), "shots": table,
               "majority_class": names[majority], "majority_baseline_accuracy": _accuracy(
                   np.full_like(gold, majority), gold), "wall_time_s": round(time.perf_counter() - t0, 1),
               "device": str(device), "precision": scorer.precision.mode, "threads": torch.get_num_threads(),
               "resumed_runs": len(done)}
    atomic.write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    _plot(out / "icl.png", table, results["majority_baseline_accuracy"], f"{Path(cfg.model).name} on {cfg.task}")
    return results


def _plot(path: Path, table: dict[str, Any], majority: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [int(k) for k in table]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("accuracy", "raw"), ("calibrated_accuracy", "calibrated")):
        ax.errorbar(ks, [table[str(k)][key]["mean"] for k in ks], yerr=[table[str(k)][key]["std"] for k in ks],
                    marker="o", capsize=3, label=label)
    ax.axhline(majority, color="grey", linestyle="--", label="majority class")
    ax.set_xlabel("demonstrations (k)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
