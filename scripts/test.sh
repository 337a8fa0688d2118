#!/usr/bin/env bash
# Run the whole test suite in the project's virtual environment (creating it if needed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# -rs lists every skip with its reason: a skip must be a platform skip (e.g. CUDA-only) that says why, never
# missing data or a missing package (those fail, see tests/conftest.py).
exec "$PY" -m pytest -q -rs "$@"
