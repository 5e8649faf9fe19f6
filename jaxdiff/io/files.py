"""Work-directory files on a local disk or on cloud storage (gs://...), through etils.epath.

Multi-host runs on TPU pods keep their work directory on a bucket: orbax checkpoints go there natively (arrays
through tensorstore's own GCS driver, metadata through epath), and the small files (config.json, metrics.jsonl,
report.json, PNG figures, TensorBoard events) go through these helpers. A gs:// path needs gcsfs, which the
`gcp` extra installs (`pip install "jaxdiff[gcp]"`); without it `path` and `check_filesystem` raise InputError
saying so. Data folders on a bucket are read from a local copy (`local_folder`), and a folder written by a tool
that only writes local files goes up through `upload_folder`.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import time

from etils import epath

from jaxdiff.errors import InputError

# URL scheme -> (the fsspec package epath reads it through, the command that installs it).
CLOUD_PACKAGES = {"gs": ("gcsfs", 'pip install "jaxdiff[gcp]"'), "s3": ("s3fs", "pip install s3fs")}


def scheme(p) -> str:
    """The URL scheme of `p` ("gs" for gs://bucket/dir), "" for a local path."""
    p = str(p)
    return p.split("://", 1)[0].lower() if "://" in p else ""


@functools.cache
def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def check_filesystem(p, flag: str | None = None) -> None:
    """InputError (one line naming `flag` and `p`, and the install command) when `p` is a URL whose file system
    needs a package that is not installed (gs:// needs gcsfs: `pip install "jaxdiff[gcp]"`). Local paths pass."""
    s = scheme(p)
    if s in CLOUD_PACKAGES and not _importable(CLOUD_PACKAGES[s][0]):
        module, install = CLOUD_PACKAGES[s]
        where = f"{flag} {p}" if flag else str(p)
        raise InputError(f"{where}: {s}:// paths need {module}, which is not installed: {install}")


def path(p) -> epath.Path:
    """epath.Path for a local path (made absolute) or a URL such as gs://bucket/dir (InputError when its file
    system is not installed, see `check_filesystem`)."""
    p = str(p)
    if "://" in p:
        check_filesystem(p)
        return epath.Path(p)
    return epath.Path(os.path.abspath(p))


def is_local(p) -> bool:
    return "://" not in str(p)


def makedirs(p) -> epath.Path:
    out = path(p)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text(p, text: str) -> str:
    """Write `text` to `p`, creating parent folders. Returns the path as a string."""
    out = path(p)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return str(out)


def append_line(p, line: str) -> None:
    """Append one line (cloud storage has no append: the object is rewritten, fine for small logs)."""
    out = path(p)
    if is_local(p):
        with open(out, "a") as f:
            f.write(line.rstrip("\n") + "\n")
    else:
        old = out.read_text() if out.exists() else ""
        out.write_text(old + line.rstrip("\n") + "\n")


def open_write(p, mode: str = "wb"):
    """File object for writing `p` (parents created), e.g. for PIL or matplotlib `savefig`."""
    out = path(p)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.open(mode)


def listdir(p) -> list[str]:
    """Sorted names in the folder `p` (local or URL); [] when it does not exist or is not a folder."""
    d = path(p)
    if not d.is_dir():
        return []
    return sorted(c.name for c in d.iterdir())


# ------------------------------------------------------------------------------------ data folders on a bucket

def cache_dir() -> str:
    """Where `local_folder` keeps its copies: `$JAXDIFF_DATA_CACHE`, or by default `$XDG_CACHE_HOME/jaxdiff/data`
    (`~/.cache/jaxdiff/data`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("JAXDIFF_DATA_CACHE") or os.path.join(base, "jaxdiff", "data")


def _walk_files(folder: epath.Path):
    """The files under `folder`, recursively (one listing per folder: epath's gs:// glob has no `**`)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from _walk_files(child)
        else:
            yield child


def local_folder(p) -> str:
    """`p` unchanged for a local path or "" ; for a URL of a folder, the path of a local copy of it, kept in
    `cache_dir()/<scheme>/<bucket>/<path>`, for readers that open local files only (NIfTI / image folders,
    ArrayRecord). Files already copied with the same size are not fetched again; each file is written to a
    temporary name and renamed, so processes sharing the cache never read a partial file. A URL that is not a
    folder is returned unchanged (the caller reports it as not found)."""
    p = str(p)
    if not p or is_local(p):
        return p
    src = path(p.rstrip("/"))
    if not src.is_dir():
        return p
    dest = os.path.join(cache_dir(), scheme(p), p.split("://", 1)[1].strip("/"))
    for f in _walk_files(src):
        target = os.path.join(dest, str(f.relative_to(src)))
        size = f.stat().length
        if os.path.isfile(target) and os.path.getsize(target) == size:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".part.")
        with os.fdopen(fd, "wb") as out, f.open("rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 22)
        os.replace(tmp, target)
    os.makedirs(dest, exist_ok=True)
    return dest


def upload_folder(local: str, dest) -> str:
    """Copy the local folder `local` (recursively) to the folder `dest` (local path or URL), file by file;
    returns `dest` as a string."""
    out = path(dest)
    for dirpath, _, names in os.walk(local):
        rel = os.path.relpath(dirpath, local)
        folder = out if rel == "." else out / rel
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as inp, (folder / name).open("wb") as o:
                shutil.copyfileobj(inp, o, 1 << 22)
    return str(out)


@contextlib.contextmanager
def staging_folder(dest):
    """Context for writers that write local files only (ArrayRecord): yields `dest` itself when it is local, else
    a temporary local folder whose contents are uploaded to the URL `dest` (`upload_folder`) when the block ends
    without an exception, then removed."""
    if is_local(dest):
        yield str(dest)
        return
    check_filesystem(dest)
    with tempfile.TemporaryDirectory(prefix="jaxdiff-staging-") as local:
        yield local
        upload_folder(local, dest)


@contextlib.contextmanager
def local_output(p):
    """Context for writers that take a local file name only (nibabel): yields `p` itself when it is local (its
    parent folders created), else a local temporary file of the same name that is uploaded to the URL `p` when
    the block ends without an exception."""
    if is_local(p):
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        yield str(p)
        return
    out = path(p)
    with tempfile.TemporaryDirectory(prefix="jaxdiff-output-") as local:
        name = os.path.join(local, out.name)
        yield name
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(name, "rb") as inp, out.open("wb") as o:
            shutil.copyfileobj(inp, o, 1 << 22)


# ------------------------------------------------------------------------------ TensorBoard events on a bucket

class CloudEventFile:
    """Write-only file for tensorboardX's event writer at a URL. Cloud objects cannot be appended to (and GCS
    takes about one write per second to one object), so the events are kept in memory and the whole file is
    uploaded on the first flush, then on a flush at least `every_s` seconds after the last upload, and on close.
    A run killed without closing loses at most the last `every_s` seconds of events (metrics.jsonl has them)."""

    def __init__(self, url: str, every_s: float = 30.0):
        self.path, self.every_s = path(url), float(every_s)
        self.buffer = io.BytesIO()
        self.dirty, self.uploaded_at, self.closed = False, None, False

    def write(self, data: bytes) -> None:
        self.buffer.write(data)
        self.dirty = True

    def _upload(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())
        self.dirty, self.uploaded_at = False, time.monotonic()

    def flush(self) -> None:
        if self.dirty and (self.uploaded_at is None or time.monotonic() - self.uploaded_at >= self.every_s):
            self._upload()

    def close(self) -> None:
        if not self.closed and self.dirty:
            self._upload()
        self.closed = True


class _CloudEventFiles:
    """tensorboardX writer factory (`record_writer.register_writer_factory`) for URLs, through epath."""

    def open(self, url):
        return CloudEventFile(url)

    def directory_check(self, url):
        pass  # object stores have no folders to create


def register_tensorboard_filesystems() -> None:
    """Make tensorboardX write event files at gs:// URLs through epath (gcsfs: the same file system and
    credentials as the rest of the work directory) with `CloudEventFile`. Call after importing tensorboardX."""
    from tensorboardX import record_writer
    for s in ("gs",):
        record_writer.register_writer_factory(s, _CloudEventFiles())


def strict_json(obj, indent: int | None = None) -> str:
    """JSON text of `obj` with NaN/inf as null (strict JSON: every parser reads it); numpy scalars as numbers."""
    import math

    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return json.dumps(clean(obj), indent=indent, allow_nan=False, default=str)
