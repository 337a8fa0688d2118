"""Run logging: metrics.jsonl (one JSON object per line, flushed), a tqdm progress bar with ETA, and a
loss / learning-rate plot (PNG) in the run directory."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ptmkit import atomic
from ptmkit.log import get

log = get(__name__)


class MetricsLogger:
    """Append-only metrics file. Reopening a run (resume) truncates entries past the resumed step, so the
    file always describes one consistent history."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic.write_text(self.path, "".join(line + "\n" for line in kept))
        self._f = self.path.open("a")

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (or of the one in a run directory). A cut-off last line (what a kill or a full
    disk leaves mid-write) is dropped with a warning; a bad line elsewhere is an error naming file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                log.warning("%s: dropping its cut-off last line %d (%s)", path, i + 1, e.msg)
                break
            raise ValueError(f"{path}, line {i + 1}: not a JSON record ({e.msg}); the file is damaged: delete that "
                             "line to continue") from None
    return records


def progress(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, disable=not enabled,
                file=sys.stderr, smoothing=0.1, mininterval=0.5)


def plot_run(run_dir: str | Path, title: str | None = None) -> Path | None:
    """Write loss.png: training loss (and eval loss when present) against step, lr on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    train = [r for r in records if r.get("split", "train") == "train" and r.get("loss") is not None]
    evals = [r for r in records if r.get("split") == "eval" and r.get("loss") is not None]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss", color="tab:blue")
    if evals:
        ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss", color="tab:red")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in train):
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in train], [r.get("lr", math.nan) for r in train], color="tab:gray", lw=0.8,
                 ls="--", label="lr")
        ax2.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.set_title(title or run_dir.name)
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out
