"""Progress output of long evaluations on stderr (lines and tqdm bars), and `quiet_progress` to silence it."""
from __future__ import annotations

import contextlib
import sys

_QUIET = []  # nesting of `quiet_progress()`


@contextlib.contextmanager
def quiet_progress(quiet: bool = True):
    """No progress lines or bars from `finalize` / `evaluate` inside the block (`train --quiet`)."""
    _QUIET.append(bool(quiet))
    try:
        yield
    finally:
        _QUIET.pop()


def progress_line(text: str) -> None:
    """One line on stderr saying what an evaluation is doing (what it scores, how long it took), unless quiet."""
    if not (_QUIET and _QUIET[-1]):
        from tqdm.auto import tqdm
        tqdm.write(text, file=sys.stderr)


def progress_bar(iterable, desc: str, total: int | None = None, unit: str = "batch"):
    """`iterable` with a tqdm bar on stderr, as evaluations loop over batches; off when quiet or when stderr is not
    a terminal (tqdm's `disable=None`)."""
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=True if (_QUIET and _QUIET[-1]) else None)
