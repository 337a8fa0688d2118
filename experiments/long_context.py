"""Efficient attention at long context (survey §4.2, Tay et al. 2020): what does each kernel cost in perplexity?

Trains the same small GPT-2 language model with a 2,048-token context once per attention kernel — dense SDPA
(the reference) and the causal efficient kernels of ptmkit.nn.ATTENTION (exact sparse patterns: sliding window,
block sparse; approximations: Performer, linear attention, Reformer LSH) — on the same Gutenberg token stream for
the same number of steps (same initial weights, same batches), then scores every model on WikiText-2 valid in
non-overlapping 2,048-token windows (each token predicted from the tokens before it in its window). Reports
perplexity, training tokens/s and evaluation tokens/s side by side; writes results.json, a plot and the
"long-context" results block of docs/architectures/efficient_attention.md.

    python experiments/long_context.py                          # CPU default, ~20 minutes on 2 cores
    python experiments/long_context.py --kernels sdpa,performer --steps 400 --out runs/long_context_400

Perplexity is per token of the demo's 16k WordPiece tokenizer (not comparable with word-level WikiText numbers).
A finished training run is reused, a finished evaluation skipped, and an interrupted training run resumes from its
last checkpoint when the command is repeated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from ptmkit.cli.options import add_precision_option
from ptmkit.nn.autocast import resolve
from ptmkit.analysis.report import write_results_block
from ptmkit.data.demo import ensure_demo_data
from ptmkit.data.shards import TokenShards
from ptmkit.data.streams import StreamBatches
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.nn import ATTENTION
from ptmkit.train.checkpoint import latest_checkpoint
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import names  # noqa: E402

TAG = "[long-context]"
# Each kernel's settings for a 2,048-token context (head dim 32 at the default width): every efficient kernel lets a
# query see a few hundred keys, or an estimate of all of them.
KERNEL_OPTIONS: dict[str, dict] = {
    "sdpa": {},
    "sliding_window": {"window": 256, "block": 128},  # 256 keys back
    "block_sparse": {"block": 128, "summary": 16},  # own block + 16 summary positions of every earlier block
    "performer": {"num_features": 128, "seed": 0},  # F ~ D log D for D = 32 (Choromanski et al. §4), fixed features
    "linear": {"chunk": 128},
    "lsh": {"n_buckets": 16, "n_hashes": 2, "chunk_len": 64, "seed": 0},  # ~128 tokens/bucket; 128-key windows
}
LABELS = {"sdpa": "dense (sdpa)", "sliding_window": "sliding window", "block_sparse": "block sparse",
          "performer": "Performer (FAVOR+)", "linear": "linear (elu+1)", "lsh": "LSH (Reformer)"}
SIGNATURE = ("hidden", "layers", "heads", "context", "steps", "batch_size", "lr", "warmup", "precision", "seed",
             "eval_lanes", "eval_batches")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--kernels", type=names(ATTENTION), default=",".join(KERNEL_OPTIONS),
                   help="comma list of causal kernels to compare (sdpa is the reference); options from KERNEL_OPTIONS "
                        "or --kernel-options")
    p.add_argument("--kernel-options", default="{}",
                   help='JSON overriding a kernel\'s settings, e.g. \'{"performer": {"num_features": 256}}\'')
    p.add_argument("--hidden", type=int, default=128, help="model width")
    p.add_argument("--layers", type=int, default=2, help="number of layers")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--context", type=int, default=2048, help="tokens per training sequence and evaluation window")
    p.add_argument("--steps", type=int, default=50, help="training steps per kernel (the same for every kernel)")
    p.add_argument("--batch-size", type=int, default=1, help="contiguous Gutenberg lanes per step (sequences)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, linear warm-up and decay)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--eval-lanes", type=int, default=8,
                   help="WikiText-2 valid is cut into this many contiguous lanes of whole windows (the remainder of "
                        "each lane, shorter than a window, is not scored)")
    p.add_argument("--eval-batches", type=int, default=2,
                   help="score the first n batches of eval-lanes windows (0 = every whole window of WikiText-2 valid, "
                        "136 at the defaults; the CPU default scores 16 to stay near 20 minutes)")
    add_precision_option(p, choices=("auto", "fp32", "bf16"))
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (the same initial weights per kernel)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--tokenizer", default="runs/demo/tokenizer",
                   help="tokenizer directory (the demo's 16k WordPiece, trained on Gutenberg if missing)")
    p.add_argument("--shards", default="runs/demo/data/gutenberg", help="Gutenberg token shards (built if missing)")
    p.add_argument("--eval-shards", default="runs/demo/data/wikitext2-valid",
                   help="WikiText-2 valid token shards (built from the data root's wikitext-2/valid.txt if missing)")
    p.add_argument("--out", default="runs/long_context", help="run directory (resumable)")
    p.add_argument("--docs", default="docs/architectures/efficient_attention.md",
                   help="markdown page whose 'long-context' results block is rewritten ('' = none); plot beside it")
    args = p.parse_args(argv)
    args.precision = resolve(args.precision, args.device)  # records and tables name what ran
    try:
        overrides = json.loads(args.kernel_options)
    except json.JSONDecodeError as e:
        p.error(f"--kernel-options is not JSON: {e}")
    args.options = {k: {**KERNEL_OPTIONS.get(k, {}), **overrides.get(k, {})} for k in args.kernels}
    not_causal = [k for k in args.kernels if not ATTENTION[k].causal]
    if not_causal:
        p.error(f"--kernels: {not_causal} are not defined for causal attention (a language model needs it)")
    if min(args.steps, args.batch_size, args.context, args.eval_lanes) < 1:
        p.error("--steps, --batch-size, --context and --eval-lanes must be >= 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def ensure_data(args) -> None:
    """The demo's tokenizer and token shards (Gutenberg for training, WikiText-2 valid for evaluation)."""
    ensure_demo_data(args.tokenizer, args.shards, args.eval_shards, TAG)


class StreamLM:
    """Next-token loss on StreamBatches (labels are the next tokens of the stream, so no prediction is lost)."""

    task = "causal-lm"

    def corrupt(self, batch, generator):
        return batch

    def loss(self, model, batch):
        logits = model(batch["input_ids"]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())
        return loss, {"loss": loss.item(), "predicted_tokens": float(batch["labels"].numel())}


def build(args, kernel: str, vocab_size: int) -> torch.nn.Module:
    """The GPT-2 model with `kernel`. Kernels with random state (Performer's features, LSH's rotations) get a fixed
    `seed` option, so they draw nothing from the global RNG and every kernel starts from the same weights."""
    cfg = make_config("gpt2", dict(
        vocab_size=vocab_size, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        max_position_embeddings=args.context, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
        attention_kernel=kernel, attention_options=dict(args.options[kernel])))
    torch.manual_seed(args.seed)
    return build_model("gpt2", cfg, "causal-lm")


def train_one(args, kernel: str, tok: Tokenizer) -> tuple[torch.nn.Module, dict]:
    run = Path(args.out) / kernel
    summary_path = run / "summary.json"
    model = build(args, kernel, tok.vocab_size)
    if summary_path.exists():  # finished: the final weights from the last checkpoint
        from safetensors.torch import load_model

        load_model(model, str(latest_checkpoint(run) / "model.safetensors"))
        return model.to(args.device), json.loads(summary_path.read_text())
    batches = StreamBatches(TokenShards(args.shards, tok), args.batch_size, args.context)
    resume = latest_checkpoint(run) is not None
    print(f"{TAG} training {kernel} {args.options[kernel]}: {args.steps} steps of {args.batch_size} x {args.context} "
          "tokens" + (" (resuming)" if resume else ""), flush=True)
    t0 = time.perf_counter()
    result = train(model, StreamLM(), batches, run,
                   TrainConfig(steps=args.steps, precision=args.precision, device=args.device, seed=args.seed,
                               log_every=5, eval_every=0, checkpoint_every=max(args.steps // 3, 1), keep_last=1,
                               progress_bar=False),
                   OptimConfig(lr=args.lr, weight_decay=0.01, betas=[0.9, 0.98], grad_clip=1.0),
                   ScheduleConfig(warmup_steps=args.warmup, decay="linear", min_lr_ratio=0.1), resume=resume)
    if result["interrupted"]:
        raise SystemExit(f"{TAG} interrupted; run the same command again to resume")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    steady = train_rows[1:] or train_rows  # the first record includes warm-up of the allocator and kernels
    summary = {"kernel": kernel, "options": args.options[kernel], "steps": result["steps"],
               "wall_s": time.perf_counter() - t0, "tokens": args.steps * args.batch_size * args.context,
               "final_train_loss": sum(r["loss"] for r in train_rows[-3:]) / len(train_rows[-3:]),
               "train_tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady)}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return model, summary


@torch.no_grad()
def evaluate(args, model, kernel: str, valid: TokenShards) -> dict:
    """Mean next-token loss over every whole window of WikiText-2 valid (each window starts cold)."""
    path = Path(args.out) / kernel / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    batches = StreamBatches(valid, args.eval_lanes, args.context, epochs=1, drop_last=True)
    precision = Precision(args.precision, torch.device(args.device))
    model.eval()
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        if args.eval_batches and i == args.eval_batches:
            break
        ids, labels = batch["input_ids"].to(args.device), batch["labels"].to(args.device)
        with precision.autocast():
            logits = model(ids).logits  # (lanes, T, V)
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum"))
        count += labels.numel()
    wall = time.perf_counter() - t0
    res = {"kernel": kernel, "loss": total / count, "ppl": math.exp(total / count), "tokens": count,
           "windows": count // args.context, "eval_tokens_per_s": count / wall, "wall_s": wall}
    print(f"{TAG} {kernel}: WikiText-2 valid ppl {res['ppl']:.2f} ({wall:.0f} s)", flush=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def check_settings(args) -> None:
    """One run directory holds one study: refuse to mix runs trained with other settings."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    now = {k: getattr(args, k) for k in SIGNATURE}
    path = out / "settings.json"
    saved = json.loads(path.read_text()) if path.exists() else {"signature": now, "options": {}}
    if saved["signature"] != now:
        diff = {k: (saved["signature"].get(k), v) for k, v in now.items() if saved["signature"].get(k) != v}
        raise SystemExit(f"{TAG} {out} holds runs with other settings (was, now): {diff}; pass another --out")
    for k in args.kernels:
        if k in saved["options"] and saved["options"][k] != args.options[k]:
            raise SystemExit(f"{TAG} {out / k} was trained with {saved['options'][k]}, now {args.options[k]}; pass "
                             "another --out")
        saved["options"][k] = args.options[k]
    path.write_text(json.dumps(saved, indent=2) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [LABELS.get(r["kernel"], r["kernel"]) for r in rows]
    colors = ["0.4" if r["kernel"] == "sdpa" else "C0" if ATTENTION[r["kernel"]].kind == "pattern" else "C1"
              for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.barh(names, [r["ppl"] for r in rows], color=colors)
    a.set_xlabel("WikiText-2 valid perplexity (lower is better)")
    a.invert_yaxis()
    b.barh(names, [r["train_tokens_per_s"] for r in rows], color=colors)
    b.set_xlabel("training tokens/s")
    b.invert_yaxis()
    b.set_yticklabels([])
    fig.suptitle("2,048-token context: dense (grey), exact sparse (blue), approximate (orange)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(args, rows: list[dict], wall_s: float) -> str:
    ref = next((r for r in rows if r["kernel"] == "sdpa"), None)
    lines = ["| kernel | options | WikiText-2 valid ppl | vs dense | final train loss | train tokens/s | "
             "eval tokens/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = f"{r['ppl'] / ref['ppl']:.3f}x" if ref else "-"
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {LABELS.get(r['kernel'], r['kernel'])} | {opts} | {r['ppl']:.1f} | {vs} | "
                     f"{r['final_train_loss']:.3f} | {r['train_tokens_per_s']:.0f} | {r['eval_tokens_per_s']:.0f} |")
    cmd = "python experiments/long_context.py" + ("" if not args.argv else " " + " ".join(args.argv))
    tokens = args.steps * args.batch_size * args.context
    lines += ["", f"Model: GPT-2, {args.layers} layers × {args.hidden} ({args.heads} heads of "
              f"{args.hidden // args.heads}), context {args.context}, tied 16k WordPiece embeddings, no dropout; the "
              f"same initial weights for every kernel. Training: {args.steps} steps × {args.batch_size} contiguous "
              f"Gutenberg lanes × {args.context} tokens ({tokens / 1e6:.2f}M tokens, the same batches for every "
              f"kernel), AdamW lr {args.lr:g}, {args.warmup} warm-up steps, linear decay, precision {args.precision}, "
              f"device {args.device}, {args.threads} threads. Evaluation: {rows[0]['tokens']:,} tokens of WikiText-2 "
              f"valid in {rows[0]['windows']} non-overlapping windows of {args.context} (each token predicted from "
              f"its window's earlier tokens). Tokens/s: training (forward + backward + step) and evaluation "
              f"(forward), same machine, one kernel at a time. This invocation took {wall_s / 60:.1f} min; measured "
              f"{date.today().isoformat()} with `{cmd}`."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    import sys

    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ensure_data(args)
    check_settings(args)
    tok = Tokenizer.load(args.tokenizer)
    valid = TokenShards(args.eval_shards, tok)
    rows = []
    for kernel in args.kernels:
        model, summary = train_one(args, kernel, tok)
        rows.append({**summary, **evaluate(args, model, kernel, valid)})
        del model
    wall = time.perf_counter() - t0
    result = {"args": {k: v for k, v in vars(args).items()}, "rows": rows, "wall_s": wall}
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    block = markdown(args, rows, wall)
    print(block)
    if args.docs:
        doc = Path(args.docs)
        png = doc.with_name(doc.stem + "_long_context.png")
        plot(rows, png)
        write_results_block(doc, block + f"\n\n![perplexity and throughput per kernel]({png.name})",
                            "Efficient attention", name="long-context")
    print(json.dumps({"ppl": {r["kernel"]: round(r["ppl"], 2) for r in rows}, "wall_s": round(wall, 1)}))
    return result


if __name__ == "__main__":
    main()
