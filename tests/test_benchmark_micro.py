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
        assert f"{framework} matmul, bfloat16, 64^3" in names
        for part in ("forward", "input gradient", "weight gradient"):
            assert f"{framework} 3x3 conv x (2, 8, 8, 8) -> 4: {part}" in names
    assert "NumPy (its BLAS) matmul, float32, 64^3" in names
    assert [n for n in names if "compile" in n] == ["unet init (16^2), compile (XLA default)",
                                                     "unet init (16^2), compile (one-shot options)"]


def test_matmul_rate_shrinks_a_product_without_a_fast_path():
    import time
    from benchmarks import micro
    sizes = []

    def multiply(a):  # 20 ms at n = 256 (as a slow dtype would be), instant below
        sizes.append(a.shape[0])
        time.sleep(0.02 if a.shape[0] == 256 else 0)

    [(what, rate, unit)] = micro._matmul_rate("fake", 256, lambda m: np.ones((m, m)), multiply, slow_s=0.01)
    assert what == "fake, 64^3" and unit == "GFLOP/s" and rate > 0
    assert sizes[:2] == [256, 256] and set(sizes[2:]) == {64}  # first call, a confirming call, then n / 4
    [(what, _, _)] = micro._matmul_rate("fake", 64, lambda m: np.ones((m, m)), multiply, slow_s=0.01)
    assert what == "fake, 64^3"
