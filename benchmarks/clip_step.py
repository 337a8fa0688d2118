"""One CLIP training step (forward + symmetric contrastive loss + backward + AdamW) in image-text pairs/s: ptmkit vs
transformers' CLIPModel, same config, same initial weights, same batch.

The transformers model is built first (quick-GELU towers, its own initialisation) and converted into ptmkit, so both
start from identical weights; the batch holds random images and right-padded captions ending in the end-of-text
token. ptmkit's step is what `ptm pretrain` runs (objectives/clip.py's loss on the model), transformers' is
CLIPModel(..., return_loss=True).loss. The first losses must agree (a correctness guard). The two are timed in an
order that alternates every round; min / median / max are reported and the ratio uses medians.

    .venv/bin/python benchmarks/clip_step.py                         # configs/clip-emoji.yaml's model, batch 256
    .venv/bin/python benchmarks/clip_step.py --shapes clip-emoji --rounds 5 --autocast bf16
    .venv/bin/python benchmarks/clip_step.py --shapes clip-tiny --rounds 1 --warmup 0    # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile

import torch
import transformers as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, error_text, report_failures  # noqa: E402

from ptmkit.models import load_model  # noqa: E402
from ptmkit.objectives.clip import CLIPContrastive  # noqa: E402

EOS, PAD, BOS = 3, 0, 2
SHAPES = {
    # name: (text config, vision config, projection, batch, caption length)
    "clip-emoji": (dict(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=32),
                   dict(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                        intermediate_size=768), 128, 256, 16),
    # CLIP ViT-B/32's towers (Radford et al. 2021 Table 20) at a small batch
    "clip-b32": (dict(), dict(), 512, 32, 32),
    "clip-tiny": (dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=16),
                  dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64), 32, 8, 8),
}
DEFAULT_SHAPES = ["clip-emoji"]


def build_pair(text: dict, vision: dict, projection: int):
    cfg = T.CLIPConfig(text_config=dict(text, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS),
                       vision_config=vision, projection_dim=projection)
    ref = T.CLIPModel(cfg)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = load_model(d)
    return ours.train(), ref.train()


def make_batch(vocab: int, image_size: int, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and captions of 3..t tokens ([bos] words [eos], right-padded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (b, t), generator=g)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    lengths[0] = t  # one full row: the batch is as long as its longest caption
    pos = torch.arange(t)[None]
    ids[:, 0] = BOS
    ids = torch.where(pos == (lengths - 1)[:, None], EOS, ids)
    mask = (pos < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, PAD)
    return {"pixel_values": torch.randn(b, 3, image_size, image_size, generator=g), "input_ids": ids,
            "attention_mask": mask}


def bench(name: str, rounds: int, warmup: int, autocast: str) -> dict:
    text, vision, projection, b, t = SHAPES[name]
    torch.manual_seed(0)
    ours, ref = build_pair(text, vision, projection)
    batch = make_batch(ref.config.text_config.vocab_size, ref.config.vision_config.image_size, b, t)
    objective = CLIPContrastive()

    def ours_loss():
        return objective.loss(ours, batch)[0]

    def ref_loss():
        return ref(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                   attention_mask=batch["attention_mask"], return_loss=True).loss

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast == "bf16" else contextlib.nullcontext
    with torch.no_grad():  # same weights, same batch: the same loss (dropout is 0 in both)
        lo, lr_ = ours_loss().item(), ref_loss().item()
    assert abs(lo - lr_) < 1e-4 * max(1.0, abs(lr_)), (lo, lr_)

    def make_step(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with ctx():
                loss = loss_fn()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    timed = alternate({"ours": make_step(ours, ours_loss), "reference": make_step(ref, ref_loss)}, rounds,
                      warmup=warmup)
    report_failures(timed.failures, name)
    if timed.failures:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in timed.failures.items()))
    so, sr = timed.summaries["ours"], timed.summaries["reference"]
    return {"shape": name, "batch": b, "caption_tokens": t, "image_size": ref.config.vision_config.image_size,
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2), "autocast": autocast,
            "ours_pairs_per_s": round(b / so.median, 1), "reference_pairs_per_s": round(b / sr.median, 1),
            "ratio": round(sr.median / so.median, 3), "ours_ms": so.as_dict(digits=1),
            "reference_ms": sr.as_dict(digits=1), "loss_check": [round(lo, 5), round(lr_, 5)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES), help="model shapes to time")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per side (min / median / max reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--autocast", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast on both sides (what configs/clip-emoji.yaml trains with)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results, failures = [], {}
    for name in args.shapes:
        try:
            r = bench(name, args.rounds, args.warmup, args.autocast)
        except Exception as e:  # noqa: BLE001  (reported by name, the other shapes still run)
            failures[name] = error_text(e)
            report_failures({name: failures[name]})
            continue
        print(json.dumps(r), flush=True)
        print(f"{name}: ours {r['ours_ms']['median']:,.1f} ms, transformers {r['reference_ms']['median']:,.1f} ms per "
              f"step of {r['batch']} pairs, ratio {r['ratio']}  [ours min/median/max {r['ours_ms']['min']}/"
              f"{r['ours_ms']['median']}/{r['ours_ms']['max']} ms; transformers {r['reference_ms']['min']}/"
              f"{r['reference_ms']['median']}/{r['reference_ms']['max']} ms]", file=sys.stderr, flush=True)
        results.append(r)
    summary = {"benchmark": "clip_step", "unit": "pairs/s", "device": "cpu", "autocast": args.autocast,
               "threads": torch.get_num_threads(), "rounds": args.rounds, "failures": failures}
    if results:
        worst = min(results, key=lambda r: r["ratio"])
        summary.update(ours=worst["ours_pairs_per_s"], reference=worst["reference_pairs_per_s"], ratio=worst["ratio"],
                       shape=worst["shape"], all_ratios={r["shape"]: r["ratio"] for r in results})
    else:
        summary.update(ours=None, reference=None, ratio=None)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
