"""`ptm convert SRC DST`: re-save a Hugging Face (or GGUF) model directory, or a training checkpoint (single-process
or distributed DCP), as a ptmkit/HF model directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ptmkit.cli.formatting import Defaults

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a model directory (HF layout or GGUF) into a ptmkit model directory",
        description=(
            "Load SRC through ptmkit's state-dict adapters, check every tensor, and write DST as config.json + "
            "model.safetensors + tokenizer files. DST loads in ptmkit and in transformers unchanged. SRC may also "
            "be a pre-training checkpoint (RUN/checkpoints/step-N), including a distributed one written by any "
            "number of ranks: its shards are gathered into one model (ELECTRA's generator goes to DST/generator)."
        ),
        formatter_class=Defaults,
    )
    p.add_argument("src", help="source model directory (config.json + model.safetensors or pytorch_model.bin), "
                               "or a training checkpoint directory RUN/checkpoints/step-N")
    p.add_argument("dst", help="destination directory (created if missing)")
    p.add_argument("--gguf-file", default=None,
                   help="name of a GGUF file inside SRC to dequantise (needs transformers + gguf: pip install 'ptmkit[hf]')")
    p.add_argument("--task", default=None,
                   help="head to keep: base, masked-lm, causal-lm, sequence-classification, token-classification "
                        "(default: the checkpoint's own)")
    p.add_argument("--num-labels", type=int, default=None, help="classes for a new classification head")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast weights before saving")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model already in DST (the folder is removed as a whole, with any stale files)")
    p.set_defaults(run=run)


MODEL_MARKERS = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "finetune_task.json", "tokenizer.json", "model", "generator")


def run(args) -> int:
    from ptmkit import outputs
    from ptmkit.models import load_model, save_model
    from ptmkit.models.io import copy_tokenizer

    if Path(args.dst).resolve() == Path(args.src).resolve():
        raise SystemExit("ptm convert: DST is SRC; write the converted model to another folder")
    outputs.check_free(args.dst, MODEL_MARKERS, overwrite=args.overwrite, kind="model")

    if (Path(args.src) / "state.json").exists():  # a training checkpoint
        from ptmkit.recipes.pretrain import export_checkpoint

        if args.gguf_file or args.task or args.num_labels or args.dtype:
            raise SystemExit("ptm convert: --gguf-file/--task/--num-labels/--dtype apply to model directories, not "
                             "to training checkpoints (convert the exported model again to change them)")
        from ptmkit import atomic

        with atomic.atomic_dir(args.dst) as tmp:  # built aside, swapped in whole (an earlier DST goes only then)
            written = export_checkpoint(args.src, tmp)
        print("wrote " + ", ".join(v.replace(str(tmp), str(args.dst)) for v in written.values()))
        return 0

    dtype = DTYPES[args.dtype] if args.dtype else None
    model = load_model(args.src, task=args.task, num_labels=args.num_labels, dtype=dtype, gguf_file=args.gguf_file)
    outputs.discard(args.dst)  # loaded and checked: only now does the old DST go
    dst = save_model(model, args.dst, tokenizer_from=None)
    copied = copy_tokenizer(args.src, dst)
    if args.gguf_file and not copied:
        # GGUF files carry their tokenizer; transformers rebuilds it as tokenizer.json.
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.src, gguf_file=args.gguf_file).save_pretrained(dst)
        copied = ["tokenizer.json (from GGUF)"]
    if (Path(dst) / "tokenizer.json").is_file():
        from ptmkit.data.tokenizer import Tokenizer

        words = Tokenizer.load(dst).vocab_size
        if words > model.config.vocab_size:
            print(f"ptm convert: warning: the tokenizer has {words} tokens but the model's embeddings only "
                  f"{model.config.vocab_size}: ids >= {model.config.vocab_size} would fail; use the tokenizer the "
                  "model was trained with", file=sys.stderr)
    n = sum(p.numel() for p in model.parameters())
    arch = json.loads((Path(dst) / "config.json").read_text())["architectures"][0]
    print(f"wrote {dst}: {arch}, {n / 1e6:.1f}M parameters; tokenizer files: {', '.join(copied) or 'none found'}")
    return 0
