"""`ptm evaluate MODEL --text FILE`: a language model scored on text — perplexity for a causal LM (sliding window),
pseudo-perplexity for a masked LM (each line a sentence) — written to out/metrics.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ptmkit import atomic
from ptmkit.analysis.lm_eval import causal_perplexity, pseudo_perplexity, text_tokens
from ptmkit.config import ConfigError
from ptmkit.data import textio
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.recipes.evaluate import _device, load_adapted
from ptmkit.train.precision import Precision


def evaluate_lm(model_dir: str | Path, text: str | Path, out: str | Path | None = None, *, window: int | None = None,
                stride: int | None = None, batch_size: int | None = None, max_lines: int | None = None,
                precision: str = "fp32", device: str = "auto", show_progress: bool = True) -> dict[str, Any]:
    """Score `text` (a plain or gzipped text file; for a causal LM also a token-shard directory) with MODEL's own LM
    head. window: tokens of context per window (default the model's positions, at most 1024); stride: default half
    the window. max_lines: a masked LM scores at most this many lines (its cost is one forward per token)."""
    model_dir, text = Path(model_dir), Path(text)
    if not text.exists():
        raise FileNotFoundError(f"{text} does not exist; pass a text file (plain or .gz) or a token-shard directory")
    dev = _device(device)
    model = load_adapted(model_dir).to(dev).eval()
    tok = Tokenizer.load(model_dir)
    autocast = Precision(precision, dev).autocast
    t0 = time.perf_counter()
    task = getattr(model, "task", None)
    if task == "causal-lm":
        max_pos = getattr(model.config, "max_position_embeddings", None) or 1024
        window = window or min(max_pos, 1024)
        res = causal_perplexity(model, text_tokens(text, tok), window, stride or max(1, window // 2), batch_size,
                                autocast, show_progress)
    elif task == "masked-lm":
        if text.is_dir():
            raise ConfigError(f"{text}: a masked LM is scored line by line; pass a text file, not token shards")
        lines = [line for line in textio.lines(text) if line.strip()][:max_lines]
        limit = getattr(model.config, "max_position_embeddings", None)
        sents = [tok.encode(line)[:limit] for line in lines]
        specials = [i for i in (tok.cls_id, tok.sep_id, tok.pad_id, tok.bos_id, tok.eos_id) if i is not None]
        if tok.mask_id is None:
            raise ConfigError(f"{model_dir}: the tokenizer has no mask token, which pseudo-perplexity needs")
        res = pseudo_perplexity(model, sents, tok.mask_id, specials, (batch_size or 8) * 8, autocast, show_progress)
    else:
        raise ConfigError(f"{model_dir} is a {task} model; scoring text needs a language-model head: causal-lm "
                          "(perplexity) or masked-lm (pseudo-perplexity). Classifiers are scored with --task/--split")
    result = {"model": str(model_dir), "text": str(text), "task": task, **res,
              "precision": precision, "seconds": round(time.perf_counter() - t0, 2)}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic.write_text(Path(out) / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result
