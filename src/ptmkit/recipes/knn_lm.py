"""kNN-LM workflows (Khandelwal et al. 2020): build a datastore of (context hidden state -> next token) from a corpus
with a causal LM, and score text with the LM interpolated with it, for a grid of k, temperature and λ.

Both passes run the LM through the sliding windows of ptmkit.analysis.lm_eval (scored_windows), so every token is
keyed / scored once with up to `window` tokens of context, and the scores are summed batch by batch exactly as
causal_perplexity sums them: the λ = 0 column equals the plain perplexity to the last bit. Each batch is searched
once with the largest k, and every (k, T, λ) is computed from that one result (the nearest k are its first k).

Dimension legend: B windows per batch, K positions scored per window, H hidden size, N = B K positions.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ptmkit.analysis.lm_eval import scored_windows, text_tokens, token_log_probs
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.fingerprint import tensors_fingerprint
from ptmkit.retrieval.knn_lm import Datastore, sweep_nll
from ptmkit.retrieval.passage_index import corpus_record


def lm_fingerprint(model, tokenizer: Tokenizer) -> str:
    """The LM whose hidden states are a datastore's keys: its weights and tokenizer."""
    return tensors_fingerprint(model.state_dict(), tokenizer.fingerprint())


def build_datastore(model, tokenizer: Tokenizer, corpus: str | os.PathLike, out: str | os.PathLike | None, *,
                    window: int = 1024, stride: int = 512, max_tokens: int | None = None,
                    index: IndexConfig | None = None, autocast=None, show_progress: bool = True,
                    source: str = "<in memory>") -> Datastore:
    """A datastore from the first `max_tokens` tokens of `corpus` (a plain or gzipped text file, or token shards):
    one entry per scored token, key = the fp16 final hidden state before it, value = the token. Written atomically
    to `out` (None: kept in memory)."""
    ids = text_tokens(corpus, tokenizer)
    ids = ids[:max_tokens] if max_tokens else ids
    dim = int(model.config.hidden_size)

    def batches():
        for _, hidden, target in scored_windows(model, ids, window, stride, autocast=autocast,
                                                show_progress=show_progress, desc="datastore keys"):
            yield hidden.reshape(-1, dim).to(torch.float16), target.reshape(-1)  # (N, H), (N,)

    meta = {"lm": {"source": source, "fingerprint": lm_fingerprint(model, tokenizer)},
            "corpus": {**corpus_record(corpus), "tokens": int(len(ids))}, "window": window, "stride": stride}
    return Datastore.build(batches(), dim, out, index, meta, show_progress)


def knn_lm_perplexity(model, tokenizer: Tokenizer, ids: torch.Tensor, store: Datastore, *, ks: Sequence[int] = (1024,),
                      lambdas: Sequence[float] = (0.0, 0.25), temperatures: Sequence[float] = (1.0,),
                      window: int = 1024, stride: int = 512, autocast=None, show_progress: bool = True) -> dict:
    """Perplexity of the 1-D token stream `ids` under p = λ p_kNN + (1 - λ) p_LM for every (k, T, λ), and the
    plain LM's ("base", which the λ = 0 rows equal exactly). The store must hold this LM's hidden states."""
    built = store.manifest.get("lm", {}).get("fingerprint")
    if built is not None and built != lm_fingerprint(model, tokenizer):
        raise ConfigError(f"the datastore's keys are hidden states of {store.manifest['lm'].get('source')} "
                          f"(fingerprint {built[:12]}), not of this model: rebuild the datastore with this model")
    if not ks or not lambdas or not temperatures:
        raise ConfigError("kNN-LM: give at least one k, one λ and one temperature")
    kmax = max(ks)
    if min(ks) < 1 or kmax > len(store):
        raise ConfigError(f"kNN-LM: k must be in 1..{len(store)} (the datastore's entries), got {list(ks)}")
    dim = store.dim
    sums: dict[tuple, float] = {}
    base, count, t_search, t_sweep, t0 = 0.0, 0, 0.0, 0.0, time.perf_counter()
    for logits, hidden, target in scored_windows(model, ids, window, stride, autocast=autocast,
                                                 show_progress=show_progress, desc="kNN-LM"):
        lm = token_log_probs(logits, target)  # (B, K)
        base -= float(lm.sum())
        ts = time.perf_counter()
        dists, vals = store.search(hidden.reshape(-1, dim).float(), kmax)  # (N, kmax) each
        tw = time.perf_counter()
        for key, nll in sweep_nll(lm, dists, vals, target, ks, temperatures, lambdas).items():
            sums[key] = sums.get(key, 0.0) + nll
        t_search, t_sweep = t_search + tw - ts, t_sweep + time.perf_counter() - tw
        count += target.numel()
    grid = [{"k": k, "temperature": t, "lambda": lam, "perplexity": math.exp(nll / count), "nll": nll / count}
            for (k, t, lam), nll in sums.items()]
    return {"base": {"perplexity": math.exp(base / count), "nll": base / count}, "grid": grid,
            "best": min(grid, key=lambda r: r["nll"]), "tokens": count, "window": window, "stride": stride,
            "entries": len(store), "seconds": round(time.perf_counter() - t0, 2),
            "search_seconds": round(t_search, 2), "sweep_seconds": round(t_sweep, 2)}


def eval_tokens(text: str | os.PathLike, tokenizer: Tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """The token stream of an evaluation text, capped at `max_tokens`."""
    if not Path(text).exists():
        raise FileNotFoundError(f"{text} does not exist; pass a text file (plain or .gz) or a token-shard directory")
    ids = text_tokens(text, tokenizer)
    return ids[:max_tokens] if max_tokens else ids
