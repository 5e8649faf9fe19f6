"""XLA:CPU flags: the defaults jaxdiff adds to `XLA_FLAGS` and a config's `xla_cpu_fusion` choice.

`CPU_XLA_FLAGS` route XLA:CPU's dots, convolutions, elementwise and reduction fusions through YNNPACK, which uses
every core (XLA's own convolution runs on one); the parity tests check that the outputs stay the same. `xla_cpu_*`
flags are read by the CPU backend only: GPU and TPU compilation is unchanged. They are read when JAX creates its
CPU backend, so `add_cpu_xla_flags` / `set_cpu_fusion` act only before that (`jaxdiff.platform.setup`).
`JAXDIFF_XLA_CPU_DEFAULTS=0` turns them off; a flag the user put in XLA_FLAGS wins.
"""
from __future__ import annotations

import os
import sys

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_TYPES = ("dot", "eltwise", "reduce", "individual_dot", "individual_convolution")  # XLA's LibraryFusionType
CPU_XLA_FLAGS = (f"{YNN_FUSION_FLAG}=dot,eltwise,reduce",)
DEFAULTS_ENV = "JAXDIFF_XLA_CPU_DEFAULTS"  # 0: no XLA:CPU defaults, no malloc tunable, one CPU device
_ADDED_ENV = "JAXDIFF_ADDED_XLA_FLAGS"  # the flags in XLA_FLAGS that jaxdiff added (seen by child processes)


def defaults_on() -> bool:
    """False when `JAXDIFF_XLA_CPU_DEFAULTS=0` turns jaxdiff's CPU defaults off."""
    return os.environ.get(DEFAULTS_ENV, "1") != "0"


def user_xla_flags() -> str:
    """XLA_FLAGS without the flags jaxdiff added to it (in this process or the parent it inherited them from)."""
    added = set(os.environ.get(_ADDED_ENV, "").split())
    return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in added)


def _set_added_flags(remove: str | None, add: list[str]) -> None:
    """Put `add` into XLA_FLAGS (dropping flags named `remove`) and record them as added by jaxdiff."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if remove is None or f.split("=")[0] != remove]
    added = [f for f in os.environ.get(_ADDED_ENV, "").split() if remove is None or f.split("=")[0] != remove]
    os.environ["XLA_FLAGS"] = " ".join(kept + [f for f in add if f not in kept])
    os.environ[_ADDED_ENV] = " ".join(added + [f for f in add if f not in added])


def add_cpu_xla_flags() -> list[str]:
    """Add the `CPU_XLA_FLAGS` that XLA_FLAGS does not set yet (none with `JAXDIFF_XLA_CPU_DEFAULTS=0`); returns
    the flags added."""
    if not defaults_on():
        return []
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
    if missing:
        _set_added_flags(None, missing)
    return missing


def set_cpu_fusion(types: str | None) -> bool:
    """Route these XLA:CPU fusion types ("dot,reduce", ...) through YNNPACK instead of `CPU_XLA_FLAGS`' choice.

    For a config's `xla_cpu_fusion` key; call it before JAX creates its CPU backend (the flag is read then).
    Raises InputError naming the key for a type outside `YNN_FUSION_TYPES`.
    No-op (returns False) when `types` is empty, when the user's XLA_FLAGS sets the flag (the user wins) or with
    `JAXDIFF_XLA_CPU_DEFAULTS=0`, and with a warning when JAX's backends already exist (the flag would be ignored:
    a notebook that ran JAX first keeps the defaults)."""
    check_cpu_fusion(types)
    if not types or not defaults_on() or YNN_FUSION_FLAG in user_xla_flags():
        return False
    flag = f"{YNN_FUSION_FLAG}={types}"
    if flag in os.environ.get("XLA_FLAGS", "").split():
        return True
    if backends_started(f"xla_cpu_fusion={types!r}"):
        return False
    _set_added_flags(YNN_FUSION_FLAG, [flag])
    return True


def check_cpu_fusion(types: str | None) -> None:
    """InputError naming config key `xla_cpu_fusion` for a type outside `YNN_FUSION_TYPES` (XLA would abort at
    start-up with its whole flag list)."""
    unknown = [t for t in (types or "").split(",") if t not in YNN_FUSION_TYPES]
    if types and unknown:
        from jaxdiff.errors import InputError
        raise InputError(f"config key xla_cpu_fusion: unknown fusion type {unknown[0]!r} in {types!r} "
                         f"(comma-separated, of {', '.join(YNN_FUSION_TYPES)})")


def backends_started(what: str) -> bool:
    """True (with a warning that `what` is not applied) when JAX's backends already exist in this process."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        return False
    import warnings
    warnings.warn(f"{what} not applied: JAX's backends already exist in this process", stacklevel=3)
    return True


MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def use_memory_minimising_scheduler() -> None:
    """Compile with XLA:CPU's memory-minimising scheduler (`summary --memory`): the default concurrency-optimised
    one undoes remat, which memory-aware GPU/TPU scheduling keeps. Call before JAX creates its CPU backend."""
    if MEMORY_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
        _set_added_flags(None, [MEMORY_SCHEDULER_FLAG])
