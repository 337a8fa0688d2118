"""Shared timing for benchmarks/: run the candidates (ours, the reference, kernels, configurations) in an order
that rotates every round, summarise each as min / median / max, and keep every failure (name + error) instead of
dropping the candidate silently.

Why rotate: this machine's speed drifts (shared cores, thermal and frequency changes, caches warmed by whoever ran
just before), so a fixed order would charge the drift to one side. Rotating the order by one each round puts every
candidate in every position equally often (for two candidates: they alternate who goes first).

    from _timing import alternate, report_failures
    t = alternate({"ours": lambda: ours(x), "reference": lambda: ref(x)}, rounds=5, warmup=1)
    report_failures(t.failures)
    print(t.summaries["ours"].format(), t.ratio("reference", "ours"))

Benchmarks are scripts, not a package: each adds its own directory to sys.path before `import _timing`.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")


def round_order(items: Sequence[T], r: int) -> list[T]:
    """Round r's order: `items` rotated left by r (two items alternate who goes first)."""
    items = list(items)
    if not items:
        return items
    k = r % len(items)
    return items[k:] + items[:k]


def error_text(e: BaseException) -> str:
    """'TypeName: first line of the message' (at most 200 characters), for tables and JSON."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


@dataclass
class Summary:
    """Seconds of each timed repeat of one candidate."""

    times: list[float]

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def as_dict(self, scale: float = 1e3, digits: int = 3) -> dict[str, float | int]:
        """{"min", "median", "max"} in seconds x scale (default: milliseconds), and "n" repeats."""
        return {"min": round(self.min * scale, digits), "median": round(self.median * scale, digits),
                "max": round(self.max * scale, digits), "n": len(self.times)}

    def format(self, unit: str = "ms") -> str:
        """'12.1 / 12.4 / 13.0 ms (min / median / max of 5)'."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        a, b, c = (_num(v * scale) for v in (self.min, self.median, self.max))
        return f"{a} / {b} / {c} {unit} (min / median / max of {len(self.times)})"


def _num(v: float) -> str:
    """12,143.4 / 12.1 / 1.21 / 0.0342: three significant digits below 10, one decimal above."""
    return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"


@dataclass
class Timings:
    """What `alternate` measured: a Summary per candidate that finished every round, an error per candidate that
    raised (its partial times are discarded), and each finished candidate's last return value."""

    summaries: dict[str, Summary] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def ratio(self, reference: str, ours: str) -> float | None:
        """reference median / ours median: > 1 means ours is faster. None when either side failed."""
        if reference not in self.summaries or ours not in self.summaries:
            return None
        return self.summaries[reference].median / self.summaries[ours].median


def alternate(candidates: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: int = 0,
              sync: Callable[[], None] | None = None) -> Timings:
    """Call every candidate `warmup` times untimed, then once per round for `rounds` rounds, the order rotating
    every round; `sync` (e.g. torch.cuda.synchronize) runs before the clock starts and before it stops.

    A candidate that raises (in warm-up or in a round) is recorded in `failures` with its error and not called
    again; the others carry on. Nothing is dropped without a trace: callers print the failures (report_failures)
    and put them into their result JSON."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    out = Timings()
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in round_order(names, r):
            if name in out.failures:
                continue
            try:
                if sync is not None:
                    sync()
                t0 = time.perf_counter()
                value = candidates[name]()
                if sync is not None:
                    sync()
                dt = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001  (reported, never swallowed)
                out.failures[name] = error_text(e)
                continue
            if r >= warmup:
                times[name].append(dt)
            out.results[name] = value
    for name in names:
        if name not in out.failures:
            out.summaries[name] = Summary(times[name])
        else:
            out.results.pop(name, None)
    return out


def report_failures(failures: Mapping[str, str], context: str = "", file=None) -> None:
    """One 'FAILED name: error' line per failure (on stderr unless told otherwise)."""
    file = sys.stderr if file is None else file
    where = f" ({context})" if context else ""
    for name, err in failures.items():
        print(f"FAILED {name}{where}: {err}", file=file, flush=True)
