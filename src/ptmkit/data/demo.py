"""The demo's data, built once and shared by the experiments: a 16k WordPiece tokenizer and Gutenberg token shards
(and, when asked, WikiText-2 valid shards for perplexity). Each piece is built only when its directory is missing."""

from __future__ import annotations

from pathlib import Path

from ptmkit.data.paths import data_root
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.log import get

log = get(__name__)


def ensure_demo_data(tokenizer_dir: str | Path, shards_dir: str | Path, wikitext_valid_dir: str | Path | None = None,
                     tag: str = "") -> None:
    """Train the tokenizer and tokenise the corpora into the given directories unless they already hold them."""
    tok_dir, shards = Path(tokenizer_dir), Path(shards_dir)
    corpus = data_root() / "corpora" / "gutenberg.jsonl.gz"
    if not (tok_dir / "tokenizer.json").exists():
        log.info("%straining a 16k WordPiece tokenizer on %s -> %s", tag and tag + " ", corpus, tok_dir)
        Tokenizer.train(corpus, kind="wordpiece", vocab_size=16000, model_max_length=128).save(tok_dir)
    tok = None
    if not (shards / "meta.json").exists():
        tok = Tokenizer.load(tok_dir)
        log.info("%stokenising %s -> %s", tag and tag + " ", corpus, shards)
        prepare_shards(corpus, tok, shards, overwrite=True)
    if wikitext_valid_dir is not None and not (Path(wikitext_valid_dir) / "meta.json").exists():
        text = data_root() / "corpora" / "wikitext-2" / "valid.txt"
        log.info("%stokenising %s -> %s", tag and tag + " ", text, wikitext_valid_dir)
        prepare_shards(text, tok or Tokenizer.load(tok_dir), Path(wikitext_valid_dir), txt_mode="lines", overwrite=True)
