"""Work-directory files on a local disk or on cloud storage (gs://...), through etils.epath.

Multi-host runs on TPU pods keep their work directory on a bucket: orbax checkpoints go there natively, and
the small files (config.json, metrics.jsonl, report.json, PNG figures) go through these helpers.
"""
from __future__ import annotations

import json
import os

from etils import epath


def path(p) -> epath.Path:
    """epath.Path for a local path (made absolute) or a URL such as gs://bucket/dir."""
    p = str(p)
    return epath.Path(p if "://" in p else os.path.abspath(p))


def is_local(p) -> bool:
    return "://" not in str(p)


def makedirs(p) -> epath.Path:
    out = path(p)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text(p, text: str) -> str:
    """Write `text` to `p`, creating parent folders. Returns the path as a string."""
    out = path(p)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return str(out)


def append_line(p, line: str) -> None:
    """Append one line (cloud storage has no append: the object is rewritten, fine for small logs)."""
    out = path(p)
    if is_local(p):
        with open(out, "a") as f:
            f.write(line.rstrip("\n") + "\n")
    else:
        old = out.read_text() if out.exists() else ""
        out.write_text(old + line.rstrip("\n") + "\n")


def open_write(p, mode: str = "wb"):
    """File object for writing `p` (parents created), e.g. for PIL or matplotlib `savefig`."""
    out = path(p)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.open(mode)


def strict_json(obj, indent: int | None = None) -> str:
    """JSON text of `obj` with NaN/inf as null (strict JSON: every parser reads it); numpy scalars as numbers."""
    import math

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return json.dumps(clean(obj), indent=indent, allow_nan=False, default=str)
