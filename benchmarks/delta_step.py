"""One LoRA training step (forward + backward + AdamW on the LoRA parameters): ptmkit vs PEFT on transformers,
same model, weights, rank, targets and batch, in tokens/s.

The model is built in transformers, saved, and loaded by ptmkit (identical weights); LoRA of the same rank and
alpha goes on q and v in both (ptmkit: the q and v parts of its fused q/k/v projection; PEFT: q_proj and v_proj, or
BERT's query and value). Both start with B = 0, so their first losses equal the base model's and must agree (a
correctness guard). Candidates alternate over rounds and min / median / max are reported; the ratio is
reference median / ours median (> 1: ptmkit is faster).

    .venv/bin/python benchmarks/delta_step.py                         # SmolLM2-135M shape and BERT-mini, CPU
    .venv/bin/python benchmarks/delta_step.py --shapes llama-tiny --rounds 1 --warmup 0   # seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import peft
import torch
import torch.nn.functional as F
import transformers as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, error_text, report_failures  # noqa: E402

from ptmkit import adapt  # noqa: E402
from ptmkit.models import load_model  # noqa: E402

SHAPES = {
    # name: (transformers model class, its config, PEFT targets, batch, seq)
    "smollm2-135m": (T.LlamaForCausalLM, dict(vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                                              num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                                              tie_word_embeddings=True, max_position_embeddings=2048),
                     ["q_proj", "v_proj"], 8, 128),
    "bert-mini": (T.BertForMaskedLM, dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                          intermediate_size=1024), ["query", "value"], 32, 128),
    "llama-tiny": (T.LlamaForCausalLM, dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=128,
                                            max_position_embeddings=64), ["q_proj", "v_proj"], 2, 32),
}
DEFAULT_SHAPES = ["smollm2-135m", "bert-mini"]


def _loss(logits: torch.Tensor, ids: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())


def _step(model, call, ids, causal):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = _loss(call(ids), ids, causal)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench(name: str, rank: int, rounds: int, warmup: int, dtype) -> dict:
    cls, cfg, targets, b, t = SHAPES[name]
    causal = cls is T.LlamaForCausalLM
    torch.manual_seed(0)
    hf_base = cls(cls.config_class(**cfg))
    with tempfile.TemporaryDirectory() as d:
        hf_base.save_pretrained(d)
        ours = load_model(d).to(dtype).train()
        ref = cls.from_pretrained(d).to(dtype).train()
    adapt.apply(ours, "lora", {"rank": rank, "alpha": 2 * rank, "targets": ["q", "v"]})
    adapt.freeze_except(ours)
    ref = peft.get_peft_model(ref, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    ids = torch.randint(5, cfg.get("vocab_size", 30522), (b, t), generator=torch.Generator().manual_seed(0))
    call_ours = lambda x: ours(x).logits  # noqa: E731
    call_ref = lambda x: ref(input_ids=x).logits  # noqa: E731
    with torch.no_grad():
        ours.eval(), ref.eval()
        lo, lr_ = _loss(call_ours(ids), ids, causal).item(), _loss(call_ref(ids), ids, causal).item()
        ours.train(), ref.train()
    assert abs(lo - lr_) < 1e-3 * max(1.0, abs(lr_)), ("first losses differ", lo, lr_)
    n_ours = adapt.count_parameters(ours)
    n_ref = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert n_ours["trainable"] == n_ref, ("trainable parameters differ", n_ours["trainable"], n_ref)
    timed = alternate({"ours": _step(ours, call_ours, ids, causal), "reference": _step(ref, call_ref, ids, causal)},
                      rounds, warmup=warmup)
    report_failures(timed.failures, name)
    if timed.failures:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in timed.failures.items()))
    so, sr = timed.summaries["ours"], timed.summaries["reference"]
    tokens = b * t
    return {"shape": name, "batch": b, "seq": t, "rank": rank, "targets": "q, v",
            "trainable": n_ours["trainable"], "trainable_pct": round(n_ours["trainable_pct"], 3),
            "ours_tokens_per_s": round(tokens / so.median), "reference_tokens_per_s": round(tokens / sr.median),
            "ratio": round(sr.median / so.median, 3), "ours_ms": so.as_dict(digits=1),
            "reference_ms": sr.as_dict(digits=1), "loss_check": [round(lo, 4), round(lr_, 4)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES), help="model shapes to time")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank on both sides)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per model (min / median / max reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter dtype")
    args = p.parse_args(argv)
    results, failures = [], {}
    for name in args.shapes:
        try:
            r = bench(name, args.rank, args.rounds, args.warmup, getattr(torch, args.dtype))
        except Exception as e:  # noqa: BLE001  (reported by name, the other shapes still run)
            failures[name] = error_text(e)
            report_failures({name: failures[name]})
            continue
        print(json.dumps(r), flush=True)
        print(f"{name}: LoRA rank {r['rank']} on q, v ({r['trainable']:,} trainable, {r['trainable_pct']}%): ours "
              f"{r['ours_ms']['median']:,.1f} ms, peft {r['reference_ms']['median']:,.1f} ms, ratio {r['ratio']}",
              flush=True)
        results.append(r)
    summary = {"benchmark": "delta_step", "unit": "tokens/s", "reference": None, "ours": None, "ratio": None,
               "dtype": args.dtype, "rounds": args.rounds, "failures": failures}
    if results:
        worst = min(results, key=lambda r: r["ratio"])
        summary.update(ours=worst["ours_tokens_per_s"], reference=worst["reference_tokens_per_s"],
                       ratio=worst["ratio"], shape=worst["shape"], all_ratios={r["shape"]: r["ratio"] for r in results})
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
