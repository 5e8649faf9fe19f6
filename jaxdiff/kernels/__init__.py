"""The native CPU kernels' sources (`winograd3x3.cc`). Their build and load moved to `jaxdiff.platform.native` and
the convolution that calls them to `jaxdiff.ops.conv`; this module forwards the old names to the new place."""
from __future__ import annotations

from jaxdiff.platform.native import (ARCH_FLAGS, ENV_SWITCH, SOURCE, TARGET, _build, _compiler, _cpu_flags,  # noqa: F401
                                     _registered_width, cache_dir, disabled, enabled, vector_width)
