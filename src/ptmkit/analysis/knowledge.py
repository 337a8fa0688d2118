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

import numpy as np
import torch
from tqdm.auto import tqdm

from ptmkit.config import ConfigError
from ptmkit.data import textio
from ptmkit.objectives.augmented import latent_marginal


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


def _check_mlm(model, tokenizer) -> None:
    if getattr(model, "task", None) not in ("masked-lm", "knowledge-masked-lm"):  # ERNIE's head reads entities too
        raise ConfigError(f"LAMA cloze probing needs a masked-LM head; this model has {getattr(model, 'task', None)!r}"
                          ". An encoder without one (e.g. a sentence-embedding model) cannot fill a blank, and a "
                          "causal LM ranks candidate objects instead (ptm analyze lama does either). What works on "
                          "any encoder: ptm analyze attention, syntax, probe, cka, and perturbed if its tokenizer has "
                          "a mask token")
    if tokenizer.mask_id is None:
        raise ConfigError("LAMA: the tokenizer has no mask token")


def single_token_objects(tokenizer, facts: list[Fact], vocab: Iterable[str] | None = None
                         ) -> tuple[list[Fact], list[int], list[int] | None]:
    """The facts LAMA asks (their object one token, within the common vocabulary if given), the objects' ids, and the
    common vocabulary's ids (None: the whole vocabulary)."""
    allowed = None
    if vocab is not None:
        allowed = sorted({i for w in vocab if (i := tokenizer.token_to_id(w)) is not None})
        if not allowed:
            raise ConfigError("LAMA: none of the common vocabulary's tokens is in this tokenizer")
    keep = set(allowed) if allowed is not None else None
    asked, objects = [], []
    for f in facts:
        ids = tokenizer.encode(f.obj, add_special_tokens=False)
        if len(ids) == 1 and (keep is None or ids[0] in keep):
            asked.append(f)
            objects.append(ids[0])
    return asked, objects, allowed


@torch.no_grad()
def mask_log_probs(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
                   inputs=None, retrieval=None) -> torch.Tensor:
    """log p(token | text) at the text's one mask, (N, V); a text whose mask is missing (cut by max_length) or
    repeated gets a row of NaN. `inputs(ids) -> dict`: more model inputs computed from each padded (B, T) batch of
    ids, e.g. ERNIE's entity links (ptmkit.objectives.linking). `retrieval`: a retrieval-augmented masked-LM
    objective (objectives.realm.REALM, e.g. from recipes.realm.load_realm) whose `mask_log_probs(model, batch)`
    scores each batch instead: the model is its reader, and log p(token | text) is marginalised over the passages
    it retrieves for the text, as in its training."""
    if retrieval is not None:
        if inputs is not None:
            raise ConfigError("LAMA: give inputs (ERNIE's entities) or retrieval (REALM's passages), not both")
        if retrieval.tokenizer.fingerprint() != tokenizer.fingerprint():
            raise ConfigError("LAMA with retrieval: the REALM objective reads with another tokenizer than the probed "
                              "model's; load both from the same run (recipes.realm.load_realm)")
    mask_id = tokenizer.mask_id
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    out = torch.full((len(texts), model.config.vocab_size), float("nan"))
    enc = [tokenizer.encode(t)[:max_length] for t in texts]
    ok = [i for i, e in enumerate(enc) if e.count(mask_id) == 1]
    model.eval()
    for start in range(0, len(ok), batch_size):
        chunk = ok[start:start + batch_size]
        t = max(len(enc[i]) for i in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        att = torch.zeros((len(chunk), t), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, :len(enc[i])] = torch.tensor(enc[i])
            att[r, :len(enc[i])] = 1
        ids, att = ids.to(device), att.to(device)
        if retrieval is not None:
            out[torch.tensor(chunk)] = retrieval.mask_log_probs(model, {"input_ids": ids, "attention_mask": att}).cpu()
            continue
        extra = inputs(ids) if inputs is not None else {}
        logits = model(ids, attention_mask=att, score_positions=ids == mask_id, **extra).logits.float()  # (B, V)
        out[torch.tensor(chunk)] = logits.log_softmax(-1).cpu()
    return out


def rank_metrics(log_probs: torch.Tensor, objects: list[int], allowed: list[int] | None = None) -> dict:
    """P@1, P@10, MRR of the objects under (N, V) scores (rows of NaN left out), ranked within `allowed`."""
    valid = ~torch.isnan(log_probs).any(-1)
    lp, gold = log_probs[valid], torch.tensor(objects)[valid]
    if not len(gold):
        return {"asked": 0, "p@1": None, "p@10": None, "mrr": None}
    gold_score = lp.gather(1, gold[:, None])  # (N, 1)
    if allowed is not None:
        lp = lp[:, torch.tensor(allowed)]
    r = ((lp > gold_score).sum(1) + 1).float()  # 1 = the object ranked first (ties count for it)
    return {"asked": int(len(gold)), "p@1": float((r <= 1).float().mean()), "p@10": float((r <= 10).float().mean()),
            "mrr": float((1.0 / r).mean())}


def probe_masked_lm(model, tokenizer, facts: list[Fact], template: str | None, vocab: Iterable[str] | None = None,
                    batch_size: int = 64, max_length: int = 128, inputs=None, retrieval=None) -> dict:
    """P@1, P@10 and MRR of a masked LM on `facts` (one relation). Facts whose object is not one token of the
    (common) vocabulary are left out and counted. `inputs`, `retrieval` (REALM's reader with its retriever): as in
    mask_log_probs."""
    _check_mlm(model, tokenizer)
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    asked, objects, allowed = single_token_objects(tokenizer, facts, vocab)
    lp = mask_log_probs(model, tokenizer, [cloze(f, template, mask_token) for f in asked], batch_size, max_length,
                        inputs, retrieval)
    m = rank_metrics(lp, objects, allowed)
    return {"facts": len(facts), **m, "skipped": len(facts) - m["asked"]}


def probe_ensemble(model, tokenizer, facts: list[Fact], templates: list[str], weights: list[float] | None = None,
                   vocab: Iterable[str] | None = None, batch_size: int = 64) -> dict:
    """LPAQA's ensemble (Jiang et al. 2020, "How Can We Know What Language Models Know?" §4): the (weighted) mean of
    the templates' log-probabilities at the mask ranks the objects."""
    _check_mlm(model, tokenizer)
    if not templates:
        raise ConfigError("ensemble: give at least one template")
    w = torch.tensor(weights if weights is not None else [1.0] * len(templates), dtype=torch.float)
    w = w / w.sum()
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    asked, objects, allowed = single_token_objects(tokenizer, facts, vocab)
    total = None
    for t, wi in zip(templates, w):
        lp = mask_log_probs(model, tokenizer, [cloze(f, t, mask_token) for f in asked], batch_size) * wi
        total = lp if total is None else total + lp
    m = rank_metrics(total, objects, allowed) if asked else {"asked": 0, "p@1": None, "p@10": None, "mrr": None}
    return {"facts": len(facts), **m, "templates": len(templates)}


def read_evidence(path: str | Path) -> list[tuple[str, str]]:
    """(subject surface, sentence with [MASK] for the object) of every evidence of a T-REx relation file."""
    out = []
    for line in textio.lines(Path(path)):
        if line.strip():
            row = json.loads(line)
            out += [(e["sub_surface"], e["masked_sentence"]) for e in row.get("evidences", [])
                    if "sub_surface" in e and "masked_sentence" in e]
    return out


def mine_templates(evidence: list[tuple[str, str]], top: int = 5, max_middle: int = 5) -> list[tuple[str, int]]:
    """LPAQA's middle-word mining (Jiang et al. 2020 §3.1): in sentences where the subject and the object's [MASK]
    are at most `max_middle` words apart, the words between them become a template ([X] middle [Y] ., or
    [Y] middle [X] . when the object comes first); the `top` most frequent, with their counts."""
    counts: dict[str, int] = {}
    for sub, sent in evidence:
        i, j = sent.find(sub), sent.find("[MASK]")
        if i < 0 or j < 0:
            continue
        if i < j:
            middle, form = sent[i + len(sub):j].strip(), "[X] {} [Y] ."
        else:
            middle, form = sent[j + len("[MASK]"):i].strip(), "[Y] {} [X] ."
        if middle and len(middle.split()) <= max_middle and "[MASK]" not in middle:
            t = form.format(middle)
            counts[t] = counts.get(t, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


@torch.no_grad()
def candidate_log_probs(model, prefix: list[int], candidates: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """log p(candidate | prefix) of each candidate token sequence under a causal LM, summed over its tokens: the prefix
    runs once and its keys/values are shared by every batch of candidates (the KV cache). (C,)

    Only a candidate's tokens before its last need the backbone (the last is scored, never read), and candidates that
    share them share the pass: ' New York' and ' New Orleans' both read ' New', and ' New York City' reads ' New York',
    which covers ' New' too. So only the distinct longest such stems run, and single-token candidates need none."""
    if not prefix:
        raise ConfigError("candidate scoring needs a non-empty prefix (the cloze up to the blank)")
    device = next(model.parameters()).device
    bb, head = model.backbone, model.lm_head
    dtype = next(model.parameters()).dtype
    one = bb.new_cache(1, len(prefix), dtype, device)
    h = bb(torch.tensor([prefix], device=device), cache=one).last_hidden_state  # (1, P, H)
    first = head(h[:, -1]).float().log_softmax(-1)[0]  # (V,): the first candidate token's distribution
    scores = first[torch.tensor([c[0] for c in candidates], device=device)].cpu()
    stems = sorted({tuple(c[:-1]) for c in candidates if len(c) > 1}, key=len, reverse=True)
    runs: list[tuple[int, ...]] = []  # the stems that run: none is a prefix of another
    where: dict[tuple[int, ...], int] = {}  # every prefix of a running stem -> that run
    for stem in stems:
        if stem not in where:
            for j in range(1, len(stem) + 1):
                where.setdefault(stem[:j], len(runs))
            runs.append(stem)
    if not runs:
        return scores
    k, v = one.k[:, :, :, :one.length], one.v[:, :, :, :one.length]
    dists, starts = [], []  # per batch: log-probs after each real position (N_b, V); each run's first row overall
    row = 0
    for s in range(0, len(runs), batch_size):
        chunk = runs[s:s + batch_size]
        b, t = len(chunk), len(chunk[0])  # runs are longest first
        ids = torch.zeros((b, t), dtype=torch.long)
        real = torch.zeros((b, t), dtype=torch.bool)
        for i, c in enumerate(chunk):
            ids[i, :len(c)], real[i, :len(c)] = torch.tensor(c), True
            starts.append(row)
            row += len(c)
        ids, real = ids.to(device), real.to(device)
        cache = bb.new_cache(b, one.length + t, dtype, device)
        cache.k[:, :, :, :one.length], cache.v[:, :, :, :one.length] = k, v  # broadcast over the batch
        cache.length = one.length
        mask = torch.cat([torch.ones(b, one.length, dtype=torch.long, device=device), real.long()], 1)
        hc = bb(ids, attention_mask=mask, cache=cache).last_hidden_state  # (B, T, H)
        dists.append(head(hc[real]).float().log_softmax(-1))  # real positions in row order, as `starts` counts them
    dist = torch.cat(dists)  # (rows, V)
    rows, targets, owner = [], [], []
    for i, c in enumerate(candidates):
        if len(c) > 1:
            base = starts[where[tuple(c[:-1])]]
            rows += range(base, base + len(c) - 1)  # the distribution after c[:j+1] predicts c[j+1]
            targets += c[1:]
            owner += [i] * (len(c) - 1)
    picked = dist[torch.tensor(rows, device=device), torch.tensor(targets, device=device)].cpu()
    return scores.index_add_(0, torch.tensor(owner), picked)


def cloze_prefix(fact: Fact, template: str) -> str:
    """The cloze up to the blank with the subject in: '[X] was born in [Y] .' -> 'Allan Peiper was born in'."""
    return template.split("[Y]")[0].rstrip().replace("[X]", fact.subject)


def probe_causal_lm(model, tokenizer, facts: list[Fact], template: str, candidates: list[str] | None = None,
                    batch_size: int = 64, contexts: list[tuple[list[list[int]], torch.Tensor]] | None = None,
                    progress: str | None = None) -> dict:
    """LAMA for a causal LM: the cloze up to [Y] (with the subject) is the prefix, and the relation's objects (or
    `candidates`) are ranked by their log-likelihood after it; P@1, P@10, MRR of the true object.

    contexts (one per fact, in order): the fact's prefix behind each of K retrieved passages, as token ids ending with
    the cloze's own tokens (what a RAG generator reads: objectives.rag.RAG.conditioned_prompts), and log p(z|x) (K,).
    Candidates are then ranked by RAG-sequence's marginal log Σ_z p(z|x) p(candidate | passage_z ; prefix) (Lewis
    et al. 2020 §2.1): the same scorer, run once per passage. `progress`: a bar over the facts with this label (a
    relation of a 135M LM's LAMA takes minutes)."""
    if getattr(model, "task", None) != "causal-lm":
        raise ConfigError(f"candidate ranking needs a causal-LM head; this model has {getattr(model, 'task', None)!r}")
    if template is None or "[X]" not in template or "[Y]" not in template:
        raise ConfigError(f"knowledge probe: a template needs [X] and [Y], got {template!r}")
    if contexts is not None and len(contexts) != len(facts):
        raise ConfigError(f"LAMA: {len(contexts)} retrieval contexts for {len(facts)} facts; give one (prefixes, "
                          "log prior) per fact, in the facts' order")
    cands = sorted(set(candidates or [f.obj for f in facts]))
    index = {c: i for i, c in enumerate(cands)}
    cand_ids = [tokenizer.encode(" " + c, add_special_tokens=False) for c in cands]
    ranks = []
    model.eval()
    for i, f in enumerate(tqdm(facts, desc=progress, disable=progress is None, mininterval=1.0)):
        if f.obj not in index:
            continue
        if contexts is None:
            prefix = tokenizer.encode(cloze_prefix(f, template), add_special_tokens=False)
            lp = candidate_log_probs(model, prefix, cand_ids, batch_size)
        else:
            prefixes, log_prior = contexts[i]
            per_passage = torch.stack([candidate_log_probs(model, p, cand_ids, batch_size) for p in prefixes])  # (K, C)
            lp = latent_marginal(log_prior.float().cpu()[None, :], per_passage.T)  # (C,)
        ranks.append(int((lp > lp[index[f.obj]]).sum()) + 1)
    r = torch.tensor(ranks, dtype=torch.float)
    out = {"facts": len(facts), "asked": len(ranks), "candidates": len(cands)}
    if not ranks:
        return {**out, "p@1": None, "p@10": None, "mrr": None}
    return {**out, "p@1": float((r <= 1).float().mean()), "p@10": float((r <= 10).float().mean()),
            "mrr": float((1.0 / r).mean())}


class OptiPrompt(torch.nn.Module):
    """OptiPrompt (Zhong et al. 2021, "Factual Probing Is [MASK]" §3): the template's words replaced by `n` trained
    vectors in the input embedding space, "[X] [V]1 ... [V]n [Y] ." on a frozen masked LM; the vectors learn the
    relation from training facts by the object's cross-entropy at the mask."""

    def __init__(self, model, tokenizer, n: int = 5, init_template: str | None = None, seed: int = 0):
        super().__init__()
        _check_mlm(model, tokenizer)
        emb = model.backbone.input_embeddings()
        g = torch.Generator().manual_seed(seed)
        vectors = torch.randn(n, emb.embedding_dim, generator=g) * emb.weight.detach().std()
        if init_template is not None:  # Zhong et al.'s "manual" initialisation: the template's words
            words = init_template.replace("[X]", " ").replace("[Y]", " ").replace(" .", " ").split()
            ids = [i for w in words for i in tokenizer.encode(w, add_special_tokens=False)][:n]
            if ids:
                vectors[:len(ids)] = emb.weight.detach()[torch.tensor(ids)].float().cpu()
        self.vectors = torch.nn.Parameter(vectors)
        self.n = n

    def batch(self, model, tokenizer, facts: list[Fact]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, T, D), attention_mask (B, T), mask positions (B, T) bool) of "[CLS] subject V.. [MASK] .
        [SEP]"."""
        emb = model.backbone.input_embeddings()
        device = emb.weight.device
        cls, sep, mask = tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
        dot = tokenizer.encode(".", add_special_tokens=False)
        rows = []
        for f in facts:
            sub = tokenizer.encode(f.subject, add_special_tokens=False)
            before = ([cls] if cls is not None else []) + sub
            after = [mask] + dot + ([sep] if sep is not None else [])
            rows.append((before, after))
        t = max(len(b) + self.n + len(a) for b, a in rows)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        ids = torch.full((len(rows), t), pad, dtype=torch.long)
        att = torch.zeros((len(rows), t), dtype=torch.long)
        vpos = torch.zeros((len(rows), t), dtype=torch.bool)
        for r, (b, a) in enumerate(rows):
            n = len(b) + self.n + len(a)
            ids[r, :len(b)], ids[r, len(b) + self.n:n] = torch.tensor(b), torch.tensor(a)
            vpos[r, len(b):len(b) + self.n] = True
            att[r, :n] = 1
        ids, att, vpos = ids.to(device), att.to(device), vpos.to(device)
        x = emb(ids)  # (B, T, D)
        x = x.masked_scatter(vpos[..., None], self.vectors.to(x.dtype).repeat(len(rows), 1))
        return x, att, ids == mask

    def logits(self, model, tokenizer, facts: list[Fact]) -> torch.Tensor:
        x, att, at_mask = self.batch(model, tokenizer, facts)
        return model(inputs_embeds=x, attention_mask=att, score_positions=at_mask).logits.float()  # (B, V)


def train_optiprompt(model, tokenizer, facts: list[Fact], n: int = 5, init_template: str | None = None,
                     epochs: int = 10, lr: float = 3e-3, batch_size: int = 32, seed: int = 0) -> OptiPrompt:
    """Fit an OptiPrompt on the single-token-object training facts; the model stays frozen (and unchanged)."""
    asked, objects, _ = single_token_objects(tokenizer, facts)
    if not asked:
        raise ConfigError("OptiPrompt: no training fact with a single-token object")
    prompt = OptiPrompt(model, tokenizer, n, init_template, seed).to(next(model.parameters()).device)
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(prompt.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    gold = torch.tensor(objects)
    model.eval()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(asked), generator=g)
            for s in range(0, len(asked), batch_size):
                idx = order[s:s + batch_size]
                logits = prompt.logits(model, tokenizer, [asked[i] for i in idx])
                loss = torch.nn.functional.cross_entropy(logits, gold[idx].to(logits.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)
    return prompt.eval()


@torch.no_grad()
def probe_optiprompt(model, tokenizer, facts: list[Fact], prompt: OptiPrompt, vocab: Iterable[str] | None = None,
                     batch_size: int = 64) -> dict:
    asked, objects, allowed = single_token_objects(tokenizer, facts, vocab)
    if not asked:
        return {"facts": len(facts), "asked": 0, "p@1": None, "p@10": None, "mrr": None}
    lp = torch.cat([prompt.logits(model, tokenizer, asked[s:s + batch_size]).log_softmax(-1).cpu()
                    for s in range(0, len(asked), batch_size)])
    return {"facts": len(facts), **rank_metrics(lp, objects, allowed)}


def _trigger_batch(tokenizer, facts: list[Fact], triggers: list[int]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(ids (B, T), attention (B, T), trigger positions (B, T) bool) of "[CLS] subject T.. [MASK] . [SEP]"."""
    dot = tokenizer.encode(".", add_special_tokens=False)
    rows = []
    for f in facts:
        before = ([tokenizer.cls_id] if tokenizer.cls_id is not None else []) + \
            tokenizer.encode(f.subject, add_special_tokens=False)
        after = [tokenizer.mask_id] + dot + ([tokenizer.sep_id] if tokenizer.sep_id is not None else [])
        rows.append((before, after))
    n = len(triggers)
    t = max(len(b) + n + len(a) for b, a in rows)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    att = torch.zeros((len(rows), t), dtype=torch.long)
    tpos = torch.zeros((len(rows), t), dtype=torch.bool)
    for r, (b, a) in enumerate(rows):
        ids[r, :len(b) + n + len(a)] = torch.tensor(b + list(triggers) + a)
        att[r, :len(b) + n + len(a)] = 1
        tpos[r, len(b):len(b) + n] = True
    return ids, att, tpos


def _trigger_loss(model, tokenizer, facts, triggers, gold, grad: bool = False):
    ids, att, tpos = _trigger_batch(tokenizer, facts, triggers)
    device = next(model.parameters()).device
    ids, att, tpos = ids.to(device), att.to(device), tpos.to(device)
    emb = model.backbone.input_embeddings()
    with torch.set_grad_enabled(grad):
        x = emb(ids).detach().requires_grad_(grad)
        logits = model(inputs_embeds=x, attention_mask=att, score_positions=ids == tokenizer.mask_id).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, gold.to(device))
    if not grad:
        return float(loss), None
    (g,) = torch.autograd.grad(loss, x)  # (B, T, D)
    return float(loss.detach()), g[tpos].view(len(facts), len(triggers), -1).mean(0)  # (n, D): per trigger slot


def autoprompt(model, tokenizer, facts: list[Fact], n_triggers: int = 5, iterations: int = 50, candidates: int = 10,
               batch_size: int = 32, seed: int = 0) -> list[int]:
    """AutoPrompt (Shin et al. 2020 §2.2): trigger tokens "[X] [T]1..[T]n [Y]" shared by a relation's facts, found by
    gradient-guided search on a frozen masked LM. Each iteration takes a batch, picks a slot, ranks the vocabulary by
    the first-order estimate of how much each token in that slot would lower the loss (-e_w . grad, HotFlip), tries the
    top `candidates` and keeps the best if it beats the current trigger. Returns the trigger token ids."""
    _check_mlm(model, tokenizer)
    asked, objects, _ = single_token_objects(tokenizer, facts)
    if not asked:
        raise ConfigError("AutoPrompt: no training fact with a single-token object")
    rng = np.random.default_rng(seed)
    gold = torch.tensor(objects)
    the = tokenizer.encode("the", add_special_tokens=False)
    triggers = [the[0] if the else tokenizer.mask_id] * n_triggers  # the paper starts from [MASK]-like fillers
    emb = model.backbone.input_embeddings().weight.detach()  # (V, D)
    specials = {i for i in (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id, tokenizer.unk_id)
                if i is not None}
    banned = torch.tensor(sorted(specials), dtype=torch.long)
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        for _ in range(iterations):
            idx = rng.choice(len(asked), size=min(batch_size, len(asked)), replace=False)
            batch, y = [asked[i] for i in idx], gold[torch.from_numpy(idx)]
            current, g = _trigger_loss(model, tokenizer, batch, triggers, y, grad=True)
            slot = int(rng.integers(n_triggers))
            scores = -(emb.float() @ g[slot].float())  # (V,): estimated loss decrease of each token
            scores[banned] = -float("inf")
            best, best_loss = None, current
            for w in scores.topk(candidates).indices.tolist():
                trial = list(triggers)
                trial[slot] = w
                loss, _ = _trigger_loss(model, tokenizer, batch, trial, y)
                if loss < best_loss:
                    best, best_loss = w, loss
            if best is not None:
                triggers[slot] = best
    finally:
        for p, w in zip(model.parameters(), was):
            p.requires_grad_(w)
    return triggers


@torch.no_grad()
def probe_triggers(model, tokenizer, facts: list[Fact], triggers: list[int], vocab: Iterable[str] | None = None,
                   batch_size: int = 64) -> dict:
    asked, objects, allowed = single_token_objects(tokenizer, facts, vocab)
    if not asked:
        return {"facts": len(facts), "asked": 0, "p@1": None, "p@10": None, "mrr": None}
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(asked), batch_size):
        ids, att, _ = _trigger_batch(tokenizer, asked[s:s + batch_size], triggers)
        ids, att = ids.to(device), att.to(device)
        out.append(model(ids, attention_mask=att, score_positions=ids == tokenizer.mask_id).logits.float()
                   .log_softmax(-1).cpu())
    return {"facts": len(facts), **rank_metrics(torch.cat(out), objects, allowed),
            "triggers": [tokenizer.id_to_token(t) for t in triggers]}
