"""Device mesh and shardings.

The mesh has two axes: `data` (batch parallel) and `fsdp` (parameters and optimiser state sharded, batch
also split over it). The batch is sharded over both axes; with `fsdp = 1` parameters are replicated (pure data
parallel). Works unchanged on one CPU, 8 virtual CPU devices, a GPU node or a TPU pod slice (all processes).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxdiff.errors import InputError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg=None, devices=None) -> jax.sharding.Mesh:
    """Mesh of `devices` (default `jax.devices()`) with axes ("data", "fsdp"); `mesh.data = -1` takes the devices
    `fsdp` leaves. The command-line layer hands it the devices a run trains on (`jaxdiff.experiment.build`:
    `jaxdiff.platform.train_devices`, which keeps the train step on one of the CPU devices made for sampling)."""
    devices = list(jax.devices() if devices is None else devices)
    fsdp = int(mesh_cfg.get("fsdp", 1)) if mesh_cfg is not None else 1
    data = int(mesh_cfg.get("data", -1)) if mesh_cfg is not None else -1
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise InputError(f"config key mesh.fsdp: {fsdp} does not divide the {n} devices")
    data = n // fsdp if data == -1 else data
    if data * fsdp != n:
        raise InputError(f"config key mesh.data: data {data} x fsdp {fsdp} != {n} devices")
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), devices=devices, axis_types=(AxisType.Auto, AxisType.Auto))


def inference_mesh(mesh_cfg=None) -> jax.sharding.Mesh:
    """The mesh a checkpoint is restored onto for sampling / evaluation: `make_mesh(mesh_cfg)`, except in a single
    CPU process, where it is the first device alone. CPU devices are cores sharing one memory
    (`jaxdiff.platform.set_cpu_devices` makes one per core), so the state (parameters, EMA, optimiser moments) is
    kept once instead of once per core;
    sampling copies only the variables it uses to the devices it splits the batch over (`place_for_sampling`)."""
    if jax.default_backend() == "cpu" and jax.process_count() == 1:
        return jax.make_mesh((1, 1), BATCH_AXES, devices=jax.devices()[:1], axis_types=(AxisType.Auto,) * 2)
    return make_mesh(mesh_cfg)


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def sampling_mesh(batch: int) -> jax.sharding.Mesh | None:
    """1-axis ("data",) mesh over the most process-local devices that split `batch` evenly, for data-parallel
    sampling (each device runs the whole chain on its share of the batch); None when that is one device, or
    with several processes (each samples on its own devices, as before).

    E.g. 8 devices: batch 16 -> 8 devices, batch 12 -> 6, batch 5 -> None."""
    devices = jax.local_devices()
    if jax.process_count() > 1 or len(devices) < 2:
        return None
    used = max(k for k in range(1, len(devices) + 1) if batch % k == 0)
    return jax.sharding.Mesh(np.array(devices[:used]), ("data",)) if used > 1 else None


def place_for_sampling(batch: int, replicate, split):
    """(batch sharding or None, `replicate` on every sampling device, `split` along its leading axis) for a chain
    over `batch` examples: the pytrees are placed on `sampling_mesh(batch)`'s devices, or returned unchanged
    when there is none. `replicate`: parameters, PRNG keys; `split`: per-example conditioning (None leaves kept)."""
    mesh = sampling_mesh(batch)
    if mesh is None:
        return None, replicate, split
    sharding = NamedSharding(mesh, P("data"))
    return sharding, jax.device_put(replicate, replicated(mesh)), jax.device_put(split, sharding)


def _leaf_spec(shape, fsdp: int, min_size: int) -> P:
    """Shard the largest axis divisible by `fsdp` over "fsdp" if the array has >= min_size elements."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_sharding(abstract_state, mesh, min_size: int = 2 ** 14):
    """NamedShardings for every leaf of a (abstract) train state: FSDP by shape, or replicated."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(x.shape, fsdp, min_size)), abstract_state)


def global_batch(local_batch: dict, mesh) -> dict:
    """Turn this process's numpy batch into global jax arrays sharded over the batch axes.

    Each process passes its own shard (grain shards the data per process); the global batch size is
    local size x process count.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def any_process(flag: bool, mesh) -> bool:
    """True on every process if `flag` is True on any process. One all-reduce over the mesh's devices (the
    devices of the train step, so no new communicator is set up); a host sync point."""
    spec = NamedSharding(mesh, P(tuple(mesh.axis_names)))
    local = np.full((len(mesh.local_devices),), int(bool(flag)), np.int32)
    return bool(jax.device_get(_global_max(jax.make_array_from_process_local_data(spec, local))))


@jax.jit
def _global_max(x):
    return jax.numpy.max(x)
