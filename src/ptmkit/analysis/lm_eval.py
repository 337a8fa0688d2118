"""Language-model evaluation (survey §7, "generation analysis"; ptm evaluate for language models).

Causal LMs: perplexity by a sliding window with a stride — the method of the transformers perplexity guide: windows
of `window` tokens start every `stride` tokens, and each window scores only the tokens the previous one did not, so
every token is predicted with up to `window` tokens of context. The windows are batched, and the output layer is
applied only to the positions scored (logits_to_keep), which is most of a small model's cost. Every token is scored
exactly once, but the text's first and, with stride = window (no overlap), each window's first, which have no context
(the guide's own count is one token short per window after the first: see tests/parity/test_perplexity_parity.py).

Masked LMs: pseudo-log-likelihood and pseudo-perplexity (Salazar et al. 2020, "Masked Language Model Scoring" §2):
each token of a line is masked in turn and scored from both sides; PPPL = exp(-sum PLL / tokens). The copies of a
line (one per masked token) are batched and only the masked position is sent through the output layer.

Dimension legend: B windows (or masked copies) per batch, L window length, K positions scored, V vocabulary, H hidden
size.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.data import textio
from tqdm.auto import tqdm


def text_tokens(path: str | Path, tokenizer) -> torch.Tensor:
    """The token ids of a plain or gzipped text file, as one stream (lines joined by newlines, no special tokens),
    or of a token-shard directory (`ptm data prepare`), every document in order."""
    path = Path(path)
    if path.is_dir():
        from ptmkit.data.shards import TokenShards

        shards = TokenShards(path, tokenizer)
        return torch.from_numpy(np.asarray(shards.tokens(0, shards.num_tokens), dtype=np.int64))
    text = "\n".join(textio.lines(path))
    if not text.strip():
        raise ConfigError(f"{path}: no text to score")
    return torch.tensor(tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored): the windows of the transformers guide over n tokens; each scores its last `scored`
    tokens (the first window all but the text's first token, which has no context)."""
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError(f"perplexity: need window >= 2 and 1 <= stride <= window, got window {window}, stride "
                          f"{stride} (the guide uses stride = window / 2)")
    if n < 2:
        raise ConfigError(f"perplexity: the text has {n} token(s); at least 2 are needed (one to predict from)")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        scored = end - max(prev_end, begin + 1)  # never the window's first token: nothing before it inside
        out.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    return out


def token_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., V) logits, (...) targets -> (...) float32 log-probabilities of the targets. Every causal score sums
    these (perplexity here, kNN-LM's interpolation in ptmkit.recipes.knn_lm), so equal inputs give equal sums."""
    return logits.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def scored_windows(model, ids: torch.Tensor, window: int = 1024, stride: int = 512, batch_size: int | None = None,
                   autocast=None, show_progress: bool = True, batch_tokens: int = 1024, desc: str = "perplexity"):
    """The forward passes of sliding-window scoring, batched: yields (logits (B, K, V), hidden (B, K, H), target
    (B, K)) for each batch of equal-shape windows, where hidden is the final hidden state each logit is computed
    from (the output layer's input) and target the token it predicts. Every token but the first is a target once.
    Windows are batched up to `batch_tokens` tokens a forward pass (or `batch_size` windows): on a 2-core CPU, four
    1,024-token windows a pass ran slower than one (benchmarks/perplexity.py), the activations no longer fitting the
    caches."""
    if batch_size is None:
        batch_size = max(1, batch_tokens // window)
    if getattr(model, "task", None) != "causal-lm":
        raise ConfigError(f"perplexity needs a causal LM (causal-lm head); this model has {getattr(model, 'task', None)!r}"
                          " (a masked LM gets pseudo-perplexity: pseudo_perplexity)")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and window > max_pos:
        raise ConfigError(f"perplexity: window {window} exceeds the model's {max_pos} positions; use window <= {max_pos}")
    device = next(model.parameters()).device
    plan = windows(len(ids), window, stride)
    groups: dict[tuple[int, int], list[int]] = {}  # (length, scored) -> begins: equal shapes batch together
    for begin, end, scored in plan:
        groups.setdefault((end - begin, scored), []).append(begin)
    bar = tqdm(total=len(plan), desc=desc, unit="window", disable=not show_progress)
    model.eval()
    for (length, scored), begins in groups.items():
        for i in range(0, len(begins), batch_size):
            chunk = begins[i:i + batch_size]
            x = torch.stack([ids[b:b + length] for b in chunk]).to(device)  # (B, L)
            # no_grad around the pass only: a context held across `yield` would leak into the caller's code
            with torch.no_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                out = model(x, logits_to_keep=scored + 1)
            logits = out.logits[:, :-1]  # (B, K, V): predict the last K tokens
            hidden = out.last_hidden_state[:, length - scored - 1:length - 1]  # (B, K, H): what made the logits
            yield logits, hidden, x[:, length - scored:]  # target (B, K)
            bar.update(len(chunk))
    bar.close()


def causal_perplexity(model, ids: torch.Tensor, window: int = 1024, stride: int = 512, batch_size: int | None = None,
                      autocast=None, show_progress: bool = True, batch_tokens: int = 1024) -> dict[str, float]:
    """Sliding-window perplexity of a causal LM over the 1-D token stream `ids`. `autocast`: a context factory
    (ptmkit.train.precision.Precision.autocast) or None for the model's own dtype; batching: scored_windows."""
    nll, count, n_windows = 0.0, 0, len(windows(len(ids), window, stride))
    for logits, _, target in scored_windows(model, ids, window, stride, batch_size, autocast, show_progress,
                                            batch_tokens):
        nll -= float(token_log_probs(logits, target).sum())
        count += target.numel()
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "tokens": count, "windows": n_windows,
            "window": window, "stride": stride}


@torch.no_grad()
def pseudo_perplexity(model, sentences: Iterable[list[int]], mask_id: int, special_ids: Iterable[int] = (),
                      batch_size: int = 64, autocast=None, show_progress: bool = True) -> dict[str, float]:
    """Pseudo-log-likelihood scoring of a masked LM: `sentences` are token-id lists with their special tokens (those
    are never scored). Returns PPPL, the mean PLL per token, tokens and sentences scored."""
    if getattr(model, "task", None) != "masked-lm":
        raise ConfigError(f"pseudo-perplexity needs a masked LM (masked-lm head); this model has "
                          f"{getattr(model, 'task', None)!r} (a causal LM gets perplexity: causal_perplexity)")
    device = next(model.parameters()).device
    special = set(special_ids)
    # every (sentence, position) to score, longest sentences first so a batch pads little
    sents = sorted((s for s in sentences if any(t not in special for t in s)), key=len, reverse=True)
    if not sents:
        raise ConfigError("pseudo-perplexity: no tokens to score (every line is empty or special tokens only)")
    jobs = [(si, p) for si, s in enumerate(sents) for p, t in enumerate(s) if t not in special]
    total, bar = 0.0, tqdm(total=len(jobs), desc="pseudo-perplexity", unit="token", disable=not show_progress)
    model.eval()
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        length = max(len(sents[si]) for si, _ in chunk)
        x = torch.zeros(len(chunk), length, dtype=torch.long)
        attn = torch.zeros(len(chunk), length, dtype=torch.long)
        pos = torch.zeros(len(chunk), length, dtype=torch.bool)
        gold = torch.empty(len(chunk), dtype=torch.long)
        for r, (si, p) in enumerate(chunk):
            s = sents[si]
            x[r, :len(s)] = torch.tensor(s)
            attn[r, :len(s)] = 1
            gold[r] = s[p]
            x[r, p] = mask_id
            pos[r, p] = True
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = model(x.to(device), attention_mask=attn.to(device), score_positions=pos.to(device)).logits  # (B, V)
        total += float(logits.float().log_softmax(-1).gather(1, gold.to(device)[:, None]).sum())
        bar.update(len(chunk))
    bar.close()
    return {"pseudo_perplexity": math.exp(-total / len(jobs)), "pll_per_token": total / len(jobs),
            "tokens": len(jobs), "sentences": len(sents)}
