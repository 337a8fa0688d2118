"""The cubic sparsity schedule of gradual pruning: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3.

Zhu & Gupta 2017, "To prune, or not to prune", eq. (1); used for BERT by Gordon et al. 2020 ("Compressing BERT") and,
as the schedule of the kept fraction / the score threshold, by Sanh et al. 2020 (movement pruning). The ramp prunes
fast while many redundant weights remain and slowly near the target, leaving the network time to recover.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptmkit.config import ConfigError


def check_fraction(where: str, name: str, value: float) -> None:
    """A sparsity (or a threshold on sigmoid scores) is a fraction in [0, 1): 1 would remove every weight."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{where}: {name} must be a fraction in [0, 1) (0 = dense; 1 would remove every weight), "
                          f"got {value}; e.g. 0.9 keeps one weight in ten")


@dataclass
class CubicSchedule:
    """A value (sparsity, or soft movement's threshold) ramped from `initial` at step `start` to `final` at step
    `end` (t0 + n dt in Zhu & Gupta's notation), changed every `every` steps (their dt) and at `end`."""

    final: float  # s_f
    end: int  # the step at which `final` is reached (t0 + n dt)
    initial: float = 0.0  # s_i (Zhu & Gupta: usually 0)
    start: int = 0  # t0
    every: int = 100  # dt: Zhu & Gupta prune every 100-1000 steps so the network recovers in between

    def __post_init__(self) -> None:
        check_fraction("pruning schedule", "initial", self.initial)
        check_fraction("pruning schedule", "final", self.final)
        if self.final < self.initial:
            raise ConfigError(f"pruning schedule: final {self.final} is below initial {self.initial}; the cubic "
                              "schedule only rises (pruned weights stay pruned): swap them or set final >= initial")
        if self.start < 0:
            raise ConfigError(f"pruning schedule: start must be a step >= 0, got {self.start}")
        if self.end < self.start:
            raise ConfigError(f"pruning schedule: end (step {self.end}) is before start (step {self.start}); the ramp "
                              "runs from start to end: set end >= start (end == start prunes once, at start)")
        if self.every < 1:
            raise ConfigError(f"pruning schedule: every must be >= 1 step, got {self.every}")

    def value(self, step: int) -> float:
        """Zhu & Gupta eq. (1) at `step`: `initial` up to `start`, `final` from `end` on."""
        if step >= self.end:
            return self.final
        if step <= self.start:
            return self.initial
        remaining = 1.0 - (step - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * remaining ** 3

    def updates_at(self, step: int) -> bool:
        """The steps t0, t0 + dt, ... at which the mask changes, and `end`, where `final` must be reached even when
        dt does not divide the span."""
        return self.start <= step <= self.end and ((step - self.start) % self.every == 0 or step == self.end)

    def level(self, step: int) -> float:
        """The value in force at `step`: the value of the last update step at or before it (`initial` before
        `start`). Methods that recompute their masks at every step (movement pruning) follow this."""
        if step < self.start:
            return self.initial
        last = min(self.start + (step - self.start) // self.every * self.every, self.end)
        return self.value(self.end if step >= self.end else last)
