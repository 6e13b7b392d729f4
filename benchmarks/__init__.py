"""kgclip benchmarks: scripts run as ``python -m benchmarks.NAME``; results go to benchmarks/results/."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def write_result(path: str | os.PathLike, obj, indent: int = 2, announce: bool = True) -> Path:
    """Write a benchmark's result ``obj`` as JSON (folders made as needed); say where on stderr."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=indent) + "\n")
    if announce:
        print(f"wrote {p}", file=sys.stderr)
    return p
