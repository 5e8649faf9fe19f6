"""Multi-host start-up: one call before anything touches a device.

On TPU VMs and under SLURM, `jax.distributed.initialize()` finds the coordinator, process count and id by
itself. Elsewhere (e.g. several local processes) they come from arguments or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. CPU devices use gloo collectives so that
multi-process CPU runs (tests, laptops) work; GPU and TPU are unaffected by that setting.
"""
from __future__ import annotations

import os

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the distributed runtime (idempotent per process)."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
