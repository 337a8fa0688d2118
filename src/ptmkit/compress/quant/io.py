"""Quantised model directories: config.json + model.safetensors, the model directory layout, with integer weights.

Format (quantization_config.format_version 1):
  config.json        the model's Hugging Face config (as save_model writes it) plus "quantization_config":
                     {"quant_method": "ptmkit", "method", "weight_bits" (per module), "activation_bits", "group_size",
                      "average_bits", "config" (the quantiser's), "modules": {module: its tensor layout},
                      "torchao_version", "torch_version", "format_version"}
  model.safetensors  every unquantised tensor under its ptmkit state-dict name, fp as in the model; for each
                     quantised Linear `<module>.weight.qdata` (int8, or uint8 holding 8/b packed b-bit values, see
                     packing.py), `.scale` (fp32, one per row / group / tensor), `.zero_point` (only when not all
                     zero), `.act_scale` (static activation scale).
Tensor names are ptmkit's, not Hugging Face's: a converter's splits and permutations (fused qkv, rotary row order)
do not commute with group-wise integer layouts, and transformers cannot run these layouts anyway (its torchao
loader reads pickled tensor subclasses, which ptmkit never writes or reads: safetensors only). quant_method "ptmkit"
makes transformers refuse the directory instead of misreading it.

The integer layouts and kernels belong to one torchao version (the tensor classes changed layout between 0.x
releases), so loading under another version than the one recorded is an error naming the version to install.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torchao
from safetensors.torch import save_file
from torch import nn
from torchao.quantization import Int8Tensor, IntxUnpackedToInt8Tensor, MappingType, PerRow, PerTensor
from torchao.quantization.quantize_.workflows import QuantizeTensorToInt8Kwargs
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    IntxUnpackedToInt8TensorActivationQuantization,
)
from torchao.utils import TorchAOBaseTensor

from ptmkit import atomic
from ptmkit.compress.quant.base import QuantRecord, register, report
from ptmkit.compress.quant.packing import pack, unpack
from ptmkit.config import ConfigError
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.io import base_state_dict, hf_state_dict, init_model, read_weights

FORMAT_VERSION = 1
QUANT_METHOD = "ptmkit"
INT_BITS = {getattr(torch, f"int{b}"): b for b in range(1, 9)}  # torch.int1 ... torch.int8
GRANULARITY = {"per_tensor": PerTensor, "per_row": PerRow}


# ---------------------------------------------------------------------------------------------- tensor layouts

def _granularity_name(g) -> str:
    if isinstance(g, PerTensor):
        return "per_tensor"
    if isinstance(g, PerRow) and g.dim == -1:
        return "per_row"
    raise ConfigError(f"quantised save: activation granularity {g} has no ptmkit layout (per_tensor, per_row)")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def encode(t: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torchao weight tensor -> (plain tensors to store, its layout for config.json)."""
    if isinstance(t, Int8Tensor):
        kw = t.act_quant_kwargs
        if (t.act_pre_scale is not None or t.act_quant_zero_point is not None or t.reduce_range
                or (kw is not None and (kw.mapping_type != MappingType.SYMMETRIC or kw.reduce_range))):
            raise ConfigError("quantised save: this Int8Tensor uses options ptmkit's quantisers never set (activation "
                              "pre-scale, asymmetric or reduced-range activations); quantise with ptmkit's methods")
        tensors = {"qdata": t.qdata, "scale": t.scale}
        if t.zero_point is not None and bool(t.zero_point.any()):
            tensors["zero_point"] = t.zero_point
        if t.act_quant_scale is not None:
            tensors["act_scale"] = t.act_quant_scale
        act = None if kw is None else {"granularity": _granularity_name(kw.granularity),
                                       "static": t.act_quant_scale is not None}
        return tensors, {"layout": "int8", "bits": 8, "shape": list(t.shape), "block_size": list(t.block_size),
                         "dtype": str(t.dtype), "activation": act,
                         "zero_point_shape": None if t.zero_point is None else list(t.zero_point.shape)}
    if isinstance(t, IntxUnpackedToInt8Tensor):
        bits = INT_BITS[t.target_dtype]
        tensors = {"qdata": pack(t.qdata, bits), "scale": t.scale}
        if bool(t.zero_point.any()):
            tensors["zero_point"] = t.zero_point
        act = t.activation_quantization  # torchao keeps the enum's value (a str) or the enum itself
        act = None if act is None else str(getattr(act, "value", act))
        return tensors, {"layout": "intx", "bits": bits, "shape": list(t.shape), "block_size": list(t.block_size),
                         "dtype": str(t.dtype), "activation": act, "zero_point_dtype": str(t.zero_point.dtype)}
    raise ConfigError(f"quantised save: no ptmkit layout for {type(t).__name__}; quantise with a method of "
                      "ptmkit.compress.quant.QUANTIZERS")


def decode(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
    """Inverse of encode: the torchao tensor, bit for bit."""
    shape, dtype, block = tuple(meta["shape"]), _dtype(meta["dtype"]), list(meta["block_size"])
    scale = tensors["scale"]
    if meta["layout"] == "int8":
        act = meta["activation"]
        kwargs = None if act is None else QuantizeTensorToInt8Kwargs(granularity=GRANULARITY[act["granularity"]](),
                                                                    mapping_type=MappingType.SYMMETRIC)
        zp_shape = meta["zero_point_shape"]
        zero_point = tensors.get("zero_point")
        if zero_point is None and zp_shape is not None:
            zero_point = torch.zeros(zp_shape, dtype=torch.int8)
        return Int8Tensor(tensors["qdata"].reshape(shape), scale, block, dtype, zero_point=zero_point,
                          act_quant_scale=tensors.get("act_scale"), act_quant_kwargs=kwargs)
    if meta["layout"] == "intx":
        bits = meta["bits"]
        zero_point = tensors.get("zero_point")
        if zero_point is None:
            zero_point = torch.zeros(scale.shape, dtype=_dtype(meta["zero_point_dtype"]))
        act = meta["activation"]
        return IntxUnpackedToInt8Tensor(unpack(tensors["qdata"], bits, shape), scale, zero_point,
                                        getattr(torch, f"int{bits}"), block, dtype,
                                        None if act is None else IntxUnpackedToInt8TensorActivationQuantization(act))
    raise CheckpointError(f"unknown quantised tensor layout {meta['layout']!r}; was it written by a newer ptmkit?")


# ---------------------------------------------------------------------------------------------- directories

def _hf_config(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """config.json as save_model writes it. hf_state_dict builds it together with the converted tensors, so it is
    given shape-only (meta) tensors: the conversion costs nothing and its output is dropped."""
    meta = {k: torch.empty(v.shape, dtype=torch.float32 if isinstance(v, TorchAOBaseTensor) else v.dtype,
                           device="meta") for k, v in state.items()}
    return hf_state_dict(model, state=meta)[0]


def _storage_key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a quantised model (any QUANTIZERS method; QAT after `convert`) as a model directory; returns it."""
    rec = report(model)
    if rec.extra.get("stage") == "fake-quant":
        raise ConfigError("save: the model is still fake-quantised (qat-int8 before convert); call "
                          "ptmkit.compress.quant.convert(model) to get the int8 model, then save it")
    path = Path(path)
    state = base_state_dict(model)  # delta-tuning parameters are never part of the base weights
    hf_config = _hf_config(model, state)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict[str, Any]] = {}
    seen: set[tuple] = set()
    for name, t in state.items():
        if isinstance(t, TorchAOBaseTensor):
            module = name.removesuffix(".weight")
            enc, modules[module] = encode(t)
            tensors.update({f"{name}.{k}": v for k, v in enc.items()})
            continue
        key = _storage_key(t)
        if key in seen:  # a tied weight (LM head = input embedding): stored once, re-tied by the model's build
            continue
        seen.add(key)
        tensors[name] = t
    hf_config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "method": rec.method,
        "weight_bits": rec.weight_bits, "activation_bits": rec.activation_bits, "group_size": rec.group_size,
        "average_bits": rec.average_bits, "config": rec.config, "modules": modules, "extra": rec.extra,
        "torchao_version": torchao.__version__, "torch_version": torch.__version__,
    }
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic.atomic_path(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_text(path / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return path


def quantization_config(path: str | os.PathLike) -> dict[str, Any]:
    """The quantization_config of a directory; one without it (or from another tool) is an error."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a model directory?")
    qc = json.loads((path / "config.json").read_text()).get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        found = None if not isinstance(qc, dict) else qc.get("quant_method")
        raise ConfigError(f"{path} is not a ptmkit quantised model (quantization_config.quant_method is {found!r}); "
                          "load an fp32 directory with ptmkit.models.load_model")
    if qc.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: quantised format version {qc.get('format_version')} is not {FORMAT_VERSION}; "
                          "load it with the ptmkit release that wrote it")
    if qc["torchao_version"] != torchao.__version__:
        raise ConfigError(f"{path} was quantised with torchao {qc['torchao_version']} but this environment has "
                          f"torchao {torchao.__version__}; the integer layouts belong to one version: install it "
                          f"(pip install torchao=={qc['torchao_version']}) or quantise the fp32 model again here")
    return qc


def load_quantized(path: str | os.PathLike) -> nn.Module:
    """Build the model config.json describes and load its integer and fp tensors; returns it in eval mode."""
    path = Path(path)
    qc = quantization_config(path)
    model = init_model(path)  # the architecture; every tensor is replaced below
    fresh = model.state_dict()
    first: dict[tuple, str] = {}
    tied = {n for n, t in fresh.items() if first.setdefault(_storage_key(t), n) != n}
    state = read_weights(path)
    modules: dict[str, dict[str, Any]] = qc["modules"]
    quantised = {f"{m}.weight" for m in modules}
    plain = {k: v for k, v in state.items() if not any(k.startswith(q + ".") for q in quantised)}
    result = model.load_state_dict(plain, strict=False)
    missing = sorted(set(result.missing_keys) - quantised - tied)
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: tensors do not fit the model config.json describes"
                              + (f"\n  missing: {missing}" if missing else "")
                              + (f"\n  unexpected: {result.unexpected_keys}" if result.unexpected_keys else "")
                              + "\n  save the directory again with save_quantized")
    for module, meta in modules.items():
        prefix = f"{module}.weight."
        enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        linear = model.get_submodule(module)
        if tuple(linear.weight.shape) != tuple(meta["shape"]):
            raise CheckpointError(f"{path}: {module} is {tuple(linear.weight.shape)} in the model but "
                                  f"{tuple(meta['shape'])} in the file")
        linear.weight = nn.Parameter(decode(enc, meta), requires_grad=False)
    numel = {m: int(torch.Size(meta["shape"]).numel()) for m, meta in modules.items()}
    register(model, QuantRecord(qc["method"], qc["config"], qc["weight_bits"], qc["activation_bits"],
                                qc["group_size"], numel, qc.get("extra") or {}))
    return model.eval()


def disk_size(path: str | os.PathLike) -> int:
    """Bytes of the files of a model directory (what it costs to store and ship)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
