"""CPU device counts: one XLA:CPU device per core for data-parallel sampling, and the devices a train mesh takes.

XLA:CPU runs each operation over all cores, and a UNet's convolutions at a few samples do not keep two cores busy;
one device per core, each running the chain on its share of the batch, samples faster (benchmarks/PERFORMANCE.md).
Training keeps one device per process (a data-parallel train step over the cores was slower): `train_devices`
gives the train mesh the first CPU device when the others are only `set_cpu_devices`' sampling devices.
"""
from __future__ import annotations

import os

from jaxdiff.platform.xla_flags import backends_started, defaults_on, user_xla_flags

CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"
_SAMPLING_CPU_DEVICES = 0  # the CPU device count `set_cpu_devices` set in this process (0: none)


def set_cpu_devices(n: int | None = None) -> int:
    """Give JAX's CPU backend `n` devices (0: one per core this process may run on; None: that default unless
    `JAXDIFF_XLA_CPU_DEFAULTS=0`), for data-parallel sampling (`DiffusionTask.jitted_sample` splits the batch over
    the devices). Call it before JAX creates its backends (`jaxdiff.platform.setup` does); the CPU backend
    only, GPU and TPU devices are unchanged. Returns the count set, or 0 when nothing was changed: `n` of 1, the
    user's XLA_FLAGS or JAX_NUM_CPU_DEVICES already choose, or the backends exist (with a warning)."""
    from jaxdiff.errors import InputError
    if n is not None and n < 0:
        raise InputError(f"--cpu_devices: {n} is negative (0: one per core, 1: a single device)")
    if n is None and not defaults_on():
        return 0
    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if (n <= 1 or CPU_DEVICES_FLAG in user_xla_flags() or os.environ.get("JAX_NUM_CPU_DEVICES")
            or backends_started(f"{n} CPU devices")):
        return 0
    import jax
    global _SAMPLING_CPU_DEVICES
    jax.config.update("jax_num_cpu_devices", n)
    _SAMPLING_CPU_DEVICES = n
    return n


def sampling_cpu_devices() -> int:
    """The CPU device count `set_cpu_devices` gave this process for sampling, or 0 when it set none (the user's
    XLA_FLAGS / JAX_NUM_CPU_DEVICES, or the default single CPU device)."""
    return _SAMPLING_CPU_DEVICES


def sampling_only_cpu_devices() -> bool:
    """True when this single process's devices are the CPU devices `set_cpu_devices` made for sampling."""
    import jax
    return bool(_SAMPLING_CPU_DEVICES) and jax.default_backend() == "cpu" and jax.process_count() == 1 \
        and jax.device_count() == _SAMPLING_CPU_DEVICES


def train_devices(mesh_cfg=None) -> list:
    """The devices a train mesh for the config's `mesh` block spans: `jax.devices()`, except the first alone when
    they are `set_cpu_devices`' sampling devices and the block leaves the mesh shape to jaxdiff (data -1, fsdp 1):
    that device's operations use every core. An explicit `mesh.data` / `mesh.fsdp` counts them all."""
    import jax
    devices = jax.devices()
    fsdp = int(mesh_cfg.get("fsdp", 1)) if mesh_cfg is not None else 1
    data = int(mesh_cfg.get("data", -1)) if mesh_cfg is not None else -1
    if (data, fsdp) == (-1, 1) and sampling_only_cpu_devices():
        return devices[:1]
    return devices
