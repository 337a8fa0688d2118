"""The registry of delta-tuning methods: one entry per method, with its config, its transform and, where PEFT has
the method, PEFT's name for it (the adapter files use it). Strings name methods only at the CLI/YAML boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ptmkit.adapt import base, bitfit, bottleneck, feature, ia3, lora, prefix, prompt
from ptmkit.config import ConfigError, from_dict


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    apply: Callable[[nn.Module, Any], nn.Module]
    attr: str  # the attribute name of its Delta children
    citation: str
    mergeable: bool = False
    peft_type: str | None = None  # PEFT's peft_type; None = saved in the same layout under "PTMKIT_<NAME>"
    identity_at_init: bool = True  # a fresh method leaves the model's outputs unchanged (zero / identity init)
    bake: Callable[[nn.Module], nn.Module] | None = None  # drops a training-only reparameterisation, same outputs
    extra_attrs: tuple[str, ...] = ()  # other attribute names of its Delta children (prefix: the model-level encoder)


METHODS: dict[str, Method] = {
    "lora": Method("lora", lora.LoRAConfig, lora.apply, lora.ATTR, "Hu et al. 2021", True, "LORA"),
    "ia3": Method("ia3", ia3.IA3Config, ia3.apply, ia3.ATTR, "Liu et al. 2022", True, "IA3"),
    "bitfit": Method("bitfit", bitfit.BitFitConfig, bitfit.apply, bitfit.ATTR, "Ben Zaken et al. 2022", True),
    "houlsby": Method("houlsby", bottleneck.HoulsbyConfig, bottleneck.apply_houlsby, bottleneck.ATTR,
                      "Houlsby et al. 2019"),
    "pfeiffer": Method("pfeiffer", bottleneck.PfeifferConfig, bottleneck.apply_pfeiffer, bottleneck.ATTR,
                       "Pfeiffer et al. 2021"),
    "prefix": Method("prefix", prefix.PrefixConfig, prefix.apply, prefix.ATTR, "Li & Liang 2021",
                     peft_type="PREFIX_TUNING", identity_at_init=False, bake=prefix.bake,
                     extra_attrs=(prefix.ENCODER,)),
    "ptuning-v2": Method("ptuning-v2", prefix.PTuningV2Config, prefix.apply_ptuning_v2, prefix.ATTR,
                         "Liu et al. 2022", peft_type="PREFIX_TUNING", identity_at_init=False,
                         extra_attrs=(prefix.ENCODER,)),
    "prompt": Method("prompt", prompt.PromptConfig, prompt.apply, prompt.ATTR, "Lester et al. 2021",
                     peft_type="PROMPT_TUNING", identity_at_init=False),
    "ptuning": Method("ptuning", prompt.PTuningConfig, prompt.apply_ptuning, prompt.ATTR, "Liu et al. 2021",
                      peft_type="PROMPT_TUNING", identity_at_init=False, bake=prompt.bake),
    "feature": Method("feature", feature.FeatureConfig, feature.apply, feature.ATTR, "Peters et al. 2018",
                      identity_at_init=False),
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown delta-tuning method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def make_config(name: str, values: dict[str, Any] | None = None):
    """The method's config from a dict (YAML / --method.key overrides); unknown keys are errors."""
    return from_dict(method(name).config, dict(values or {}), where=name)


def apply(model: nn.Module, name: str, cfg: Any = None) -> nn.Module:
    """Apply method `name` to `model` in place (cfg: its config object, a dict, or None for the defaults)."""
    m = method(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = make_config(name, cfg)
    return m.apply(model, cfg)


def merge(model: nn.Module) -> nn.Module:
    """Fold every applied method into the base weights; a non-mergeable method is an error naming it."""
    names = list(base.applied(model))
    if not names:
        raise ConfigError("merge: this model carries no delta-tuning method")
    stuck = [n for n in names if not METHODS[n].mergeable]
    if stuck:
        raise ConfigError(f"merge: {', '.join(stuck)} cannot be merged into the base weights (a non-linear module, "
                          "not a change of weights); keep the adapter beside the base model and load both")
    # The forward pass is out_n(...out_1(W in(x))): output-side changes compose in the order they were applied
    # (their hooks run in that order), input-side ones (IA3 on a feed-forward input) scale the columns of all of it.
    for n in names:
        base.merge(model, METHODS[n].attr, "output")
    for n in names:
        base.merge(model, METHODS[n].attr, "input")
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take every merged change out again, exactly in reverse of merge's order."""
    names = [n for n in base.applied(model) if METHODS[n].mergeable]
    for n in reversed(names):
        base.unmerge(model, METHODS[n].attr, "input")
    for n in reversed(names):
        base.unmerge(model, METHODS[n].attr, "output")
    return model


def _merged(model: nn.Module) -> list[str]:
    return [n for n in base.applied(model) if any(d.merged for _, _, d in base.deltas(model, METHODS[n].attr))]


def bake(model: nn.Module) -> nn.Module:
    """Drop every training-only reparameterisation (prefix-tuning's MLP, P-tuning's prompt encoder): the outputs
    stay the same and only the computed prefixes/prompts remain (the form adapters are saved in)."""
    for n in base.applied(model):
        if METHODS[n].bake is not None:
            METHODS[n].bake(model)
    return model


def remove(model: nn.Module, name: str) -> nn.Module:
    """Take method `name` out of the model: its hooks and parameters (merged changes are unmerged first)."""
    applied = getattr(model, base.APPLIED, {}) or {}
    if name not in applied:
        raise ConfigError(f"remove: {name} is not applied to this model (applied: {sorted(applied) or 'none'})")
    merged = _merged(model)
    if merged:  # merges compose: take them all out, then put the others back
        unmerge(model)
    for attr in (METHODS[name].attr, *METHODS[name].extra_attrs):
        for _, module, _ in list(base.deltas(model, attr)):
            base.detach(module, attr)
    del applied[name]
    if [n for n in merged if n != name]:
        merge(model)
    return model
