"""Moved to `jaxdiff.ops.conv` (the Winograd convolution beside its reference); the old names are forwarded."""
from __future__ import annotations

from jaxdiff.ops.conv import (WINOGRAD_G, WINOGRAD_GG, conv3x3, conv_general_dilated, native_eligible,  # noqa: F401
                              reference_conv3x3, winograd_weights)
