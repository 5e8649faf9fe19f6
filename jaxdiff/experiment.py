"""An experiment's parts, built from its config: what the command-line layer hands the training loop.

    exp = build(config)                      # task, mesh, optimiser, training batches, val split
    report = training.loop.train(config, workdir, **exp._asdict())
    report = run(config, workdir)            # the same two lines, as `python -m jaxdiff.train` runs them

`load_for_inference(workdir)` is the other way in: (config, task, state) of a trained work directory, for sample,
evaluate, predict and `jaxdiff.inference`. Backend set-up (XLA:CPU flags, device counts, the compilation cache) is
not done here: the command-line layer calls `jaxdiff.platform.setup` first.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import jax
import numpy as np

from jaxdiff import data, tasks
from jaxdiff.errors import InputError
from jaxdiff.io import files
from jaxdiff.platform import train_devices
from jaxdiff.training import sharding as shd
from jaxdiff.training.state import make_optimizer


class Experiment(NamedTuple):
    """What `training.loop.train` runs: the task (model and loss), the device mesh, the optax optimiser, an
    iterator of this process's rows of the training batches (dicts of numpy arrays; checkpointable grain
    iterator) and the val split's source (for the end-of-run report)."""
    task: Any
    mesh: jax.sharding.Mesh
    optimizer: Any
    train_iter: Iterator[dict]
    val_source: Any


def build(config, *, quiet: bool = False, devices=None) -> Experiment:
    """The parts of `config`'s run: its data checked (every file of every split, before anything is compiled or
    written; `quiet`: no progress bar), the task, a mesh over `devices` (default `jaxdiff.platform.train_devices`
    for `config.mesh`), the optimiser of `config.train`, the training batches and the val source."""
    data.check_data(config.data, quiet=quiet)
    task = tasks.build(config)
    mesh = shd.make_mesh(config.get("mesh"), devices=train_devices(config.get("mesh")) if devices is None else devices)
    return Experiment(task=task, mesh=mesh, optimizer=make_optimizer(config.train),
                      train_iter=data_iterator(config, "train", mesh),
                      val_source=data.get_source(config.data, "val"))


def run(config, workdir: str, quiet: bool = False) -> dict:
    """Train (or resume) `config` in `workdir`: `build` then `training.loop.train`; returns the final report."""
    from jaxdiff.training import loop
    return loop.train(config, workdir, **build(config, quiet=quiet)._asdict(), quiet=quiet)


def _local_rows(mesh, global_bs: int) -> np.ndarray:
    """Indices (ascending) of the global batch rows that this process's devices hold in the batch sharding."""
    index_map = shd.batch_sharding(mesh).addressable_devices_indices_map((global_bs,))
    return np.unique(np.concatenate([np.arange(global_bs)[idx[0]] for idx in index_map.values()]))


def data_iterator(config, split: str, mesh):
    """Iterator of this process's rows of the global training batches (dicts of numpy arrays).

    The global batch stream (shuffle order, augmentation draws) is a function of the config alone, so a run
    gives the same results on 1 or N processes; process p reads only its rows p*L .. (p+1)*L - 1 of each
    global batch (grain shards by batch), which are the rows its devices hold in the batch sharding.
    """
    source = data.get_source(config.data, split)
    global_bs, n, p = int(config.train.batch_size), jax.process_count(), jax.process_index()
    if global_bs % mesh.size:
        raise InputError(f"config key train.batch_size: {global_bs} not divisible by the {mesh.size} devices")
    local_bs = global_bs // n
    if not np.array_equal(_local_rows(mesh, global_bs), np.arange(p * local_bs, (p + 1) * local_bs)):
        raise InputError("config key mesh: this process's devices do not hold a contiguous block of the batch")
    ds = data.make_dataset(source, local_bs, seed=int(config.seed), shuffle=True, shard_index=p, shard_count=n,
                           worker_count=int(config.data.get("num_workers", 0)),
                           transform=data.pipeline.train_transform(config.data))
    return iter(ds)


def saved_config(workdir: str):
    """The config.json of a work directory, or None when it cannot be read (`load_for_inference` says why)."""
    from jaxdiff import config as config_lib
    try:
        return config_lib.from_json_file(str(files.path(workdir) / "config.json"))
    except InputError:
        return None


def load_for_inference(workdir: str, overrides: dict | None = None):
    """(config, task, state) from a work directory's config.json and latest checkpoint, for sample/evaluate.

    overrides: {"section.key": value} set on the saved config before the task is built (the sampler: keys that do
    not change the checkpoint's shapes). Raises InputError naming the work directory if it has no config or no
    checkpoint.
    """
    from jaxdiff import config as config_lib
    from jaxdiff.training.checkpoint import Checkpointer
    from jaxdiff.training.state import TrainState

    config = config_lib.from_json_file(str(files.path(workdir) / "config.json"))
    if overrides:
        with config.unlocked():
            for dotted, value in overrides.items():
                section, key = dotted.split(".")
                if section not in config:
                    raise InputError(f"--{key}: the run in {workdir} has no {section} section (not a diffusion run)")
                config[section][key] = value
    task = tasks.build(config)
    ckpt_dir = files.path(workdir) / "checkpoints"
    if not ckpt_dir.is_dir():
        raise InputError(f"{ckpt_dir}: no checkpoints (train first: python -m jaxdiff.train --workdir {workdir})")
    mesh = shd.inference_mesh(config.get("mesh"))
    tx = make_optimizer(config.train)
    batch = task.example_batch(1)
    abstract = jax.eval_shape(lambda r, b: TrainState.create(task.init(r, b), tx), jax.random.PRNGKey(0), batch)
    shardings = shd.state_sharding(abstract, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    ckpt = Checkpointer(workdir, every=1, keep=10**6, async_save=False)
    if ckpt.latest_step() is None:
        raise InputError(f"{ckpt_dir}: no complete checkpoint")
    state = ckpt.restore(abstract)
    ckpt.close()
    return config, task, state
