"""How close is each approximate attention kernel to dense attention, and at what cost? (reference: eager softmax)

For every kernel of kind "approximate" in ptmkit.nn.ATTENTION, on random q, k, v whose logits have a chosen standard
deviation (1 = diffuse attention, 2 = peaked), prints the relative Frobenius error of its output against exact
softmax attention, the error of uniform attention (the mean of the visible values) as the trivial baseline, and its
forward time as a ratio to SDPA at the same shape (SDPA and the kernels of one setting are timed in an order that
rotates every repeat; min / median / max are kept, the ratio uses medians). The kernels are untrained: learned
parts (Linformer's projections) are at their initialisation, so this measures the estimator, not a trained model.
A kernel that fails to build or run is reported with its error (and the command exits 1), never skipped silently.

    python benchmarks/approx_attention_error.py                       # T = 512 and 2048, head dim 32
    python benchmarks/approx_attention_error.py --lengths 4096 --options '{"performer": {"num_features": 512}}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, error_text, report_failures  # noqa: E402

from ptmkit.nn import ATTENTION, AttentionConfig  # noqa: E402
from ptmkit.nn.attention import eager_kernel, sdpa_kernel  # noqa: E402

# the long-context study's settings (experiments/long_context.py); Linformer projects to a quarter of T
OPTIONS = {"performer": {"num_features": 128, "seed": 0},
           "linear": {"chunk": 128}, "lsh": {"n_buckets": 16, "n_hashes": 2, "chunk_len": 64, "seed": 0}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lengths", default="512,2048", help="comma list of sequence lengths T")
    p.add_argument("--logit-std", default="1,2", help="comma list of logit standard deviations")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--head-dim", type=int, default=32, help="head dimension D")
    p.add_argument("--batch", type=int, default=2, help="batch size")
    p.add_argument("--options", default="{}", help="JSON overriding a kernel's options (merged over OPTIONS)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (min/median/max kept)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--kernels", default="", help="comma list of approximate kernels (default: all registered)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    extra = json.loads(args.options)
    names = sorted(n for n, k in ATTENTION.items() if k.kind == "approximate")
    if args.kernels:
        wanted = [n for n in args.kernels.split(",") if n]
        bad = [n for n in wanted if n not in names]
        if bad:
            p.error(f"--kernels: {bad} are not approximate kernels; choose from {names}")
        names = wanted
    h, d, b = args.heads, args.head_dim, args.batch
    rows, failures = [], []
    print(f"{'kernel':<10} {'T':>5} {'std':>4} {'mode':<13} {'error':>7} {'uniform':>8} {'time vs sdpa':>13} "
          f"{'ms min/median/max':>20}  options")
    for t in (int(x) for x in args.lengths.split(",")):
        for std in (float(x) for x in args.logit_std.split(",")):
            g = torch.Generator().manual_seed(0)
            # entries of variance std give logits q.k / sqrt(D) of standard deviation std
            q = torch.randn(b, h, t, d, generator=g) * std ** 0.5
            k = torch.randn(b, h, t, d, generator=g) * std ** 0.5
            v = torch.randn(b, h, t, d, generator=g)
            for causal in (False, True):
                mode = "causal" if causal else "bidirectional"
                want = eager_kernel(q, k, v, None, causal, 0.0, d ** -0.5)
                uniform = v.cumsum(2) / torch.arange(1, t + 1)[:, None] if causal else v.mean(2, True).expand_as(v)
                base = (uniform - want).norm() / want.norm()
                calls = {"sdpa": lambda causal=causal: sdpa_kernel(q, k, v, None, causal, 0.0, d ** -0.5)}
                errors, used = {}, {}
                for name in names:
                    opts = {**OPTIONS.get(name, {}), **extra.get(name, {})}
                    if name == "linformer" and "linformer" not in extra:
                        opts = {"proj_len": t // 4, "max_len": t}  # a quarter of the sequence
                    try:
                        kernel = ATTENTION[name](AttentionConfig(h * d, h, kernel=name, kernel_options=opts)).eval()
                        if causal and not kernel.causal:
                            continue  # not defined for causal attention: no row, by definition
                        with torch.no_grad():
                            got = kernel(q, k, v, None, causal, 0.0, d ** -0.5)
                    except Exception as e:  # noqa: BLE001  (reported below, the other kernels still run)
                        failures.append({"kernel": name, "T": t, "logit_std": std, "mode": mode,
                                         "error": error_text(e)})
                        continue
                    errors[name] = float((got - want).norm() / want.norm())
                    used[name] = opts
                    calls[name] = lambda kernel=kernel, causal=causal: kernel(q, k, v, None, causal, 0.0, d ** -0.5)
                with torch.no_grad():
                    timed = alternate(calls, args.repeats, warmup=1)
                for name, err in timed.failures.items():
                    failures.append({"kernel": name, "T": t, "logit_std": std, "mode": mode, "error": err})
                ref = timed.summaries.get("sdpa")
                for name in errors:
                    if name not in timed.summaries:
                        continue
                    st = timed.summaries[name]
                    ratio = st.median / ref.median if ref else None
                    rows.append({"kernel": name, "T": t, "logit_std": std, "mode": mode, "error": errors[name],
                                 "uniform_error": float(base), "time_vs_sdpa": ratio, "time_ms": st.as_dict(),
                                 "sdpa_ms": ref.as_dict() if ref else None, "options": used[name]})
                    spread = f"{st.min * 1e3:.1f}/{st.median * 1e3:.1f}/{st.max * 1e3:.1f}"
                    shown = f"{ratio:>12.1f}x" if ratio is not None else f"{'—':>13}"
                    print(f"{name:<10} {t:>5} {std:>4g} {mode:<13} {errors[name]:>7.3f} {float(base):>8.3f} "
                          f"{shown} {spread:>20}  {used[name]}", flush=True)
    for f in failures:
        report_failures({f["kernel"]: f["error"]}, f"T={f['T']} std={f['logit_std']:g} {f['mode']}")
    # the house result line: the worst approximation against the trivial estimator (uniform attention) on its inputs
    result = {"benchmark": "approx_attention_error", "rows": rows, "failures": failures,
              "unit": "relative Frobenius error vs dense attention; ratio = worst kernel error / uniform "
                      "attention's error (below 1 = better than uniform)"}
    if rows:
        worst = max(rows, key=lambda r: r["error"] / r["uniform_error"])
        result.update(ours=worst["error"], reference=worst["uniform_error"],
                      ratio=worst["error"] / worst["uniform_error"], kernel=worst["kernel"], T=worst["T"],
                      mode=worst["mode"])
    else:
        result.update(ours=None, reference=None, ratio=None)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main()["failures"] else 0)
