"""Orbax checkpoints of the train state and the grain iterator, with the config beside them.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. Saves are asynchronous and atomic (orbax writes to a
temporary directory and renames it when complete), so a killed run always leaves the latest complete step.
Every process calls `save` and `restore` (multi-host safe); each process saves its own data-iterator state.
"""
from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp

import jaxdiff
from jaxdiff.io import files


class Checkpointer:
    """Save every `every` steps (and on demand), keep the newest `keep`."""

    def __init__(self, workdir: str, every: int, keep: int = 3, async_save: bool = True):
        self.directory = files.path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(int(every), 1),
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iter=None, force: bool = False) -> bool:
        """Save if `step` is on the interval (or `force`). Returns whether a save was started."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """Restore `step` (default latest) into the shardings of `abstract_state`; data_iter is updated in place.

        `abstract_state` is a state pytree of arrays or `jax.ShapeDtypeStruct`s with `.sharding`.
        """
        step = self.manager.latest_step() if step is None else step
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self):
        """Block until pending asynchronous saves are complete."""
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_for_inference(workdir: str):
    """(config, task, state) from a work directory's config.json and latest checkpoint, for sample/evaluate.

    Raises InputError naming the work directory if it has no config or no checkpoint.
    """
    from jaxdiff import config as config_lib
    from jaxdiff import tasks
    from jaxdiff.errors import InputError
    from jaxdiff.training import sharding as shd
    from jaxdiff.training.state import TrainState, make_optimizer

    config = config_lib.from_json_file(str(files.path(workdir) / "config.json"))
    jaxdiff.set_cpu_fusion(config.get("xla_cpu_fusion"))
    jaxdiff.enable_compilation_cache()  # the sampler / evaluation programs of an earlier run load from disk
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
