"""One optimizer step (forward + backward + AdamW) in tokens/s: ptmkit vs transformers, same config and batch.

Models of identical shape and initial weights are built in both libraries (ptmkit's is converted from the
transformers one); the two are timed alternately, several rounds, and medians are reported, because this
machine's speed drifts. BERT shapes train masked LM (15% of positions labelled), GPT-2 shapes causal LM.

    .venv/bin/python benchmarks/model_step.py                # CPU fp32, mini / bert-base / gpt2-small
    .venv/bin/python benchmarks/model_step.py --device cuda --dtype bfloat16   # adds MFU
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import transformers as T

from ptmkit.models import load_model
from ptmkit.train.flops import device_peak_flops, training_flops_per_token

SHAPES = {
    # name: (family, hf config, batch, seq)
    "bert-mini": ("bert", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024), 32, 128),
    "bert-base": ("bert", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072), 8, 128),
    "gpt2-small": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12), 8, 128),
}


def build_pair(family: str, cfg: dict, device, dtype):
    if family == "bert":
        ref = T.BertForMaskedLM(T.BertConfig(**cfg))
    else:
        ref = T.GPT2LMHeadModel(T.GPT2Config(**cfg))
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = load_model(d)
    return ours.to(device, dtype).train(), ref.to(device, dtype).train()


def make_batch(family, vocab, b, t, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    if family == "bert":
        labels = torch.full_like(ids, -100)
        where = torch.rand(b, t, generator=g) < 0.15
        labels[where] = ids[where]
        ids = ids.masked_fill(where, 4)
    else:
        labels = ids.clone()
    return ids.to(device), labels.to(device)


SCORE_ALL = False  # --mlm-score-all: compute every position's logits, exactly the reference's work


def ours_loss(model, family, ids, labels):
    if family == "bert":
        where = labels != -100
        if SCORE_ALL:
            logits = model(ids).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        logits = model(ids, score_positions=where).logits  # only the masked positions are scored
        return F.cross_entropy(logits.float(), labels[where])
    logits = model(ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def ref_loss(model, family, ids, labels):
    return model(input_ids=ids, labels=labels).loss


def time_step(model, opt, loss_fn, ids, labels, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = loss_fn(ids, labels)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(name, rounds, warmup, device, dtype):
    family, cfg, b, t = SHAPES[name]
    torch.manual_seed(0)
    ours, ref = build_pair(family, cfg, device, dtype)
    vocab = ref.config.vocab_size
    ids, labels = make_batch(family, vocab, b, t, device)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-4)
    fo = lambda i, l: ours_loss(ours, family, i, l)  # noqa: E731
    fr = lambda i, l: ref_loss(ref, family, i, l)  # noqa: E731
    # Same weights, same batch: the first losses must agree (a cheap correctness guard).
    with torch.no_grad():
        ours.eval(), ref.eval()
        lo, lr_ = fo(ids, labels).item(), fr(ids, labels).item()
        ours.train(), ref.train()
    assert abs(lo - lr_) < 1e-3 * max(1.0, abs(lr_)), (lo, lr_)
    for _ in range(warmup):
        time_step(ours, opt_o, fo, ids, labels, device)
        time_step(ref, opt_r, fr, ids, labels, device)
    to, tr = [], []
    for r in range(rounds):  # alternate, and swap who goes first, so drift hits both alike
        pair = [(ours, opt_o, fo, to), (ref, opt_r, fr, tr)]
        for m, o, f, acc in (pair if r % 2 == 0 else pair[::-1]):
            acc.append(time_step(m, o, f, ids, labels, device))
    mo, mr = statistics.median(to), statistics.median(tr)
    tokens = b * t
    n_params = sum(p.numel() for p in ours.parameters())
    n_pos = ours.backbone.embeddings.pos.weight.numel() if ours.backbone.embeddings.pos is not None else 0
    c = ours.backbone.config
    result = {
        "shape": name, "batch": b, "seq": t, "params_M": round(n_params / 1e6, 1),
        "ours_tokens_per_s": round(tokens / mo), "reference_tokens_per_s": round(tokens / mr),
        "ratio": round(mr / mo, 3), "ours_ms": round(mo * 1e3, 1), "reference_ms": round(mr * 1e3, 1),
        "loss_check": [round(lo, 4), round(lr_, 4)],
    }
    if device.type == "cuda":
        peak = device_peak_flops(torch.cuda.get_device_name())
        fpt = training_flops_per_token(n_params - n_pos, c.num_layers, t, c.hidden_size, causal=family != "bert")
        if peak:
            result["mfu_ours"] = round(fpt * tokens / mo / peak, 4)
            result["mfu_reference"] = round(fpt * tokens / mr / peak, 4)
            result["mfu_denominator_flops"] = peak
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="model shapes to time")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per model (medians reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter/activation dtype")
    p.add_argument("--mlm-score-all", action="store_true",
                   help="ptmkit computes MLM logits at every position (like-for-like with transformers) "
                        "instead of only at the masked ones")
    args = p.parse_args()
    global SCORE_ALL
    SCORE_ALL = args.mlm_score_all
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = []
    for name in args.shapes:
        r = bench(name, args.rounds, args.warmup, device, dtype)
        print(json.dumps(r), flush=True)
        results.append(r)
    worst = min(results, key=lambda r: r["ratio"])
    print(json.dumps({
        "benchmark": "model_step", "ours": worst["ours_tokens_per_s"], "reference": worst["reference_tokens_per_s"],
        "ratio": worst["ratio"], "unit": "tokens/s", "shape": worst["shape"], "device": args.device, "dtype": args.dtype,
        "mlm_score_all": args.mlm_score_all,
        "all_ratios": {r["shape"]: r["ratio"] for r in results},
    }))


if __name__ == "__main__":
    main()
