"""The shared train step: one function for every model and task, compiled once with explicit shardings.

`make_train_step(task, train_cfg)` returns `train_step(state, batch, rng) -> (state, metrics)`:
  - loss and gradients from `task.loss(params, model_state, batch, rng, train=True)`;
  - gradient accumulation over `train.accum_steps` micro-batches in one `lax.scan` (the batch's leading axis
    is split into micro-batches without moving data between devices);
  - optax update (schedule, clipping), EMA of parameters (`train.ema`, 0 disables), BatchNorm statistics;
  - a non-finite guard: if the loss, a gradient or an updated parameter is NaN/inf the update, EMA and
    statistics are skipped and
    `skipped`/`bad_streak` are counted.
`compile_train_step` jits it with NamedShardings on the mesh and donates the state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxdiff.platform import run_once_compiled
from jaxdiff.training import sharding as shd
from jaxdiff.training.state import TrainState, learning_rate_schedule


def _tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _select(pred, new, old):
    return jax.tree.map(lambda n, o: jnp.where(pred, n, o), new, old)


def make_train_step(task, train_cfg):
    """Build the (un-jitted) train step for `task`.

    Args:
      task: object with `loss(params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))`.
      train_cfg: the config's `train` block (accum_steps, ema, lr schedule fields).
    Returns:
      train_step(state: TrainState, batch: dict of (B, ...) arrays, rng: PRNG key) -> (state, metrics dict).
    """
    accum = int(train_cfg.get("accum_steps", 1))
    ema_decay = float(train_cfg.get("ema", 0.0))
    lr_fn = learning_rate_schedule(train_cfg)
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)

    def grads_and_metrics(state, batch, rng):
        if accum == 1:
            (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng, True)
            return loss, metrics, model_state, grads

        def split(x):  # (B, ...) -> (accum, B / accum, ...); micro-batch j takes rows j, j+accum, ...
            return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

        def body(carry, xs):
            model_state, grad_sum, loss_sum = carry
            micro, i = xs
            (loss, (metrics, model_state)), grads = grad_fn(state.params, model_state, micro,
                                                            jax.random.fold_in(rng, i), True)
            return (model_state, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (model_state, grads, loss), metrics = jax.lax.scan(
            body, (state.model_state, zeros, jnp.float32(0)), (jax.tree.map(split, batch), jnp.arange(accum)))
        scale = 1.0 / accum
        return loss * scale, jax.tree.map(jnp.mean, metrics), model_state, jax.tree.map(lambda g: g * scale, grads)

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        loss, metrics, model_state, grads = grads_and_metrics(state, batch, rng)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The update itself must be finite too (an infinite learning rate turns finite gradients into inf).
        finite = jnp.isfinite(loss) & _tree_all_finite(grads) & _tree_all_finite(params)
        ema = (jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
               if ema_decay > 0 else params)
        new = state.replace(
            step=state.step + 1,
            params=_select(finite, params, state.params),
            opt_state=_select(finite, opt_state, state.opt_state),
            ema_params=_select(finite, ema, state.ema_params),
            model_state=_select(finite, model_state, state.model_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            bad_streak=jnp.where(finite, 0, state.bad_streak + 1),
        )
        out = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), lr=lr_fn(state.step),
                   skipped=new.skipped, finite=finite)
        return new, out

    return train_step


def init_state(task, tx, rng, batch, mesh, fsdp_min_size: int = 2 ** 14):
    """Create the train state directly in its sharded layout (parameters are never materialised unsharded).

    Leaves with at least `fsdp_min_size` elements are sharded over the mesh's "fsdp" axis (if > 1).
    Returns (state, state_shardings).
    """
    def init_fn(rng, batch):
        return TrainState.create(task.init(rng, batch), tx)

    abstract = jax.eval_shape(init_fn, rng, batch)
    shardings = shd.state_sharding(abstract, mesh, min_size=fsdp_min_size)
    state = run_once_compiled(init_fn, rng, batch, out_shardings=shardings)
    return state, shardings


def compile_train_step(task, train_cfg, mesh, state_shardings):
    """jit the shared step: state sharded by `state_shardings` (donated), batch over ("data", "fsdp"),
    rng and metrics replicated."""
    return jax.jit(make_train_step(task, train_cfg),
                   in_shardings=(state_shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
                   out_shardings=(state_shardings, shd.replicated(mesh)),
                   donate_argnums=(0,))
