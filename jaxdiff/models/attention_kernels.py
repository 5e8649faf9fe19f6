"""Moved to `jaxdiff.ops.attention` (attention with each backend's kernel beside the reference); the old names are
forwarded."""
from __future__ import annotations

from jaxdiff.ops.attention import (FLASH_BLOCK, attention, cudnn_attention, cudnn_supported,  # noqa: F401
                                   per_batch_and_head, tpu_flash_attention, tpu_flash_supported, xla_gpu_attention)
