"""Progressive stacking (Gong et al. 2019, "Efficient Training of BERT by Progressively Stacking", §4; survey
§6.1): train a shallow model, then initialise a model k times deeper by stacking the trained blocks on top of
themselves and keep training it; repeat (Gong et al. grow BERT 3 → 6 → 12 layers).

Motivation (their §3): in a trained BERT, attention in the upper layers looks much like attention in the lower ones,
so a copy of the lower blocks is a far better start for the upper blocks than a random initialisation, and the
shallow stages cost a fraction of the deep model's time per step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import FAMILIES, backbone_of, build_model, task_of
from ptmkit.nn.stacks import block_stacks


def stack_layers(shallow: nn.Module, target_num_layers: int) -> nn.Module:
    """A new model of the same family, task and configuration with `target_num_layers` blocks per stack (a multiple
    k of the shallow depth L), whose block i is a copy of the shallow block i % L: the whole shallow stack repeated k
    times, bottom to top (Gong et al. §4). Embeddings, heads and everything outside the blocks are copied as they
    are. An encoder-decoder's decoder is deepened by the same factor k.

    The deep model is new: build its optimizer (and LR schedule) afresh, as the paper trains each stage anew.
    """
    backbone = backbone_of(shallow)
    family = getattr(backbone, "family", None)
    if family not in FAMILIES:
        raise ConfigError(f"progressive stacking: {type(backbone).__name__} is not a registered model family "
                          f"({sorted(FAMILIES)}); build the model with ptmkit.models.build_model")
    config = backbone.config
    depth = config.num_layers
    if not isinstance(target_num_layers, int) or target_num_layers <= depth:
        raise ConfigError(f"progressive stacking: target_num_layers must be an integer larger than the model's "
                          f"{depth} layers, got {target_num_layers!r} (stacking once doubles it: use {2 * depth})")
    if target_num_layers % depth:
        lower, upper = (target_num_layers // depth) * depth, (target_num_layers // depth + 1) * depth
        raise ConfigError(f"progressive stacking: target_num_layers {target_num_layers} is not a multiple of the "
                          f"model's {depth} layers; use {upper}" + (f" or {lower}" if lower > depth else ""))
    factor = target_num_layers // depth
    changes = {"num_layers": target_num_layers}
    if getattr(config, "num_decoder_layers", None) is not None:
        changes["num_decoder_layers"] = config.num_decoder_layers * factor
    deep = build_model(family, dataclasses.replace(config, **changes), task_of(shallow),
                       num_labels=getattr(shallow, "num_labels", None))
    deep.load_state_dict(_stacked_state(shallow, deep))
    if hasattr(shallow, "label_names"):
        deep.label_names = list(shallow.label_names)
    first = next(shallow.parameters())
    return deep.to(device=first.device, dtype=first.dtype).train(shallow.training)


def _stacked_state(shallow: nn.Module, deep: nn.Module) -> dict[str, torch.Tensor]:
    """The deep model's state dict filled from the shallow one: `<stack>.<i>.rest` ← `<stack>.<i % L>.rest`."""
    source = shallow.state_dict()
    shallow_depth = {name: len(stack) for name, stack in block_stacks(shallow)}
    prefixes = [name + "." for name, _ in block_stacks(deep)]
    state: dict[str, torch.Tensor] = {}
    for key in deep.state_dict():
        src = key
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            index, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{int(index) % shallow_depth[prefix[:-1]]}.{rest}"
        if src not in source:
            raise ConfigError(f"progressive stacking: the deep model's {key} has no counterpart {src} in the shallow "
                              "model; both must come from the same family and configuration")
        state[key] = source[src]  # load_state_dict copies: the models share no storage
    return state
