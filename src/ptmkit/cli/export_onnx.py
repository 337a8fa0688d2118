"""`ptm export-onnx MODEL --out DIR [--int8]`: an ONNX graph of a model directory, checked in ONNX Runtime."""

from __future__ import annotations

import argparse

from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a model directory to ONNX (fp32, optionally int8), checked against ONNX Runtime",
        description=(
            "Trace MODEL (any model directory: a fine-tuned classifier gives its logits, a base model its last hidden "
            "states) with dynamic batch and length into OUT/model.onnx, run it in ONNX Runtime on a padded batch of "
            "other shapes and compare with ptmkit's outputs (an fp32 export off by more than --atol is an error). "
            "--int8 adds OUT/model.int8.onnx, ONNX Runtime's dynamic int8 quantisation of the graph, with its error "
            "against fp32. OUT/export.json records the differences, sizes and versions; the tokenizer and config are "
            "copied beside the graph."
        ),
        formatter_class=Defaults,
    )
    p.add_argument("model", help="model directory (config.json + model.safetensors + tokenizer)")
    p.add_argument("--out", required=True, help="directory for model.onnx, export.json and the tokenizer")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (ONNX Runtime dynamic int8)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |ONNX Runtime - ptmkit| of the fp32 graph")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.recipes.export_onnx import export_onnx

    r = export_onnx(args.model, args.out, int8=args.int8, atol=args.atol, opset=args.opset, overwrite=args.overwrite)
    print(f"wrote {args.out}/model.onnx ({r['fp32']['bytes'] / 1e6:.1f} MB; ONNX Runtime vs ptmkit max |diff| "
          f"{r['fp32']['max_abs_diff']:.2e})")
    if "int8" in r:
        q = r["int8"]
        print(f"wrote {args.out}/model.int8.onnx ({q['bytes'] / 1e6:.1f} MB; relative error {q['relative_error']:.3f}, "
              f"argmax agreement {q['argmax_agreement']:.3f})")
    return 0
