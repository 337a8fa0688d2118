#!/usr/bin/env bash
# Run the whole test suite in the project's virtual environment (creating it if needed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"
