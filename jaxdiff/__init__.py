"""jaxdiff: medical-imaging diffusion and segmentation models in JAX/Flax.

Layout (see README): `models` (Flax modules), `diffusion` (schedules, losses, samplers), `tasks` (loss and
prediction per task), `training` (the shared sharded step, loop, checkpoints), `data` (grain pipelines),
`metrics`, `io`, `viz`. Command-line entry points: `python -m jaxdiff.{train,sample,evaluate,summary}`.

XLA:CPU defaults: importing jaxdiff before JAX creates its CPU backend adds `CPU_XLA_FLAGS` to `XLA_FLAGS`
(unless the flag is already set there, or `JAXDIFF_XLA_CPU_DEFAULTS=0`). They route XLA:CPU's dots,
convolutions, elementwise and reduction fusions through YNNPACK, which uses every core (XLA's own convolution
runs on one); measured on the 2-core CPU: the quickstart train step 876 -> 678 ms, same outputs (parity tests).
`xla_cpu_*` flags are read by the CPU backend only: GPU and TPU compilation is unchanged.
"""
import os

__version__ = "0.1.0"

CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",)


def _add_cpu_xla_flags() -> None:
    if os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


_add_cpu_xla_flags()
