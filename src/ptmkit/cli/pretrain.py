"""`ptm pretrain CONFIG.yaml [--resume] [--section.key value ...]`: pre-train a model with an objective."""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    from ptmkit.cli.overrides import describe
    from ptmkit.models.registry import FAMILIES, PRESETS
    from ptmkit.objectives import OBJECTIVES
    from ptmkit.recipes.pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="pre-train a model (MLM, CLM, ...) on prepared token shards, or on image-text pairs (CLIP, VisualBERT / "
             "LXMERT, VQ-VAE, text-to-image)",
        description=(
            "Pre-train from a YAML recipe (see configs/). Any config key can be overridden with "
            "--section.key value, e.g. --train.steps 200 --optim.lr 3e-4. The resolved config is saved as "
            "run_config.json in the run directory, with metrics.jsonl, loss.png, checkpoints/ and the final "
            "model/ (Hugging Face layout). Ctrl-C saves a checkpoint; --resume continues exactly."
        ),
        epilog="config keys:\n" + "\n".join(describe(PretrainConfig))
        + "\n\nobjectives (objective.name): " + ", ".join(sorted(OBJECTIVES))
        + "\n\neach objective's keys (--objective.params.KEY; ids and sizes left at -1 come from the tokenizer):"
        + "".join(f"\n{name}:\n" + "\n".join(describe(cfg_cls, "objective.params."))
                  for name, (cfg_cls, _) in sorted(OBJECTIVES.items()) if cfg_cls is not None)
        + "\nmodel families (model.family): " + ", ".join(sorted(FAMILIES))
        + "\nmodel presets (model.preset): " + ", ".join(sorted(PRESETS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", default=None, help="YAML recipe (optional: all keys can be given as overrides)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in the output folder (it is removed as a whole); without it, or "
                        "--resume, a folder holding a run is refused")
    p.set_defaults(run=run, accepts_overrides=True)


def run(args) -> int:
    from ptmkit.cli.overrides import build_config, parse_dotted
    from ptmkit.recipes.pretrain import PretrainConfig, pretrain

    cfg = build_config(PretrainConfig, args.config, parse_dotted(args.overrides))
    summary = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for everyone
        return 130 if summary["interrupted"] else 0
    ev = summary.get("eval") or {}
    print(f"done: {summary['steps']} steps in {summary['wall_s']:.0f} s"
          + (f", eval loss {ev['loss']:.3f}" if ev else "")
          + (f" (perplexity {ev['perplexity']:.1f})" if "perplexity" in ev else "")
          + (f", held-out R@1 image->text {ev['i2t_r1']:.3f} / text->image {ev['t2i_r1']:.3f} (chance "
             f"{ev['t2i_r1_chance']:.3f})" if "i2t_r1" in ev else "")
          + (f"; model saved to {summary['model_dir']}" if summary.get("model_dir") else "; interrupted"))
    return 130 if summary["interrupted"] else 0
