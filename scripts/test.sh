#!/usr/bin/env bash
# Run the whole test suite in the project's virtual environment (creating it if needed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# -rs lists every skip with its reason: a skip must be a platform skip (e.g. CUDA-only) that says why, never
# missing data or a missing package (those fail, see tests/conftest.py).
# Two worker processes of one thread each (pytest-xdist, a test file per worker so module fixtures are built once):
# on the 2-core CI machine that is 1.6x faster than one process of two threads, where tiny models leave the second
# thread mostly idle. PTMKIT_TEST_WORKERS=0 runs in this process (for pdb).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest -q -rs -n "${PTMKIT_TEST_WORKERS:-2}" --dist loadfile "$@"
