"""`python -m benchmarks.micro --limits` at tiny sizes: every row is a finite positive measurement, and PyTorch's
convolution gradients (when torch is installed) equal JAX's, so the two frameworks time the same computation."""
from __future__ import annotations

import numpy as np


def test_limits_rows_at_tiny_sizes():
    from benchmarks import micro
    from configs import quickstart
    config = quickstart.get_config()
    config.model.update(dict(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), groups=4))
    config.data.image_size = 16
    rows = list(micro.limits(n=64, conv_shapes=(((2, 8, 8, 8), 4),), init_config=config))
    names = [name for name, _, _ in rows]
    assert all(np.isfinite(value) and value > 0 for _, value, _ in rows), rows
    for framework in ("JAX", "PyTorch"):  # torch is a test requirement (parity tests)
        assert f"{framework} 64^3 matmul, bfloat16" in names
        for part in ("forward", "input gradient", "weight gradient"):
            assert f"{framework} 3x3 conv x (2, 8, 8, 8) -> 4: {part}" in names
    assert [n for n in names if "compile" in n] == ["unet init (16^2), compile (XLA default)",
                                                     "unet init (16^2), compile (one-shot options)"]
