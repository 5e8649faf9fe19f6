"""The task interface shared by the train step, the loop and the command-line tools.

A task owns a Flax module (built from `config.model`) and says how to initialise it, what loss to train, and
how to predict and evaluate. It knows nothing of sharding or checkpoints; the shared step calls `loss`.
"""
from __future__ import annotations

import abc
import contextlib
from typing import Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import models
from jaxdiff.errors import InputError
from jaxdiff.platform import run_once_compiled
from jaxdiff.progress import progress_bar, progress_line, quiet_progress  # noqa: F401  (tasks import them from here)
from jaxdiff.training.state import trainable_predicate

_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def cast_floating(tree, dtype):
    """Cast the floating-point leaves of a pytree to `dtype` (integer leaves untouched)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _frozen_batch_norm_interceptor(train_cfg):
    """A `nn.intercept_methods` interceptor that runs each BatchNorm that `train.trainable` leaves frozen in
    inference mode (a use_running_average=True clone applied to the layer's variables), or None when nothing is
    frozen or `train.freeze_batch_stats` is False. A BatchNorm is frozen when its scale and bias are (those it has);
    one with neither follows its own path name ("head/bn" trains under `trainable=("head",)`)."""
    trainable = trainable_predicate(train_cfg)
    if trainable is None or not train_cfg.get("freeze_batch_stats", True):
        return None

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
                and not module.use_running_average and not kwargs.get("use_running_average")):
            name = "/".join(module.path)
            names = [f"{name}/{leaf}" for leaf in ("scale", "bias") if getattr(module, f"use_{leaf}")] or [name]
            if not any(trainable(n) for n in names):
                # Flax's own inference-mode BatchNorm on this layer's variables (its statistics stay as they are).
                frozen = module.clone(parent=None, use_running_average=True)
                kwargs = {k: v for k, v in kwargs.items() if k != "use_running_average"}
                return frozen.apply(dict(module.variables), args[0], **kwargs)
        return next_fun(*args, **kwargs)

    return interceptor


class Task(abc.ABC):
    """Base class. Subclasses set `self.model` and implement `example_batch`, `loss` and `finalize`.

    Mixed precision: with `train.precision = "bf16"`, `apply` runs the model with bf16 parameters and inputs
    (parameters stay float32 in the train state; gradients arrive in float32) and returns float32 outputs.
    """

    def __init__(self, config):
        self.config = config
        self.model = models.build(config.model)
        precision = config.train.get("precision", "fp32")
        if precision not in _DTYPES:
            raise InputError(f"config key train.precision: {precision!r} is not fp32 or bf16")
        self.compute_dtype = _DTYPES[precision]
        self._frozen_batch_norm = _frozen_batch_norm_interceptor(config.train)

    # --- model plumbing -------------------------------------------------------------------------------
    @abc.abstractmethod
    def model_inputs(self, batch: dict) -> tuple[tuple, dict]:
        """Positional and keyword model inputs for `batch` (used by `init` and `summary`)."""

    def init(self, rng, batch) -> dict:
        """Model variables ({"params", maybe "batch_stats"}) for an example batch.

        Called on concrete arrays (a test, a notebook), the initialisation runs as one compiled function
        (`run_once_compiled`) instead of Flax's op-by-op dispatch; inside a trace (`init_state`'s jit,
        `eval_shape`) it is traced as is."""
        def init_fn(rng, arrays):
            args, kwargs = self.model_inputs({**batch, **arrays})
            p_rng, d_rng = jax.random.split(rng)
            return self.model.init({"params": p_rng, "dropout": d_rng}, *args, train=False, **kwargs)

        arrays = {k: v for k, v in batch.items()  # numeric arrays are arguments; names, strings, ... stay constants
                  if isinstance(v, jax.Array) or (isinstance(v, np.ndarray) and v.dtype.kind in "biufc")}
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rng, batch))):
            return init_fn(rng, arrays)
        return run_once_compiled(init_fn, rng, arrays)

    def apply(self, variables, *args, rng=None, train=False, mutable=False, **kwargs):
        """`model.apply` in the compute dtype; outputs cast back to float32.

        `rng` feeds the "dropout" and "sample" (e.g. VAE reparameterisation) collections.
        With `mutable` (e.g. ["batch_stats"]) returns (outputs, updated collections).
        With `train.trainable` set, frozen BatchNorm layers (scale and bias both frozen; see
        `_frozen_batch_norm_interceptor` for one without them) run on their running statistics and leave them
        unchanged even when `train` (Keras's rule for a frozen backbone);
        `train.freeze_batch_stats=False` lets them normalise with batch statistics and update them (PyTorch's
        behaviour with `requires_grad=False` in train mode).
        """
        variables = cast_floating(variables, self.compute_dtype) if self.compute_dtype != jnp.float32 else variables
        args = cast_floating(args, self.compute_dtype) if self.compute_dtype != jnp.float32 else args
        rngs = {"dropout": rng, "sample": jax.random.fold_in(rng, 1)} if rng is not None else None
        frozen = train and self._frozen_batch_norm is not None
        with nn.intercept_methods(self._frozen_batch_norm) if frozen else contextlib.nullcontext():
            out = self.model.apply(variables, *args, train=train, rngs=rngs, mutable=mutable, **kwargs)
        if mutable:
            out, updates = out
            return cast_floating(out, jnp.float32), cast_floating(updates, jnp.float32)
        return cast_floating(out, jnp.float32)

    # --- what subclasses provide ----------------------------------------------------------------------
    @abc.abstractmethod
    def example_batch(self, batch_size: int) -> dict:
        """A zero batch with the shapes and dtypes the data pipeline produces (for init and summaries)."""

    @abc.abstractmethod
    def loss(self, params, model_state, batch, rng, train=True):
        """Returns (scalar loss, (metrics dict of scalars, new model_state))."""

    @abc.abstractmethod
    def finalize(self, state, workdir: str, val_source, rng) -> dict:
        """End-of-run report on held-out examples (`val_source[i]` -> example dict): writes pictures into
        `workdir/samples` and returns the metrics to print."""

    # --- optional, with defaults ------------------------------------------------------------------------
    def initial_state(self, state):
        """The train state a fresh run starts from (a resumed run restores its checkpoint instead): `state` as
        initialised, unless the task loads given weights into it (classification: `train.init_from`)."""
        return state

    def summary_lines(self, variables) -> list[str]:
        """Lines `python -m jaxdiff.summary` prints before the parameter table (none by default)."""
        return []

    def counted_params(self, params):
        """The parameters `python -m jaxdiff.summary` counts (all by default)."""
        return params


# --- capabilities beyond training: what the command-line tools need of a task ------------------------------
# Structural protocols (a task class has the methods; it need not inherit them). `tasks.require(config, name)`
# checks a config's task class for one before anything is built.

@runtime_checkable
class Trainable(Protocol):
    """`python -m jaxdiff.train`: every `Task`."""

    def example_batch(self, batch_size: int) -> dict: ...
    def loss(self, params, model_state, batch, rng, train=True): ...
    def finalize(self, state, workdir: str, val_source, rng) -> dict: ...


@runtime_checkable
class Samplable(Protocol):
    """`python -m jaxdiff.sample`: draws `num` samples with the state's EMA weights and writes them to `out_dir`;
    returns the written paths."""

    def sample_to_files(self, state, out_dir: str, num: int, steps, rng) -> list[str]: ...


@runtime_checkable
class Evaluable(Protocol):
    """`python -m jaxdiff.evaluate`: scores the state on `source` (a split), writes files into `out_dir` and
    returns the metrics."""

    def evaluate(self, state, source, out_dir: str, rng, num=None, num_steps=None, split=None) -> dict: ...


@runtime_checkable
class Predictable(Protocol):
    """`python -m jaxdiff.predict` / `jaxdiff.inference.Predictor`: the model's prediction for a batch of images."""

    def predict(self, variables, images, *args, **kwargs): ...


@runtime_checkable
class Generative(Protocol):
    """A cascade's base stage: `num` images of `image_shape()` from noise."""

    def generate(self, variables, num: int, rng, labels=None, num_steps=None): ...
    def image_shape(self) -> tuple: ...


@runtime_checkable
class Upscaling(Protocol):
    """A cascade's super-resolution stage: images of `image_shape()` from low-res images of `low_res_shape()`."""

    def upscale(self, variables, low, rng, num_steps=None): ...
    def low_res_shape(self) -> tuple: ...
    def image_shape(self) -> tuple: ...


CAPABILITIES = {"train": Trainable, "sample": Samplable, "evaluate": Evaluable, "predict": Predictable,
                "generate": Generative, "upscale": Upscaling}


def split_name(source, split: str | None = None) -> str:
    """'the val split' for progress lines: `split`, else the source's own `split` attribute, else 'the data'."""
    split = split or getattr(source, "split", None)
    return f"the {split} split" if split else "the data"


def zeros_like_spec(spec: dict, batch_size: int) -> dict:
    """{name: (shape, dtype)} per example -> dict of zero numpy arrays with a leading batch axis."""
    return {k: np.zeros((batch_size, *shape), dtype) for k, (shape, dtype) in spec.items()}
