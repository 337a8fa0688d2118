"""Training throughput and MFU on one GPU: ptmkit vs transformers, GPT-2-124M causal LM and BERT-base masked LM.

Both libraries train the same model (ptmkit's is converted from the transformers one, built from a config with
attn_implementation="sdpa", no downloads; the first losses are checked equal) on the same batch with the same
recipe: fp32 master weights, bf16 autocast, fused AdamW, optionally torch.compile (on by default on CUDA).
The two are timed alternately over several rounds (swapping who goes first); min / median / max of the rounds are
printed and medians used for the figures, with
tokens/s, the ratio ours / transformers, MFU with its denominator (the dense peak of the CUDA device from
ptmkit.train.flops.PEAK_FLOPS; on CPU a measured torch.mm peak) and peak memory. Ends with one JSON line.

    .venv/bin/python benchmarks/gpu_train.py                       # CUDA: bf16, compiled, both models
    .venv/bin/python benchmarks/gpu_train.py --model gpt2 --batch-size 16 --no-compile
    .venv/bin/python benchmarks/gpu_train.py --tiny --device cpu   # a tiny config, seconds on a CPU

Targets (issue "GPU benchmark", on H100): GPT-2-124M at >= 45% MFU and >= 1.3x transformers' tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Summary, error_text, report_failures, round_order  # noqa: E402
from model_step import make_batch  # noqa: E402  (same batches as the CPU step benchmark)

from ptmkit.models import load_model  # noqa: E402
from ptmkit.train.flops import (  # noqa: E402
    device_peak_entry, format_mfu, measure_cpu_peak_flops, mfu, training_flops_breakdown,
)

# name: (family, transformers config, default batch, default seq). GPT-2-124M: Radford et al. 2019 (12 x 768,
# 12 heads, 50257 tokens, 1024 positions); BERT-base: Devlin et al. 2019 (12 x 768, 12 heads, 3072, 512).
MODELS = {
    "gpt2": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024), 16, 1024),
    "bert": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          vocab_size=30522, max_position_embeddings=512), 32, 512),
}
TINY = {  # --tiny: the same code path at a size a CPU test runs in seconds
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=2, vocab_size=512, n_positions=64, bos_token_id=0,
                          eos_token_id=0), 2, 64),
    "bert": ("bert", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                          vocab_size=512, max_position_embeddings=64), 2, 64),
}


def build_pair(family: str, cfg: dict, device):
    """transformers' model from its config (sdpa attention) and ptmkit's converted from it: same weights."""
    if family == "bert":
        ref = T.BertForMaskedLM(T.BertConfig(**cfg, attn_implementation="sdpa"))
    else:
        ref = T.GPT2LMHeadModel(T.GPT2Config(**cfg, attn_implementation="sdpa"))
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = load_model(d)
    return ours.to(device).train(), ref.to(device).train()  # fp32 master weights; autocast does the rest


def ours_loss(model, family, ids, labels, score_all: bool):
    if family == "bert":
        where = labels != -100
        if score_all:
            logits = model(ids).logits  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        logits = model(ids, score_positions=where).logits  # (N, V): only the masked positions are scored
        return F.cross_entropy(logits.float(), labels[where])
    logits = model(ids).logits  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def ref_loss(model, family, ids, labels, score_all: bool):
    return model(input_ids=ids, labels=labels).loss


def flops_per_token(model, family: str, seq: int, scored_fraction: float) -> dict:
    """Analytic training FLOPs per token (ptmkit.train.flops) of the ptmkit model, which has the reference's
    shape. Position and segment tables are lookups, not matmuls, and are left out. When only a fraction of
    positions is scored by the MLM head, its matmuls (dense H x H and the tied H x V decoder) count at that
    fraction, so MFU credits only work the model needed."""
    bb = model.backbone
    emb = bb.embeddings
    n = sum(p.numel() for p in model.parameters())
    n -= sum(m.weight.numel() for m in (emb.pos, getattr(emb, "segment", None)) if m is not None)
    if family == "bert" and scored_fraction < 1.0:
        head = model.head.dense.weight.numel() + bb.input_embeddings().weight.numel()
        n -= (1.0 - scored_fraction) * head
    c = bb.config
    return training_flops_breakdown(n, c.num_layers, seq, c.hidden_size, causal=family != "bert")


def param_and_state_bytes(model, opt) -> int:
    """Bytes a model keeps resident between steps: parameters and optimizer state (gradients are set to None)."""
    tensors = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


class Side:
    """One library's model, optimizer, loss and the measurements taken on it."""

    def __init__(self, name, model, loss_fn, device, autocast_dtype, lr=1e-4):
        self.name, self.model, self.loss_fn = name, model, loss_fn
        # Fused AdamW: one kernel per step for all parameters (CUDA; CPU too in torch >= 2.4).
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
        # fp16 only: loss scaling (bf16 has fp32's exponent range and needs none); one scaler per optimizer.
        self.scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
        self.times: list[float] = []
        self.peak_bytes = 0


def run_steps(side: Side, ids, labels, steps, device, autocast_dtype) -> float:
    """`steps` training steps; seconds of wall time, the device synchronised at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            loss = side.loss_fn(ids, labels)
        if side.scaler is not None:
            side.scaler.scale(loss).backward()
            side.scaler.step(side.opt)
            side.scaler.update()
        else:
            loss.backward()
            side.opt.step()
        side.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(name: str, spec, args, device, autocast_dtype, peak) -> dict:
    family, cfg, b_default, t_default = spec
    b = args.batch_size or b_default
    t = args.seq_len or t_default
    max_pos = cfg.get("n_positions", cfg.get("max_position_embeddings"))
    if t > max_pos:
        raise SystemExit(f"--seq-len {t} exceeds {name}'s {max_pos} learned positions")
    torch.manual_seed(0)
    ours, ref = build_pair(family, cfg, device)
    ids, labels = make_batch(family, cfg["vocab_size"], b, t, device)
    # Same weights, same batch, fp32, no dropout: the first losses must agree (a cheap correctness guard).
    with torch.no_grad():
        ours.eval(), ref.eval()
        lo = ours_loss(ours, family, ids, labels, args.mlm_score_all).item()
        lr_ = ref_loss(ref, family, ids, labels, args.mlm_score_all).item()
        ours.train(), ref.train()
    assert abs(lo - lr_) < 1e-3 * max(1.0, abs(lr_)), (lo, lr_)

    fpt_ours = fpt_ref = flops_per_token(ours, family, t, 1.0)
    if family == "bert" and not args.mlm_score_all:
        fpt_ours = flops_per_token(ours, family, t, float((labels != -100).float().mean()))
    if args.compile:
        ours_m, ref_m = torch.compile(ours), torch.compile(ref)
    else:
        ours_m, ref_m = ours, ref
    sides = [
        Side("ours", ours, lambda i, l: ours_loss(ours_m, family, i, l, args.mlm_score_all), device,
             autocast_dtype),
        Side("reference", ref, lambda i, l: ref_loss(ref_m, family, i, l, args.mlm_score_all), device,
             autocast_dtype),
    ]
    for side in sides:  # untimed: compilation, allocator and optimizer-state warm-up
        run_steps(side, ids, labels, args.warmup, device, autocast_dtype)
    resident = {s.name: param_and_state_bytes(s.model, s.opt) for s in sides}
    for r in range(args.rounds):  # alternate, and swap who goes first, so drift hits both alike
        for side in round_order(sides, r):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            side.times.append(run_steps(side, ids, labels, args.steps, device, autocast_dtype))
            if device.type == "cuda":
                # Both models live on the device: take out the other one's parameters and optimizer state.
                other = resident["reference" if side.name == "ours" else "ours"]
                side.peak_bytes = max(side.peak_bytes, torch.cuda.max_memory_allocated(device) - other)
    tokens = b * t * args.steps
    tps = {s.name: tokens / statistics.median(s.times) for s in sides}
    per_step = {s.name: Summary([x / args.steps for x in s.times]).as_dict(digits=2) for s in sides}
    n_params = sum(p.numel() for p in ours.parameters())
    result = {
        "model": name, "family": family, "batch": b, "seq": t, "params_M": round(n_params / 1e6, 1),
        "ours_tokens_per_s": round(tps["ours"]), "reference_tokens_per_s": round(tps["reference"]),
        "ratio": round(tps["ours"] / tps["reference"], 3),
        "ours_ms_per_step": round(statistics.median(sides[0].times) / args.steps * 1e3, 2),
        "reference_ms_per_step": round(statistics.median(sides[1].times) / args.steps * 1e3, 2),
        "ms_per_step_min_median_max": per_step,
        "flops_per_token_ours": fpt_ours, "flops_per_token_reference": fpt_ref,
        "loss_check": [round(lo, 4), round(lr_, 4)],
        "peak_mem_GiB_ours": round(sides[0].peak_bytes / 2**30, 3) if device.type == "cuda" else None,
        "peak_mem_GiB_reference": round(sides[1].peak_bytes / 2**30, 3) if device.type == "cuda" else None,
    }
    if peak is not None:
        label, peak_flops = peak
        result["mfu_ours"] = round(mfu(fpt_ours["total"], tps["ours"], peak_flops), 4)
        result["mfu_reference"] = round(mfu(fpt_ref["total"], tps["reference"], peak_flops), 4)
        result["mfu_denominator_flops"] = peak_flops
        result["mfu_denominator"] = label
    return result


def resolve_peak(device, dtype_name: str, autocast_dtype, tiny: bool):
    """(label, FLOP/s) of the MFU denominator: the CUDA device's dense peak, or this CPU's measured one."""
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[dtype_name]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = device_peak_entry(name)
        if entry is None:
            print(f"[gpu_train] no peak FLOP/s known for {name!r}: MFU not reported (add it to PEAK_FLOPS)")
            return None
        key, flops = entry
        note = "" if dtype_name != "float32" else ", fp32 run against the bf16 tensor-core peak"
        return f"{key} {'fp16' if key == 'V100' else 'bf16'} dense{note}", flops
    if device.type == "cpu":
        if dtype_name == "float16":  # torch.mm in fp16 takes a slow path on CPUs that linear layers avoid
            print("[gpu_train] no meaningful measured fp16 peak on CPU: MFU not reported (use bfloat16/float32)")
            return None
        size = 256 if tiny else 2048
        mm_dtype = autocast_dtype or torch.float32  # autocast runs the matmuls in this dtype
        flops = measure_cpu_peak_flops(mm_dtype, size=size, repeats=3)
        n = torch.get_num_threads()
        return f"CPU {short} torch.mm {size}x{size}, {n} thread{'s' if n > 1 else ''}, measured", flops
    return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu")
    p.add_argument("--model", default="both", choices=["gpt2", "bert", "both"], help="which model(s) to train")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: gpt2 16, bert 32)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: gpt2 1024, bert 512)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and library")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per library first (includes compilation)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: on with CUDA, off on CPU)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype; float32 = no autocast (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--mlm-score-all", dest="mlm_score_all", action="store_true", default=True,
                   help="(default) ptmkit computes MLM logits at every position, as transformers does: like for like")
    p.add_argument("--mlm-masked-only", dest="mlm_score_all", action="store_false",
                   help="ptmkit scores only the masked positions (its own speed-up; labelled NOT like for like)")
    p.add_argument("--tiny", action="store_true", help="a tiny 2-layer, 64-wide config (for CPU tests)")
    args = p.parse_args(argv)
    verbosity = T.logging.get_verbosity()
    T.logging.set_verbosity_error()  # no config chatter or shard-writing progress bars between the figures
    T.logging.disable_progress_bar()
    try:
        return run(args)
    finally:  # main() is also called from tests: leave transformers' logging as it was
        T.logging.set_verbosity(verbosity)
        T.logging.enable_progress_bar()


def run(args) -> dict:
    device = torch.device(args.device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if args.dtype is None:
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    autocast_dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    specs = TINY if args.tiny else MODELS
    names = list(MODELS) if args.model == "both" else [args.model]
    peak = resolve_peak(device, args.dtype, autocast_dtype, args.tiny)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results, failures = {}, {}
    for name in names:
        try:
            r = bench(name, specs[name], args, device, autocast_dtype, peak)
        except Exception as e:  # noqa: BLE001  (reported by name; the other model still runs)
            failures[name] = error_text(e)
            report_failures({name: failures[name]}, "gpu_train", file=sys.stdout)
            continue
        results[name] = r
        ms = r["ms_per_step_min_median_max"]
        line = (f"[gpu_train] {name}: ours {r['ours_tokens_per_s']:,} tokens/s, transformers "
                f"{r['reference_tokens_per_s']:,} tokens/s, ratio {r['ratio']} (ms per step min/median/max: ours "
                f"{ms['ours']['min']}/{ms['ours']['median']}/{ms['ours']['max']}, transformers "
                f"{ms['reference']['min']}/{ms['reference']['median']}/{ms['reference']['max']})")
        if r["family"] == "bert" and not args.mlm_score_all:
            line += " [NOT like for like: --mlm-masked-only lets ptmkit score only the masked positions]"
        if "mfu_ours" in r:
            line += (f"; ours {format_mfu(r['mfu_ours'], r['mfu_denominator_flops'], r['mfu_denominator'])}, "
                     f"transformers {100 * r['mfu_reference']:.1f}%")
        if r["peak_mem_GiB_ours"] is not None:
            line += f"; peak memory {r['peak_mem_GiB_ours']} vs {r['peak_mem_GiB_reference']} GiB"
        print(line, flush=True)
        print(json.dumps(r), flush=True)
    worst = min(results.values(), key=lambda r: r["ratio"]) if results else {}
    summary = {
        "benchmark": "gpu_train", "ours": worst.get("ours_tokens_per_s"),
        "reference": worst.get("reference_tokens_per_s"), "ratio": worst.get("ratio"), "unit": "tokens/s",
        "model": worst.get("model"), "failures": failures, "device": str(device),
        "device_name": device_name, "dtype": args.dtype, "compile": args.compile, "fused_adamw": True,
        "mlm_score_all": args.mlm_score_all, "tiny": args.tiny, "steps": args.steps, "rounds": args.rounds,
        "mfu_denominator": peak[0] if peak else None, "mfu_denominator_flops": peak[1] if peak else None,
        "all_ratios": {n: r["ratio"] for n, r in results.items()},
        "mfu_ours": {n: r.get("mfu_ours") for n, r in results.items()},
        "mfu_reference": {n: r.get("mfu_reference") for n, r in results.items()},
        "peak_mem_GiB": {n: [r["peak_mem_GiB_ours"], r["peak_mem_GiB_reference"]] for n, r in results.items()},
        "models": results,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
