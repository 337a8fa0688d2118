"""`ptm merge MODEL --out DIR`: fold a mergeable adapter (LoRA, IA3, BitFit) into a plain model directory."""

from __future__ import annotations

import argparse

from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="fold a trained adapter (lora, ia3, bitfit) into a plain model directory",
        description=(
            "Load MODEL (a fine-tuned run's OUT/best, or a base model directory), apply its adapter (MODEL/adapter, "
            "or --adapter), add the adapter's change into the weights and write OUT as a plain model directory "
            "(config.json + model.safetensors + tokenizer) that ptmkit and transformers load without the adapter. "
            "MODEL is never modified. Adapters that are not a change of weights (houlsby, pfeiffer, prefix, "
            "ptuning-v2, prompt, ptuning, feature) cannot be merged: keep them beside the base model."
        ),
        formatter_class=Defaults,
    )
    p.add_argument("model", help="model directory the adapter was trained on (e.g. RUN/best)")
    p.add_argument("--out", required=True, help="directory for the merged model")
    p.add_argument("--adapter", default=None, help="adapter directory (adapter_config.json + "
                                                   "adapter_model.safetensors); unset: MODEL/adapter")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.recipes.merge import merge_adapter

    res = merge_adapter(args.model, args.out, args.adapter, overwrite=args.overwrite)
    print(f"merged {', '.join(res['methods'])} into {res['out']} ({res['parameters']:,} parameters)")
    return 0
