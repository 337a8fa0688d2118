"""Adapters on disk in PEFT's layout: adapter_config.json + adapter_model.safetensors (tensors under
"base_model.model.<module>"), beside — never inside — the base model's directory.

LoRA and IA3 are written as PEFT writes them, under the Hugging Face module names of the exported base model, so
`peft.PeftModel.from_pretrained(transformers_model, path)` runs them; PEFT adapters load back the same way. ptmkit's
fused projections are split and re-fused exactly (hf_names measures the mapping): a LoRA on ptmkit's q and v parts
becomes PEFT's q_proj and v_proj LoRAs, and on GPT-2's fused c_attn one LoRA of summed rank (rank_pattern and
alpha_pattern keep its scaling). Methods PEFT lacks, and families with no Hugging Face form, use the same two files
under ptmkit's own module names and a peft_type of "PTMKIT_<METHOD>". A sidecar ptmkit_adapter.json records the
method's ptmkit config and the base model's family and sizes, so loading onto another base model is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ptmkit import atomic
from ptmkit.adapt import base, ia3, lora, prefix, prompt
from ptmkit.adapt.hf_names import HFSlice, hf_slices
from ptmkit.adapt.methods import METHODS, make_config
from ptmkit.config import ConfigError, to_dict
from ptmkit.log import get as get_logger
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.io import hf_adapter
from ptmkit.models.registry import backbone_of, task_of

log = get_logger(__name__)

CONFIG, WEIGHTS, SIDECAR = "adapter_config.json", "adapter_model.safetensors", "ptmkit_adapter.json"
ORDER = "ptmkit_adapters.json"  # several methods: their subdirectories in the order applied (hooks compose in it)
PREFIX = "base_model.model."
SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size")


def _base_description(model: nn.Module) -> dict[str, Any]:
    bb = backbone_of(model)
    return {"family": bb.family, **{k: getattr(bb.config, k) for k in SHAPE_KEYS if hasattr(bb.config, k)}}


def _write(path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], sidecar: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic.atomic_path(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_text(path / CONFIG, json.dumps(config, indent=2) + "\n")
    atomic.write_text(path / SIDECAR, json.dumps(sidecar, indent=2) + "\n")


def _rows_of(delta: base.Delta, part: str, out_features: int) -> torch.Tensor:
    rows = getattr(delta, f"rows_{part}", None)
    return torch.arange(out_features) if rows is None else rows.cpu()


# ----------------------------------------------------------------------------------------------------- LoRA

def _lora_to_peft(model: nn.Module, cfg: lora.LoRAConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    sites = {name: (module, delta) for name, module, delta in base.deltas(model, lora.ATTR)}
    slices = hf_slices(model, list(sites))
    tensors: dict[str, torch.Tensor] = {}
    targets, rank_pattern, alpha_pattern, fan_in_fan_out = [], {}, {}, False
    for name, (module, delta) in sites.items():
        if not slices[name]:
            raise ConfigError(f"adapter export: {name} has no weight of its own in the Hugging Face checkpoint (a "
                              "tied output layer); leave it out of the LoRA targets")
        for sl in slices[name]:
            a_blocks, b_blocks = [], []
            for part in delta.parts:
                position = {int(r): i for i, r in enumerate(_rows_of(delta, part, module.out_features))}
                hit = [position.get(int(r)) for r in sl.rows]
                if all(h is None for h in hit):
                    continue  # this HF module is not a target (k_proj when LoRA is on q and v)
                b = torch.zeros(len(sl.rows), delta.B[part].shape[1], dtype=delta.B[part].dtype)
                for i, h in enumerate(hit):
                    if h is not None:
                        b[i] = delta.B[part][h].detach().cpu()
                a_blocks.append(delta.A[part].detach().cpu()[:, sl.cols])
                b_blocks.append(b)
            if not a_blocks:
                continue
            a = torch.cat(a_blocks)  # (R', I): parts sharing one HF module stack their ranks
            b = _stack_columns(b_blocks)  # (O, R')
            tensors[f"{PREFIX}{sl.hf_name}.lora_A.weight"] = a
            tensors[f"{PREFIX}{sl.hf_name}.lora_B.weight"] = b
            targets.append(sl.hf_name)
            fan_in_fan_out |= sl.transposed
            if a.shape[0] != cfg.rank:  # keep scaling = alpha / r for the stacked rank
                rank_pattern[sl.hf_name] = a.shape[0]
                ratio = a.shape[0] / cfg.rank
                alpha_pattern[sl.hf_name] = cfg.alpha * (ratio ** 0.5 if cfg.rslora else ratio)
    config = {
        "peft_type": "LORA", "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(targets), "use_rslora": cfg.rslora, "fan_in_fan_out": fan_in_fan_out,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "bias": "none", "task_type": None,
        "inference_mode": True,
    }
    return config, tensors


def _stack_columns(blocks: list[torch.Tensor]) -> torch.Tensor:
    """B matrices of parts that share one HF module, side by side: each part's rows live in its own rank block
    (rows outside a part are zero there), so B' A' = sum over parts of B_p A_p."""
    return torch.cat(blocks, dim=1)  # (O, sum R)


def _lora_from_peft(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    by_hf = _split_keys(tensors, (".lora_A.weight", ".lora_B.weight"))
    candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _in_delta(model, n)]
    located = _locate(model, candidates, by_hf)
    cfg = lora.LoRAConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                          dropout=float(config.get("lora_dropout", 0.0)), rslora=bool(config.get("use_rslora")),
                          targets=sorted({n for n, _ in located.values()}))
    base.register(model, "lora", cfg)
    for mname, slices in _group(located).items():
        module = model.get_submodule(mname)
        parts = {f"p{i}": sl.rows for i, (sl, _) in enumerate(slices)}
        delta = lora.LoRA(module, parts, cfg)
        for i, (sl, hf) in enumerate(slices):
            a, b = by_hf[hf][".lora_A.weight"], by_hf[hf][".lora_B.weight"]
            r = a.shape[0]
            _check_shape(hf + ".lora_A.weight", a, None, len(sl.cols))
            _check_shape(hf + ".lora_B.weight", b, len(sl.rows), r)
            alpha = float(config.get("alpha_pattern", {}).get(_pattern_key(config, "alpha_pattern", hf),
                                                              config["lora_alpha"]))
            scale = alpha / (r ** 0.5 if cfg.rslora else r)
            inverse = torch.empty_like(sl.cols)
            inverse[sl.cols] = torch.arange(len(sl.cols))
            like = module.weight
            delta.A[f"p{i}"] = nn.Parameter(a[:, inverse].to(like.dtype).to(like.device))  # ptmkit column order
            delta.B[f"p{i}"] = nn.Parameter((b * (scale / cfg.scaling)).to(like.dtype).to(like.device))
        base.attach(base.Site(mname, module), lora.ATTR, delta)


def _pattern_key(config: dict[str, Any], key: str, hf: str) -> str:
    """PEFT's rank/alpha patterns are keyed by a name suffix (or regex); take the entry whose key ends `hf`."""
    for k in config.get(key, {}) or {}:
        if hf == k or hf.endswith("." + k):
            return k
    return hf


# ----------------------------------------------------------------------------------------------------- IA3

def _ia3_to_peft(model: nn.Module, cfg: ia3.IA3Config) -> tuple[dict, dict[str, torch.Tensor]]:
    sites = {name: (module, delta) for name, module, delta in base.deltas(model, ia3.ATTR)}
    slices = hf_slices(model, list(sites))
    tensors, targets, feedforward = {}, [], []
    for name, (module, delta) in sites.items():
        if not slices[name]:
            raise ConfigError(f"adapter export: {name} has no weight of its own in the Hugging Face checkpoint; "
                              "leave it out of the IA3 targets")
        for sl in slices[name]:
            if delta.hook == "input":
                vec = delta.scale.detach().cpu()[sl.cols][None, :]  # (1, I)
                feedforward.append(sl.hf_name)
            else:
                full = delta.full_scale(module.out_features).detach().cpu()
                if delta.rows is not None and not torch.isin(sl.rows, delta.rows.cpu()).any():
                    continue  # q_proj when IA3 scales k and v
                vec = full[sl.rows][:, None]  # (O, 1)
            tensors[f"{PREFIX}{sl.hf_name}.ia3_l"] = vec
            targets.append(sl.hf_name)
    config = {"peft_type": "IA3", "target_modules": sorted(targets), "feedforward_modules": sorted(feedforward),
              "fan_in_fan_out": any(sl.transposed for s in slices.values() for sl in s), "task_type": None,
              "init_ia3_weights": True, "inference_mode": True}
    return config, tensors


def _ia3_from_peft(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    by_hf = _split_keys(tensors, (".ia3_l",))
    candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _in_delta(model, n)]
    located = _locate(model, candidates, by_hf)
    feedforward = set(config.get("feedforward_modules") or [])
    ff = {hf for hf in by_hf if any(hf == f or hf.endswith("." + f) for f in feedforward)}
    names = sorted({n for n, _ in located.values()})
    cfg = ia3.IA3Config(targets=names, feedforward=sorted({located[h][0] for h in ff}))
    base.register(model, "ia3", cfg)
    for mname, slices in _group(located).items():
        module = model.get_submodule(mname)
        is_ff = slices[0][1] in ff
        like = module.weight
        if is_ff:
            if len(slices) != 1:
                raise ConfigError(f"adapter load: feed-forward IA3 on {mname} comes from several modules")
            sl, hf = slices[0]
            _check_shape(hf + ".ia3_l", by_hf[hf][".ia3_l"].reshape(1, -1), 1, len(sl.cols))
            delta = ia3.IA3(module, None, True)
            vec = torch.empty(module.in_features)
            vec[sl.cols] = by_hf[hf][".ia3_l"].flatten().float()
        else:
            for sl, hf in slices:
                _check_shape(hf + ".ia3_l", by_hf[hf][".ia3_l"].reshape(-1, 1), len(sl.rows), 1)
            rows = torch.cat([sl.rows for sl, _ in slices])
            delta = ia3.IA3(module, rows, False)
            vec = torch.cat([by_hf[hf][".ia3_l"].flatten().float() for _, hf in slices])
        with torch.no_grad():
            delta.scale.copy_(vec.to(like.dtype))
        base.attach(base.Site(mname, module), ia3.ATTR, delta)


# ----------------------------------------------------------------------------------------------------- prefix

TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS", "token-classification": "TOKEN_CLS",
              "seq2seq-lm": "SEQ_2_SEQ_LM"}


def _task_type(model: nn.Module) -> str:
    return TASK_TYPES.get(task_of(model), "FEATURE_EXTRACTION")


def _prefix_to_peft(model: nn.Module, cfg: prefix.PrefixConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT keeps only the prefix table (its reparameterisation MLP is not saved): ours is baked the same way."""
    hf_adapter(model)  # PEFT needs the transformers form of the base model
    encoder = getattr(model, prefix.ENCODER)
    sites = [d for _, _, d in base.deltas(model, prefix.ATTR)]
    bb = backbone_of(model)
    if not bb.causal:
        # transformers' encoders start the positions after PEFT's prefix (the cache length); ptmkit's encoders
        # keep theirs, so the two would differ: kept in ptmkit's own layout
        raise CheckpointError("PEFT's encoder prefixes shift the token positions; ptmkit's do not")
    attention = [m for m in bb.modules() if isinstance(m, prefix.SelfAttention)]
    if len(sites) != len(attention):
        raise CheckpointError(f"the prefix covers {len(sites)} of {len(attention)} self-attention layers; PEFT's "
                              "covers them all")
    with torch.no_grad():
        table = encoder.compute().detach().cpu()  # (P, L*2*K*D)
    config = {"peft_type": "PREFIX_TUNING", "task_type": _task_type(model), "num_virtual_tokens": table.shape[0],
              "token_dim": encoder.kv_dim, "num_layers": encoder.layers, "num_attention_heads": sites[0].heads,
              "num_transformer_submodules": 1, "prefix_projection": False, "inference_mode": True}
    return config, {"prompt_embeddings": table}


def _prefix_from_peft(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    table = tensors.get("prompt_embeddings")
    if table is None or table.dim() != 2:
        raise ConfigError("adapter load: a PREFIX_TUNING adapter holds one 2-D tensor, prompt_embeddings")
    if not backbone_of(model).causal:
        raise ConfigError("adapter load: PEFT's prefix for an encoder shifts the token positions by the prefix "
                          "length and ptmkit's encoders do not, so it would not give PEFT's outputs; prefixes are "
                          "exchanged with PEFT for decoders (use a ptmkit-saved prefix for encoders)")
    cfg = prefix.PTuningV2Config(num_virtual_tokens=table.shape[0])
    prefix.apply_ptuning_v2(model, cfg)
    encoder = getattr(model, prefix.ENCODER)
    _check_shape("prompt_embeddings", table, table.shape[0], encoder.embedding.weight.shape[1])
    with torch.no_grad():
        encoder.embedding.weight.copy_(table.to(encoder.embedding.weight.dtype))


# ----------------------------------------------------------------------------------------------------- prompt

def _prompt_to_peft(model: nn.Module, cfg: prompt.PromptConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """PEFT keeps the prompt itself (P-tuning's encoder is not saved): both methods write the prompt they compute."""
    hf_adapter(model)
    site = getattr(backbone_of(model), prompt.ATTR)
    with torch.no_grad():
        table = site.prompt().detach().cpu()  # (P, E)
    cfg_bb = backbone_of(model).config
    config = {"peft_type": "PROMPT_TUNING", "task_type": _task_type(model), "num_virtual_tokens": table.shape[0],
              "token_dim": table.shape[1], "num_layers": cfg_bb.num_layers, "num_attention_heads": cfg_bb.num_heads,
              "num_transformer_submodules": 1, "prompt_tuning_init": "RANDOM", "inference_mode": True}
    return config, {"prompt_embeddings": table}


def _prompt_from_peft(model: nn.Module, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    table = tensors.get("prompt_embeddings")
    if table is None or table.dim() != 2:
        raise ConfigError(f"adapter load: a {config.get('peft_type')} adapter holds one 2-D tensor, prompt_embeddings")
    prompt.apply(model, prompt.PromptConfig(num_virtual_tokens=table.shape[0]))
    site = getattr(backbone_of(model), prompt.ATTR)
    _check_shape("prompt_embeddings", table, table.shape[0], site.embedding.shape[1])
    with torch.no_grad():
        site.embedding.copy_(table.to(site.embedding.dtype))


# ----------------------------------------------------------------------------------------------------- shared

def _in_delta(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    m = model
    for p in parts[:-1]:
        m = getattr(m, p)
        if getattr(m, "is_delta", False):
            return True
    return False


def _split_keys(tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if suffix is None or not key.startswith(PREFIX):
            raise ConfigError(f"adapter load: unexpected tensor {key!r} (expected {PREFIX}<module>{suffixes[0]})")
        out.setdefault(key[len(PREFIX): -len(suffix)], {})[suffix] = t
    return out


def _locate(model: nn.Module, candidates: list[str], by_hf: dict[str, Any]) -> dict[str, tuple[str, HFSlice]]:
    """HF module name -> (ptmkit module, slice) for every module the adapter file names."""
    where = {sl.hf_name: (name, sl) for name, sls in hf_slices(model, candidates).items() for sl in sls}
    strays = sorted(set(by_hf) - set(where))
    if strays:
        raise ConfigError(f"adapter load: the adapter names {strays[0]}, which this {backbone_of(model).family} "
                          f"model does not have (e.g. it has {sorted(where)[:3]}); was it trained on another base "
                          "model? Load it onto the model it was trained on")
    return {hf: where[hf] for hf in by_hf}


def _group(located: dict[str, tuple[str, HFSlice]]) -> dict[str, list[tuple[HFSlice, str]]]:
    groups: dict[str, list[tuple[HFSlice, str]]] = {}
    for hf, (name, sl) in sorted(located.items()):
        groups.setdefault(name, []).append((sl, hf))
    return groups


def _check_shape(hf: str, got: torch.Tensor, rows: int | None, cols: int | None) -> None:
    """A tensor of the adapter file against the HF module it names: a base model of another size is an error."""
    want = (rows if rows is not None else got.shape[0], cols if cols is not None else got.shape[1])
    if got.dim() != 2 or tuple(got.shape) != want:
        raise ConfigError(f"adapter load: {hf} has shape {tuple(got.shape)} but this model needs {want}; the adapter "
                          "was trained on a base model of another size: load it onto that model")


def _owned(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The parameters method `name` added: those of its Delta children (the prefix's model-level encoder too)."""
    attrs = {METHODS[name].attr, *METHODS[name].extra_attrs}
    return {k: v for k, v in base.delta_parameters(model).items() if attrs & set(k.split("."))}


WRITERS = {"lora": _lora_to_peft, "ia3": _ia3_to_peft, "prefix": _prefix_to_peft, "ptuning-v2": _prefix_to_peft,
           "prompt": _prompt_to_peft, "ptuning": _prompt_to_peft}
# PEFT saves P-tuning's prompt, not its encoder: read, it is a prompt-tuning prompt
READERS = {"LORA": _lora_from_peft, "IA3": _ia3_from_peft, "PREFIX_TUNING": _prefix_from_peft,
           "PROMPT_TUNING": _prompt_from_peft, "P_TUNING": _prompt_from_peft}


def save_adapter(model: nn.Module, path: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write every delta method on `model` as an adapter directory (several methods: one subdirectory each).
    `base_model`: the base model's directory, recorded as base_model_name_or_path; the adapter never goes there."""
    path = Path(path)
    methods = base.applied(model)
    if not methods:
        raise ConfigError("save_adapter: this model carries no delta-tuning method (apply one with ptmkit.adapt)")
    if base_model is not None and path.resolve() == Path(base_model).resolve():
        raise ConfigError(f"save_adapter: {path} is the base model's directory; write the adapter elsewhere (the "
                          "base weights are never overwritten)")
    if any(getattr(d, "merged", False) for _, _, d in base.deltas(model)):
        raise ConfigError("save_adapter: the adapter is merged into the weights; unmerge it first (ptmkit.adapt."
                          "unmerge) or save the merged model with save_model")
    for name, cfg in methods.items():
        where = path / name if len(methods) > 1 else path
        config, tensors = None, None
        if name in WRITERS:
            try:
                config, tensors = WRITERS[name](model, cfg)
            except CheckpointError as e:  # no Hugging Face form: PEFT could not load it anyway
                log.info("%s: saving %s under ptmkit names (%s)", where, name, e)
        if config is None:
            config = {"peft_type": f"PTMKIT_{name.upper()}", "task_type": None, "inference_mode": True}
            tensors = {PREFIX + k: v for k, v in _owned(model, name).items()}
        config["base_model_name_or_path"] = None if base_model is None else str(base_model)
        sidecar = {"method": name, "config": to_dict(cfg), "base": _base_description(model)}
        _write(where, config, tensors, sidecar)
    if len(methods) > 1:
        atomic.write_text(path / ORDER, json.dumps({"order": list(methods)}, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the adapter saved in `path` (by ptmkit or by PEFT) to `model`, in place."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        subdirs = sorted(p for p in path.iterdir() if (p / CONFIG).is_file()) if path.is_dir() else []
        if (path / ORDER).is_file():  # applied in the order they were trained in: their hooks compose in it
            subdirs = [path / n for n in json.loads((path / ORDER).read_text())["order"]]
        if not subdirs:
            raise FileNotFoundError(f"{path} has no {CONFIG}: is it an adapter directory?")
        for sub in subdirs:
            load_adapter(model, sub)
        return model
    config = json.loads((path / CONFIG).read_text())
    sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).is_file() else None
    if sidecar is not None:
        want, have = sidecar["base"], _base_description(model)
        diff = {k: (want[k], have.get(k)) for k in want if have.get(k) != want[k]}
        if diff:
            raise ConfigError(f"load_adapter: {path} was trained on another base model ({', '.join(f'{k} {a} here {b}' for k, (a, b) in diff.items())}); load the base model it was trained on")
    tensors = load_file(str(path / WEIGHTS))
    peft_type = config.get("peft_type", "")
    if peft_type in READERS:
        READERS[peft_type](model, config, tensors)
        return model
    if not peft_type.startswith("PTMKIT_"):
        raise ConfigError(f"load_adapter: {path} holds a PEFT {peft_type} adapter, which ptmkit does not read "
                          f"(it reads {sorted(READERS)} and its own PTMKIT_* adapters)")
    if sidecar is None:
        raise ConfigError(f"load_adapter: {path} lacks {SIDECAR}, which a {peft_type} adapter needs")
    name = sidecar["method"]
    METHODS[name].apply(model, make_config(name, sidecar["config"]))
    mine = _owned(model, name)
    stored = {k[len(PREFIX):]: v for k, v in tensors.items()}
    if not mine:
        raise ConfigError(f"load_adapter: {name} added no parameters to this model; cannot load {path}")
    missing, extra = sorted(set(mine) - set(stored)), sorted(set(stored) - set(mine))
    bad = [k for k in set(mine) & set(stored) if tuple(mine[k].shape) != tuple(stored[k].shape)]
    if missing or extra or bad:
        raise ConfigError(f"load_adapter: {path} does not fit this model: missing {missing[:3]}, unexpected "
                          f"{extra[:3]}, mis-shaped {bad[:3]}; load it onto the base model it was trained on")
    with torch.no_grad():
        for k, p in mine.items():
            p.copy_(stored[k].to(p.dtype))
    return model
