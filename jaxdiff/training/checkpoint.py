"""Orbax checkpoints of the train state and the grain iterator, with the config beside them.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. Saves are asynchronous and atomic (orbax writes to a
temporary directory and renames it when complete), so a killed run always leaves the latest complete step.
Every process calls `save` and `restore` (multi-host safe); each process saves its own data-iterator state.
"""
from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp

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


def __getattr__(name):
    """`load_for_inference` moved to `jaxdiff.experiment` (the training package builds no task): the old name
    forwards there, with a DeprecationWarning, for one release."""
    if name == "load_for_inference":
        import warnings
        from jaxdiff import experiment
        warnings.warn("jaxdiff.training.checkpoint.load_for_inference moved to jaxdiff.experiment.load_for_inference",
                      DeprecationWarning, stacklevel=2)
        return experiment.load_for_inference
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
