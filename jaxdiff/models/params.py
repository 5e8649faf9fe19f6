"""Parameter counts of a model's variables (pytrees of arrays or `jax.ShapeDtypeStruct`s)."""
from __future__ import annotations

import jax
import numpy as np


def count(tree) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def table(params, depth: int = 1) -> list[tuple[str, int]]:
    """[(module path, parameter count)] for the modules `depth` levels down the params tree."""
    rows = []

    def walk(node, path, level):
        if level == depth or not isinstance(node, dict) or not all(isinstance(v, dict) for v in node.values()):
            rows.append(("/".join(path) or "(root)", count(node)))
            return
        for k, v in node.items():
            walk(v, path + [k], level + 1)

    walk(params, [], 0)
    return rows
