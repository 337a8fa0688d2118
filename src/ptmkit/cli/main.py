"""Entry point of the `ptm` command: one module per sub-command, each with add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> module under ptmkit.cli; each module defines add_parser(subparsers) and run(args) -> int.
# Modules are imported lazily so `ptm --help` stays fast and a broken optional import only affects its command.
COMMANDS = {
    "tokenizer": "ptmkit.cli.tokenizer",
    "data": "ptmkit.cli.data",
    "kg": "ptmkit.cli.kg",
    "pretrain": "ptmkit.cli.pretrain",
    "finetune": "ptmkit.cli.finetune",
    "evaluate": "ptmkit.cli.evaluate",
    "convert": "ptmkit.cli.convert",
    "generate": "ptmkit.cli.generate",
    "generate-image": "ptmkit.cli.generate_image",
    "merge": "ptmkit.cli.merge",
    "icl": "ptmkit.cli.icl",
    "export-onnx": "ptmkit.cli.export_onnx",
    "compress": "ptmkit.cli.compress",
    "analyze": "ptmkit.cli.analyze",
    "zero-shot": "ptmkit.cli.zero_shot",
    "index": "ptmkit.cli.index",
    "rag": "ptmkit.cli.rag",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptm",
        description="ptmkit: build, pre-train, adapt, compress and analyse Transformer PTMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ptmkit.log import setup

    setup()  # the library's messages (ptmkit logger) reach the terminal as [ptmkit] ...
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra  # --section.key value pairs, validated against the typed config
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        # Library errors carry messages written for users; show them without a traceback.
        print(f"ptm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system refused a read or write: say which file and what to do
        print(f"ptm {args.command}: error: {_os_advice(e)}", file=sys.stderr)
        return 2


def _os_advice(e: OSError) -> str:
    import errno

    where = f"{e.filename}: " if e.filename else ""
    fix = {errno.EACCES: "the folder is not writable by you: choose another output folder or fix its permissions",
           errno.EROFS: "the file system is read-only: choose an output folder on a writable disk",
           errno.ENOSPC: "the disk is full: free space or write elsewhere (checkpoints already written are intact)",
           errno.EFBIG: "the file exceeds a file-size limit (ulimit -f or the file system's): raise the limit or "
                        "write elsewhere (checkpoints already written are intact)",
           errno.EDQUOT: "your disk quota is exhausted: free space or write elsewhere"}.get(e.errno, "")
    return f"{where}{e.strerror or e}" + (f"; {fix}" if fix else "")


def entry(argv: list[str] | None = None) -> None:
    """The process entry (`ptm ...`, `python -m ptmkit.cli ...`, torchrun ranks): run `main` and exit with its code.

    A torchrun rank ends with os._exit once its output is flushed. By then the process group is destroyed and every
    file is written and closed, but interpreter finalization can still destroy gloo's worker threads while they
    hold tensors, and an occasional rank then aborts ("terminate called without an active exception") after a run
    that succeeded, failing the whole launch (pytorch/pytorch#179291 describes the race)."""
    code = main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
