"""Quantisation (survey §6.3) on torchao: post-training int8 dynamic / int8 and int4 weight-only / static int8 with
calibration, Q8BERT quantisation-aware training, and Q-BERT Hessian-guided mixed precision, each a model transform
`quantize(model, name, cfg)` on the Linear layers of the Transformer blocks (or the targets named), registered in
QUANTIZERS; quantised models save to and load from model directories (io.py states the format).

    model = quantize(model, "int8-dynamic")
    model = quantize(model, "static-int8", batches=calibration_batches)
    model = quantize(model, "qbert", {"budget": 4}, batches=batches, loss_fn=objective.loss)
    model = quantize(model, "qat-int8"); train(model, objective, ...); convert(model)
    report(model).weight_bits; save_quantized(model, "out/int8"); load_quantized("out/int8")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ptmkit.compress.quant import _torchao  # noqa: F401,I001  (first: torchao imported quietly)
from ptmkit.compress.quant import _cpu_int8  # noqa: F401,I001  (an exact fast int8 product where torch lacks one)
from ptmkit.compress.quant import dynamic, qat, qbert, static, ternary, weight_only
from ptmkit.compress.quant.base import DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, integer_bits, report
from ptmkit.compress.quant.hessian import hutchinson_traces
from ptmkit.compress.quant.io import disk_size, load_quantized, quantization_config, save_quantized
from ptmkit.compress.quant.qbert import allocate_bits
from ptmkit.config import ConfigError, from_dict


@dataclass(frozen=True)
class Quantizer:
    name: str
    config: type
    apply: Callable[..., nn.Module]  # apply(model, cfg, **needs) -> the same model, quantised in place
    citation: str
    weight_bits: int | None  # the width every target gets; None = chosen per layer (Q-BERT)
    activation_bits: int | None  # int8 activations at run time; None = fp32
    needs: tuple[str, ...] = ()  # run-time inputs: "batches" (calibration / Hessian data), "loss_fn"
    convert: Callable[[nn.Module], nn.Module] | None = None  # QAT: after training, to the real integer model


QUANTIZERS: dict[str, Quantizer] = {
    "int8-dynamic": Quantizer("int8-dynamic", dynamic.Int8DynamicConfig, dynamic.apply, "Jacob et al. 2018", 8, 8),
    "int8-weight": Quantizer("int8-weight", weight_only.Int8WeightConfig, weight_only.apply_int8,
                             "Jacob et al. 2018", 8, None),
    "int4-weight": Quantizer("int4-weight", weight_only.Int4WeightConfig, weight_only.apply_int4,
                             "Frantar et al. 2023; Lin et al. 2024", 4, None),
    "static-int8": Quantizer("static-int8", static.StaticInt8Config, static.apply, "Jacob et al. 2018; Wu et al. 2020",
                             8, 8, needs=("batches",)),
    "qat-int8": Quantizer("qat-int8", qat.QATConfig, qat.apply, "Zafrir et al. 2019", 8, 8, convert=qat.convert),
    "qbert": Quantizer("qbert", qbert.QBertConfig, qbert.apply, "Shen et al. 2020; Dong et al. 2020", None, 8,
                       needs=("batches", "loss_fn")),
    "ternary": Quantizer("ternary", ternary.TernaryConfig, ternary.apply, "Zhang et al. 2020 (TernaryBERT); Li et al. "
                         "2016 (TWN)", 2, 8, convert=ternary.convert),
}


def convert(model: nn.Module) -> nn.Module:
    """After training a method that trains (qat-int8, ternary): the real integer model, with the scales training
    simulated; the method is read from the model's record."""
    rec = report(model)
    q = QUANTIZERS.get(rec.method)
    if q is None or q.convert is None:
        raise ConfigError(f"convert: {rec.method} has nothing to convert (only methods that train with fake "
                          f"quantisation do: {sorted(n for n, x in QUANTIZERS.items() if x.convert)})")
    return q.convert(model)


def quantizer(name: str) -> Quantizer:
    if name not in QUANTIZERS:
        raise ConfigError(f"unknown quantisation method {name!r}; choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[name]


def make_config(name: str, values: dict[str, Any] | None = None):
    """The method's config from a dict (YAML / overrides); unknown keys are errors."""
    return from_dict(quantizer(name).config, dict(values or {}), where=name)


def quantize(model: nn.Module, name: str, cfg: Any = None, **inputs: Any) -> nn.Module:
    """Apply quantiser `name` in place (cfg: its config object, a dict, or None for the defaults). `inputs` are the
    run-time data the method needs (Quantizer.needs): batches=..., loss_fn=...; missing or unused ones are errors."""
    q = quantizer(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = make_config(name, cfg)
    if not isinstance(cfg, q.config):
        raise ConfigError(f"{name}: expected a {q.config.__name__}, got {type(cfg).__name__}")
    missing = [k for k in q.needs if inputs.get(k) is None]
    unused = sorted(k for k, v in inputs.items() if v is not None and k not in q.needs)
    if missing:
        raise ConfigError(f"{name} needs {', '.join(missing)}: pass "
                          + ", ".join(f"{k}=..." for k in missing)
                          + " (batches: an iterable of model-input dicts; loss_fn(model, batch) -> loss, e.g. an "
                          "objective's loss)")
    if unused:
        raise ConfigError(f"{name} takes no {', '.join(unused)} "
                          f"(it needs {list(q.needs) or 'nothing beyond the model'})")
    return q.apply(model, cfg, **{k: inputs[k] for k in q.needs})


__all__ = [
    "DEFAULT_EXCLUDE", "DEFAULT_TARGETS", "QUANTIZERS", "QuantRecord", "Quantizer", "allocate_bits", "convert",
    "disk_size", "hutchinson_traces", "integer_bits", "load_quantized", "make_config", "quantization_config",
    "quantize", "quantizer", "report", "save_quantized",
]
