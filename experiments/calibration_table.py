"""Issue 16: calibration and uncertainty of fine-tuned classifiers — ECE before and after temperature scaling, Monte
Carlo dropout, and out-of-distribution detection by the maximum softmax probability (AUROC) against another task's
texts; reliability diagrams copied to docs/analysis/. Writes the "calibration" block of docs/analysis.md.

    .venv/bin/python experiments/calibration_table.py                    # MiniLM fine-tuned on SST-2; OOD: CoLA
    .venv/bin/python experiments/calibration_table.py --models DIR1,DIR2 --ood-task rte
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT, model_dir  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes import analyze  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm-sst2", help="fine-tuned classifiers (names or directories)")
    p.add_argument("--ood-task", default="cola", help="the out-of-distribution texts' task")
    p.add_argument("--passes", type=int, default=10, help="Monte Carlo dropout samples")
    p.add_argument("--max-examples", type=int, default=None, help="a seeded subset of each split")
    p.add_argument("--data-dir", default=None, help="the classifier's task folder (default: its GLUE folder)")
    p.add_argument("--ood-data-dir", default=None, help="the OOD task's folder")
    p.add_argument("--out", default="runs/analysis/calibration", help="results")
    p.add_argument("--docs", default=str(ROOT / "docs" / "analysis.md"), help="page whose 'calibration' block is written")
    args = p.parse_args(argv)
    rows, summary = [], {}
    for name in args.models.split(","):
        r = analyze.calibration(model_dir(name), Path(args.out) / Path(name).name, data_dir=args.data_dir,
                                ood_task=args.ood_task, ood_data_dir=args.ood_data_dir, passes=args.passes,
                                max_examples=args.max_examples)
        summary[name] = {k: r[k]["ece"] for k in ("plain", "temperature_scaled", "mc_dropout")}
        rows.append(f"| {Path(name).name} | {r['task']} | {r['plain']['accuracy'] * 100:.1f} | {r['plain']['ece']:.3f} | "
                    f"{r['temperature']:.2f} | {r['temperature_scaled']['ece']:.3f} | {r['mc_dropout']['ece']:.3f} | "
                    f"{r['ood']['auroc_msp']:.3f} |")
        if args.docs:  # figures go beside the page the block is written to, never into docs/ from a test
            plot = Path(args.docs).parent / "analysis" / f"calibration_{Path(name).name}.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(args.out) / Path(name).name / "calibration.png", plot)
    lines = ["| model | task | accuracy | ECE | temperature | ECE after | ECE, MC dropout | OOD AUROC (max softmax) |",
             "|---|---|---|---|---|---|---|---|", *rows, "",
             f"15 equal-width confidence bins; the temperature is fitted on a seeded half of the dev split and every "
             f"figure is on the other half; MC dropout: {args.passes} passes at dropout 0.1; OOD: the classifier's "
             f"dev texts against {args.ood_task}'s. Measured {date.today().isoformat()} with "
             "`python experiments/calibration_table.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Understanding pre-trained models", name="calibration")
    out = {"experiment": "calibration_table", "ece": summary}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
