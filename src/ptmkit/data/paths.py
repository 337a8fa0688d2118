"""Where ptmkit finds shared data: the data root is $PTMKIT_DATA, else ../shared/data beside the checkout.
One function so library code, tests and benchmarks agree on the same place (DESIGN.md § Data).
"""

from __future__ import annotations

import os
from pathlib import Path

# src/ptmkit/data/paths.py -> parents[3] is the repository root of an editable checkout.
_REPO_ROOT = Path(__file__).resolve().parents[3]


def data_root() -> Path:
    """The shared data root: $PTMKIT_DATA if set, else <repo>/../shared/data (may not exist)."""
    env = os.environ.get("PTMKIT_DATA")
    if env:
        return Path(env).expanduser()
    return (_REPO_ROOT / ".." / "shared" / "data").resolve()
