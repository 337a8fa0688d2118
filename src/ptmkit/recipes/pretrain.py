"""Pre-training run: the typed run config (YAML + dotted overrides) and the function that wires tokenizer,
token shards, model (through the registry), objective, batches, evaluation and the loop together."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptmkit import atomic, outputs
from ptmkit.compress.distill import DISTILLERS, student_from_teacher
from ptmkit.config import ConfigError, from_dict, to_dict
from ptmkit.data.annotations import annotated
from ptmkit.data.batches import PretrainBatches, RankSlice, fixed_batches
from ptmkit.data.images import ImagesConfig
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer, check_vocab
from ptmkit.models.convert.base import CheckpointError
from ptmkit.models.io import hf_adapter, load_model, save_model
from ptmkit.log import get
from ptmkit.models.registry import PRESETS, backbone_of, build_model, family, hf_export_form, make_config
from ptmkit.objectives import OBJECTIVES
from ptmkit.parallel.config import ParallelConfig, check_model
from ptmkit.parallel.mesh import run_on_ranks
from ptmkit.train.flops import applied_parameters, format_flops, mfu_denominator, training_flops_per_token
from ptmkit.train.layer_drop import LayerDropConfig, apply_layer_drop
from ptmkit.train.loop import TrainConfig, TrainingModule, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.precision import Precision
from ptmkit.train.precision import resolve as resolve_precision
from ptmkit.train.schedule import ScheduleConfig

log = get(__name__)


@dataclass
class ModelSection:
    family: str = "bert"  # one of the model families listed at the end of `ptm pretrain --help`
    preset: str | None = None  # a size from ptmkit.models.PRESETS, e.g. bert-mini
    config: dict[str, Any] = field(default_factory=dict)  # family config fields, over the preset
    init_from: str | None = None  # continue pre-training a model directory (preset/config, if given, must match it)
    stack_to: int | None = None  # progressive stacking (Gong et al. 2019): deepen init_from to this many layers
    # DistilBERT §3 starts the student from one layer out of two of its teacher
    student_layers: int | None = None  # distillation student: keep this many of init_from's layers (evenly spaced)


@dataclass
class DataSection:
    train: str = ""  # token shards directory (ptm data prepare)
    eval: str | None = None  # held-out shards (e.g. WikiText-2 valid) for loss / perplexity
    tokenizer: str = ""  # tokenizer directory the shards were prepared with
    seq_len: int = 128  # tokens per training sequence (<= the model's max_position_embeddings)
    boundary: str = "no_cross"  # cross | no_cross | mask (see ptmkit.data.sampler)
    batch_size: int = 32  # sequences per micro-batch
    eval_batches: int = 10  # fixed held-out batches scored at each evaluation
    entities: str | None = None  # per-token entity links of data.train (`ptm kg link`); ERNIE's dea objective needs them
    eval_entities: str | None = None  # the same links for data.eval; objectives other than dea ignore both

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batches"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be an integer >= 2 (a token and its target), got {self.seq_len!r}")


@dataclass
class ObjectiveSection:
    name: str = "mlm"  # a key of ptmkit.objectives.OBJECTIVES (listed at the end of --help)
    params: dict[str, Any] = field(default_factory=dict)  # the objective's own config, e.g. {mask_prob: 0.15}


@dataclass
class DistillSection:
    """Pre-training distillation (ptmkit.compress.distill): the model learns from `teacher` (a model directory with
    the same tokenizer and the objective's head) while training on the objective, e.g. DistilBERT's soft targets +
    masked LM + cosine, or TinyBERT's general distillation. Unset method = no teacher."""

    method: str | None = None  # distilbert | pkd | tinybert | minilm
    teacher: str | None = None  # the teacher model directory (same tokenizer; the objective's head, e.g. masked-lm)
    params: dict[str, Any] = field(default_factory=dict)  # the method's config, e.g. {temperature: 2.0}

    def __post_init__(self) -> None:
        if (self.method is None) != (self.teacher is None):
            raise ConfigError("distill: give both distill.method and distill.teacher (or neither)")
        if self.method is not None and self.method not in DISTILLERS:
            raise ConfigError(f"distill.method {self.method!r} is unknown; choose one of {sorted(DISTILLERS)}")
        if self.method is None and self.params:
            raise ConfigError("distill.params given without distill.method")


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # torchrun layouts (docs/scaling.md)
    layer_drop: LayerDropConfig = field(default_factory=LayerDropConfig)  # LayerDrop / progressive layer dropping
    distill: DistillSection = field(default_factory=DistillSection)  # a teacher (DistilBERT, TinyBERT general, ...)
    images: ImagesConfig = field(default_factory=ImagesConfig)  # image-text pairs (clip, vlp, vqvae, text-to-image)
    out: str = "runs/pretrain"  # run directory: run_config.json, metrics.jsonl, loss.png, checkpoints/, model/


def build_objective(section: ObjectiveSection, tokenizer: Tokenizer, vocab_size: int, seq_len: int | None = None):
    if section.name not in OBJECTIVES:
        raise ConfigError(f"objective: unknown name {section.name!r}; choose one of {sorted(OBJECTIVES)}")
    cfg_cls, obj_cls = OBJECTIVES[section.name]
    params = dict(section.params)
    hints = {f for f in getattr(cfg_cls, "__dataclass_fields__", {})}
    if "mask_token_id" in hints and params.get("mask_token_id", -1) < 0:
        if tokenizer.mask_id is None:
            raise ConfigError(f"objective {section.name}: the tokenizer has no mask token; train one with a mask special token")
        params["mask_token_id"] = tokenizer.mask_id
    if "vocab_size" in hints and params.get("vocab_size", -1) <= 0:
        params["vocab_size"] = vocab_size
    if "special_token_ids" in hints and "special_token_ids" not in params:
        params["special_token_ids"] = tokenizer.all_special_ids
    cfg = from_dict(cfg_cls, params, where=f"objective.{section.name}")
    if hasattr(obj_cls, "from_retriever"):  # retrieval-augmented (REALM): its passage index and encoders, loaded here
        from ptmkit.retrieval.retriever import Retriever  # (objectives never import retrieval/)

        objective = obj_cls.from_retriever(cfg, tokenizer, Retriever.load(cfg.index, temperature=cfg.temperature))
    # objectives that read the vocabulary (word starts, [CLS]/[SEP], an entity dictionary) build from the tokenizer
    elif hasattr(obj_cls, "from_tokenizer"):
        objective = obj_cls.from_tokenizer(cfg, tokenizer)
    else:
        objective = obj_cls(cfg)
    if seq_len is not None and hasattr(objective, "check_seq_len"):
        objective.check_seq_len(seq_len)  # e.g. a span longer than the sequence: an error now, not mid-run
    return objective


def run_objective(cfg: "PretrainConfig", tokenizer: Tokenizer, task: str | None):
    """The objective the run trains with: cfg.objective, wrapped by a distillation method when cfg.distill has one
    (the teacher loads with the objective's head and is never trained nor saved)."""
    objective = build_objective(cfg.objective, tokenizer, tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    d = cfg.distill
    if d.method is None:
        return objective
    cfg_cls, distiller = DISTILLERS[d.method]
    teacher = load_model(d.teacher, task=task)
    return distiller(from_dict(cfg_cls, d.params, where=f"distill.params ({d.method})"), objective, teacher)


def pretrain_task(objective, family_name: str) -> str:
    """The head an objective trains on this family: its own `task`, unless the family has a dedicated pre-training
    head for it (ALBERT's SOP head: task masked-lm-sop, exported as AlbertForPreTraining)."""
    return getattr(objective, "task_for_family", {}).get(family_name, objective.task)


def _check_matches_loaded(section: ModelSection, loaded) -> None:
    """model.preset / model.config beside model.init_from must describe the loaded model: the loaded directory's own
    config decides, so a value that differs would be silently ignored. Refuse it instead."""
    wanted: dict[str, Any] = {}
    if section.preset:
        if section.preset not in PRESETS:
            raise ConfigError(f"model.preset {section.preset!r} is unknown; choose one of {sorted(PRESETS)}")
        wanted.update(PRESETS[section.preset][1])
    wanted.update(section.config)
    differ = [f"{k}={v!r} (the model has {getattr(loaded, k, '<no such field>')!r})" for k, v in wanted.items()
              if getattr(loaded, k, object()) != v]
    if differ:
        raise ConfigError(f"model.init_from loads {section.init_from} with its own config, but model.preset/"
                          f"model.config ask for {', '.join(differ)}: remove them, or drop model.init_from to "
                          "pre-train a fresh model")


def build_pretrain_model(section: ModelSection, task: str, tokenizer: Tokenizer):
    if section.student_layers is not None and not section.init_from:
        raise ConfigError("model.student_layers takes layers of a trained model: set model.init_from to the teacher's "
                          "model directory")
    if section.stack_to is not None and not section.init_from:
        raise ConfigError("model.stack_to (progressive stacking) deepens a trained model: set model.init_from to the "
                          "shallow stage's model directory")
    if section.init_from:
        model = load_model(section.init_from, task=task)
        _check_matches_loaded(section, backbone_of(model).config)
        if section.stack_to is not None:
            from ptmkit.models.progressive import stack_layers

            model = stack_layers(model, section.stack_to)
        if section.student_layers is not None:
            model = student_from_teacher(model, section.student_layers)
    else:
        params: dict[str, Any] = {}
        if section.preset:
            if section.preset not in PRESETS:
                raise ConfigError(f"model.preset {section.preset!r} is unknown; choose one of {sorted(PRESETS)}")
            fam, params = PRESETS[section.preset]
            if fam != section.family:
                raise ConfigError(f"model.preset {section.preset!r} is a {fam} model but model.family is {section.family!r}")
        params = {**params, **section.config}
        config_cls = family(section.family).config
        if hasattr(config_cls, "tokenizer_defaults"):  # a config that nests its text settings (CLIP's text tower)
            params = config_cls.tokenizer_defaults(params, tokenizer)
        else:
            params.setdefault("vocab_size", tokenizer.vocab_size)
            if "pad_token_id" in config_cls.__dataclass_fields__ and tokenizer.pad_id is not None:
                params.setdefault("pad_token_id", tokenizer.pad_id)
        model = build_model(section.family, make_config(section.family, params), task)
    check_vocab(tokenizer, backbone_of(model).config.vocab_size)
    return model


def make_evaluator(batches: list[dict[str, torch.Tensor]], precision_ctx, device):
    """Token-weighted loss over fixed held-out batches; perplexity = exp(loss) (pseudo-perplexity for MLM).
    The returned function takes the TrainingModule (forward(batch) -> loss, metrics); under data parallelism every
    rank scores all batches, so the figure equals the single-process one."""

    @torch.no_grad()
    def evaluate(module) -> dict[str, float]:
        module.eval()
        total, count = 0.0, 0.0
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            with precision_ctx():
                loss, metrics = module(b)
            n = metrics.get("predicted_tokens", 1.0)
            total += loss.item() * n
            count += n
        loss = total / max(count, 1.0)
        module.train()
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def held_out_evaluator(cfg: PretrainConfig, tokenizer: Tokenizer, objective, device):
    """The run's evaluator on data.eval: the same fixed, seeded corrupted batches for every model scored with this
    config, so checkpoints of one run (or runs of one recipe) are compared on identical masks."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    eval_set = PackedDataset(TokenShards(cfg.data.eval, tokenizer), cfg.data.seq_len, cfg.data.boundary, pad_id=pad)
    eval_set = annotated(eval_set, cfg.data.eval_entities)
    return make_evaluator(fixed_batches(eval_set, cfg.data.batch_size, objective, cfg.data.eval_batches),
                          Precision(cfg.train.precision, device).autocast, device)


RUN_MARKERS = ("run_config.json", "metrics.jsonl", "summary.json", "checkpoints", "model")


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Single process, or every rank of a torchrun launch (then cfg.parallel says how the ranks split the work).
    A folder that holds a run is continued with resume=True or replaced with overwrite=True, never mixed."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the output folder and --overwrite replaces it: choose one")
    if not resume:
        outputs.check_free(cfg.out, RUN_MARKERS, overwrite=overwrite, kind="pre-training run", resume_flag="--resume")
    return run_on_ranks(cfg.parallel, cfg.train.device, _pretrain, cfg, resume)


@dataclass
class _Run:
    """Everything a pre-training run trains on, built and checked before anything is written."""

    tokenizer: Tokenizer
    objective: Any
    model: torch.nn.Module
    batches: Any
    evaluate: Any
    sequences: int
    flops_per_token: float
    peak: float | None
    peak_source: str
    setup_out: Any = None  # writes what the run needs in its folder first (a tokenizer trained for it), or None
    model_files: dict[str, str] = field(default_factory=dict)  # extra files of the model directory, by name


def _build(cfg: PretrainConfig, state, resume: bool = False) -> _Run:
    """Tokenizer, shards, objective, model, batches and evaluator: every check a run can fail happens here."""
    from ptmkit.recipes.image_text import build_run, reads_images
    from ptmkit.recipes.text_to_image import image_token_run

    image_tokens = image_token_run(cfg, state, resume)  # a VQ-VAE or a text-to-image generator (DALL·E), else None
    if image_tokens is not None:
        return _Run(**image_tokens)
    if cfg.images.train or reads_images(cfg.objective.name):  # image-text pairs (CLIP): recipes/image_text.py
        return _Run(**build_run(cfg, state, resume), flops_per_token=0.0, peak=None, peak_source="")
    if not cfg.data.train or not cfg.data.tokenizer:
        raise ConfigError("data.train (token shards directory) and data.tokenizer are required")
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    shards = TokenShards(cfg.data.train, tokenizer)  # refuses shards made with another tokenizer
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    task = pretrain_task(OBJECTIVES[cfg.objective.name][1], cfg.model.family) if cfg.objective.name in OBJECTIVES else None
    objective = run_objective(cfg, tokenizer, task)
    model = build_pretrain_model(cfg.model, task, tokenizer)
    if hasattr(objective, "bind"):  # auxiliary networks (ELECTRA's generator) draw their initial weights now, from
        objective.bind(model)      # the seed every rank shares, not after the per-rank dropout seed below
    bcfg = backbone_of(model).config
    max_pos = getattr(bcfg, "max_position_embeddings", None)
    if max_pos is not None and cfg.data.seq_len > max_pos:
        raise ConfigError(f"data.seq_len {cfg.data.seq_len} exceeds the model's max_position_embeddings {max_pos}")
    if state is not None:
        _check_layout(cfg, state, bcfg)
        torch.manual_seed(cfg.train.seed + 1 + state.rank)  # independent dropout draws per rank
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    dataset = annotated(PackedDataset(shards, cfg.data.seq_len, cfg.data.boundary, pad_id=pad), cfg.data.entities)
    _check_inputs(cfg, objective, dataset)
    batches = PretrainBatches(dataset, cfg.data.batch_size, objective, seed=cfg.train.seed)
    if state is not None and state.cfg.dp > 1:
        batches = RankSlice(batches, state.dp_rank, state.cfg.dp)  # data.batch_size is the global batch
    device = torch.device(str(state.device) if state is not None else cfg.train.device)
    evaluate = held_out_evaluator(cfg, tokenizer, objective, device) if cfg.data.eval else None
    peak, peak_source = mfu_denominator(str(device), cfg.train.precision)
    return _Run(tokenizer, objective, model, batches, evaluate, len(dataset), _flops_per_token(model, cfg.data.seq_len),
                peak, peak_source)


def _check_inputs(cfg: PretrainConfig, objective, dataset) -> None:
    """An objective that reads more than tokens from each batch (`inputs`, e.g. the dea objective's entity_ids) gets
    them from the data section, for training and held-out evaluation alike; say which setting is missing now."""
    wanted = getattr(objective, "inputs", ())
    have = set(dataset.get_batch([0]))
    for key in wanted:
        if key not in have or (cfg.data.eval and key == "entity_ids" and cfg.data.eval_entities is None):
            where = "data.entities" if key not in have else "data.eval_entities"
            hint = (f"set {where} to the entity links of those shards (`ptm kg link`)" if key == "entity_ids"
                    else "token shards do not hold them")
            raise ConfigError(f"objective {cfg.objective.name} reads {key!r} from every batch: {hint}")
    if cfg.data.entities is not None and "entity_ids" not in wanted:
        log.warning("data.entities is set but objective %s does not read entity links", cfg.objective.name)


def _check_layout(cfg: PretrainConfig, state, bcfg) -> None:
    check_model(state.cfg, bcfg.num_layers, bcfg.num_heads, getattr(bcfg, "num_kv_heads", None),
                getattr(bcfg, "intermediate_size", None), cfg.data.batch_size)
    if state.cfg.pp > 1 and (cfg.data.eval or resolve_precision(cfg.train.precision, cfg.train.device) == "fp16"):
        raise ConfigError("pipeline-parallel runs do not evaluate during training or use fp16 loss scaling yet: "
                          "leave data.eval empty and use precision bf16 or fp32 (evaluate the exported model)")


def _flops_per_token(model, seq_len: int) -> float:
    backbone = backbone_of(model)
    bcfg = backbone.config
    n_applied = applied_parameters(model)  # > the parameter count when layers share weights (ALBERT)
    emb = getattr(backbone, "embeddings", None)  # encoder-decoders (T5, BART) have none
    n_lookup = sum(m.weight.numel() for m in (emb.pos, emb.segment) if m is not None) if hasattr(emb, "segment") else 0
    return training_flops_per_token(n_applied - n_lookup, bcfg.num_layers, seq_len, bcfg.hidden_size,
                                    causal=backbone.causal)


def _announce(cfg: PretrainConfig, run: _Run, state) -> None:
    n_params = sum(p.numel() for p in run.model.parameters())
    layout = "" if state is None else (f" on {state.world_size} ranks (dp_replicate {state.cfg.dp_replicate}, "
                                       f"dp_shard {state.cfg.dp_shard}, tp {state.cfg.tp}, pp {state.cfg.pp})")
    log.info("%.1fM parameters, %d training sequences of %d tokens, %d steps x %d sequences%s", n_params / 1e6,
             run.sequences, cfg.data.seq_len, cfg.train.steps, cfg.data.batch_size * cfg.train.grad_accum, layout)
    if run.peak:
        log.info("MFU denominator: %s per device (%s); %.1f MFLOPs per token", format_flops(run.peak),
                 run.peak_source, run.flops_per_token / 1e6)


def _pretrain(cfg: PretrainConfig, resume: bool, state) -> dict[str, Any]:
    main = state is None or state.is_main
    out = Path(cfg.out)
    run = _build(cfg, state, resume)
    if main:  # everything is validated: only now does the run touch its folder
        if not resume:
            outputs.discard(out)  # an earlier run there (allowed by --overwrite) goes as a whole
        if run.setup_out is not None:
            run.setup_out(out)
        atomic.write_text(out / "run_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
        _announce(cfg, run, state)
    layer_drop = apply_layer_drop(run.model, cfg.layer_drop, seed=cfg.train.seed)
    t0 = time.perf_counter()
    summary = train(run.model, run.objective, run.batches, out, cfg.train, cfg.optim, cfg.schedule, run.evaluate,
                    resume, flops_per_token=run.flops_per_token, peak_flops=run.peak, parallel=state,
                    on_step=_step_hooks(layer_drop.step if layer_drop.blocks else None,
                                        getattr(run.objective, "on_step", None)))
    trained = summary.pop("trained")
    summary.pop("best")
    summary["wall_s"] = time.perf_counter() - t0
    summary["mfu_denominator"] = {"flops_per_s": run.peak, "source": run.peak_source} if run.peak else None
    summary["epochs"] = run.batches.epoch
    if not summary["interrupted"]:
        model, objective = run.model, run.objective
        if state is not None:  # gather the shards into one plain model on rank 0 (collective)
            model, objective = _unsharded_copy(cfg, trained, run.tokenizer, main, state.cfg.pp)
        if main:
            summary.update(save_trained(model, objective, run.tokenizer, out / "model", out))
            for name, text in run.model_files.items() if summary.get("model_dir") else ():
                atomic.write_text(Path(summary["model_dir"]) / name, text)
    if main:
        atomic.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _step_hooks(*hooks):
    """One on_step callback for the engine from the run's hooks (LayerDrop's schedule, REALM's index refresh), or
    None when there is none."""
    hooks = [h for h in hooks if h is not None]
    if not hooks:
        return None

    def on_step(step: int) -> None:
        for h in hooks:
            h(step)

    return on_step


def _unsharded_copy(cfg: PretrainConfig, trained, tokenizer, main: bool, pp: int = 1):
    """A single-device copy of the trained model (and objective networks) with the gathered weights, on rank 0."""
    from ptmkit.train.dcp import full_model_state
    full = full_model_state(trained, everywhere=pp > 1)
    if pp > 1:  # each pipeline stage holds different tensors: merge them on rank 0
        import torch.distributed as dist

        parts: list[dict] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, full)
        full = {k: v for part in parts for k, v in part.items()}
    if not main:
        return None, None
    plain = plain_training_module(cfg, tokenizer)
    plain.load_state_dict(full)
    return plain.model, plain.loss_fn


def plain_training_module(cfg: PretrainConfig, tokenizer: Tokenizer):
    """A fresh single-device model with the objective's networks, built as the run builds them (to load weights)."""
    task = pretrain_task(OBJECTIVES[cfg.objective.name][1], cfg.model.family)
    return TrainingModule(build_pretrain_model(cfg.model, task, tokenizer), run_objective(cfg, tokenizer, task))


def save_trained(model, objective, tokenizer: Tokenizer, model_dir: Path, exports_dir: Path) -> dict[str, str]:
    """The model directory (HF layout + tokenizer), and beside it in `exports_dir` every model the objective exports
    (ELECTRA's generator, a usable MLM too) and what its `save_exports` writes (REALM's trained retriever). Family
    rules live with the family (`hf_export_form`: ALBERT's partial sharing exports as the equivalent unshared
    model)."""
    model = hf_export_form(model)
    extra = dict(objective.exports()) if hasattr(objective, "exports") else {}
    try:  # e.g. BERT/GPT-2 with Mixture-of-Experts layers have no HF form (a LLaMA with MoE saves as Mixtral)
        for m in (model, *extra.values()):
            hf_adapter(m)
    except CheckpointError as e:
        log.warning("not writing %s: %s; the run's last training checkpoint holds the trained weights", model_dir, e)
        return {}
    written = {}
    for name, m, d in (("model", model, model_dir), *((n, m, exports_dir / n) for n, m in extra.items())):
        with atomic.atomic_dir(d) as tmp:
            save_model(m, tmp, tokenizer_from=None)
            if tokenizer is not None:  # an image tokenizer (VQ-VAE) run reads no text
                tokenizer.save(tmp)
        written[f"{name}_dir"] = str(d)
    if hasattr(objective, "save_exports"):  # what else a trained objective leaves for test time (REALM's retriever)
        written.update(objective.save_exports(exports_dir))
    return written


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> dict[str, str]:
    """Write a training checkpoint (DCP from any number of ranks, or single-process) as a plain model directory
    (config.json + model.safetensors + tokenizer; ELECTRA's generator beside it), loadable by ptmkit and
    transformers. The run's run_config.json (two levels up) says how to build the model."""
    from ptmkit.train.dcp import is_dcp_checkpoint, load_dcp_weights
    ckpt, out = Path(checkpoint), Path(out)
    run_config = ckpt.parent.parent / "run_config.json"
    if not (ckpt / "state.json").exists():
        raise FileNotFoundError(f"{ckpt} is not a training checkpoint (no state.json); pass e.g. "
                                "runs/NAME/checkpoints/step-00001000")
    if not run_config.exists():
        raise FileNotFoundError(f"{run_config} not found: the checkpoint must sit in its run directory "
                                "(RUN/checkpoints/step-N) next to the run's run_config.json")
    cfg = from_dict(PretrainConfig, json.loads(run_config.read_text()))
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    module = plain_training_module(cfg, tokenizer)
    from ptmkit.train.checkpoint import check_checkpoint, load_checkpoint_weights

    check_checkpoint(ckpt)  # a missing, truncated or corrupt file is named before anything is exported
    if is_dcp_checkpoint(ckpt):
        load_dcp_weights(ckpt, module)
    else:
        load_checkpoint_weights(ckpt, module.model, module.aux)
    return save_trained(module.model, module.loss_fn, tokenizer, out / "model" if module.aux is not None else out, out)
