"""`ptm data prepare|info`: tokenise a corpus into memory-mapped token shards, or describe prepared shards.
Thin layer over ptmkit.data.shards; prints document/token counts, bad lines and throughput.
"""

from __future__ import annotations

import argparse

from ptmkit.data.corpus import TXT_MODES
from ptmkit.data.shards import TokenShards, prepare_shards
from ptmkit.data.tokenizer import Tokenizer


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="prepare and inspect token shards", description="Prepare and inspect token shards.")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION")
    actions.required = True

    prep = actions.add_parser(
        "prepare",
        help="tokenise a corpus into token shards",
        description="Tokenise a corpus into memory-mapped token shards (.bin + .idx + meta.json) for pre-training.",
    )
    prep.add_argument("--input", required=True, metavar="SPEC", help="corpus: a file, directory (recursive) or glob of .txt/.jsonl(.gz)")
    prep.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (tokenizer.json, GPT-2 vocab.json+merges.txt, or BERT vocab.txt)")
    prep.add_argument("--out", required=True, metavar="DIR", help="output directory for the shards (must not exist unless --overwrite)")
    prep.add_argument("--text-field", default="text", metavar="NAME", help="JSON field holding the text in .jsonl files (default: text)")
    prep.add_argument("--txt-mode", choices=TXT_MODES, default="file", help=".txt files: one document per file, or per non-blank line (default: file)")
    prep.add_argument("--shard-tokens", type=int, default=1 << 28, metavar="N", help="close a shard at the first document boundary after N tokens (default: 2^28)")
    prep.add_argument("--batch-docs", type=int, default=256, metavar="N", help="documents tokenised per batch (default: 256)")
    prep.add_argument("--num-workers", type=int, default=0, metavar="N", help="tokeniser processes; 0 uses the tokenizer's own threads (default: 0)")
    prep.add_argument("--no-eos", dest="append_eos", action="store_false", help="do not append the eos/sep token after each document")
    prep.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output directory (only once the new one is complete)")

    info = actions.add_parser("info", help="print the counts recorded in a shard directory")
    info.add_argument("path", metavar="DIR", help="a directory written by `ptm data prepare`")
    info.add_argument("--tokenizer", default=None, metavar="DIR", help="also check that this tokenizer matches the shards")
    p.set_defaults(run=run)
    return p


def _bad_lines(counts: dict) -> str:
    bad = counts.get("bad_lines") or {}
    if not bad:
        return "bad lines    none"
    lines = [f"bad lines    {sum(bad.values()):,}"]
    for reason, n in bad.items():
        ex = counts.get("bad_line_examples", {}).get(reason, [])
        where = "; ".join(f"{e['file']}:{e['line']}" + (f" ({e['detail']})" if e.get("detail") else "") for e in ex)
        lines.append(f"  {reason}: {n:,} (first: {where})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.data_action == "info":
        tok = Tokenizer.load(args.tokenizer) if args.tokenizer else None
        sh = TokenShards(args.path, tokenizer=tok)
        m = sh.meta
        print(repr(sh))
        print(f"tokenizer    {m['tokenizer']['fingerprint'][:16]}… vocab {m['tokenizer']['vocab_size']:,}" + (" (matches)" if tok else ""))
        print(f"source       {m['source']['spec']}")
        print(_bad_lines(m["counts"]))
        return 0
    meta = prepare_shards(
        args.input, Tokenizer.load(args.tokenizer), args.out,
        shard_tokens=args.shard_tokens, batch_docs=args.batch_docs, num_workers=args.num_workers,
        append_eos=args.append_eos, progress=args.progress,
        text_field=args.text_field, txt_mode=args.txt_mode, overwrite=args.overwrite,
    )
    c, tp = meta["counts"], meta["throughput"]
    print(f"documents    {c['documents']:,} from {c['files']} file(s)")
    print(f"tokens       {c['tokens']:,} ({meta['dtype']}, {len(meta['shards'])} shard(s))")
    print(_bad_lines(c))
    print(f"throughput   {tp['tokens_per_s']:,.0f} tokens/s, {tp['docs_per_s']:,.1f} docs/s ({tp['seconds']:.2f} s)")
    print(f"wrote        {args.out}")
    return 0
