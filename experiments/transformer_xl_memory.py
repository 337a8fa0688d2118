"""Transformer-XL (Dai et al. 2019; survey §4.1): how much does segment-level recurrence lower perplexity?

Trains a small Transformer-XL language model on the Gutenberg token shards as contiguous streams (8 lanes of
consecutive 128-token segments, a 128-state memory per layer carried across training steps without gradient), then
streams the whole of WikiText-2 valid through it in consecutive segments of the same length and reports perplexity
with the memory (each segment attends to the previous segments' states) and without it (each segment starts cold,
like a fixed-context decoder), plus the same at other memory lengths. Writes results.json, a plot and the results
block of docs/architectures/transformer_xl.md.

    python experiments/transformer_xl_memory.py                  # CPU default, sized for ~12 minutes on 2 idle cores
    python experiments/transformer_xl_memory.py --eval-mems 0,32,128,256  # more memory lengths (~2.5 min each)
    python experiments/transformer_xl_memory.py --train-mems 0,128  # also train a model without memory

Perplexity is per token of the demo's 16k WordPiece tokenizer, so it is not comparable to the word-level WikiText
perplexities of the literature. A finished training run is reused and finished evaluations are skipped when the
command is repeated; an interrupted training run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

from ptmkit.cli.options import add_precision_option
from ptmkit.nn.autocast import resolve
from ptmkit.analysis.report import write_results_block
from ptmkit.data.demo import ensure_demo_data
from ptmkit.data.shards import TokenShards
from ptmkit.data.streams import StreamBatches
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.objectives.recurrent_clm import RecurrentCausalLM, RecurrentCLMConfig, evaluate_stream
from ptmkit.train.checkpoint import latest_checkpoint
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig

TAG = "[transformer-xl]"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="model width (d_model)")
    p.add_argument("--layers", type=int, default=4, help="number of layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--segment", type=int, default=64, help="tokens per segment, in training and evaluation")
    p.add_argument("--train-mems", default="64",
                   help="comma list of training memory lengths; one model is trained per value (0 = no recurrence)")
    p.add_argument("--eval-mems", default="0,64",
                   help="comma list of memory lengths each model is evaluated with (0 = every segment cold)")
    p.add_argument("--steps", type=int, default=800, help="training steps (the fixed budget; ~10 min on 2 idle CPU cores)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="training lanes = segments per step (more lanes: more books seen, as each lane stays in one)")
    p.add_argument("--eval-lanes", type=int, default=16,
                   help="WikiText-2 valid is cut into this many contiguous lanes, streamed side by side")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, linear warm-up and decay)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--dropout", type=float, default=0.1, help="residual / embedding / FFN dropout")
    add_precision_option(p, what="autocast precision (train and eval)", choices=("auto", "fp32", "bf16"))
    p.add_argument("--seed", type=int, default=0, help="model initialisation and dropout seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--tokenizer", default="runs/demo/tokenizer",
                   help="tokenizer directory (the demo's 16k WordPiece, trained on Gutenberg if missing)")
    p.add_argument("--shards", default="runs/demo/data/gutenberg", help="Gutenberg token shards (built if missing)")
    p.add_argument("--eval-shards", default="runs/demo/data/wikitext2-valid",
                   help="WikiText-2 valid token shards (built from the data root's wikitext-2/valid.txt if missing)")
    p.add_argument("--out", default="runs/transformer_xl_memory", help="run directory (resumable)")
    p.add_argument("--docs", default="docs/architectures/transformer_xl.md",
                   help="markdown page whose results block is rewritten ('' = none); the plot goes beside it")
    args = p.parse_args(argv)
    args.precision = resolve(args.precision, args.device)  # records and tables name what ran
    args.train_mems = [int(x) for x in args.train_mems.split(",") if x]
    args.eval_mems = [int(x) for x in args.eval_mems.split(",") if x]
    if any(m < 0 for m in args.train_mems + args.eval_mems):
        p.error("memory lengths must be >= 0")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def ensure_data(args) -> None:
    """The demo's tokenizer and token shards (Gutenberg for training, WikiText-2 valid for evaluation)."""
    ensure_demo_data(args.tokenizer, args.shards, args.eval_shards, TAG)


def build(args, mem_len: int, vocab_size: int):
    cfg = make_config("transfo-xl", dict(
        vocab_size=vocab_size, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        intermediate_size=4 * args.hidden, segment_len=args.segment, mem_len=mem_len, dropout=args.dropout))
    return build_model("transfo-xl", cfg, "causal-lm")


def train_one(args, mem_len: int, tok: Tokenizer) -> tuple[torch.nn.Module, dict]:
    run = Path(args.out) / f"train-mem{mem_len}"
    summary_path = run / "summary.json"
    torch.manual_seed(args.seed)
    model = build(args, mem_len, tok.vocab_size)
    if summary_path.exists():  # finished: reload the final weights from the last checkpoint
        from safetensors.torch import load_model

        load_model(model, str(latest_checkpoint(run) / "model.safetensors"), strict=False)
        return model.to(args.device), json.loads(summary_path.read_text())
    shards = TokenShards(args.shards, tok)
    batches = StreamBatches(shards, args.batch_size, args.segment)
    objective = RecurrentCausalLM(RecurrentCLMConfig(batch_size=args.batch_size))
    resume = latest_checkpoint(run) is not None
    print(f"{TAG} training mem_len={mem_len}: {args.steps} steps of {args.batch_size} x {args.segment} tokens"
          + (" (resuming)" if resume else ""), flush=True)
    t0 = time.perf_counter()
    result = train(model, objective, batches, run,
                   TrainConfig(steps=args.steps, precision=args.precision, device=args.device, seed=args.seed,
                               log_every=10, eval_every=0, checkpoint_every=max(args.steps // 4, 1), keep_last=1,
                               progress_bar=False),
                   OptimConfig(lr=args.lr, weight_decay=0.01, betas=[0.9, 0.98], grad_clip=0.25),
                   ScheduleConfig(warmup_steps=args.warmup, decay="linear", min_lr_ratio=0.1), resume=resume)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    summary = {"mem_len": mem_len, "steps": result["steps"], "wall_s": time.perf_counter() - t0,
               "tokens": args.steps * args.batch_size * args.segment,
               "final_train_loss": sum(r["loss"] for r in train_rows[-5:]) / len(train_rows[-5:]),
               "tokens_per_s": sum(r["tokens_per_s"] for r in train_rows) / len(train_rows)}
    if result["interrupted"]:
        raise SystemExit(f"{TAG} interrupted; run the same command again to resume")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return model, summary


def evaluate_one(args, model, train_mem: int, eval_mem: int, valid: TokenShards) -> dict:
    path = Path(args.out) / f"train-mem{train_mem}" / f"eval-mem{eval_mem}.json"
    if path.exists():
        return json.loads(path.read_text())
    batches = StreamBatches(valid, args.eval_lanes, args.segment, epochs=1, drop_last=False)
    precision = Precision(args.precision, torch.device(args.device))
    t0 = time.perf_counter()
    res = evaluate_stream(model, batches, mem_len=eval_mem, device=args.device, autocast=precision.autocast)
    res.update(train_mem=train_mem, eval_mem=eval_mem, wall_s=time.perf_counter() - t0)
    print(f"{TAG} train mem {train_mem}, eval mem {eval_mem}: ppl {res['ppl']:.2f} ({res['wall_s']:.0f} s)", flush=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for train_mem in sorted({r["train_mem"] for r in rows}):
        pts = sorted((r["eval_mem"], r["ppl"]) for r in rows if r["train_mem"] == train_mem)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"trained with mem_len {train_mem}")
    ax.set_xlabel("evaluation memory length (states per layer; 0 = every segment cold)")
    ax.set_ylabel("WikiText-2 valid perplexity")
    ax.set_title("Transformer-XL: perplexity vs memory (segments of equal length)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(args, summaries: dict[int, dict], rows: list[dict], valid_tokens: int, wall_s: float) -> str:
    lines = ["| trained with mem_len | evaluated with mem_len | WikiText-2 valid loss (nats/token) | perplexity |",
             "|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["train_mem"], r["eval_mem"])):
        cold = " (no memory: every segment cold)" if r["eval_mem"] == 0 else ""
        lines.append(f"| {r['train_mem']} | {r['eval_mem']}{cold} | {r['loss']:.4f} | {r['ppl']:.2f} |")
    train_desc = "; ".join(f"mem_len {m}: final train loss {s['final_train_loss']:.3f}, {s['wall_s'] / 60:.1f} min, "
                           f"{s['tokens_per_s']:.0f} tokens/s" for m, s in sorted(summaries.items()))
    cmd = "python experiments/transformer_xl_memory.py" + (
        "" if args.argv == [] else " " + " ".join(args.argv))
    lines += ["", f"Model: Transformer-XL, {args.layers} layers × {args.hidden} ({args.heads} heads, FFN "
              f"{4 * args.hidden}), post-norm, tied 16k WordPiece embeddings, segments of {args.segment} tokens. "
              f"Training: {args.steps} steps × {args.batch_size} contiguous Gutenberg lanes × {args.segment} tokens "
              f"({args.steps * args.batch_size * args.segment / 1e6:.2f}M tokens), AdamW lr {args.lr:g}, "
              f"precision {args.precision}, device {args.device}, {args.threads} threads ({train_desc}). "
              f"Evaluation: all {valid_tokens:,} predicted tokens of WikiText-2 valid, streamed as {args.eval_lanes} "
              f"contiguous lanes of consecutive {args.segment}-token segments (each lane's first segment is cold in "
              f"every row). This invocation took {wall_s / 60:.1f} min; measured {date.today().isoformat()} with `{cmd}`."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import sys

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ensure_data(args)
    tok = Tokenizer.load(args.tokenizer)
    valid = TokenShards(args.eval_shards, tok)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    summaries, rows = {}, []
    for train_mem in args.train_mems:
        model, summaries[train_mem] = train_one(args, train_mem, tok)
        for eval_mem in args.eval_mems:
            rows.append(evaluate_one(args, model, train_mem, eval_mem, valid))
    wall = time.perf_counter() - t0
    valid_tokens = int(rows[0]["tokens"]) if rows else 0
    result = {"args": {k: v for k, v in vars(args).items()}, "train": summaries, "eval": rows, "wall_s": wall}
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    block = markdown(args, summaries, rows, valid_tokens, wall)
    print(block)
    if args.docs:
        doc = Path(args.docs)
        plot(rows, doc.with_suffix(".png"))
        write_results_block(doc, block + f"\n\n![perplexity vs memory]({doc.with_suffix('.png').name})",
                            "Transformer-XL")
    print(json.dumps({"ppl": {f"train{r['train_mem']}-eval{r['eval_mem']}": round(r["ppl"], 2) for r in rows},
                      "wall_s": round(wall, 1)}))
    return result


if __name__ == "__main__":
    main()
