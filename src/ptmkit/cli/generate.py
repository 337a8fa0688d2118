"""`ptm generate MODEL --prompt ...`: continue text with a causal LM (greedy or sampled, KV-cached)."""

from __future__ import annotations

import argparse

import torch

from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with a causal LM model directory",
        description="Continue each prompt with a gpt2 or llama model directory (HF layout, or GGUF with --gguf-file).",
        formatter_class=Defaults,
    )
    p.add_argument("model", help="model directory with config.json, weights and a tokenizer")
    p.add_argument("--prompt", action="append", required=True, help="text to continue; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples from softmax(logits / T)")
    p.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set with this probability")
    p.add_argument("--stop", action="append", default=None,
                   help="token string that ends a sequence (repeatable); default: the model's eos token")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (slow; for checks)")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside MODEL to dequantise")
    p.set_defaults(run=run)


def _tokenizer(args):
    if args.gguf_file:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file)
        return hf._tokenizer  # the underlying `tokenizers` object
    from ptmkit.data.tokenizer import Tokenizer

    return Tokenizer.load(args.model).backend


def run(args) -> int:
    from ptmkit.models import CausalLM, load_model

    model = load_model(args.model, gguf_file=args.gguf_file)
    if not isinstance(model, CausalLM):
        raise ValueError(f"{args.model} is a {getattr(model, 'task', 'base')} model; generate needs a causal LM "
                         "(GPT2LMHeadModel or LlamaForCausalLM)")
    tok = _tokenizer(args)
    if tok.get_vocab_size() > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens but the model only {model.config.vocab_size}")
    stops = []
    for s in args.stop or []:
        tid = tok.token_to_id(s)
        if tid is None:
            raise ValueError(f"stop token {s!r} is not in the tokenizer's vocabulary")
        stops.append(tid)
    if args.stop is None and model.config.eos_token_id is not None:
        stops.append(model.config.eos_token_id)
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if pad is not None else (stops[0] if stops else 0)
    enc = [tok.encode(p, add_special_tokens=False).ids for p in args.prompt]
    bos = getattr(model.config, "bos_token_id", None)
    for i, e in enumerate(enc):
        if not e:  # an empty prompt: start from the beginning-of-text token, as GPT-2 samples unconditionally
            if bos is None:
                raise ValueError(f"prompt {i + 1} ({args.prompt[i]!r}) has no tokens and the model has no "
                                 "bos_token_id to start from; give some text to continue")
            e.append(bos)
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):  # left padding keeps every prompt's end aligned for decoding
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, stop_tokens=stops, pad_token_id=pad, use_cache=not args.no_cache,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for prompt, row in zip(args.prompt, out[:, width:].tolist()):
        if stops:
            row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
        print(prompt + tok.decode(row, skip_special_tokens=True))
    return 0
