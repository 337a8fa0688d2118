"""`ptm tokenizer train|info`: train a BPE/WordPiece/Unigram tokenizer on a corpus, or describe one.
Thin layer over ptmkit.data.tokenizer; the saved directory loads with transformers.AutoTokenizer.
"""

from __future__ import annotations

import argparse
import time

from ptmkit import outputs
from ptmkit.data.corpus import TXT_MODES, CorpusStats, iter_documents
from ptmkit.data.tokenizer import KINDS, Tokenizer


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tokenizer", help="train or inspect tokenizers", description="Train or inspect tokenizers.")
    actions = p.add_subparsers(dest="tokenizer_action", metavar="ACTION")
    actions.required = True

    t = actions.add_parser(
        "train",
        help="train a tokenizer on a corpus and save it (HF layout)",
        description="Train a byte-level BPE (GPT-2/RoBERTa), WordPiece (BERT) or Unigram (SentencePiece) "
        "tokenizer and save tokenizer.json + tokenizer_config.json + special_tokens_map.json.",
    )
    t.add_argument("--input", required=True, metavar="SPEC", help="corpus: a file, directory (recursive) or glob of .txt/.jsonl(.gz)")
    t.add_argument("--kind", required=True, choices=KINDS, help="tokenizer family")
    t.add_argument("--vocab-size", required=True, type=int, metavar="N", help="target vocabulary size, special tokens included")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer files into")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a tokenizer already in --out (token shards made with it will then be refused)")
    t.add_argument("--min-frequency", type=int, default=2, metavar="N", help="minimum pair count to merge (bpe, wordpiece; default 2)")
    t.add_argument(
        "--lowercase", action=argparse.BooleanOptionalAction, default=None,
        help="lowercase text before tokenising (default: yes for wordpiece, no otherwise)",
    )
    t.add_argument("--text-field", default="text", metavar="NAME", help="JSON field holding the text in .jsonl files (default: text)")
    t.add_argument("--txt-mode", choices=TXT_MODES, default="file", help=".txt files: one document per file, or per non-blank line (default: file)")
    t.add_argument("--extra-special", nargs="*", default=None, metavar="TOKEN", help="additional special tokens to reserve ids for")
    t.add_argument("--model-max-length", type=int, default=None, metavar="N", help="maximum sequence length recorded in tokenizer_config.json")
    t.add_argument("--progress", action="store_true", help="show the trainer's progress bars")

    i = actions.add_parser("info", help="print a tokenizer's vocabulary size, special tokens and fingerprint")
    i.add_argument("path", metavar="PATH", help="tokenizer directory (tokenizer.json, GPT-2 vocab.json+merges.txt, or BERT vocab.txt)")
    p.set_defaults(run=run)
    return p


def _describe(tok: Tokenizer) -> str:
    ids = {r: getattr(tok, f"{r}_id") for r in ("pad", "unk", "bos", "eos", "cls", "sep", "mask")}
    roles = ", ".join(f"{r}={t!r}" for r, t in tok.special_tokens.items()) or "none"
    return (
        f"vocab size   {tok.vocab_size:,}\n"
        f"special      {roles}\n"
        f"ids          " + ", ".join(f"{r}={i}" for r, i in ids.items()) + "\n"
        f"fingerprint  {tok.fingerprint()}"
    )


def run(args: argparse.Namespace) -> int:
    if args.tokenizer_action == "info":
        tok = Tokenizer.load(args.path)
        print(f"{args.path}: {type(tok.backend.model).__name__}")
        print(_describe(tok))
        return 0
    markers = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt")
    outputs.check_free(args.out, markers, overwrite=args.overwrite, kind="tokenizer")  # before hours of training
    stats = CorpusStats()
    docs = iter_documents(args.input, text_field=args.text_field, txt_mode=args.txt_mode, stats=stats)
    t0 = time.perf_counter()
    tok = Tokenizer.train(
        docs, args.kind, args.vocab_size,
        special_tokens=args.extra_special or None,
        min_frequency=args.min_frequency, lowercase=args.lowercase,
        show_progress=args.progress, model_max_length=args.model_max_length,
    )
    seconds = time.perf_counter() - t0
    outputs.discard(args.out)  # the old tokenizer's files go as a whole, none left beside the new ones
    out = tok.save(args.out)
    print(f"trained {args.kind} tokenizer on {stats.documents:,} documents ({stats.chars:,} chars) from {stats.files} file(s) in {seconds:.1f} s")
    if stats.num_bad:
        print(f"bad lines skipped: {stats.num_bad:,}\n{stats.summary()}")
    print(_describe(tok))
    print(f"saved to {out}")
    return 0
