"""Cost of each objective's data-side work (gather packed sequences + `corrupt()`) against its training step.

For every entry of OBJECTIVES: a small model of the family the objective trains (BERT-, GPT-2-, ELECTRA-,
XLNet- or T5-mini, 4 layers x 256), real Gutenberg text, batch 32 x 128, bf16 autocast. Data time and step time
are measured alternately over several rounds and reported as medians. Target: corruption < 10% of a step.

    .venv/bin/python benchmarks/objective_cost.py                 # all objectives
    .venv/bin/python benchmarks/objective_cost.py --objectives mlm span_corruption
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ptmkit.data.batches import PretrainBatches
from ptmkit.data.paths import data_root
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES
from ptmkit.train.loop import bind_objective
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.train.precision import Precision
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective

MINI = dict(hidden_size=256, num_layers=4, num_heads=4)
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


def measure(name: str, tok: Tokenizer, shards: Path, batch: int, seq: int, rounds: int) -> dict:
    objective = build_objective(ObjectiveSection(name=name), tok, tok.vocab_size, seq_len=seq)
    family, extra = FAMILY_FOR_TASK[objective.task]
    params = {**MINI, **extra, "vocab_size": tok.vocab_size}
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

    step(next(data))  # warm-up
    data_t, step_t = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        b = next(data)
        data_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        step(b)
        step_t.append(time.perf_counter() - t0)
    d, s = statistics.median(data_t), statistics.median(step_t)
    return {"objective": name, "model": family, "data_ms": round(d * 1e3, 2), "step_ms": round(s * 1e3, 1),
            "data_fraction": round(d / (d + s), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", nargs="+", default=sorted(OBJECTIVES), help="registry names to measure")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--rounds", type=int, default=5, help="timed batches per objective (medians reported)")
    p.add_argument("--docs", type=int, default=60, help="Gutenberg books used as the corpus")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tok, shards = corpus(Path(tmp), args.docs)
        rows = []
        for name in args.objectives:
            row = measure(name, tok, shards, args.batch_size, args.seq_len, args.rounds)
            print(json.dumps(row), flush=True)
            rows.append(row)
    worst = max(rows, key=lambda r: r["data_fraction"])
    print(f"{'objective':18s} {'model':8s} {'data ms':>8s} {'step ms':>8s} {'data share':>10s}")
    for r in rows:
        print(f"{r['objective']:18s} {r['model']:8s} {r['data_ms']:8.2f} {r['step_ms']:8.1f} {100 * r['data_fraction']:9.2f}%")
    print(json.dumps({"benchmark": "objective_cost", "ours": worst["data_ms"], "reference": worst["step_ms"],
                      "ratio": round(worst["step_ms"] / max(worst["data_ms"], 1e-9), 1),
                      "unit": "ms per batch (data+corruption vs training step, worst objective)",
                      "worst_objective": worst["objective"], "max_data_fraction": worst["data_fraction"]}))


if __name__ == "__main__":
    main()
