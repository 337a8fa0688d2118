"""Full fine-tuning of a pre-trained model on GLUE, CoNLL-2003 NER or your own table, on the one training engine.
Devlin et al. 2019 §4 (BERT fine-tuning recipe: new head, small lr, linear warm-up and decay)."""

# finetune(cfg) validates everything (config, data, model, output folder) before it writes anything, loads the
# model directory with a fresh task head, tokenises the splits once (ptmkit.data.encode), and trains the task
# objective (ptmkit.objectives.classification) with ptmkit.train: length-bucketed resumable batches, any registered
# optimizer and schedule, layer-wise lr decay, accumulation, precision, checkpoints (Ctrl-C, --resume), MFU. It
# evaluates every `eval_every` steps (or each epoch), keeps the best model by the task's main metric in out/best/,
# and writes out/{config.json, metrics.jsonl, loss.png, results.json, checkpoints/}.

from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ptmkit import adapt, atomic, outputs
from ptmkit.adapt.prompt_model import PromptClassifier, prompt_examples
from ptmkit.adapt.prompts import Template, parse_words
from ptmkit.compress.distill import DISTILLERS, student_from_teacher
from ptmkit.compress.prune import unstructured
from ptmkit.config import ConfigError, from_dict, to_dict
from ptmkit.data.encode import prepare_backend
from ptmkit.data.task_batches import TaskBatches
from ptmkit.data.task_data import (TaskSpec, _labelled, _per_class, _subset, _take, canonical_task, encode_split,
                                   load_split)
from ptmkit.data.tokenizer import Tokenizer, check_vocab
from ptmkit.models import init_model, load_model, save_model
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.classification import TaskConfig, TaskObjective
from ptmkit.parallel.apply import unsharded
from ptmkit.parallel.config import ParallelConfig
from ptmkit.parallel.mesh import run_on_ranks
from ptmkit.recipes.evaluate import ADAPTER_DIR, TASK_FILE, _device, _pad_id, evaluate, kind_of, predict, score
from ptmkit.train.best import KeepBest
from ptmkit.train.flops import applied_parameters, mfu_denominator, training_flops_per_token
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OPTIMIZERS, OptimConfig
from ptmkit.train.precision import Precision
from ptmkit.train.precision import resolve as resolve_precision
from ptmkit.train.schedule import ScheduleConfig

# what a resumed run may change: presentation only; everything else must match the interrupted run
_RESUMABLE_CHANGES = ("overwrite", "show_progress")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs. Paths are strings so the config dumps to JSON as is."""

    model: str  # model directory (config.json + weights + tokenizer files)
    task: str  # GLUE task (sst2, cola, mrpc, stsb, qqp, mnli, qnli, rte, wnli), conll2003 or table
    out: str  # run directory
    # pretrained: start from the directory's weights; random: from a freshly initialised model of its architecture
    # (config.json and tokenizer only), the baseline that measures what pre-training bought
    init: Literal["pretrained", "random"] = "pretrained"
    # every dropout rate of the model (hidden, attention, embedding) while fine-tuning; None keeps the directory's.
    # A model pre-trained without dropout (Cramming) is usually fine-tuned with it (0.1)
    dropout: float | None = None
    # the classifier's sentence vector: "cls" (BERT) or "mean" of the token vectors (MLM never trains [CLS]); None
    # keeps a fine-tuned directory's own (config.json ptmkit_pooling), else "cls". Encoders with the generic head only
    pooling: Literal["cls", "mean"] | None = None
    # full: train every weight; or a delta-tuning method of ptmkit.adapt.METHODS (lora, ia3, bitfit, houlsby,
    # pfeiffer, prefix, ptuning-v2, prompt, ptuning, feature): the model stays frozen, the method's parameters and
    # the new task head train, and the run saves the method as an adapter (best/adapter/, PEFT's layout)
    method: str = "full"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)  # the method's config (--METHOD.key)
    # knowledge distillation (ptmkit.compress.distill, survey §6.3): `model` is the student and learns to imitate
    # `teacher`, a model directory fine-tuned on this task with the same tokenizer; `distill` names the method
    # (distilbert, pkd, tinybert, minilm) and distill_options its config (--DISTILL.key). The teacher is never
    # trained nor saved; the run's best/ is the student
    teacher: str | None = None
    distill: str | None = None
    distill_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the student is this many of `model`'s layers, evenly spaced and ending with the last (DistilBERT's init from
    # every other teacher layer: give the teacher as both model and teacher); None keeps every layer
    student_layers: int | None = None
    # compression while fine-tuning (ptmkit.compress): gradual-magnitude, movement or soft-movement pruning (masks
    # grow on their schedule through the engine's on_step; best/ holds the plain pruned weights), qat-int8 (Q8BERT
    # fake quantisation) or ternary (TernaryBERT; with teacher/distill as the paper trains it): best/ holds the
    # converted integer model. compress_options: the method's config (--METHOD.key)
    compress: str | None = None
    compress_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # with a delta method: the dtype the frozen weights are held in. bf16 halves their memory (SmolLM2-135M: -270 MB)
    # and changes nothing the bf16 autocast step computes with them but the norms' and embeddings' rounding; the
    # trained parameters (method and head) stay fp32. best/ then holds the frozen weights in bf16 too
    frozen_dtype: Literal["fp32", "bf16"] = "fp32"
    # prompt-based fine-tuning (PET / LM-BFF): wrap each input in `template` ({text_a}, {text_b}, one {mask} slot)
    # and classify by the LM's scores of the `verbalizer` words (one per class, label order) at the slot; the model
    # keeps its masked-lm or causal-lm head and gets no new one
    template: str | None = None
    verbalizer: list[str] | None = None
    shots_per_class: int | None = None  # few-shot: K training examples of each class (seeded), e.g. 16
    data_dir: str | None = None  # default: <data root>/glue/<TASK> or <data root>/ner/conll2003
    train_split: str = "train"
    eval_split: str = "dev"
    test_split: str | None = None  # scored with the best model at the end (predictions only if unlabelled)
    # task="table" only: columns of <data_dir>/<split>.{csv,tsv,jsonl}
    text_fields: list[str] | None = None  # one or two text columns; default ["text"]
    label_field: str | None = None  # default "label"
    regression: bool | None = None  # float scores (MSE) instead of classes; default False
    columns: list[str] | None = None  # header-less CSV/TSV: the column names, in order
    split_column: str | None = None  # one file (data_file) holds every split; this column names each row's split
    data_file: str | None = None  # that file (relative to data_dir when given)
    skip_bad_rows: bool = False  # skip (and count) unreadable rows instead of stopping at the first
    max_length: int = 128  # tokens per example, specials included
    overlong: Literal["truncate", "error"] = "truncate"
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 3.0  # may be fractional
    max_steps: int | None = None  # cap on optimizer steps (None = no cap)
    max_train_examples: int | None = None  # random subset of the training split (fixed by seed)
    max_eval_examples: int | None = None  # random subset of the eval split (fixed by seed)
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step
    optimizer: str = "adamw"  # a key of ptmkit.train.optim.OPTIMIZERS: adamw | lamb
    lr: float = 5e-5
    weight_decay: float = 0.01
    layer_decay: float = 1.0  # layer-wise lr decay: block i of L trains at lr * layer_decay^(L - i); 1 = off
    warmup_ratio: float = 0.1  # fraction of the steps with linear warm-up
    decay: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where native (train.precision)
    device: str = "auto"  # auto = cuda when available, else cpu
    seed: int = 0
    eval_every: int = 0  # steps between evaluations; 0 = at the end of each epoch
    checkpoint_every: int = 0  # steps between training checkpoints (for --resume); 0 = at each evaluation
    keep_last: int = 1  # training checkpoints kept on disk
    log_every: int = 10  # steps between train-loss records in metrics.jsonl
    bucket_batches: int = 50  # length bucketing: sort inside chunks of this many batches; 0 = off
    data_parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2) the model
    overwrite: bool = False  # replace the results of an earlier run in `out`
    show_progress: bool = True

    def __post_init__(self) -> None:
        where = "finetune"
        for name in ("model", "out"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{where}: {name} must be a non-empty path, got {v!r}")
        self.task = canonical_task(self.task)
        table_only = {k: getattr(self, k) for k in ("text_fields", "label_field", "regression", "columns",
                                                     "split_column", "data_file")}
        if self.task == "table":
            self.text_fields = list(self.text_fields or ["text"])
            if not 1 <= len(self.text_fields) <= 2:
                raise ConfigError(f"{where}: text_fields must name 1 or 2 columns, got {self.text_fields}")
            self.label_field = self.label_field or "label"
            self.regression = bool(self.regression)
        elif any(v is not None for v in table_only.values()):
            given = [k for k, v in table_only.items() if v is not None]
            raise ConfigError(
                f"{where}: {given} only apply to task='table'; task {self.task!r} has fixed columns"
            )
        if self.max_length < 3:
            raise ConfigError(f"{where}: max_length must be >= 3 (room for special tokens), got {self.max_length}")
        if self.overlong not in ("truncate", "error"):
            raise ConfigError(f"{where}: overlong must be 'truncate' or 'error', got {self.overlong!r}")
        bad = {k: getattr(self, k) for k in ("batch_size", "eval_batch_size", "log_every", "grad_accum")
               if not getattr(self, k) > 0}
        bad |= {k: getattr(self, k) for k in ("max_steps", "max_train_examples", "max_eval_examples")
                if getattr(self, k) is not None and not getattr(self, k) > 0}
        if not self.epochs > 0:
            bad["epochs"] = self.epochs
        if not self.lr > 0:
            bad["lr"] = self.lr
        if bad:
            raise ConfigError(f"{where}: must be positive: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{where}: unknown optimizer {self.optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        for name in ("weight_decay", "grad_clip", "eval_every", "bucket_batches", "checkpoint_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: {name} must be >= 0, got {getattr(self, name)}")
        if self.init not in ("pretrained", "random"):
            raise ConfigError(f"{where}: init must be 'pretrained' or 'random', got {self.init!r}")
        if self.init == "random" and self.layer_decay != 1:
            raise ConfigError(f"{where}: layer_decay={self.layer_decay} with init='random': layer-wise decay keeps "
                              "pre-trained lower layers close to their weights, and a random model has none to keep; "
                              "use layer_decay=1 for the random-initialisation baseline")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"{where}: layer_decay must be in (0, 1] (1 = off; ELECTRA fine-tunes with 0.8), "
                              f"got {self.layer_decay}")
        if self.method != "full":
            adapt.make_config(self.method, _method_options(self))  # an unknown method or option fails here
            if self.init == "random":
                raise ConfigError(f"{where}: method={self.method!r} with init='random': a delta method adapts a "
                                  "frozen pre-trained model, and a random one has nothing to adapt; fine-tune the "
                                  "random baseline with method='full'")
        elif self.method_options:
            raise ConfigError(f"{where}: method options {sorted(self.method_options)} given without a method; "
                              f"choose one with method (one of {sorted(adapt.METHODS)})")
        self._check_distillation(where)
        self._check_compression(where)
        if self.frozen_dtype not in ("fp32", "bf16"):
            raise ConfigError(f"{where}: frozen_dtype must be fp32 or bf16, got {self.frozen_dtype!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"{where}: precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.frozen_dtype == "bf16" and (self.method == "full" or resolve_precision(self.precision, self.device)
                                             != "bf16"):
            raise ConfigError(f"{where}: frozen_dtype='bf16' holds a delta method's frozen weights in bf16, which "
                              f"needs a delta method (method={self.method!r}) and precision='bf16' (got "
                              f"{self.precision!r}, which is {resolve_precision(self.precision, self.device)} on "
                              f"{self.device}): full fine-tuning keeps fp32 master weights, and only bf16 "
                              "autocast computes with bf16 weights beside fp32 ones")
        if (self.template is None) != (self.verbalizer is None):
            raise ConfigError(f"{where}: prompt-based fine-tuning needs both template and verbalizer (got only "
                              f"{'template' if self.template is not None else 'verbalizer'})")
        if self.template is not None:
            Template(self.template)
            self.verbalizer = parse_words(self.verbalizer)
            if self.pooling is not None:
                raise ConfigError(f"{where}: pooling is the classifier head's, and prompt-based fine-tuning has none")
        if self.shots_per_class is not None and self.shots_per_class < 1:
            raise ConfigError(f"{where}: shots_per_class must be >= 1, got {self.shots_per_class}")
        if self.shots_per_class is not None and self.max_train_examples is not None:
            raise ConfigError(f"{where}: give shots_per_class or max_train_examples, not both")
        if self.pooling not in (None, "cls", "mean"):
            raise ConfigError(f"{where}: pooling must be 'cls' or 'mean' (or unset), got {self.pooling!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}: dropout must be in [0, 1) (or unset to keep the model's), got {self.dropout}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{where}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.data_parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"{where}: data_parallel must be ddp or fsdp, got {self.data_parallel!r}")
        if self.decay not in ("linear", "cosine", "constant"):
            raise ConfigError(f"{where}: decay must be linear, cosine or constant, got {self.decay!r}")
        if self.eval_split == self.train_split:
            raise ConfigError(
                f"{where}: eval_split and train_split are both {self.train_split!r}; evaluate on "
                "held-out data (e.g. eval_split='dev')"
            )

    def _check_compression(self, where: str) -> None:
        if self.compress is None:
            if self.compress_options:
                raise ConfigError(f"{where}: compress options {sorted(self.compress_options)} given without compress; "
                                  f"choose one of {list(TRAINING_COMPRESSION)}")
            return
        if self.compress not in TRAINING_COMPRESSION:
            raise ConfigError(f"{where}: compress={self.compress!r} is not a method that trains; choose one of "
                              f"{list(TRAINING_COMPRESSION)} (one-shot methods: ptm compress)")
        from_dict(_compression_config(self.compress), dict(self.compress_options),
                  where=f"{where}: {self.compress} options")
        if self.method != "full" or self.template is not None or self.data_parallel == "fsdp":
            raise ConfigError(f"{where}: compress={self.compress!r} prunes or quantises the whole model while it "
                              "trains; it does not combine with a delta method, a prompt template or FSDP sharding")

    def _check_distillation(self, where: str) -> None:
        if (self.teacher is None) != (self.distill is None):
            raise ConfigError(f"{where}: distillation needs both teacher (a fine-tuned model directory) and distill (one "
                              f"of {sorted(DISTILLERS)}); got only {'teacher' if self.teacher else 'distill'}")
        if self.distill is None:
            if self.distill_options:
                raise ConfigError(f"{where}: distill options {sorted(self.distill_options)} given without distill; "
                                  f"choose a method with distill (one of {sorted(DISTILLERS)})")
        else:
            if self.distill not in DISTILLERS:
                raise ConfigError(f"{where}: unknown distillation method {self.distill!r}; choose one of "
                                  f"{sorted(DISTILLERS)}")
            from_dict(DISTILLERS[self.distill][0], self.distill_options, where=f"{where}: {self.distill} options")
            if self.method != "full" or self.template is not None or self.init == "random":
                raise ConfigError(f"{where}: distillation trains a whole pre-trained student with a task head; it does "
                                  "not combine with a delta method, a prompt template or init='random'")
        if self.student_layers is not None and self.student_layers < 1:
            raise ConfigError(f"{where}: student_layers must be >= 1 (or unset to keep every layer), got "
                              f"{self.student_layers}")


# methods that compress while the model trains (one-shot methods are `ptm compress`)
TRAINING_COMPRESSION = ("gradual-magnitude", "movement", "soft-movement", "ticket", "random-mask", "qat-int8",
                        "ternary")
QUANTISE_WHILE_TRAINING = ("qat-int8", "ternary")


def _compression_config(name: str) -> type:
    if name in QUANTISE_WHILE_TRAINING:
        from ptmkit.compress.quant import QUANTIZERS  # torchao is imported only for quantisation

        return QUANTIZERS[name].config
    return unstructured.UNSTRUCTURED[name].config


def _compression(cfg: FinetuneConfig, model: torch.nn.Module):
    """Attach cfg.compress to the model about to train; returns the engine's on_step (None for QAT, whose fake
    quantisation needs no schedule)."""
    if cfg.compress is None:
        return None
    options = from_dict(_compression_config(cfg.compress), dict(cfg.compress_options))
    if cfg.compress in QUANTISE_WHILE_TRAINING:
        from ptmkit.compress.quant import quantize

        quantize(model, cfg.compress, options)
        return None
    return unstructured.prune(model, cfg.compress, options)


def _final_step(pruner, steps: int) -> int:
    """The first step whose model may be kept as the best: where a pruning schedule reaches its final sparsity (the
    last step if the run ends before that)."""
    schedule = getattr(getattr(pruner, "cfg", None), "schedule", None)
    return 0 if schedule is None else min(schedule.end + 1, steps)


def _deployable(cfg: FinetuneConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The model as best/ holds it: a copy with the pruning masks baked into plain weights, or the QAT model converted
    to int8; the model that trains keeps its masks and fake quantisers."""
    if cfg.compress is None:
        return model
    model = copy.deepcopy(model)
    if cfg.compress in QUANTISE_WHILE_TRAINING:
        from ptmkit.compress.quant import convert

        return convert(model)
    return unstructured.finalize(model)


@dataclass
class _Run:
    """Everything a fine-tuning run trains on, built and checked before anything is written."""

    spec: TaskSpec
    model: torch.nn.Module
    objective: TaskObjective
    batches: TaskBatches
    enc_train: Any
    enc_dev: Any
    dev: Any
    names: list[str] | None
    device: torch.device
    pad_id: int
    steps: int
    eval_every: int
    on_step: Any = None  # the engine's per-step hook (a pruning schedule)


def _resolved(data_dir, data_file) -> str | None:
    """The data file as an absolute path, so evaluate() finds it from anywhere."""
    if data_file is None:
        return None
    path = Path(data_file)
    return str((Path(data_dir) / path if data_dir is not None and not path.is_absolute() else path).resolve())


RUN_MARKERS = ("config.json", "metrics.jsonl", "results.json", "checkpoints", "best")


def _check_out(out: Path, cfg: FinetuneConfig, resume: bool) -> None:
    if not resume:
        outputs.check_free(out, RUN_MARKERS, overwrite=cfg.overwrite, kind="fine-tuning run", resume_flag="--resume")
        return
    saved = out / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume: {out} holds no fine-tuning run (config.json missing); start it without --resume")
    old = json.loads(saved.read_text())
    new = to_dict(dataclasses.replace(cfg, data_dir=old.get("data_dir")))
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise ConfigError(f"--resume: {out} was started with other settings: "
                          + ", ".join(f"{k}={old.get(k)!r} (now {new[k]!r})" for k in changed)
                          + "; resume with the same options or start a new run in another folder")


def _build(cfg: FinetuneConfig, state) -> _Run:
    model_dir = Path(cfg.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no config.json; pass a model directory "
                                "(config.json + model.safetensors + tokenizer files)")
    spec = TaskSpec(cfg.task, cfg.data_dir, cfg.text_fields, cfg.label_field, bool(cfg.regression),
                    columns=cfg.columns, split_column=cfg.split_column, data_file=cfg.data_file,
                    skip_bad_rows=cfg.skip_bad_rows)
    device = state.device if state is not None else _device(cfg.device)
    torch.manual_seed(cfg.seed)  # the new head's initial weights (the same on every rank)

    # data: the train split defines the label ids; eval/test are read with the same ones
    train_data, train_path = load_split(spec, cfg.train_split)
    names = train_data.tag_names if spec.is_token else train_data.label_names
    dev, dev_path = load_split(spec, cfg.eval_split, label_names=names, labels_from=f"the training split {train_path}")
    if not _labelled(dev):
        raise ValueError(f"{dev_path}: the eval split {cfg.eval_split!r} has no labels; pick a labelled split "
                         "to select the best model (score unlabelled splits with evaluate())")
    if not _labelled(train_data):
        raise ValueError(f"{train_path}: the training split has no labels")
    if len(train_data) == 0:
        raise ValueError(f"{train_path}: no training examples")
    train_data = _take(train_data, _subset(len(train_data), cfg.max_train_examples, cfg.seed))
    if cfg.shots_per_class is not None:
        train_data = _take(train_data, _per_class(train_data, cfg.shots_per_class, cfg.seed, train_path))
    dev = _take(dev, _subset(len(dev), cfg.max_eval_examples, cfg.seed + 1))

    tok = Tokenizer.load(model_dir)
    objective = TaskObjective(TaskConfig(kind_of(spec)))
    num_outputs = len(names) if not spec.is_regression else 1
    if cfg.distill is not None:  # the teacher: loaded like the student, never trained nor saved (compress.distill)
        cfg_cls, distiller = DISTILLERS[cfg.distill]
        teacher = load_model(cfg.teacher, task=objective.task, num_labels=num_outputs)
        objective = distiller(from_dict(cfg_cls, cfg.distill_options), objective, teacher)
    if cfg.template is not None and kind_of(spec) != "classification":
        raise ConfigError(f"prompt-based fine-tuning classifies by label words; task {spec.task!r} is "
                          f"{kind_of(spec)}: train it with a head (leave template unset)")
    model = _model(cfg, objective.task, num_outputs, tok, names)
    if cfg.template is not None:  # the texts become filled templates before tokenisation
        template = Template(cfg.template)
        train_data = prompt_examples(train_data, template, tok, cfg.max_length, model.causal)
        dev = prompt_examples(dev, template, tok, cfg.max_length, model.causal)
    backend = prepare_backend(tok)
    enc_train = encode_split(spec, backend, train_data, cfg.max_length, cfg.overlong, train_path)
    enc_dev = encode_split(spec, backend, dev, cfg.max_length, cfg.overlong, dev_path)
    if names is not None:
        model.label_names = list(names)  # saved as config.json id2label
    check_vocab(tok, model.config.vocab_size)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    extra = model.backbone.virtual_positions()  # a soft prompt's or a decoder prefix's positions come first
    if max_pos is not None and cfg.max_length + extra > max_pos:
        raise ConfigError(f"max_length {cfg.max_length}" + (f" + {extra} prompt positions" if extra else "")
                          + f" exceeds the model's {max_pos} positions; use max_length <= {max_pos - extra}")
    pad_id = _pad_id(tok)
    rank, world = (state.dp_rank, state.cfg.dp) if state is not None else (0, 1)
    batches = TaskBatches(enc_train, cfg.batch_size, pad_id, seed=cfg.seed, bucket=cfg.bucket_batches, rank=rank,
                          world_size=world)
    if state is not None:
        torch.manual_seed(cfg.seed + 1 + state.rank)  # independent dropout draws per rank
    per_epoch = math.ceil(batches.batches_per_epoch / cfg.grad_accum)  # optimizer steps per epoch
    steps = math.ceil(cfg.epochs * batches.batches_per_epoch / cfg.grad_accum)
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    on_step = _compression(cfg, model)
    return _Run(spec, model, objective, batches, enc_train, enc_dev, dev, names, device, pad_id, steps,
                cfg.eval_every or per_epoch, on_step)


def _method_options(cfg: FinetuneConfig, tok: Tokenizer | None = None) -> dict[str, Any]:
    """The method's options; a soft prompt initialised from text gets the text's token ids (init_ids)."""
    opts = dict(cfg.method_options)
    if tok is not None and opts.get("init") == "text" and opts.get("init_text") and not opts.get("init_ids"):
        ids = tok.encode(opts["init_text"], add_special_tokens=False)
        opts["init_ids"] = ids
    return opts


def _model(cfg: FinetuneConfig, task: str, num_labels: int, tok: Tokenizer | None = None,
           names: list[str] | None = None) -> torch.nn.Module:
    """The model to fine-tune, with a new task head: the directory's pre-trained weights, or (init='random') a freshly
    initialised model of its architecture, drawn from torch's RNG as seeded by cfg.seed. With a delta-tuning method
    the model is frozen but for the method's parameters and the task head (PEFT's modules_to_save); feature transfer
    brings its own head."""
    if cfg.template is not None:  # the model's own LM head scores the label words: no new head
        lm = init_model(cfg.model, dropout=cfg.dropout) if cfg.init == "random" else load_model(cfg.model,
                                                                                                dropout=cfg.dropout)
        if cfg.method != "full":
            adapt.apply(lm, cfg.method, _method_options(cfg, tok))
            adapt.freeze_except(lm)
            _hold_frozen(lm, cfg.frozen_dtype)
        return PromptClassifier.from_template(lm, Template(cfg.template), cfg.verbalizer, tok, names)
    if cfg.init == "random":
        return init_model(cfg.model, task=task, num_labels=num_labels, dropout=cfg.dropout, pooling=cfg.pooling)
    model = load_model(cfg.model, task=task, num_labels=num_labels, dropout=cfg.dropout, pooling=cfg.pooling)
    if cfg.student_layers is not None:
        model = student_from_teacher(model, cfg.student_layers)
    if cfg.method != "full":
        adapt.apply(model, cfg.method, _method_options(cfg, tok))
        head = [] if cfg.method == "feature" else [n for n, _ in model.named_children() if n != "backbone"]
        adapt.freeze_except(model, head)
        _hold_frozen(model, cfg.frozen_dtype)
    return model


def _hold_frozen(model: torch.nn.Module, dtype: str) -> None:
    """Cast the frozen parameters to bf16 in place (frozen_dtype='bf16'); tied ones are one Parameter, cast once."""
    if dtype == "bf16":
        for p in {id(p): p for p in model.parameters() if not p.requires_grad}.values():
            p.data = p.data.to(torch.bfloat16)


def _return_freed_memory() -> None:
    """Give the memory freed while building the run back to the OS before training starts.

    Tokenising the splits (ptmkit.data.encode, in chunks) and dropping the raw training text free ~0.2 GB
    in blocks that glibc keeps mapped rather than returning, and that the training step does not reuse, so they sat
    under the whole run's peak. malloc_trim(0) returns them (MiniLM on SST-2 at 32 x 256 tokens: -0.17 GB RSS at
    the first step, -0.2 GB peak; benchmarks/finetune_memory.py) in milliseconds, once. Without glibc (macOS, musl)
    there is nothing to call and nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _engine_configs(cfg: FinetuneConfig, run: _Run) -> tuple[TrainConfig, OptimConfig, ScheduleConfig]:
    train_cfg = TrainConfig(steps=run.steps, grad_accum=cfg.grad_accum, precision=cfg.precision,
                            log_every=cfg.log_every, eval_every=run.eval_every,
                            checkpoint_every=cfg.checkpoint_every or run.eval_every, keep_last=cfg.keep_last,
                            seed=cfg.seed, device=str(run.device), progress_bar=cfg.show_progress)
    optim_cfg = OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                            layer_decay=cfg.layer_decay, name=cfg.optimizer)
    sched_cfg = ScheduleConfig(warmup_steps=round(cfg.warmup_ratio * run.steps), decay=cfg.decay)
    return train_cfg, optim_cfg, sched_cfg


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task``; returns (and writes) out/results.json's contents.
    resume=True continues the interrupted run in cfg.out from its last checkpoint, bit for bit. Under torchrun,
    every rank trains its share of each batch (cfg.data_parallel: DDP replicas or FSDP2 shards)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    layout = ParallelConfig(dp_shard=-1) if cfg.data_parallel == "fsdp" else ParallelConfig(dp_replicate=world,
                                                                                             dp_shard=1)
    return run_on_ranks(layout, "cuda" if _device(cfg.device).type == "cuda" else "cpu", _finetune, cfg, resume)


def _finetune(cfg: FinetuneConfig, resume: bool, state) -> dict[str, Any]:
    wall0 = time.perf_counter()
    main = state is None or state.is_main
    out = Path(cfg.out)
    _check_out(out, cfg, resume)
    run = _build(cfg, state)
    _return_freed_memory()  # the data and weight loading leftovers must not sit under the training peak
    spec, model_dir = run.spec, Path(cfg.model)
    train_cfg, optim_cfg, sched_cfg = _engine_configs(cfg, run)
    precision = Precision(cfg.precision, run.device)

    def evaluator(module) -> dict[str, float]:  # every rank scores the whole eval split: the same figures
        with unsharded(module):
            outputs, loss = predict(module.model, run.enc_dev, spec, cfg.eval_batch_size, precision, run.device,
                                    run.pad_id)
        return {"loss": loss, **score(spec, run.enc_dev, run.dev, outputs)[1]}

    task_info = {"task": spec.task, "max_length": cfg.max_length, "text_fields": spec.text_fields,
                 "label_field": spec.label_field, "regression": spec.is_regression, "columns": spec.columns,
                 "split_column": spec.split_column, "data_file": _resolved(spec.data_dir, spec.data_file),
                 "tag_scheme": "iob2" if spec.is_token else None}
    if cfg.template is not None:
        task_info.update(template=cfg.template, verbalizer=cfg.verbalizer, label_names=run.names)

    def save_best(model, step: int) -> None:
        if state is not None and state.cfg.dp_shard > 1:
            model = _plain_copy(cfg, run, model, main)
        if not main:
            return
        with atomic.atomic_dir(out / "best") as tmp:  # a crash mid-save leaves the previous best intact
            # with a delta method: the frozen base and the task head, and beside them the method as an adapter
            lm = model.lm if cfg.template is not None else model  # prompt-based: the LM itself is the classifier
            if cfg.compress in QUANTISE_WHILE_TRAINING:  # the integer model it trained for, quantised layout
                from ptmkit.compress.quant import save_quantized

                save_quantized(_deployable(cfg, lm), tmp)
                Tokenizer.load(model_dir).save(tmp)
            else:
                save_model(_deployable(cfg, lm), tmp, tokenizer_from=str(model_dir), deltas="beside")
            if cfg.method != "full":
                # its base is best/ itself (the frozen weights and the trained head), where PEFT finds both
                adapt.save_adapter(lm, tmp / ADAPTER_DIR, base_model=str((out / "best").resolve()))
            atomic.write_text(tmp / TASK_FILE, json.dumps(task_info, indent=2) + "\n")

    if main and not resume:  # everything is validated: only now does the run touch its folder
        outputs.discard(out)  # an earlier run there (allowed by --overwrite) goes as a whole: never two runs mixed
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "config.json",
                          json.dumps(to_dict(dataclasses.replace(cfg, data_dir=str(spec.data_dir) if spec.data_dir else None)), indent=2) + "\n")
    bcfg = backbone_of(run.model).config
    fpt = training_flops_per_token(applied_parameters(run.model), bcfg.num_layers,
                                   round(float(np.mean(run.enc_train.lengths))), bcfg.hidden_size,
                                   causal=backbone_of(run.model).causal)
    peak, _ = mfu_denominator(str(run.device), resolve_precision(cfg.precision, run.device))
    summary = train(run.model, run.objective, run.batches, out, train_cfg, optim_cfg, sched_cfg, evaluate=evaluator,
                    resume=resume, flops_per_token=fpt, peak_flops=peak, parallel=state,
                    keep_best=KeepBest(spec.main_metric, save_best, from_step=_final_step(run.on_step, run.steps)),
                    on_step=run.on_step,
                    title=f"{model_dir.parent.name}/{model_dir.name}{' (random init)' if cfg.init == 'random' else ''} "
                          f"on {spec.task}")
    summary.pop("trained")
    if summary["interrupted"]:
        return {"interrupted": True, "steps": summary["steps"], "out": str(out)}
    return _results(cfg, run, summary, wall0) if main else {"rank": state.rank, "steps": summary["steps"]}


def _plain_copy(cfg: FinetuneConfig, run: _Run, sharded, main: bool) -> torch.nn.Module | None:
    """Collective under FSDP2: gather the sharded weights; rank 0 gets them as a plain single-device model."""
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
            for k, v in sharded.state_dict().items()}
    if not main:
        return None
    plain = _model(cfg, run.objective.task, len(run.names) if run.names else 1, Tokenizer.load(Path(cfg.model)),
                   run.names)
    plain.load_state_dict(full)
    if run.names is not None:
        plain.label_names = list(run.names)
    return plain


def _results(cfg: FinetuneConfig, run: _Run, summary: dict[str, Any], wall0: float) -> dict[str, Any]:
    spec, n_train = run.spec, len(run.enc_train)
    train_s = max(summary["train_s"], 1e-9)
    best = summary["best"] or {}
    results: dict[str, Any] = {
        "task": spec.task, "model": cfg.model, "init": cfg.init, "eval_split": cfg.eval_split,
        "main_metric": spec.main_metric, "best_step": best.get("step"), "dev": best.get("metrics"),
        "final": summary["eval"], "steps": summary["steps"], "epochs": round(summary["sequences"] / n_train, 4),
        "train_examples": n_train, "eval_examples": len(run.enc_dev),
        "truncated": {"train": run.enc_train.truncated, "eval": run.enc_dev.truncated},
        "precision": resolve_precision(cfg.precision, run.device), "device": str(run.device),
        "threads": torch.get_num_threads(),
        "method": cfg.method, "parameters": adapt.count_parameters(run.model),
        "train_time_s": round(train_s, 2), "eval_time_s": round(summary["eval_s"], 2),
        "examples_per_s": round(summary["sequences"] / train_s, 2),
        "tokens_per_s": round(summary["tokens"] / train_s, 1),
        "padding_fraction": round(1 - summary["tokens"] / max(summary["padded_tokens"], 1), 4),
    }
    if not spec.is_token and not spec.is_regression:
        counts = np.bincount(run.enc_train.labels, minlength=len(run.names))
        majority = int(counts.argmax())
        results["majority_class"] = run.names[majority]
        results["majority_baseline_accuracy"] = float(np.mean(run.enc_dev.labels == majority))
    out = Path(cfg.out)
    if cfg.test_split:
        test = evaluate(out / "best", spec.task, spec.data_dir, cfg.test_split, out / "test",
                        batch_size=cfg.eval_batch_size, precision=cfg.precision, device=cfg.device,
                        show_progress=False)
        results["test"] = test["metrics"]
        results["test_split"] = cfg.test_split
    results["wall_time_s"] = round(time.perf_counter() - wall0, 2)
    atomic.write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
