"""Train state and optimiser.

`TrainState` is one pytree holding everything a run needs to continue: step, parameters, optimiser state,
EMA parameters, non-parameter model collections (BatchNorm statistics) and the non-finite counters.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxdiff.errors import InputError


@struct.dataclass
class TrainState:
    """All mutable training state. `tx` is static (not a pytree leaf).

    Attributes:
      step: int32 scalar, number of applied (or skipped) updates.
      params: float32 parameter pytree.
      opt_state: optax state.
      ema_params: exponential moving average of `params` (same tree), used for sampling and evaluation.
      model_state: non-trainable collections, e.g. {"batch_stats": ...}; {} when the model has none.
      skipped: int32 scalar, total updates skipped because the loss or gradients were not finite.
      bad_streak: int32 scalar, consecutive skipped updates (reset by a finite one).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any
    skipped: jax.Array
    bad_streak: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, variables: dict, tx: optax.GradientTransformation) -> "TrainState":
        """Build a state from `model.init` variables ({"params": ..., other collections ...})."""
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        zero = jnp.zeros((), jnp.int32)
        return cls(step=zero, params=params, opt_state=tx.init(params),
                   ema_params=jax.tree.map(jnp.copy, params), model_state=model_state,
                   skipped=zero, bad_streak=zero, tx=tx)

    def variables(self, ema: bool = True) -> dict:
        """Variables for `model.apply` in evaluation: EMA (default) or raw parameters plus model state."""
        return {"params": self.ema_params if ema else self.params, **self.model_state}


def learning_rate_schedule(train_cfg) -> optax.Schedule:
    """Linear warmup to `train.lr` over `train.warmup_steps`, then cosine decay to `lr * train.final_lr_fraction`
    at `train.steps` (`train.lr_schedule="constant"` keeps lr after warmup)."""
    lr, warmup, steps = float(train_cfg.lr), int(train_cfg.get("warmup_steps", 0)), int(train_cfg.steps)
    kind = train_cfg.get("lr_schedule", "cosine")
    if kind == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                    [max(warmup, 1)]) if warmup else optax.constant_schedule(lr)
    if kind != "cosine":
        raise InputError(f"config key train.lr_schedule: unknown {kind!r} (cosine or constant)")
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(steps, warmup + 1),
                                              end_value=lr * float(train_cfg.get("final_lr_fraction", 0.0)))


def path_name(path) -> str:
    """"/"-joined parameter name of a pytree key path, e.g. "layer4_2/bn3/scale"."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def trainable_predicate(train_cfg):
    """`train.trainable` as a predicate on "/"-joined parameter names (regexes matched from the start), or
    None when every parameter trains (the key empty or absent)."""
    trainable = train_cfg.get("trainable", None)
    try:
        patterns = [re.compile(str(p)) for p in ([trainable] if isinstance(trainable, str) else trainable or [])]
    except re.error as e:
        raise InputError(f"config key train.trainable: bad regex ({e})") from None
    if not patterns:
        return None
    return lambda name: any(r.match(name) for r in patterns)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """Optimiser from `train.optimizer` (adamw | adam | sgd), with global-norm clipping `train.grad_clip` (0: off).

    `train.trainable` (list of regexes on "/"-joined parameter names, e.g. ["head"] or ["layer4", "head"];
    empty or absent: everything) freezes the other parameters (transfer learning): their updates are zero
    (no weight decay either), the optimiser keeps no moments for them, and clipping sees trained gradients only.
    """
    sched = learning_rate_schedule(train_cfg)
    name = train_cfg.get("optimizer", "adamw")
    wd = float(train_cfg.get("weight_decay", 0.0))
    b1, b2 = float(train_cfg.get("b1", 0.9)), float(train_cfg.get("b2", 0.999))
    if name == "adamw":
        opt = optax.adamw(sched, b1=b1, b2=b2, weight_decay=wd)
    elif name == "adam":
        opt = optax.adam(sched, b1=b1, b2=b2)
    elif name == "sgd":
        opt = optax.sgd(sched, momentum=float(train_cfg.get("momentum", 0.9)))
    else:
        raise InputError(f"config key train.optimizer: unknown {name!r} (adamw, adam or sgd)")
    clip = float(train_cfg.get("grad_clip", 0.0))
    opt = optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt
    trainable = trainable_predicate(train_cfg)
    if trainable is None:
        return opt

    def labels(params):
        tree = jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(path_name(path)) else "freeze", params)
        if "train" not in jax.tree.leaves(tree):
            raise InputError(f"config key train.trainable: {train_cfg.trainable!r} matches no parameter")
        return tree

    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)
