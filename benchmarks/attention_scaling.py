"""Attention kernels vs sequence length: forward+backward time and peak memory of one attention call, against
dense SDPA (and eager), for every kernel registered in ptmkit.nn.ATTENTION (issue 6 target: every sub-quadratic
kernel beats dense SDPA in time and memory from 4,096 tokens on).

One call = kernel(q, k, v) with B = 1, H heads of dimension D (no projections), then backward of a fixed random
output gradient, each kernel with its default options (a kernel with a `max_len` option gets the length).
Time: all kernels of one length take turns inside each round (the order rotates every round), after one warm-up
call each; min / median / max of the rounds are kept and the median is reported. A kernel whose options do not apply
at a length (a ConfigError, e.g. a window wider than the sequence) is reported as not applicable there; any other
error is a failure: reported by name with its error, kept in the JSON, and the command exits 1.
Memory: on CPU each (kernel, length) runs in a fresh subprocess that allocates its inputs, runs one warm-up call,
resets its peak resident set size (/proc/self/clear_refs), runs one call and reads the peak (VmHWM of
/proc/self/status): peak minus the RSS just before the call is every byte the call touched — saved activations,
gradients of q/k/v, fused-kernel scratch buffers, allocator overhead — where a tensor tracker would miss what SDPA's
fused kernel allocates below the dispatcher. Large blocks are mmap-allocated (MALLOC_MMAP_THRESHOLD_) so freed
memory is returned, not invisibly recycled. On CUDA: max_memory_allocated above the inputs.
The scaling exponent is the least-squares slope of log(time) and log(memory) vs log(length) over the largest
three lengths a kernel ran at (2 = quadratic, 1 = linear).

    .venv/bin/python benchmarks/attention_scaling.py                              # 512 .. 8192, fp32, CPU
    .venv/bin/python benchmarks/attention_scaling.py --lengths 512 1024 2048 4096 8192 16384 --dtype bfloat16
    .venv/bin/python benchmarks/attention_scaling.py --device cuda --dtype bfloat16 --lengths 1024 4096 16384
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import alternate, error_text, report_failures  # noqa: E402

from ptmkit.config import ConfigError  # noqa: E402
from ptmkit.nn import ATTENTION, AttentionConfig  # noqa: E402

REFERENCE = "sdpa"
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--kernels", nargs="*", default=None, help="kernel names (default: all of ptmkit.nn.ATTENTION)")
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192],
                   help="sequence lengths (add 16384 for the long end: sdpa alone takes ~1 min per call on 1 core)")
    p.add_argument("--heads", type=int, default=8, help="query = key/value heads")
    p.add_argument("--head-dim", type=int, default=64, help="D")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="inputs and kernel weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda (memory: max_memory_allocated on cuda)")
    p.add_argument("--causal", action="store_true", help="decoder attention (kernels not defined for it skipped)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per length (kernels alternate inside)")
    p.add_argument("--long-from", type=int, default=8192, help="lengths from here on get --long-rounds rounds")
    p.add_argument("--long-rounds", type=int, default=2, help="rounds at the long lengths")
    p.add_argument("--eager-max", type=int, default=4096,
                   help="skip eager above this length (O(T^2) scores in fp32: 8192 would hold ~2 GiB per tensor)")
    p.add_argument("--dense-max", type=int, default=16384, help="skip sdpa above this length")
    p.add_argument("--options", default="{}", help='JSON {"kernel": {option: value}} overriding defaults')
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", default="docs/attention_scaling.json", help="full results ('' to skip)")
    p.add_argument("--plot", default="docs/attention_scaling.png", help="log-log plot ('' to skip)")
    p.add_argument("--table", default="", help="also write the markdown table to this file")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: "kernel,length"
    return p.parse_args(argv)


def kernel_options(name: str, length: int, overrides: dict) -> dict:
    opts = dict(overrides.get(name, {}))
    fields = {f.name for f in dataclasses.fields(ATTENTION[name].Options)}
    if "max_len" in fields and "max_len" not in opts:
        opts["max_len"] = length  # e.g. Linformer's projections are sized for the longest sequence
    return opts


def build(name: str, length: int, args, overrides: dict):
    cfg = AttentionConfig(args.heads * args.head_dim, args.heads, kernel=name,
                          kernel_options=kernel_options(name, length, overrides))
    torch.manual_seed(0)
    return ATTENTION[name](cfg).to(device=args.device, dtype=getattr(torch, args.dtype))  # its parameters, if any


def inputs(length: int, args):
    g = torch.Generator(device="cpu").manual_seed(length)
    dtype = getattr(torch, args.dtype)
    shape = (1, args.heads, length, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(args.device, dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=g).to(args.device, dtype)
    return q, k, v, grad


def call(kernel, q, k, v, grad, causal: bool) -> None:
    out = kernel(q, k, v, None, causal, 0.0, q.shape[-1] ** -0.5)  # (B, H, T, D)
    out.backward(grad)
    q.grad = k.grad = v.grad = None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def skip_reason(name: str, length: int, args) -> str | None:
    if args.causal and not ATTENTION[name].causal:
        return "not defined for causal attention"
    if name == "eager" and length > args.eager_max:
        return f"skipped above --eager-max {args.eager_max}"
    if name == REFERENCE and length > args.dense_max:
        return f"skipped above --dense-max {args.dense_max}"
    return None


def status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}: the CPU memory measurement needs Linux")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); without it the peak still counts from process start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_child(args) -> None:
    """Run in a fresh process: peak memory of one call above the allocated inputs; prints one JSON line."""
    name, length = args.memory_child.split(",")
    length = int(length)
    overrides = json.loads(args.options)
    kernel = build(name, length, args, overrides)
    q, k, v, grad = inputs(length, args)
    call(kernel, q, k, v, grad, args.causal)  # warm-up: libraries, JIT-compiled code, the kernel's cached layout
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call(kernel, q, k, v, grad, args.causal)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
        reset_peak_rss()
        base = status_bytes("VmRSS")
        call(kernel, q, k, v, grad, args.causal)
        peak = status_bytes("VmHWM") - base
    print(json.dumps({"peak_bytes": int(peak)}))


def measure_memory(name: str, length: int, args) -> int:
    cmd = [sys.executable, __file__, "--memory-child", f"{name},{length}", "--heads", str(args.heads),
           "--head-dim", str(args.head_dim), "--dtype", args.dtype, "--device", args.device,
           "--options", args.options] + (["--causal"] if args.causal else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode:
        last = run.stderr.strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
        raise RuntimeError(f"memory child failed: {last[0]}")
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_bytes"]


def slope(xs, ys) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def exponents(rows: dict, name: str, key: str) -> float | None:
    pts = sorted((t, r[key]) for t, r in rows[name].items() if r.get(key))
    pts = pts[-3:]
    return slope([p[0] for p in pts], [p[1] for p in pts])


def plot(results: dict, lengths: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, rows in results.items():
        xs = [t for t in lengths if rows.get(t, {}).get("time_s")]
        if not xs:
            continue
        style = dict(marker="o", lw=2.5 if ATTENTION[name].kind == "dense" else 1.5,
                     ls="--" if ATTENTION[name].kind == "dense" else "-")
        axes[0].plot(xs, [rows[t]["time_s"] for t in xs], label=name, **style)
        xm = [t for t in xs if rows[t].get("peak_bytes")]
        if xm:
            axes[1].plot(xm, [rows[t]["peak_bytes"] / 2**20 for t in xm], label=name, **style)
    for ax, ylabel in zip(axes, ["forward + backward time (s)", "peak memory of the call (MiB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(results: dict, lengths: list[int], exps: dict) -> str:
    lines = ["| kernel | kind | " + " | ".join(f"{t:,}" for t in lengths) + " | time exp. | memory exp. |",
             "|---|---|" + "---|" * len(lengths) + "---|---|"]
    ref = results.get(REFERENCE, {})
    for name, rows in results.items():
        cells = []
        for t in lengths:
            r = rows.get(t, {})
            if not r.get("time_s"):
                cells.append(r.get("skipped", "—"))
                continue
            cell = f"{1e3 * r['time_s']:,.0f} ms"
            if ref.get(t, {}).get("time_s") and name != REFERENCE:
                cell += f" ({ref[t]['time_s'] / r['time_s']:.2f}×)"
            if r.get("peak_bytes"):
                cell += f"<br>{r['peak_bytes'] / 2**20:,.0f} MiB"
                if ref.get(t, {}).get("peak_bytes") and name != REFERENCE:
                    cell += f" ({ref[t]['peak_bytes'] / r['peak_bytes']:.2f}×)"
            cells.append(cell)
        te, me = exps[name]["time"], exps[name]["memory"]
        lines.append(f"| {name} | {ATTENTION[name].kind} | " + " | ".join(cells)
                     + f" | {'—' if te is None else f'{te:.2f}'} | {'—' if me is None else f'{me:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    overrides = json.loads(args.options)
    names = args.kernels or list(ATTENTION)
    if REFERENCE not in names:
        names = [REFERENCE, *names]
    lengths = sorted(args.lengths)
    results: dict[str, dict[int, dict]] = {n: {} for n in names}
    failures: list[dict] = []  # errors other than "these options do not apply at this length"
    started = time.perf_counter()
    print(f"attention call, B=1 H={args.heads} D={args.head_dim} {args.dtype} {args.device} "
          f"{'causal' if args.causal else 'bidirectional'}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for length in lengths:
        q, k, v, grad = inputs(length, args)
        kernels = {}
        for name in names:
            reason = skip_reason(name, length, args)
            if reason is None:
                try:
                    kernels[name] = build(name, length, args, overrides)
                    call(kernels[name], q, k, v, grad, args.causal)  # warm-up (also: does it run at this length?)
                except ConfigError as e:  # these options do not apply at this length: reported in the table
                    kernels.pop(name, None)
                    reason = f"not applicable: {error_text(e)[:140]}"
                    print(f"  {name} at {length}: {reason}", file=sys.stderr)
                except Exception as e:  # noqa: BLE001  (a failure: reported, the other kernels still run)
                    kernels.pop(name, None)
                    reason = f"error: {error_text(e)[:140]}"
                    failures.append({"kernel": name, "length": length, "error": error_text(e)})
                    report_failures({name: error_text(e)}, f"T={length}")
            if reason:
                results[name][length] = {"skipped": reason}
        rounds = args.long_rounds if length >= args.long_from else args.rounds
        calls = {n: (lambda kern=kern: call(kern, q, k, v, grad, args.causal)) for n, kern in kernels.items()}
        timed = alternate(calls, rounds, sync=lambda: sync(args.device))
        for name, err in timed.failures.items():
            results[name][length] = {"skipped": f"error: {err[:140]}"}
            failures.append({"kernel": name, "length": length, "error": err})
            report_failures({name: err}, f"T={length}")
        for name, t in timed.summaries.items():
            results[name][length] = {"time_s": t.median, "time_s_min": t.min, "time_s_max": t.max, "rounds": rounds}
        del kernels, calls, timed, q, k, v, grad
        ref = results[REFERENCE][length].get("time_s")
        print(f"T={length:>6}: " + "  ".join(
            f"{n} {1e3 * results[n][length]['time_s']:.0f}ms"
            f" [{1e3 * results[n][length]['time_s_min']:.0f}-{1e3 * results[n][length]['time_s_max']:.0f}]"
            + (f" ({ref / results[n][length]['time_s']:.2f}x)" if ref and n != REFERENCE else "")
            for n in names if results[n][length].get("time_s")) + f"   [{time.perf_counter() - started:.0f}s]",
              flush=True)
    if not args.no_memory:
        for length in lengths:
            for name in names:
                if results[name][length].get("time_s"):
                    try:
                        results[name][length]["peak_bytes"] = measure_memory(name, length, args)
                    except Exception as e:  # noqa: BLE001  (reported by name; the table shows no memory)
                        results[name][length]["peak_bytes"] = None
                        failures.append({"kernel": name, "length": length, "error": f"memory: {error_text(e)}"})
                        report_failures({name: f"memory: {error_text(e)}"}, f"T={length}")
            ref = results[REFERENCE][length].get("peak_bytes")
            print(f"T={length:>6} peak MiB: " + "  ".join(
                f"{n} {results[n][length]['peak_bytes'] / 2**20:.0f}"
                + (f" ({ref / results[n][length]['peak_bytes']:.2f}x)" if ref and n != REFERENCE else "")
                for n in names if results[n][length].get("peak_bytes")) + f"   [{time.perf_counter() - started:.0f}s]",
                  flush=True)
    exps = {n: {"time": exponents(results, n, "time_s"), "memory": exponents(results, n, "peak_bytes")}
            for n in names}
    print("scaling exponents (slope of log-log over the largest 3 lengths): " + ", ".join(
        f"{n} time {e['time']:.2f}" + (f" mem {e['memory']:.2f}" if e["memory"] is not None else "")
        for n, e in exps.items() if e["time"] is not None))
    md = table(results, lengths, exps)
    print(md)
    title = (f"attention fwd+bwd, B=1 H={args.heads} D={args.head_dim} {args.dtype} {args.device}, "
             f"{torch.get_num_threads()} threads")
    if args.plot:
        plot(results, lengths, args.plot, title)
    if args.table:
        Path(args.table).write_text(md + "\n")
    # the house line: at 4,096 tokens (the threshold) the slowest sub-quadratic kernel against dense SDPA
    at = 4096 if 4096 in lengths else lengths[-1]
    ref_t = results[REFERENCE].get(at, {}).get("time_s")
    sparse = {n: results[n][at]["time_s"] for n in names
              if ATTENTION[n].kind != "dense" and results[n].get(at, {}).get("time_s")}
    worst = max(sparse, key=sparse.get) if sparse else None
    result = {"benchmark": "attention_scaling", "heads": args.heads, "head_dim": args.head_dim, "dtype": args.dtype,
              "device": args.device, "causal": args.causal, "threads": torch.get_num_threads(),
              "lengths": lengths, "options": overrides,
              "results": {n: {str(t): r for t, r in rows.items()} for n, rows in results.items()},
              "exponents": exps, "failures": failures, "ours": sparse.get(worst), "reference": ref_t,
              "ratio": (ref_t / sparse[worst]) if worst and ref_t else None, "kernel": worst, "at_length": at,
              "unit": "s per forward+backward; ratio = sdpa / the slowest sub-quadratic kernel"}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "results"}))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main().get("failures") else 0)
