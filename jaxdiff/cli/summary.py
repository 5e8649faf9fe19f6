"""Parameter table of an experiment's model, without allocating it.

    python -m jaxdiff.summary --config configs/NAME.py [--depth 2] [--flops] [--memory]
    python -m jaxdiff.summary --config configs/NAME.py --keys     (the config's keys and values; nothing is built)

Prints a per-module parameter table and, as its last line, `params: N` (exact trainable parameters).
`--flops` adds the multiply-adds of one forward pass per example (XLA cost analysis); `--memory` the
compiled peak memory of one train step at the configured batch size and example (3D: patch) shape (XLA memory
analysis of the compiled step, never run), for a model with a `remat` option once with and once without
gradient checkpointing. `--keys` lists every key of the config (after the `--config.a.b=value` overrides) with
its value, then the keys the file leaves out that the data source, task or model reads, each settable with
`--config.KEY=VALUE`; `--config` may also name a work directory's config.json.
"""
from __future__ import annotations

import sys

import jax

from jaxdiff import config as config_lib, kernels, platform
from jaxdiff.models.params import count, table  # noqa: F401  (`jaxdiff.summary.count` for existing callers)
from jaxdiff.errors import cli_errors


def _flags(fv):
    from absl import flags
    flags.DEFINE_integer("depth", 1, "Module nesting depth of the table.", flag_values=fv)
    flags.DEFINE_bool("flops", False, "Also print forward multiply-adds per example.", flag_values=fv)
    flags.DEFINE_bool("memory", False, "Also print the compiled train-step peak memory.", flag_values=fv)
    flags.DEFINE_bool("keys", False, "Only list the config's keys and values (and the optional keys it leaves out).",
                      flag_values=fv)


def forward_macs(task, variables, batch) -> float:
    """Multiply-adds of one forward pass per example (XLA's flop count / 2, of XLA's convolutions: the native CPU
    kernels' custom calls count none)."""
    args, kwargs = task.model_inputs(batch)
    fn = jax.jit(lambda v, a: task.model.apply(v, *a, train=False, **kwargs))
    with kernels.disabled():
        lowered = fn.lower(variables, args)
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 2.0 / batch[next(iter(batch))].shape[0]


def train_step_memory(task, config) -> dict:
    """Compiled memory (bytes) of one train step at `train.batch_size` on one device."""
    from jaxdiff.training.state import TrainState, make_optimizer
    from jaxdiff.training.step import make_train_step
    tx = make_optimizer(config.train)
    batch = task.example_batch(int(config.train.batch_size))
    state = jax.eval_shape(lambda r, b: TrainState.create(task.init(r, b), tx), jax.random.PRNGKey(0), batch)
    compiled = jax.jit(make_train_step(task, config.train), donate_argnums=(0,)).lower(
        state, batch, jax.random.PRNGKey(0)).compile()
    m = compiled.memory_analysis()
    return {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "temp_bytes": m.temp_size_in_bytes,
            "peak_bytes": m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
            - m.alias_size_in_bytes}


def with_model(config, **overrides):
    """A copy of `config` whose `model` block has `overrides` (values may change type, e.g. remat)."""
    import ml_collections
    c = ml_collections.ConfigDict(config.to_dict())
    c.model = ml_collections.ConfigDict({**c.model.to_dict(), **overrides})
    return c


def memory_lines(task, config) -> list[str]:
    """`train step ...` lines: compiled peak memory (MiB) of one train step; for models with a `remat` field
    two peak lines, with the configured remat (or all blocks when it is off) and without."""
    from jaxdiff import tasks
    if "remat" not in config.model:
        return [f"train step {k}: {v / 2 ** 20:.1f} MiB" for k, v in train_step_memory(task, config).items()]
    remat = config.model.remat if config.model.remat else True
    lines = []
    for label, value in ((f"with remat={remat!r}", remat), ("without remat", False)):
        m = train_step_memory(tasks.build(with_model(config, remat=value)), config)
        lines.append(f"train step peak memory {label}: {m['peak_bytes'] / 2 ** 20:.1f} MiB "
                     f"(temp {m['temp_bytes'] / 2 ** 20:.1f} MiB)")
    return lines


# XLA:CPU's default concurrency-optimised scheduler moves recomputation forward and so erases remat's saving
# (8 chained 3D ResBlocks: 150 MiB temp with remat, 146 MiB without); the memory-minimising scheduler shows it
# (74 vs 98 MiB), as memory-aware GPU/TPU scheduling does. `--memory` compiles with it.


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    with cli_errors():
        config, fv = config_lib.parse(argv, _flags)
        if fv.keys:
            print("\n".join(config_lib.key_lines(config)))
            return 0
        platform.setup(reexec=False, compilation_cache=False)  # the XLA:CPU defaults (nothing is run)
        if fv.memory:
            platform.use_memory_minimising_scheduler()
        from jaxdiff import tasks
        task = tasks.build(config)
        batch = task.example_batch(1)
        variables = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)
        for line in task.summary_lines(variables):
            print(line)
        params = task.counted_params(variables["params"])
        rows = table(params, fv.depth)
        width = max(len(r[0]) for r in rows) + 2
        print(f"{'module':<{width}}{'params':>14}")
        for name, n in rows:
            print(f"{name:<{width}}{n:>14,}")
        if fv.flops:
            print(f"multiply-adds per example: {forward_macs(task, variables, batch) / 1e9:.2f} G")
        if fv.memory:
            shape = task.example_batch(int(config.train.batch_size))
            print(f"train step batch: {', '.join(f'{k} {v.shape}' for k, v in shape.items())}")
            for line in memory_lines(task, config):
                print(line)
        print(f"params: {count(params)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
