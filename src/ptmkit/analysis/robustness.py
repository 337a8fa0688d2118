"""Robustness (survey §7.3): black-box adversarial attacks on sequence classifiers.

Word level, TextFooler (Jin et al. 2020, "Is BERT Really Robust?" §3): rank the words by how much deleting each lowers
the probability of the true class; then, most important first, replace the word by the synonym that flips the
prediction (keeping the sentence closest in meaning) or, if none does, by the one that lowers the true class most, and
go on. Synonyms come from a word-pair list (PPDB's in the shared data); constraints as in the paper: the same part of
speech (here the word's most frequent UPOS in a UD treebank, a lexicon rather than a tagger), and the cosine of the
original and perturbed sentences' embeddings by a sentence encoder (MiniLM) above a threshold.

Character level, DeepWordBug (Gao et al. 2018): the same importance order, each word replaced by the edit (swap of two
adjacent letters, deletion, insertion, substitution) that lowers the true class most.

A text is attacked only when the model classifies it correctly; success = the prediction changed within the budget of
perturbed words. Queries count every text the model scored.

Dimension legend: N texts, C classes.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data import textio


class Victim:
    """A sequence classifier as the attack sees it: texts in, class probabilities out, every text counted."""

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64):
        if getattr(model, "task", None) != "sequence-classification":
            raise ConfigError(f"attack: the model must be a sequence classifier, got {getattr(model, 'task', None)!r}")
        if getattr(model, "num_labels", 2) < 2:
            raise ConfigError("attack: a regression model (one output) has no class to flip; attack a classifier")
        self.model, self.tok = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.queries = 0

    @torch.no_grad()
    def probs(self, texts: Sequence[str]) -> torch.Tensor:
        self.queries += len(texts)
        out = []
        pad = self.tok.pad_id if self.tok.pad_id is not None else 0
        device = next(self.model.parameters()).device
        for s in range(0, len(texts), self.batch_size):
            ids = [x[:self.max_length] for x in self.tok.encode_batch(list(texts[s:s + self.batch_size]))]
            t = max(len(x) for x in ids)
            x = torch.full((len(ids), t), pad, dtype=torch.long)
            m = torch.zeros((len(ids), t), dtype=torch.long)
            for r, e in enumerate(ids):
                x[r, :len(e)], m[r, :len(e)] = torch.tensor(e), 1
            out.append(self.model(x.to(device), attention_mask=m.to(device)).logits.float().softmax(-1).cpu())
        return torch.cat(out)  # (N, C)


def load_synonyms(path: str | Path) -> dict[str, list[str]]:
    """A word-pair file (`word synonym` a line, plain or .gz) as a symmetric map, lower-cased."""
    syn: dict[str, set[str]] = {}
    for i, line in enumerate(textio.lines(Path(path)), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: a synonym line is two words separated by white space")
        a, b = (p.lower() for p in parts)
        if a != b:
            syn.setdefault(a, set()).add(b)
            syn.setdefault(b, set()).add(a)
    return {k: sorted(v) for k, v in syn.items()}


def pos_lexicon(sentences) -> dict[str, str]:
    """Each word type's (lower-cased) most frequent UPOS in a treebank (ptmkit.data.conllu sentences)."""
    counts: dict[str, Counter] = {}
    for s in sentences:
        for w, p in zip(s.words, s.upos):
            counts.setdefault(w.lower(), Counter())[p] += 1
    return {w: c.most_common(1)[0][0] for w, c in counts.items()}


@dataclass
class AttackConfig:
    max_perturbed: float = 0.3  # at most this fraction of a text's words changed
    max_candidates: int = 50  # synonyms tried per word (TextFooler's N)
    similarity: float = 0.7  # minimum cosine of sentence embeddings (when an encoder is given)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_perturbed <= 1:
            raise ConfigError(f"attack: max_perturbed must be in (0, 1], got {self.max_perturbed}")
        if not -1 <= self.similarity <= 1:
            raise ConfigError(f"attack: similarity is a cosine in [-1, 1], got {self.similarity}")


@dataclass
class AttackResult:
    original: str
    label: int
    attacked: bool  # the model was right on the original (else it is not attacked)
    success: bool = False
    adversarial: str | None = None
    queries: int = 0
    perturbed: int = 0
    words: int = 0
    changes: list[tuple[str, str]] = field(default_factory=list)


def word_importance(victim: Victim, words: list[str], label: int) -> np.ndarray:
    """How much deleting each word lowers the true class's probability (TextFooler eq. 2, the label-kept case)."""
    base = victim.probs([" ".join(words)])[0, label]
    dropped = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    return (base - victim.probs(dropped)[:, label]).numpy()


def _attack(victim: Victim, text: str, label: int, cfg: AttackConfig,
            candidates: Callable[[list[str], int], list[str]],
            accept: Callable[[str, list[str]], torch.Tensor] | None) -> AttackResult:
    words = text.split()
    start = victim.queries
    res = AttackResult(text, label, attacked=False, words=len(words))
    if not words or int(victim.probs([text])[0].argmax()) != label:
        res.queries = victim.queries - start
        return res
    res.attacked = True
    budget = max(1, int(cfg.max_perturbed * len(words)))
    current = list(words)
    for i in np.argsort(-word_importance(victim, words, label), kind="stable"):
        if res.perturbed >= budget:
            break
        cands = candidates(current, int(i))[:cfg.max_candidates]
        if not cands:
            continue
        texts = [" ".join(current[:i] + [c] + current[i + 1:]) for c in cands]
        ok = accept(text, texts) if accept is not None else torch.ones(len(texts), dtype=torch.bool)
        if not bool(ok.any()):
            continue
        texts = [t for t, k in zip(texts, ok) if k]
        cands = [c for c, k in zip(cands, ok) if k]
        p = victim.probs(texts)
        flipped = (p.argmax(-1) != label).nonzero().flatten()
        if len(flipped):
            best = int(flipped[p[flipped, label].argmin()])  # of the flips, the least confident in the label
        else:
            best = int(p[:, label].argmin())
            if float(p[best, label]) >= float(victim.probs([" ".join(current)])[0, label]):
                continue  # no candidate helps: keep the word
        res.changes.append((current[i], cands[best]))
        current[i] = cands[best]
        res.perturbed += 1
        if len(flipped):
            res.success, res.adversarial = True, " ".join(current)
            break
    res.queries = victim.queries - start
    return res


def textfooler(victim: Victim, text: str, label: int, synonyms: dict[str, list[str]], cfg: AttackConfig,
               pos: dict[str, str] | None = None, encode: Callable[[list[str]], torch.Tensor] | None = None
               ) -> AttackResult:
    """TextFooler on one text. `pos`: word -> UPOS lexicon (candidates must share the word's tag when both are
    known); `encode(texts) -> (N, D)` sentence embeddings for the similarity constraint."""
    def candidates(words, i):
        w = words[i].lower()
        out = synonyms.get(w, [])
        if pos is not None and w in pos:
            out = [c for c in out if pos.get(c, pos[w]) == pos[w]]
        return out

    def accept(original, texts):
        z = torch.nn.functional.normalize(encode([original] + texts).float(), dim=-1)
        return (z[1:] @ z[0]) >= cfg.similarity

    return _attack(victim, text, label, cfg, candidates, accept if encode is not None else None)


def char_edits(word: str, rng: random.Random, k: int = 8) -> list[str]:
    """Up to k distinct DeepWordBug edits of a word: adjacent swap, deletion, insertion, substitution."""
    if len(word) < 2:
        return []
    letters = string.ascii_lowercase
    out = set()
    for _ in range(4 * k):
        i = rng.randrange(len(word))
        op = rng.randrange(4)
        if op == 0 and i < len(word) - 1:
            e = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif op == 1:
            e = word[:i] + word[i + 1:]
        elif op == 2:
            e = word[:i] + rng.choice(letters) + word[i:]
        else:
            e = word[:i] + rng.choice(letters) + word[i + 1:]
        if e and e != word:
            out.add(e)
        if len(out) >= k:
            break
    return sorted(out)


def char_attack(victim: Victim, text: str, label: int, cfg: AttackConfig) -> AttackResult:
    rng = random.Random(cfg.seed)
    return _attack(victim, text, label, cfg, lambda words, i: char_edits(words[i], rng), None)


def summarise(results: list[AttackResult]) -> dict[str, float]:
    """Accuracy before and after, success rate among attacked texts, mean queries and perturbed-word % of them."""
    n = len(results)
    if not n:
        raise ConfigError("attack: no texts to summarise")
    attacked = [r for r in results if r.attacked]
    ok = [r for r in attacked if r.success]
    return {"texts": n, "accuracy_before": len(attacked) / n, "accuracy_after": (len(attacked) - len(ok)) / n,
            "success_rate": len(ok) / len(attacked) if attacked else 0.0,
            "mean_queries": float(np.mean([r.queries for r in attacked])) if attacked else 0.0,
            "perturbed_words_pct": float(np.mean([100 * r.perturbed / max(r.words, 1) for r in ok])) if ok else 0.0}
