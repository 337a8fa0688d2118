"""Cost of each objective's data-side work (gather packed sequences + `corrupt()`) against its training step.

For every entry of OBJECTIVES: a small model of the family the objective trains (BERT-, GPT-2-, ELECTRA-,
XLNet- or T5-mini, 4 layers x 256), real Gutenberg text, batch 32 x 128, bf16 autocast. Data time and step time
are measured over several rounds, the two taking turns to go first (round r: data then step on even r; on odd r the
step of the previous batch, then the data); min / median / max are kept and medians reported. An objective that
fails is reported by name with its error (the others still run; the command exits 1). Target: corruption < 10% of
a step.

    .venv/bin/python benchmarks/objective_cost.py                 # all objectives
    .venv/bin/python benchmarks/objective_cost.py --objectives mlm span_corruption
    .venv/bin/python benchmarks/objective_cost.py --tiny --docs 2 --batch-size 2 --seq-len 32 --rounds 1   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Summary, error_text, report_failures  # noqa: E402

from ptmkit.data.batches import PretrainBatches  # noqa: E402
from ptmkit.data.paths import data_root  # noqa: E402
from ptmkit.data.sampler import PackedDataset  # noqa: E402
from ptmkit.data.shards import prepare_shards  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.models import build_model, make_config  # noqa: E402
from ptmkit.objectives import OBJECTIVES  # noqa: E402
from ptmkit.train.loop import bind_objective  # noqa: E402
from ptmkit.train.optim import OptimConfig, build_optimizer  # noqa: E402
from ptmkit.train.precision import Precision  # noqa: E402
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective  # noqa: E402

MINI = dict(hidden_size=256, num_layers=4, num_heads=4)
TINY = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)  # --tiny: seconds, for smoke tests
FAMILY_FOR_TASK = {  # the model each objective's task needs, at mini size
    "masked-lm": ("bert", dict(intermediate_size=1024, max_position_embeddings=512)),
    "base": ("bert", dict(intermediate_size=1024, max_position_embeddings=512)),
    "causal-lm": ("gpt2", dict(max_position_embeddings=512)),
    "replaced-token-detection": ("electra", dict(embedding_size=128, intermediate_size=1024, max_position_embeddings=512)),
    "permutation-lm": ("xlnet", dict(intermediate_size=1024)),
    "seq2seq-lm": ("t5", dict(intermediate_size=1024)),
}


def corpus(tmp: Path, docs: int) -> tuple[Tokenizer, Path]:
    """A WordPiece tokenizer (+ T5 sentinels) and token shards from the first `docs` Gutenberg books."""
    import gzip

    src = data_root() / "corpora" / "gutenberg.jsonl.gz"
    subset = tmp / "subset.jsonl"
    with gzip.open(src, "rt") as f, open(subset, "w") as out:
        for i, line in enumerate(f):
            if i >= docs:
                break
            out.write(line)
    tok = Tokenizer.train(subset, "wordpiece", 8000, special_tokens=[f"<extra_id_{i}>" for i in range(100)])
    prepare_shards(subset, tok, tmp / "shards", progress=False)
    return tok, tmp / "shards"


def measure(name: str, tok: Tokenizer, shards: Path, batch: int, seq: int, rounds: int, tiny: bool = False) -> dict:
    objective = build_objective(ObjectiveSection(name=name), tok, tok.vocab_size, seq_len=seq)
    family, extra = FAMILY_FOR_TASK[objective.task]
    params = {**MINI, **extra, "vocab_size": tok.vocab_size}
    if tiny:
        params.update(TINY, **({"embedding_size": 32} if "embedding_size" in extra else {}))
    if family in ("bert", "electra"):
        params["pad_token_id"] = tok.pad_id
    torch.manual_seed(0)
    model = build_model(family, make_config(family, params), objective.task)
    trained, _ = bind_objective(model, objective)
    opt = build_optimizer(trained, OptimConfig())
    prec = Precision("bf16", torch.device("cpu"))
    data = PretrainBatches(PackedDataset(shards, seq, "no_cross", pad_id=tok.pad_id), batch, objective, seed=0)

    def step(b):
        with prec.autocast():
            loss, _ = objective.loss(model, b)
        prec.backward(loss)
        prec.step(opt, trained.parameters(), 1.0)

    def timed_data():
        t0 = time.perf_counter()
        b = next(data)
        data_t.append(time.perf_counter() - t0)
        return b

    def timed_step(b):
        t0 = time.perf_counter()
        step(b)
        step_t.append(time.perf_counter() - t0)

    b = next(data)
    step(b)  # warm-up
    data_t, step_t = [], []
    for r in range(rounds):  # even rounds: data, then its step; odd rounds: the previous batch's step, then data
        if r % 2 == 0:
            b = timed_data()
            timed_step(b)
        else:
            timed_step(b)
            b = timed_data()
    dt, st = Summary(data_t), Summary(step_t)
    d, s = dt.median, st.median
    return {"objective": name, "model": family, "data_ms": round(d * 1e3, 2), "step_ms": round(s * 1e3, 1),
            "data_fraction": round(d / (d + s), 4), "data_ms_min_median_max": dt.as_dict(digits=2),
            "step_ms_min_median_max": st.as_dict(digits=1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=sorted(OBJECTIVES), help="registry names to measure")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=5, help="timed batches per objective (min/median/max kept)")
    p.add_argument("--docs", type=int, default=60, help="Gutenberg books used as the corpus")
    p.add_argument("--tiny", action="store_true", help="2-layer, 64-wide models instead of the 4 x 256 minis")
    args = p.parse_args(argv)
    rows, failures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tok, shards = corpus(Path(tmp), args.docs)
        for name in args.objectives:
            try:
                row = measure(name, tok, shards, args.batch_size, args.seq_len, args.rounds, args.tiny)
            except Exception as e:  # noqa: BLE001  (reported by name; the other objectives still run)
                failures[name] = error_text(e)
                report_failures({name: failures[name]})
                continue
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"{'objective':18s} {'model':8s} {'data ms':>8s} {'step ms':>8s} {'data share':>10s} "
          f"{'data ms min/med/max':>22s} {'step ms min/med/max':>22s}")
    for r in rows:
        dm, sm = r["data_ms_min_median_max"], r["step_ms_min_median_max"]
        print(f"{r['objective']:18s} {r['model']:8s} {r['data_ms']:8.2f} {r['step_ms']:8.1f} "
              f"{100 * r['data_fraction']:9.2f}% {dm['min']:>8}/{dm['median']}/{dm['max']:<8} "
              f"{sm['min']:>8}/{sm['median']}/{sm['max']}")
    for name, err in failures.items():
        print(f"{name:18s} FAILED: {err}")
    result = {"benchmark": "objective_cost", "unit": "ms per batch (data+corruption vs training step, worst objective)",
              "failures": failures, "rows": rows}
    if rows:
        worst = max(rows, key=lambda r: r["data_fraction"])
        result.update(ours=worst["data_ms"], reference=worst["step_ms"],
                      ratio=round(worst["step_ms"] / max(worst["data_ms"], 1e-9), 1),
                      worst_objective=worst["objective"], max_data_fraction=worst["data_fraction"])
    else:
        result.update(ours=None, reference=None, ratio=None)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
