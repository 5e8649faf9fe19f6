"""jaxdiff: medical-imaging diffusion and segmentation models in JAX/Flax.

Layout (see README): `models` (Flax modules), `diffusion` (schedules, losses, samplers), `tasks` (loss and
prediction per task), `training` (the shared sharded step, loop, checkpoints), `data` (grain pipelines),
`metrics`, `io`, `viz`. Command-line entry points: `python -m jaxdiff.{train,sample,evaluate,summary}`.

XLA:CPU defaults: importing jaxdiff before JAX creates its CPU backend adds `CPU_XLA_FLAGS` to `XLA_FLAGS`
(unless the flag is already set there, or `JAXDIFF_XLA_CPU_DEFAULTS=0`). They route XLA:CPU's dots,
convolutions, elementwise and reduction fusions through YNNPACK, which uses every core (XLA's own convolution
runs on one); measured on the 2-core CPU: the quickstart train step 876 -> 678 ms, same outputs (parity tests).
`xla_cpu_*` flags are read by the CPU backend only: GPU and TPU compilation is unchanged.

The command-line entry points (`train`, `sample`, `evaluate`) also call `reexec_with_malloc_defaults()`: XLA
allocates each step's temporary buffer (hundreds of MB for a UNet step) with malloc, which glibc serves with a fresh
mmap per call, so every step page-faults its whole working set in 4 KiB pages. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
makes glibc ask for transparent huge pages instead (measured on the 2-core CPU: ~100k -> ~600 page faults per
quickstart train step); an environment variable read at process start, so the process re-runs itself once with it.
"""
import os
import platform
import sys

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

MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_malloc_defaults() -> None:
    """Re-run this process (same interpreter, same arguments) with `MALLOC_TUNABLE` added to GLIBC_TUNABLES, once,
    on Linux with glibc; no-op when GLIBC_TUNABLES already sets hugetlb or `JAXDIFF_XLA_CPU_DEFAULTS=0`. For
    command-line entry points only (call it before any work: the process is replaced)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (os.environ.get("JAXDIFF_XLA_CPU_DEFAULTS", "1") == "0" or "glibc.malloc.hugetlb" in tunables
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, MALLOC_TUNABLE])))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
