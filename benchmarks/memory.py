"""Memory of a worker process: RSS, live malloc'd bytes (glibc `mallinfo2` through ctypes, sampled by a thread),
XLA's buffer assignment of a compiled executable, and the malloc tunable every worker runs with."""
from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import threading


# --- measurement helpers ----------------------------------------------------------------------------------------

def maxrss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident set size of this process (VmRSS in /proc/self/status), MB; the peak where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return maxrss_mb()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                 "uordblks", "fordblks", "keepcost")]


def malloc_live_mb() -> float:
    """Bytes currently allocated through malloc (glibc `mallinfo2`: in-use heap chunks + mmapped chunks), MB.
    PyTorch's CPU tensors and XLA:CPU's buffers are both malloc'd."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2 ** 20


def memory_before() -> dict:
    """Memory of the process before the model is built: current RSS and live malloc'd bytes, MB."""
    return {"rss": rss_mb(), "live": malloc_live_mb()}


@contextlib.contextmanager
def sampled_peak(period_s: float = 5e-4):
    """Peak of the live malloc'd bytes over a block, sampled by a thread every `period_s` seconds.

    Yields a dict holding "peak_mb" after the block. Unlike RSS this ignores memory the allocator keeps after a
    free and the libraries' code; peaks shorter than the period can be missed.
    """
    box, stop = {"peak_mb": malloc_live_mb()}, threading.Event()

    def sample():
        while not stop.is_set():
            box["peak_mb"] = max(box["peak_mb"], malloc_live_mb())
            stop.wait(period_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        box["peak_mb"] = max(box["peak_mb"], malloc_live_mb())


def xla_peak_mb(compiled) -> float:
    """Arguments + outputs - aliased (donated) + temporaries of a compiled executable, MB."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) / 2 ** 20


def glibc_tunables() -> str:
    """GLIBC_TUNABLES of every worker, whatever its framework: the caller's, else jaxdiff's CLI default (large
    allocations on transparent huge pages, `jaxdiff.platform.MALLOC_TUNABLE`). Set
    `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` to measure without."""
    from jaxdiff import platform
    return os.environ.get("GLIBC_TUNABLES") or platform.MALLOC_TUNABLE
