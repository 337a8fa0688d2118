"""Keep-best: after each evaluation, save the model when an eval metric improves (fine-tuning keeps the best dev
score, not the last). Its state travels in the training checkpoints, so a resumed run still knows the best so far."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ptmkit.config import ConfigError


@dataclass
class KeepBest:
    metric: str  # a key of the evaluation's metrics, e.g. accuracy, matthews, loss
    save: Callable[[nn.Module, int], None]  # writes the best model (called with the model and the step)
    higher_is_better: bool = True
    value: float | None = None
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # models before this step are not candidates: a model pruned on a schedule counts only once it has reached its
    # final sparsity (an earlier, denser one would often score better and is not the model asked for)
    from_step: int = 0

    def update(self, step: int, metrics: dict[str, Any], model: nn.Module) -> bool:
        """Save and return True when `metrics[self.metric]` beats the best so far."""
        if self.metric not in metrics:
            raise ConfigError(f"keep-best: the evaluation reports {sorted(metrics)}, not {self.metric!r}")
        if step < self.from_step:
            return False
        value = float(metrics[self.metric])
        if math.isnan(value):
            return False
        better = self.value is None or (value > self.value if self.higher_is_better else value < self.value)
        if better:
            self.value, self.step, self.metrics = value, step, dict(metrics)
            self.save(model, step)
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "step": self.step, "metrics": self.metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("metric") != self.metric:
            raise ConfigError(f"the checkpoint kept the best {state.get('metric')!r}; this run keeps {self.metric!r}")
        self.value, self.step, self.metrics = state["value"], state["step"], dict(state.get("metrics") or {})
