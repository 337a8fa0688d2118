"""Activation checkpointing: saved-activation memory and step time with and without it (issue 5 target: a
12-layer model at sequence 512 keeps >= 50% less activation memory).

Activation memory is what the forward pass leaves alive for the backward pass, measured by torch's MemTracker
(torch.distributed._tools.mem_tracker), which attributes every live tensor storage to parameters, gradients,
optimizer state or activations — exact on CPU as on GPU, unlike process RSS. The peak of the whole step
(parameters + gradients + activations + the recomputed block's temporaries) is printed beside it. Step times rotate the
variants' order over several rounds and report min / median / max (the 2-core machine's speed drifts; ratios use
medians), so the overhead ratio is meaningful where absolute times are not. A variant that fails is reported by name
with its error, and the command then exits 1.

    .venv/bin/python benchmarks/activation_memory.py                      # bert-base shape, 12 x 768, seq 512
    .venv/bin/python benchmarks/activation_memory.py --family gpt2 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, error_text, report_failures  # noqa: E402

from ptmkit.models import build_model, make_config  # noqa: E402
from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing  # noqa: E402

SHAPES = {"bert": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
          "gpt2": dict(hidden_size=768, num_layers=12, num_heads=12),
          "llama": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--family", choices=sorted(SHAPES), default="bert")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--every", default="1,2", help="checkpoint every k-th block; comma list of k to compare")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (variants alternate inside each)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    return p.parse_args(argv)


def build(args, every: int):
    torch.manual_seed(0)
    cfg = make_config(args.family, {**SHAPES[args.family], "num_layers": args.layers, "vocab_size": 8192,
                                    "max_position_embeddings": max(512, args.seq_len)})
    model = build_model(args.family, cfg, "base").to(args.device).train()
    if every:
        apply_activation_checkpointing(model, every)
    return model


def step(model, ids, dtype):
    with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(ids).last_hidden_state.float().square().mean()
    loss.backward()


def memory(model, ids, dtype) -> tuple[int, int]:
    """(activation bytes held for backward at the end of the forward pass, peak bytes of the whole step)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(ids).last_hidden_state.float().square().mean()
        current = tracker.get_tracker_snapshot("current")[ids.device]
        loss.backward()
    peak = tracker.get_tracker_snapshot("peak")[ids.device]["Total"]
    model.zero_grad(set_to_none=True)
    return int(next(v for k, v in current.items() if str(k).endswith("ACT"))), int(peak)


def main(argv=None) -> dict:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    variants = [0, *(int(k) for k in args.every.split(",") if k)]
    names = {k: "off" if k == 0 else f"every_{k}" for k in variants}
    ids = torch.randint(0, 8192, (args.batch_size, args.seq_len), device=args.device)
    failures: dict[str, str] = {}
    models, mem = {}, {}
    for k in variants:
        try:
            models[k] = build(args, k)
            mem[k] = memory(models[k], ids, dtype)
        except Exception as e:  # noqa: BLE001  (reported by name; the other variants still run)
            failures[names[k]] = error_text(e)
            models.pop(k, None)

    def timed_step(m):
        def run():
            m.zero_grad(set_to_none=True)
            step(m, ids, dtype)
        return run

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    timed = alternate({names[k]: timed_step(m) for k, m in models.items()}, args.rounds, warmup=1, sync=sync)
    failures.update(timed.failures)
    report_failures(failures)
    ok = [k for k in variants if names[k] in timed.summaries]
    rows = {}
    print(f"{args.family} {args.layers} layers, batch {args.batch_size} x {args.seq_len}, {args.dtype}, {args.device}")
    print(f"{'checkpointing':>16s} {'activation MiB':>15s} {'saved':>7s} {'peak MiB':>9s} "
          f"{'step s (min/median/max)':>26s} {'time x':>7s}")
    base = 0 if 0 in ok else None
    base_mem = mem[0][0] if base is not None else None
    base_t = timed.summaries["off"].median if base is not None else None
    for k in ok:
        t = timed.summaries[names[k]]
        act, peak = mem[k]
        rows[k] = {"activation_bytes": act, "activation_saving": (1 - act / base_mem) if base_mem else None,
                   "peak_bytes": peak, "step_s": t.median, "step_s_min": t.min, "step_s_max": t.max,
                   "time_ratio": (t.median / base_t) if base_t else None}
        name = "off" if k == 0 else f"every {k}"
        saved = f"{100 * rows[k]['activation_saving']:6.1f}%" if base_mem else "      —"
        ratio = f"{rows[k]['time_ratio']:7.2f}" if base_t else "      —"
        spread = f"{t.min:.3f}/{t.median:.3f}/{t.max:.3f}"
        print(f"{name:>16s} {act / 2**20:15.1f} {saved} {peak / 2**20:9.1f} {spread:>26s} {ratio}")
    result = {"benchmark": "activation_memory", "family": args.family, "layers": args.layers,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "dtype": args.dtype, "device": args.device,
              "rounds": args.rounds, "results": {names[k]: v for k, v in rows.items()}, "failures": failures}
    # the house line: the densest checkpointing asked for against none (ratio = times less activation memory)
    dense = [v for v in ok if v]
    if base_mem is not None and dense:
        ours = rows[min(dense)]["activation_bytes"]
        result.update(ours=ours, reference=base_mem, ratio=base_mem / max(ours, 1), unit="activation bytes")
    elif base_mem is not None:
        result.update(ours=base_mem, reference=base_mem, ratio=1.0, unit="activation bytes")
    else:
        result.update(ours=None, reference=None, ratio=None, unit="activation bytes")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
