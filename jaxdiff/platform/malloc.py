"""The glibc malloc tunable the command-line entry points run with.

XLA allocates each step's temporary buffer (hundreds of MB for a UNet step) with malloc, which glibc serves with a
fresh mmap per call, so every step page-faults its whole working set in 4 KiB pages. `GLIBC_TUNABLES=
glibc.malloc.hugetlb=1` makes glibc ask for transparent huge pages instead. It is an environment variable read at
process start, so the process re-runs itself once with it.
"""
from __future__ import annotations

import os
import platform
import sys

from jaxdiff.platform.xla_flags import defaults_on

MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def reexec_with_malloc_defaults() -> None:
    """Re-run this process (same interpreter, same arguments) with `MALLOC_TUNABLE` added to GLIBC_TUNABLES, once,
    on Linux with glibc; no-op when GLIBC_TUNABLES already sets hugetlb or `JAXDIFF_XLA_CPU_DEFAULTS=0`. For
    command-line entry points only (call it before any work: the process is replaced)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (not defaults_on() or "glibc.malloc.hugetlb" in tunables
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, MALLOC_TUNABLE])))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
