"""Knowledge probing (survey §7.2, "world knowledge"): LAMA cloze queries (Petroni et al. 2019, "Language Models as
Knowledge Bases?" §3-4) for masked LMs, and for causal LMs the relation's candidate objects ranked by their likelihood
after the cloze's beginning (the prefix runs once, its keys and values shared by every candidate). A fact (subject, relation, object) becomes the relation's template with [X]
the subject and [Y] the mask; the model ranks its vocabulary at the mask, and P@1, P@10 and the mean reciprocal rank
of the object are reported per relation, as the paper's tables. As in LAMA, only facts whose object is a single
token of the vocabulary are asked (`vocab` restricts that further to a common vocabulary shared by the models
compared); ranks are over that vocabulary.

Facts come in LAMA's JSON-lines format (T-REx / Google-RE: sub_label, obj_label; SQuAD: masked_sentences with
[MASK]), plain or gzipped; any relation file works, with its template from relations.jsonl or given by the caller.

Dimension legend: B queries per batch, T tokens, V vocabulary (or the common vocabulary's size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from ptmkit.config import ConfigError
from ptmkit.data import textio


@dataclass
class Fact:
    subject: str
    obj: str
    sentence: str | None = None  # a ready cloze sentence with [MASK] (SQuAD); else the template is filled


def read_facts(path: str | Path) -> list[Fact]:
    """A LAMA relation file: one JSON object a line, with sub_label and obj_label, or masked_sentences (SQuAD)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a LAMA relation file (JSON lines, plain or .gz)")
    facts = []
    for i, line in enumerate(textio.lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if "obj_label" not in row or not ("sub_label" in row or "masked_sentences" in row):
            raise ValueError(f"{path}:{i}: a LAMA fact needs obj_label and sub_label (or masked_sentences)")
        sentence = row["masked_sentences"][0] if "masked_sentences" in row else None
        facts.append(Fact(row.get("sub_label", ""), row["obj_label"], sentence))
    if not facts:
        raise ValueError(f"{path}: no facts")
    return facts


def templates(path: str | Path) -> dict[str, str]:
    """relation id -> its cloze template ([X] ... [Y] .) from LAMA's relations.jsonl."""
    return {r["relation"]: r["template"] for r in (json.loads(x) for x in textio.lines(Path(path)) if x.strip())}


def cloze(fact: Fact, template: str | None, mask_token: str) -> str:
    if fact.sentence is not None:
        return fact.sentence.replace("[MASK]", mask_token)
    if template is None or "[X]" not in template or "[Y]" not in template:
        raise ConfigError(f"knowledge probe: a template needs [X] (the subject) and [Y] (the object), got {template!r}")
    return template.replace("[X]", fact.subject).replace("[Y]", mask_token)


@torch.no_grad()
def probe_masked_lm(model, tokenizer, facts: list[Fact], template: str | None, vocab: Iterable[str] | None = None,
                    batch_size: int = 64, max_length: int = 128) -> dict:
    """P@1, P@10 and MRR of a masked LM on `facts` (one relation). Facts whose object is not one token of the
    (common) vocabulary are left out and counted."""
    if getattr(model, "task", None) != "masked-lm":
        raise ConfigError(f"LAMA cloze probing needs a masked-LM head; this model has {getattr(model, 'task', None)!r}"
                          ". An encoder without one (e.g. a sentence-embedding model) cannot fill a blank; causal LMs "
                          "rank candidate objects instead")
    mask_id = tokenizer.mask_id
    if mask_id is None:
        raise ConfigError("LAMA: the tokenizer has no mask token")
    mask_token = tokenizer.id_to_token(mask_id)
    allowed = None
    if vocab is not None:  # the common vocabulary: ids of those of its tokens this tokenizer has
        allowed = sorted({i for w in vocab if (i := tokenizer.token_to_id(w)) is not None})
        if not allowed:
            raise ConfigError("LAMA: none of the common vocabulary's tokens is in this tokenizer")
    asked, objects = [], []
    for f in facts:
        ids = tokenizer.encode(f.obj, add_special_tokens=False)
        if len(ids) != 1 or (allowed is not None and ids[0] not in set(allowed)):
            continue
        text = cloze(f, template, mask_token)
        enc = tokenizer.encode(text)[:max_length]
        if enc.count(mask_id) != 1:
            continue  # the mask fell past max_length, or the sentence holds another [MASK]
        asked.append(enc)
        objects.append(ids[0])
    out = {"facts": len(facts), "asked": len(asked), "skipped": len(facts) - len(asked)}
    if not asked:
        return {**out, "p@1": None, "p@10": None, "mrr": None}
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ranks = []
    keep = torch.tensor(allowed, device=device) if allowed is not None else None
    model.eval()
    for start in range(0, len(asked), batch_size):
        chunk = asked[start:start + batch_size]
        t = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), t), dtype=torch.long)
        for r, x in enumerate(chunk):
            ids[r, :len(x)] = torch.tensor(x)
            att[r, :len(x)] = 1
        ids, att = ids.to(device), att.to(device)
        logits = model(ids, attention_mask=att, score_positions=ids == mask_id).logits.float()  # (B, V)
        gold = torch.tensor(objects[start:start + batch_size], device=device)
        gold_score = logits.gather(1, gold[:, None])  # (B, 1)
        if keep is not None:  # rank within the common vocabulary
            logits = logits[:, keep]
        ranks.append((logits > gold_score).sum(1) + 1)  # 1 = the object ranked first (ties count for it)
    r = torch.cat(ranks).float()
    return {**out, "p@1": float((r <= 1).float().mean()), "p@10": float((r <= 10).float().mean()),
            "mrr": float((1.0 / r).mean())}


@torch.no_grad()
def candidate_log_probs(model, prefix: list[int], candidates: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """log p(candidate | prefix) of each candidate token sequence under a causal LM, summed over its tokens: the prefix
    runs once and its keys/values are shared by every batch of candidates (the KV cache). (C,)"""
    if not prefix:
        raise ConfigError("candidate scoring needs a non-empty prefix (the cloze up to the blank)")
    device = next(model.parameters()).device
    bb, head = model.backbone, model.lm_head
    dtype = next(model.parameters()).dtype
    one = bb.new_cache(1, len(prefix), dtype, device)
    h = bb(torch.tensor([prefix], device=device), cache=one).last_hidden_state  # (1, P, H)
    first = head(h[:, -1]).float().log_softmax(-1)[0]  # (V,): the first candidate token's distribution
    k, v = one.k[:, :, :, :one.length], one.v[:, :, :, :one.length]
    scores = torch.empty(len(candidates))
    for s in range(0, len(candidates), batch_size):
        chunk = candidates[s:s + batch_size]
        b, t = len(chunk), max(len(c) for c in chunk)
        ids = torch.zeros((b, t), dtype=torch.long)
        real = torch.zeros((b, t), dtype=torch.bool)
        for i, c in enumerate(chunk):
            ids[i, :len(c)], real[i, :len(c)] = torch.tensor(c), True
        ids, real = ids.to(device), real.to(device)
        total = first[ids[:, 0]]  # (B,)
        if t > 1:
            cache = bb.new_cache(b, one.length + t, dtype, device)
            cache.k[:, :, :, :one.length], cache.v[:, :, :, :one.length] = k, v  # broadcast over the batch
            cache.length = one.length
            mask = torch.cat([torch.ones(b, one.length, dtype=torch.long, device=device), real.long()], 1)
            hc = bb(ids, attention_mask=mask, cache=cache).last_hidden_state  # (B, T, H)
            lp = head(hc[:, :-1]).float().log_softmax(-1)  # (B, T-1, V): predicts tokens 1..T-1
            nxt = lp.gather(2, ids[:, 1:, None])[..., 0]  # (B, T-1)
            total = total + (nxt * real[:, 1:]).sum(1)
        scores[s:s + b] = total.cpu()
    return scores


def probe_causal_lm(model, tokenizer, facts: list[Fact], template: str, candidates: list[str] | None = None,
                    batch_size: int = 64) -> dict:
    """LAMA for a causal LM: the cloze up to [Y] (with the subject) is the prefix, and the relation's objects (or
    `candidates`) are ranked by their log-likelihood after it; P@1, P@10, MRR of the true object."""
    if getattr(model, "task", None) != "causal-lm":
        raise ConfigError(f"candidate ranking needs a causal-LM head; this model has {getattr(model, 'task', None)!r}")
    if template is None or "[X]" not in template or "[Y]" not in template:
        raise ConfigError(f"knowledge probe: a template needs [X] and [Y], got {template!r}")
    cands = sorted(set(candidates or [f.obj for f in facts]))
    index = {c: i for i, c in enumerate(cands)}
    cand_ids = [tokenizer.encode(" " + c, add_special_tokens=False) for c in cands]
    before = template.split("[Y]")[0].rstrip()
    ranks = []
    model.eval()
    for f in facts:
        if f.obj not in index:
            continue
        prefix = tokenizer.encode(before.replace("[X]", f.subject), add_special_tokens=False)
        lp = candidate_log_probs(model, prefix, cand_ids, batch_size)
        ranks.append(int((lp > lp[index[f.obj]]).sum()) + 1)
    r = torch.tensor(ranks, dtype=torch.float)
    out = {"facts": len(facts), "asked": len(ranks), "candidates": len(cands)}
    if not ranks:
        return {**out, "p@1": None, "p@10": None, "mrr": None}
    return {**out, "p@1": float((r <= 1).float().mean()), "p@10": float((r <= 10).float().mean()),
            "mrr": float((1.0 / r).mean())}
