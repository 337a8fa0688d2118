"""Load and save model directories in the Hugging Face layout (config.json + model.safetensors + tokenizer).

A directory saved here loads in `transformers` unchanged, and any supported HF directory loads here.
Weights are read with safetensors, or `torch.load(weights_only=True)` for legacy `.bin` files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptmkit import atomic
from ptmkit.config import ConfigError
from ptmkit.log import get as get_logger
from ptmkit.models.convert.base import Adapter, CheckpointError, Reader, expect_shapes, strip_prefix
from ptmkit.models.heads import CausalLM
from ptmkit.models.seq2seq import Seq2SeqLM
from ptmkit.models.registry import FAMILIES, MOE_ADAPTERS, backbone_of, build_model, task_of

log = get_logger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json",
)


def _adapter_for(model_type: str | None, architectures: list[str] | None = None) -> tuple[str, Adapter]:
    """The family and adapter for a config.json: by model_type, and by architecture where one model_type holds several
    families (T5EncoderModel is the t5-encoder family, T5ForConditionalGeneration the t5 family). A Mixture-of-Experts
    form (model_type mixtral) loads as the family it sparsifies (llama), through its own adapter."""
    names = [name for name, fam in FAMILIES.items() if fam.adapter.model_type == model_type]
    if architectures:
        for name in names:
            if architectures[0] in FAMILIES[name].adapter.architectures:
                return name, FAMILIES[name].adapter
    if names:
        return names[0], FAMILIES[names[0]].adapter
    for name, adapter in MOE_ADAPTERS.items():
        if adapter.model_type == model_type:
            return name, adapter
    supported = sorted({f.adapter.model_type for f in FAMILIES.values()}  # t5 and t5-encoder share one
                       | {a.model_type for a in MOE_ADAPTERS.values()})
    raise CheckpointError(f"unsupported model_type {model_type!r} in config.json; supported: {supported}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory: single or sharded safetensors, else legacy pytorch_model.bin. A file that
    cannot be read (truncated, corrupt, missing shard) is named in a CheckpointError."""
    # weights_only=True: a pickle can run code; this refuses anything but tensors and plain containers.
    load_bin = lambda f: torch.load(f, map_location="cpu", weights_only=True)  # noqa: E731
    if (path / "model.safetensors").is_file():
        return _read_file(path / "model.safetensors", load_file)
    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", load_bin)):
        if (path / index_name).is_file():
            index = _read_file(path / index_name, lambda f: json.loads(f.read_text())["weight_map"])
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index.values())):
                state.update(_read_file(path / shard, loader))
            return state
    if (path / "pytorch_model.bin").is_file():
        return _read_file(path / "pytorch_model.bin", load_bin)
    raise FileNotFoundError(
        f"no weights in {path}: looked for model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin.index.json and pytorch_model.bin"
    )


def _read_file(f: Path, loader):
    """loader(f), naming `f` when it is missing, truncated or corrupt (safetensors' and torch's errors do not)."""
    try:
        return loader(f)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError) as e:
        what = ("missing" if not f.exists() else
                "refused by torch.load(weights_only=True): truncated, corrupt, or holding more than tensors"
                if isinstance(e, pickle.UnpicklingError) else "truncated or corrupt")
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{f}: {what} ({type(e).__name__}: {detail}); download or save the model directory "
                              "again (a copy that stopped early leaves a short file)") from e


def read_gguf(path: Path, gguf_file: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Dequantise a GGUF checkpoint through transformers' reader (an optional dependency)."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading GGUF files needs the optional extra: pip install 'ptmkit[hf]'") from e
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=gguf_file, dtype=torch.float32)
    config = hf_model.config.to_dict()
    config["architectures"] = [type(hf_model).__name__]
    return config, dict(hf_model.state_dict())


def _head_table(adapter, model, task: str, fmt: str) -> dict[str, str]:
    table = {ours: theirs.format(p=fmt) for ours, theirs in adapter.heads.get(task, {}).items()}
    if _tied(model):
        table.pop("lm_head.weight", None)  # shares the input embedding; nothing separate to load or save
    return table


def load_model(
    path: str | os.PathLike,
    task: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype | None = None,
    gguf_file: str | None = None,
    dropout: float | None = None,
    pooling: str | None = None,
):
    """Build the model a directory describes and load its weights.

    task: None = the checkpoint's own head; another task keeps the backbone and starts a new head
    (the usual start of fine-tuning), reporting the head tensors it created and dropped.
    dropout: None keeps the directory's rates; a value sets every dropout rate of the config (hidden, attention,
    embedding) to it, e.g. to fine-tune with dropout a model pre-trained without (Cramming's recipe).
    pooling: the sequence classifier's sentence vector, "cls" or "mean" (heads.SequenceClassifier); None keeps the
    checkpoint's own classifier's (`ptmkit_pooling` in config.json) or, for a new head, "cls".
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if gguf_file is not None:
        hf_config, state = read_gguf(path, gguf_file)
    else:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; is it a model directory?")
        hf_config = json.loads((path / "config.json").read_text())
        if (hf_config.get("quantization_config") or {}).get("quant_method") == "ptmkit":
            raise ConfigError(f"{path} holds a model quantised by ptmkit (integer weights and scales); load it with "
                              "ptmkit.compress.quant.load_quantized (ptm evaluate and ptm compress read it)")
        state = read_weights(path)
    return from_hf(hf_config, state, task, num_labels, dtype, source=str(path), dropout=dropout, pooling=pooling)


def init_model(path: str | os.PathLike, task: str | None = None, num_labels: int | None = None,
               dropout: float | None = None, pooling: str | None = None):
    """The model a directory's config.json describes, freshly initialised: no weights are read (the directory needs
    none). The baseline that tells what pre-training bought: the same architecture, tokenizer and fine-tuning recipe,
    without the pre-trained weights. Initialised by the family's own scheme from torch's current RNG state (seed it
    first for a reproducible model). A config.json lacking a key that fixes a shape is refused, naming the key: with
    no weights to check against, a silently defaulted size would build some other model."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; is it a model directory?")
    hf_config = _read_file(path / "config.json", lambda f: json.loads(f.read_text()))
    if not isinstance(hf_config, dict):
        raise ConfigError(f"{path / 'config.json'}: expected a JSON object, got {type(hf_config).__name__}")
    family, adapter = _adapter_for(hf_config.get("model_type"), hf_config.get("architectures"))
    missing = [k for k in adapter.shape_keys if hf_config.get(k) is None]
    if missing:
        raise ConfigError(
            f"{path / 'config.json'}: cannot build a randomly initialised {family} model: missing "
            + ", ".join(repr(k) for k in missing)
            + f"; a {adapter.model_type} config.json needs {', '.join(adapter.shape_keys)} (they fix the shapes)"
        )
    model = _fresh(family, adapter, hf_config, task, num_labels, str(path), dropout, pooling)[0]
    _prune_as_recorded(model, hf_config, str(path), weights=False)
    _share_as_recorded(model, hf_config, str(path), weights=False)
    return model


def from_hf(
    hf_config: dict[str, Any],
    state: dict[str, torch.Tensor],
    task: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype | None = None,
    source: str = "checkpoint",
    dropout: float | None = None,
    pooling: str | None = None,
):
    """Build a ptmkit model from a Hugging Face config dict and state dict (see load_model).

    Three steps: convert (the checkpoint's tensors under ptmkit's names, sorting every checkpoint tensor into
    used / dropped / unexpected), check (nothing missing or unexpected, tied copies equal, shapes right), load
    (into the built model, reporting fresh and dropped head tensors)."""
    family, adapter = _adapter_for(hf_config.get("model_type"), hf_config.get("architectures"))
    model, cfg, task, ckpt_task = _fresh(family, adapter, hf_config, task, num_labels, source, dropout, pooling)
    conv = _convert(adapter, cfg, model, state, task, ckpt_task)
    _check(conv, model, family, source)
    _load(conv, model, family, source)
    _prune_as_recorded(model, hf_config, source)
    _share_as_recorded(model, hf_config, source)
    if dtype is not None:
        model.to(dtype)
    return model


# the rates `dropout=` sets, where a family has them
DROPOUT_FIELDS = ("dropout", "attention_dropout", "embedding_dropout")


def _fresh(family: str, adapter: Adapter, hf_config: dict[str, Any], task: str | None, num_labels: int | None,
           source: str, dropout: float | None = None, pooling: str | None = None):
    """The randomly initialised model a config.json describes, for `task` (default: the checkpoint's own):
    (model, its config, the task built, the checkpoint's task). Shared by from_hf (which then loads weights) and
    init_model (which does not)."""
    cfg = _with_attention_kernel(adapter.config_from_hf(hf_config), hf_config)
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        fields = {f.name for f in dataclasses.fields(cfg)}
        cfg = dataclasses.replace(cfg, **{k: dropout for k in DROPOUT_FIELDS if k in fields})
    ckpt_task = adapter.task_of(hf_config.get("architectures"))
    task, num_labels = _resolve_task(hf_config, task, ckpt_task, num_labels, source)
    model = _build(family, cfg, task, num_labels, hf_config, ckpt_task)
    if pooling is None and task == ckpt_task:  # the checkpoint's own classifier keeps its pooling
        pooling = hf_config.get("ptmkit_pooling")
    if pooling is not None:
        set_pooling(model, pooling, family)
    return model, cfg, task, ckpt_task


def set_pooling(model, pooling: str, family: str) -> None:
    """Choose the sentence vector of an encoder's sequence classifier ("cls" or "mean")."""
    from ptmkit.models.heads import SequenceClassifier
    from ptmkit.models.pooling import POOLINGS

    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if isinstance(model, SequenceClassifier):
        model.pooling = pooling
    elif pooling != "cls":
        raise ConfigError(f"pooling={pooling!r} is for the sequence classifier of encoders with the generic head "
                          f"(bert, roberta, megatron-bert); this {family} {task_of(model)} model reads its own token "
                          "(use pooling 'cls' or leave it unset)")


@dataclasses.dataclass
class _Converted:
    """A checkpoint under ptmkit's names, and where each of its tensors went."""

    adapter: Adapter
    cfg: Any
    task: str
    ckpt_task: str
    reader: Reader  # what is left in reader.state was not used
    tensors: dict[str, torch.Tensor]  # ptmkit name -> tensor, backbone and head
    kernel_state: dict[str, torch.Tensor]  # an efficient attention kernel's own tensors (ptmkit names)
    bb_prefix: str  # "backbone." in a task model, "" in a bare backbone
    missing: list[str]  # checkpoint names the model needs but the checkpoint lacks
    fresh: list[str]  # head tensors of a new task: they keep their random initialisation
    defaulted: list[str]  # optional head tensors the checkpoint omits (e.g. BART's final_logits_bias)
    dropped: list[str]  # checkpoint tensors of another task's head, left out on purpose
    unexpected: list[str]  # checkpoint tensors nothing accounts for
    tied_copy: torch.Tensor | None  # a tied model's lm_head.weight as the checkpoint lists it, to compare


def _resolve_task(hf_config: dict[str, Any], task: str | None, ckpt_task: str, num_labels: int | None,
                  source: str) -> tuple[str, int | None]:
    """The task to build (default: the checkpoint's own) and, for a classifier, its number of labels."""
    task = task or ckpt_task
    if task in ("sequence-classification", "token-classification") and num_labels is None:
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or None
        if task != ckpt_task or num_labels is None:
            raise CheckpointError(f"loading {source} for {task} needs num_labels (the number of classes; 1 = regression)")
    return task, num_labels


def _build(family: str, cfg, task: str, num_labels: int | None, hf_config: dict[str, Any], ckpt_task: str):
    """The randomly initialised model, with the checkpoint's label names when it keeps the checkpoint's classifier."""
    model = build_model(family, cfg, task, num_labels)
    if task in ("sequence-classification", "token-classification") and "id2label" in hf_config and task == ckpt_task:
        id2label = hf_config["id2label"]
        model.label_names = [id2label[str(i)] if str(i) in id2label else id2label[i] for i in range(num_labels)]
    return model


def _convert(adapter: Adapter, cfg, model, state: dict[str, torch.Tensor], task: str, ckpt_task: str) -> _Converted:
    """Rename and reshape the checkpoint's tensors into ptmkit's, and account for every one of them."""
    kernel_state = {k[len(KERNEL_PREFIX):]: v for k, v in state.items() if k.startswith(KERNEL_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(KERNEL_PREFIX)}
    r = Reader(strip_prefix(state, adapter.prefix))
    bb_prefix = "backbone." if task != "base" else ""
    ours = {bb_prefix + k: v for k, v in adapter.backbone_from_hf(r, cfg).items()}
    missing = [f"{adapter.prefix}{m}" for m in r.missing]

    fresh: list[str] = []
    defaulted: list[str] = []
    for mine, theirs in _head_table(adapter, model, task, "").items():
        if task != ckpt_task and not r.has(theirs):
            fresh.append(mine)  # a new head for a new task keeps its random initialisation
            continue
        if theirs in adapter.optional and not r.has(theirs):
            defaulted.append(mine)  # e.g. BART's final_logits_bias: absent means zeros, as in transformers
            continue
        t = r.take(theirs)  # e.g. BERT's pretrained pooler is reused by a new classifier
        if t is None:
            missing.append(theirs)
        else:
            ours[mine] = t
    # A tied copy (state_dict() of a tied HF model lists it) is used only to check it equals the embedding.
    tied_copy = r.take("lm_head.weight") if _tied(model) and r.has("lm_head.weight") else None

    dropped, unexpected = [], []
    for name in r.state:
        if adapter.is_ignored(name):
            continue
        # Head tensors of another task are dropped on purpose; so is BertModel's pooler when only the
        # backbone is wanted (ptmkit's pooler lives in SequenceClassifier).
        droppable = adapter.is_head_key(name) and (task != ckpt_task or task == "base")
        (dropped if droppable else unexpected).append(name)
    return _Converted(adapter, cfg, task, ckpt_task, r, ours, kernel_state, bb_prefix, missing, fresh, defaulted,
                      dropped, unexpected, tied_copy)


def _check(conv: _Converted, model, family: str, source: str) -> None:
    """Refuse a checkpoint that does not fit the model: a tied copy that differs, missing or unexpected tensors,
    wrong shapes. Each error names the tensors and what to check."""
    if conv.tied_copy is not None:
        emb = conv.tensors.get(conv.bb_prefix + _embedding_name(model))
        if emb is not None and (conv.tied_copy.shape != emb.shape or not torch.equal(conv.tied_copy, emb)):
            raise CheckpointError(
                f"{source}: config.json ties the output layer to the input embedding but lm_head.weight differs "
                "from it; set tie_word_embeddings to false in config.json (for T5 also scale_decoder_outputs)"
            )
    if conv.missing or conv.unexpected:
        raise CheckpointError(
            f"{source} does not fit {family} ({conv.task}):"
            + (f"\n  missing tensors: {conv.missing}" if conv.missing else "")
            + (f"\n  unexpected tensors: {conv.unexpected}" if conv.unexpected else "")
            + "\n  check that config.json matches the weights and that model_type/architectures are right"
        )
    expected = {k: v.shape for k, v in model.state_dict().items()}
    adapter, origin = conv.adapter, conv.reader.origin
    prefix = adapter.prefix if conv.task != "base" else ""
    hf_names = {k: prefix + origin[id(v)] if not adapter.is_head_key(origin[id(v)]) else origin[id(v)]
                for k, v in conv.tensors.items() if id(v) in origin}
    expect_shapes(conv.tensors, expected, hf_names)


def _load(conv: _Converted, model, family: str, source: str) -> None:
    """Copy the checked tensors into the model; any model tensor left unset is an internal conversion error."""
    result = model.load_state_dict(conv.tensors, strict=False)
    if conv.kernel_state:  # an efficient kernel's own tensors (Linformer's projections, Performer's features)
        extra = model.load_state_dict(conv.kernel_state, strict=False).unexpected_keys
        if extra:
            raise CheckpointError(f"{source}: attention-kernel tensors {extra} do not fit this model's "
                                  f"{getattr(conv.cfg, 'attention_kernel', 'sdpa')} kernel; check ptmkit_attention_* "
                                  "in config.json")
    expected_unset = {"lm_head.weight"} if _tied(model) else set()
    expected_unset |= set(conv.fresh) | set(conv.defaulted) | set(conv.kernel_state)
    not_loaded = [k for k in result.missing_keys if k not in expected_unset]
    if not_loaded or result.unexpected_keys:
        raise CheckpointError(
            f"internal conversion error for {family}: not loaded {not_loaded}, unknown {result.unexpected_keys}"
        )
    if conv.fresh:
        log.warning("%s: new %s head initialised (%s)", source, conv.task, ", ".join(conv.fresh))
    if conv.dropped:
        log.warning("%s: dropped tensors that a %s model does not use: %s", source, conv.task, ", ".join(conv.dropped))
    model.load_report = {"fresh": conv.fresh, "dropped": conv.dropped, "checkpoint_task": conv.ckpt_task}


# An efficient attention kernel (ptmkit.nn.kernels) has no Hugging Face equivalent: config.json records it under
# these keys (transformers ignores unknown config keys) and its tensors travel under this prefix (transformers
# reports them unused and runs dense attention), so a ptmkit round trip restores the model exactly.
KERNEL_PREFIX = "ptmkit_kernel."


def _with_attention_kernel(cfg, hf_config: dict[str, Any]):
    kernel = hf_config.get("ptmkit_attention_kernel")
    if kernel is None:
        return cfg
    if not hasattr(cfg, "attention_kernel"):
        raise CheckpointError(f"config.json names attention kernel {kernel!r} but {type(cfg).__name__} has no "
                              "attention_kernel setting")
    return dataclasses.replace(cfg, attention_kernel=kernel,
                               attention_options=dict(hf_config.get("ptmkit_attention_options") or {}))


# A structurally pruned model (ptmkit.compress.prune: heads, feed-forward neurons) is saved at its dense shapes with
# the removed units' slices zero: zero q/k/v rows and out columns of a removed head, zero up (gate/up) rows and down
# columns of a removed neuron. A zero out/down column multiplies the unit's (finite) output by 0, so the unit adds
# exactly nothing, whatever the activation; with the q/k/v and up rows zero too the unit's own output is 0 (attention
# over zero values; act(0) = 0 for gelu, relu, silu, tanh). transformers 5 dropped `pruned_heads`, so this is the form
# it loads, with the pruned model's logits. config.json records under this key, per pruned module (named inside the
# backbone), which units it kept of how many: {"layers.0.attn": {"keep": [0, 2, 3], "of": 4}}; load_model reads the
# dense weights, checks that the removed slices are still zero, and prunes the module again (same shapes, same speed).
PRUNED_KEY = "ptmkit_pruned"


def pruned_record(backbone) -> dict[str, dict[str, Any]]:
    """{module name: {"keep": kept unit indices, "of": its unpruned number of units}} of every pruned module."""
    return {name: {"keep": list(m.kept_units), "of": m.dense_units} for name, m in backbone.named_modules()
            if getattr(m, "kept_units", None) is not None}


def _pad_pruned(sd: dict[str, torch.Tensor], backbone, prefix: str) -> dict[str, torch.Tensor]:
    """The state dict with every pruned module at its dense shapes, the removed units' slices zero (PRUNED_KEY)."""
    sd = dict(sd)
    for name, m in backbone.named_modules():
        if getattr(m, "kept_units", None) is None:
            continue
        dense = m.unit_slices(torch.arange(m.dense_units))
        for pname, (dim, index) in m.unit_slices(torch.tensor(m.kept_units)).items():
            key = f"{prefix}{name}.{pname}"
            t = sd[key]
            shape = list(t.shape)
            shape[dim] = dense[pname][1].numel()
            sd[key] = t.new_zeros(shape).index_copy_(dim, index.to(t.device), t)
    return sd


# Cross-layer sharing applied to a trained model (ptmkit.compress.share): the groups of layers that are one module.
# save_model writes every layer's copy (equal tensors), the form transformers loads as an ordinary model; config.json
# records the groups under this key and load_model ties them again, checking the copies are still equal.
SHARED_KEY = "ptmkit_shared_layers"
SHARED_ATTR = "shared_layers"  # on the backbone: the groups


def _share_as_recorded(model, hf_config: dict[str, Any], source: str, weights: bool = True) -> None:
    groups = hf_config.get(SHARED_KEY)
    if not groups:
        return
    backbone = backbone_of(model)
    blocks = backbone.layers
    for g in groups:
        first = blocks[g[0]]
        for i in g[1:]:
            if weights and any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                                      blocks[i].state_dict().values())):
                raise CheckpointError(f"{source}: config.json {SHARED_KEY} ties layers {g}, but layer {i}'s weights "
                                      f"differ from layer {g[0]}'s (the untied copies were trained further, e.g. in "
                                      f"transformers); remove {SHARED_KEY} from config.json to load them untied")
            blocks[i] = first
    setattr(backbone, SHARED_ATTR, [list(g) for g in groups])


def _prune_as_recorded(model, hf_config: dict[str, Any], source: str, weights: bool = True) -> None:
    """Prune the freshly built (and, with `weights`, loaded) dense model back to the shapes config.json records under
    PRUNED_KEY. With weights, the slices removed must be zero, as save_model wrote them: nonzero ones mean the dense
    model was trained further (e.g. in transformers), and dropping them would silently change its outputs."""
    record = hf_config.get(PRUNED_KEY)
    if not record:
        return
    backbone = backbone_of(model)
    modules = dict(backbone.named_modules())
    for name, entry in record.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "keep_units") or module.num_units != entry.get("of"):
            have = "no such module" if module is None else (
                "a module without prunable units" if not hasattr(module, "keep_units") else f"{module.num_units} units")
            raise CheckpointError(f"{source}: config.json {PRUNED_KEY} prunes {name!r} of {entry.get('of')} units, but "
                                  f"the model it describes has {have} there; config.json does not fit this model "
                                  f"(restore {PRUNED_KEY} as save_model wrote it)")
        nonzero = sum(int(torch.count_nonzero(p)) for p in module.parameters()) if weights else 0
        try:
            module.keep_units(entry.get("keep", []))
        except ValueError as e:
            raise CheckpointError(f"{source}: config.json {PRUNED_KEY}[{name!r}]: {e}") from None
        if weights and sum(int(torch.count_nonzero(p)) for p in module.parameters()) != nonzero:
            raise CheckpointError(
                f"{source}: {name} has nonzero weights in the units config.json {PRUNED_KEY} records as removed (was "
                f"the dense model trained after export?); delete {PRUNED_KEY} from config.json to load it dense, or "
                "prune it again")


def _tied(model) -> bool:
    """A language-model head that shares the input embedding (CausalLM, Seq2SeqLM)."""
    if isinstance(model, (CausalLM, Seq2SeqLM)):
        return model.tied
    return isinstance(getattr(type(model), "tied", None), property) and model.tied  # e.g. XLNet's LM head


def _embedding_name(model) -> str:
    emb = backbone_of(model).input_embeddings()
    return next(n for n, m in backbone_of(model).named_modules() if m is emb) + ".weight"


def hf_adapter(model) -> Adapter:
    """The adapter that writes `model` as a Hugging Face checkpoint: its family's, or for a Mixture-of-Experts model
    its family's MoE form (LLaMA -> Mixtral). Raises CheckpointError, saying why and what to do, when the model has
    no Hugging Face form; nothing is computed, so callers can ask before deciding to export."""
    backbone = backbone_of(model)
    cfg = backbone.config
    if getattr(cfg, "moe", None) is None:
        return FAMILIES[backbone.family].adapter
    adapter = MOE_ADAPTERS.get(backbone.family)
    if adapter is None:
        raise CheckpointError(
            f"a {backbone.family} model with Mixture-of-Experts layers has no Hugging Face checkpoint form "
            f"(transformers has no sparse {backbone.family}; of the ptmkit families only a LLaMA with MoE in every "
            "layer has one, as Mixtral); keep it as a training checkpoint (runs/NAME/checkpoints/step-N), which "
            "ptmkit resumes and evaluates"
        )
    adapter.check_export(cfg)
    return adapter


def base_state_dict(model, deltas: str = "warn") -> dict[str, torch.Tensor]:
    """The model's state dict without the parameters of delta-tuning methods (ptmkit.adapt): those are saved as an
    adapter beside the base model, never into its weights. A merged method is in the weights already.
    deltas="warn" says so when unmerged ones are left out; "beside": the caller saves them as an adapter."""
    owners = {n: m for n, m in model.named_modules() if getattr(m, "is_delta", False)}
    sd = model.state_dict()
    if owners:
        unmerged = sorted(n for n, m in owners.items() if not m.merged)
        if unmerged and deltas == "warn":
            log.warning("saving the base weights without the %d unmerged delta-tuning site(s) (e.g. %s): save the "
                        "adapter with ptmkit.adapt.save_adapter, or merge it first", len(unmerged), unmerged[0])
        sd = {k: v for k, v in sd.items() if not any(k.startswith(n + ".") for n in owners)}
    return sd


def hf_state_dict(model, state: dict[str, torch.Tensor] | None = None,
                  deltas: str = "warn") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The model's config.json dict and its tensors under Hugging Face names (`state`: tensors to convert in place
    of the model's own, under the same names)."""
    backbone, task = backbone_of(model), task_of(model)
    adapter = hf_adapter(model)
    cfg = backbone.config
    hf_config = adapter.config_to_hf(cfg)
    hf_config["architectures"] = [adapter.architecture(task)]
    hf_config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    if task in ("sequence-classification", "token-classification"):
        names = getattr(model, "label_names", None) or [f"LABEL_{i}" for i in range(model.num_labels)]
        hf_config.update(num_labels=model.num_labels, id2label={str(i): n for i, n in enumerate(names)},
                         label2id={n: i for i, n in enumerate(names)})
        if task == "sequence-classification" and model.num_labels == 1:
            hf_config["problem_type"] = "regression"
    if task == "sequence-classification" and getattr(model, "pooling", "cls") != "cls":
        hf_config["ptmkit_pooling"] = model.pooling
        log.warning("pooling %r has no Hugging Face classifier: transformers would pool the first token and predict "
                    "differently; load this classifier with ptmkit (load_model reads ptmkit_pooling)", model.pooling)
    sd = dict(base_state_dict(model, deltas) if state is None else state)
    masked = sorted(k for k in sd if ".parametrizations." in k)
    if masked:  # pruning masks still attached (ptmkit.compress.prune): the plain weight is original * mask
        raise ConfigError(f"save_model: {masked[0].split('.parametrizations.')[0]} still carries a pruning mask; bake "
                          "the masks into plain weights with ptmkit.compress.prune.unstructured.finalize(model) first")
    bb_prefix = "backbone." if task != "base" else ""
    if getattr(backbone, SHARED_ATTR, None):  # written untied, every layer its (equal) copy (see SHARED_KEY)
        hf_config[SHARED_KEY] = [list(g) for g in getattr(backbone, SHARED_ATTR)]
    pruned = pruned_record(backbone)
    if pruned:  # written at the dense shapes, the removed units zero (see PRUNED_KEY)
        hf_config[PRUNED_KEY] = pruned
        sd = _pad_pruned(sd, backbone, bb_prefix)
    kernel = getattr(cfg, "attention_kernel", "sdpa")
    kernel_state = {k: sd.pop(k) for k in [k for k in sd if ".attn.kernel." in k]}
    if kernel not in ("sdpa", "eager"):
        hf_config["ptmkit_attention_kernel"] = kernel
        hf_config["ptmkit_attention_options"] = dict(cfg.attention_options)
        log.warning("attention kernel %r has no Hugging Face equivalent: transformers will run this checkpoint with "
                    "dense attention (ptmkit restores the kernel from config.json)", kernel)
    bb = {k[len(bb_prefix):]: v for k, v in sd.items() if k.startswith(bb_prefix)}
    out = {(adapter.prefix if task != "base" else "") + k: v for k, v in adapter.backbone_to_hf(bb, cfg).items()}
    fmt = adapter.prefix if task != "base" else ""
    for mine, theirs in _head_table(adapter, model, task, fmt).items():
        out[theirs] = sd[mine]
    out.update({KERNEL_PREFIX + k: v for k, v in kernel_state.items()})
    return hf_config, out


def save_model(model, path: str | os.PathLike, tokenizer_from: str | os.PathLike | None = None,
               deltas: str = "warn") -> Path:
    """Write config.json + model.safetensors (HF names); copy tokenizer files from `tokenizer_from`. The parameters
    of delta-tuning methods are not written (deltas="warn" says so; "beside": the caller saves the adapter).

    Files are written under temporary names and renamed, so an interrupted save never leaves a torn file.
    """
    path = Path(path)
    hf_config, tensors = hf_state_dict(model, deltas=deltas)  # first: no HF form leaves no empty directory behind
    path.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage (fused-qkv splits are views): give each its own copy.
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic.atomic_path(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic.write_text(path / "config.json", json.dumps(hf_config, indent=2) + "\n")
    if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, path)
    return path


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    src, dst = Path(src), Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and src.resolve() != dst.resolve():
            with atomic.atomic_path(dst / name) as tmp:
                shutil.copyfile(src / name, tmp)
            copied.append(name)
    return copied
