"""Compile options for programs that run once per process (parameter initialisation)."""
from __future__ import annotations

ONE_SHOT_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once_compiled(fn, *args, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)(*args)` for a function that runs once per process (parameter init).

    On the CPU backend it is compiled with `ONE_SHOT_CPU_COMPILER_OPTIONS` (XLA backend optimisation level 0: LLVM
    barely optimises, which matters little for code that runs once; `python -m benchmarks.micro --limits` measures
    the compile time), with the same values up to rounding in the last bit of a few entries
    (tests/test_train_step.py compares it with the default compile). GPU and TPU use the default options."""
    import jax
    jitted = jax.jit(fn, **jit_kwargs)
    if jax.default_backend() != "cpu":
        return jitted(*args)
    return jitted.lower(*args).compile(compiler_options=ONE_SHOT_CPU_COMPILER_OPTIONS)(*args)
