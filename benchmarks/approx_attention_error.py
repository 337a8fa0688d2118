"""How close is each approximate attention kernel to dense attention, and at what cost? (reference: eager softmax)

For every kernel of kind "approximate" in ptmkit.nn.ATTENTION, on random q, k, v whose logits have a chosen standard
deviation (1 = diffuse attention, 2 = peaked), prints the relative Frobenius error of its output against exact
softmax attention, the error of uniform attention (the mean of the visible values) as the trivial baseline, and its
forward time as a ratio to SDPA at the same shape. The kernels are untrained: learned parts (Linformer's
projections) are at their initialisation, so this measures the estimator, not a trained model.

    python benchmarks/approx_attention_error.py                       # T = 512 and 2048, head dim 32
    python benchmarks/approx_attention_error.py --lengths 4096 --options '{"performer": {"num_features": 512}}'
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ptmkit.nn import ATTENTION, AttentionConfig
from ptmkit.nn.attention import eager_kernel, sdpa_kernel

# the long-context study's settings (experiments/long_context.py); Linformer projects to a quarter of T
OPTIONS = {"performer": {"num_features": 128, "seed": 0},
           "linear": {"chunk": 128}, "lsh": {"n_buckets": 16, "n_hashes": 2, "chunk_len": 64, "seed": 0}}


def best_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", default="512,2048", help="comma list of sequence lengths T")
    p.add_argument("--logit-std", default="1,2", help="comma list of logit standard deviations")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--head-dim", type=int, default=32, help="head dimension D")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--options", default="{}", help="JSON overriding a kernel's options (merged over OPTIONS)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = json.loads(args.options)
    names = sorted(n for n, k in ATTENTION.items() if k.kind == "approximate")
    h, d, b = args.heads, args.head_dim, args.batch
    rows = []
    print(f"{'kernel':<10} {'T':>5} {'std':>4} {'mode':<13} {'error':>7} {'uniform':>8} {'time vs sdpa':>13}  options")
    for t in (int(x) for x in args.lengths.split(",")):
        for std in (float(x) for x in args.logit_std.split(",")):
            g = torch.Generator().manual_seed(0)
            # entries of variance std give logits q.k / sqrt(D) of standard deviation std
            q = torch.randn(b, h, t, d, generator=g) * std ** 0.5
            k = torch.randn(b, h, t, d, generator=g) * std ** 0.5
            v = torch.randn(b, h, t, d, generator=g)
            for causal in (False, True):
                want = eager_kernel(q, k, v, None, causal, 0.0, d ** -0.5)
                uniform = v.cumsum(2) / torch.arange(1, t + 1)[:, None] if causal else v.mean(2, True).expand_as(v)
                base = (uniform - want).norm() / want.norm()
                ref = best_time(lambda: sdpa_kernel(q, k, v, None, causal, 0.0, d ** -0.5), args.repeats)
                for name in names:
                    opts = {**OPTIONS.get(name, {}), **extra.get(name, {})}
                    if name == "linformer" and "linformer" not in extra:
                        opts = {"proj_len": t // 4, "max_len": t}  # a quarter of the sequence
                    kernel = ATTENTION[name](AttentionConfig(h * d, h, kernel=name, kernel_options=opts)).eval()
                    if causal and not kernel.causal:
                        continue
                    with torch.no_grad():
                        got = kernel(q, k, v, None, causal, 0.0, d ** -0.5)
                        secs = best_time(lambda: kernel(q, k, v, None, causal, 0.0, d ** -0.5), args.repeats)
                    err = float((got - want).norm() / want.norm())
                    mode = "causal" if causal else "bidirectional"
                    rows.append({"kernel": name, "T": t, "logit_std": std, "mode": mode, "error": err,
                                 "uniform_error": float(base), "time_vs_sdpa": secs / ref, "options": opts})
                    print(f"{name:<10} {t:>5} {std:>4g} {mode:<13} {err:>7.3f} {float(base):>8.3f} "
                          f"{secs / ref:>12.1f}x  {opts}", flush=True)
    # the house result line: the worst approximation against the trivial estimator (uniform attention) on its inputs
    worst = max(rows, key=lambda r: r["error"] / r["uniform_error"])
    print(json.dumps({"benchmark": "approx_attention_error", "ours": worst["error"], "reference": worst["uniform_error"],
                      "ratio": worst["error"] / worst["uniform_error"], "kernel": worst["kernel"], "T": worst["T"],
                      "mode": worst["mode"], "rows": rows,
                      "unit": "relative Frobenius error vs dense attention; ratio = worst kernel error / uniform "
                              "attention's error (below 1 = better than uniform)"}))
    return rows


if __name__ == "__main__":
    main()
