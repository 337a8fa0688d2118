"""Issue 16: LAMA knowledge probes (Petroni et al. 2019) — P@1, P@10 and MRR per T-REx relation (and SQuAD) for the
masked LMs named (their vocabulary at the mask) and the causal LMs named (the relation's objects ranked by likelihood),
with prompt search for masked LMs (LPAQA mined templates and their ensemble, AutoPrompt, OptiPrompt; each on a
held-out half of the facts). Writes the "lama" block of docs/analysis.md.

    .venv/bin/python experiments/lama_tables.py                                   # BERT-mini and SmolLM2
    .venv/bin/python experiments/lama_tables.py --masked bert-mini --causal "" --relations P19,P27,P1412
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402
from _records import reuse_or_run  # noqa: E402

from ptmkit.analysis.knowledge import read_facts  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masked", default="bert-mini", help="comma list of masked LMs (names or directories)")
    p.add_argument("--causal", default="smollm2", help="comma list of causal LMs ('' for none)")
    p.add_argument("--relations", default="P19,P20,P27,P103,P1412,P364,P176,P264",
                   help="T-REx relation ids (files <data root>/lama/TREx/ID.jsonl.gz)")
    p.add_argument("--search", type=int, default=5, help="prompt search size (mined templates, AutoPrompt triggers, "
                                                          "OptiPrompt vectors); 0 = none")
    p.add_argument("--squad", action=argparse.BooleanOptionalAction, default=True,
                   help="also LAMA's SQuAD cloze sentences, for the masked LMs (their blank is mid-sentence, which a "
                        "causal LM's left-to-right ranking cannot score)")
    p.add_argument("--reuse", action="store_true",
                   help="read a model's results.json from --out when it is there instead of probing again (to redo "
                        "the table after an edit; delete --out/MODEL to measure afresh)")
    p.add_argument("--max-facts", type=int, default=None, help="facts per relation (a prefix of each file)")
    p.add_argument("--data", default=os.environ.get("PTMKIT_DATA", str(ROOT.parent / "shared" / "data")),
                   help="data root")
    p.add_argument("--out", default="runs/analysis/lama", help="results")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'lama' block is written")
    args = p.parse_args(argv)
    lama = Path(args.data) / "lama"
    files = [lama / "TREx" / f"{r}.jsonl.gz" for r in args.relations.split(",") if r]
    missing = [f.name for f in files if not f.is_file()]
    if missing:  # before any model runs: the shared T-REx holds 28 of LAMA's 41 relations
        have = ",".join(sorted(f.name.split(".")[0] for f in (lama / "TREx").glob("*.jsonl.gz")))
        raise SystemExit(f"no T-REx file for {', '.join(missing)} in {lama / 'TREx'}; relations there: {have}")
    squad = [lama / "Squad" / "test.jsonl.gz"] if args.squad else []
    if squad and not squad[0].is_file():
        raise SystemExit(f"no {squad[0]}; pass --no-squad to leave SQuAD out")
    if args.max_facts or squad:  # a prefix of every file, for quick looks and tests; SQuAD under its own name
        import gzip

        cut = Path(args.out) / "facts"
        cut.mkdir(parents=True, exist_ok=True)
        short = []
        for f, name in [(f, f.name) for f in files] + [(f, "SQuAD.jsonl.gz") for f in squad]:
            rows = gzip.open(f, "rt").read().splitlines()[: args.max_facts]
            (cut / name).write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
            short.append(cut / name)
        files, squad = short[: len(files)], short[len(files):]
    def probe(name: str, out: Path, facts: list[Path], **kw) -> dict:
        return reuse_or_run(out, lambda: analyze.lama(model_dir(name), out, facts, **kw), reuse=args.reuse)

    majority = {}  # relation -> P@1 of always answering its most frequent object, over all its facts
    for f in files + squad:
        objs = [x.obj for x in read_facts(f)]
        majority[f.name.split(".")[0]] = max(objs.count(o) for o in set(objs)) / len(objs) if objs else None
    rows, summary = [], {}
    for kind, names in (("masked", args.masked), ("causal", args.causal)):
        for name in [n for n in names.split(",") if n]:
            search = args.search if kind == "masked" else 0
            here = Path(args.out) / Path(name).name  # a directory given by its path: its last part, inside --out
            r = probe(name, here, files, relations=lama / "relations.jsonl", mined=search,
                      optiprompt=search, autoprompt=search)
            summary[name] = r["macro"]
            rows_macro = [f"{r['macro'][k] * 100:.1f}" if r["macro"][k] is not None else "–"
                          for k in ("p@1", "p@10", "mrr")]
            if kind == "masked" and squad:  # ready cloze sentences: no template, so no prompt search
                r["relations"].update(probe(name, here / "squad", squad)["relations"])
            for rel, x in r["relations"].items():
                cells = [f"{x[k] * 100:.1f}" if x.get(k) is not None else "–" for k in ("p@1", "p@10", "mrr")]
                ps = x.get("prompt_search", {})
                best = {k: ps[k]["p@1"] for k in ("manual", "mined_top1", "mined_ensemble", "autoprompt", "optiprompt")
                        if isinstance(ps.get(k), dict) and ps[k].get("p@1") is not None}
                search_cell = ", ".join(f"{k} {v * 100:.1f}" for k, v in best.items()) or "–"
                base = f"{majority[rel] * 100:.1f}" if majority.get(rel) is not None else "–"
                rows.append(f"| {name} | {rel} | {x['asked']} of {x['facts']} | {' | '.join(cells)} | {base} | "
                            f"{search_cell} |")
            means = [v for k, v in majority.items() if k in r["relations"] and k != "SQuAD" and v is not None]
            base = f"{sum(means) / len(means) * 100:.1f}" if means else "–"
            rows.append(f"| {name} | **T-REx mean** | | {' | '.join(rows_macro)} | {base} | |")
    lines = ["| model | relation | facts asked | P@1 | P@10 | MRR | majority object P@1 | P@1 on the held-out half: "
             "manual vs searched |", "|---|---|---|---|---|---|---|---|", *rows, "",
             "Masked LMs rank their vocabulary at the mask (single-token objects only, as LAMA); causal LMs rank the "
             "relation's objects by log-likelihood after the template's beginning (so SQuAD, whose blank is "
             "mid-sentence, is for masked LMs only). Macro averages are over the T-REx relations. The majority baseline "
             "answers every fact of a relation with its most frequent object (over all its facts). Prompt search "
             "trains or selects on a seeded half of each relation's facts and is scored on the other half. Measured "
             f"{date.today().isoformat()} with `python experiments/lama_tables.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="lama")
    out = {"experiment": "lama_tables", "macro": summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
