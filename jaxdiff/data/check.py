"""Check a data set in full before training: every file each split will read, up front.

`check_data(config.data)` lists the cases of the configured file source (brats, ixi, lgg, mask_folder, mrnet;
image_folder decodes its files when built and skips bad ones itself; phantom, phantom3d and tfds need no check),
reads every file they will read in full (NIfTI: header and every voxel, decompressed; TIFF, PNG and JPEG:
decoded; .npy: loaded) and checks each case: files present, readable, finite, and consistent within the case
(BraTS: same 3D shape and affine for every modality and the seg, integer seg, the configured slices inside the
volume; LGG and mask folders: mask the size of its image; MRNet: enough slices; IXI: not constant). Every
problem becomes one line naming the file in a `DataCheckError`; with `data.skip_bad_cases=True` the bad cases
are left out instead (one warning line naming them) by adding them to `data.exclude_cases`, which every file
source honours after its split, so no other case changes split. BraTS cases whose shape differs from most
cases' are named in one warning line (their slices are resized to data.image_size).

Files are read in threads (zlib and numpy release the GIL). Files already checked are remembered in
`<cache dir>/jaxdiff/data_check.json` (`$XDG_CACHE_HOME`, else `~/.cache`), keyed by path, size and
modification time, so a re-run reads only new or changed files.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from jaxdiff.data.sources import DEFAULT_FRACTIONS, SPLITS, excluded_cases, parse_modalities, split_cases
from jaxdiff.errors import DataCheckError, InputError

CACHE_VERSION = 1
MAX_THREADS = 8


class Case(NamedTuple):
    """One case of a source: its name (as `data.exclude_cases` lists it), split (None: not computed) and
    files as (role, kind, path) triples; `kind` names the reader in `READERS`."""
    name: str
    split: str | None
    files: tuple


# ------------------------------------------------------------------------------------------------- readers

def _read_nifti(path: str) -> dict:
    from jaxdiff.io.nifti import check_nifti
    return check_nifti(path)


def _read_image(path: str) -> dict:
    from jaxdiff.preprocess.imageio import read_image
    return {"shape": list(read_image(path).shape[:2])}


def _read_lgg_image(path: str) -> dict:
    from jaxdiff.data.sources.lgg import read_image
    return {"shape": list(read_image(path).shape[:2])}


def _read_lgg_mask(path: str) -> dict:
    from jaxdiff.data.sources.lgg import read_mask
    return {"shape": list(read_mask(path).shape)}


def _read_npy(path: str) -> dict:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
        raise InputError(f"{path}: contains NaN or infinite values")
    return {"shape": list(a.shape)}


# kind -> reader(path) -> info dict (JSON-able); raises InputError "<path>: <reason>"
READERS = {"nifti": _read_nifti, "image": _read_image, "lgg_image": _read_lgg_image, "lgg_mask": _read_lgg_mask,
           "npy": _read_npy}


# ------------------------------------------------------------------------------------------------- cache

def cache_file() -> str:
    """`$XDG_CACHE_HOME/jaxdiff/data_check.json`, or `~/.cache/jaxdiff/data_check.json`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxdiff", "data_check.json")


def _load_cache(path: str) -> dict:
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION or not isinstance(cache.get("files"),
                                                                                                dict):
        return {}
    return cache["files"]


def _save_cache(path: str, new: dict, root: str) -> None:
    """Merge `new` entries into the cache file (re-read, so concurrent runs lose little), drop entries under
    `root` whose file is gone, and replace the file atomically; a cache that cannot be written is skipped."""
    try:
        entries = _load_cache(path)
        entries.update(new)
        prefix = os.path.join(root, "") if root else None
        for key in [k for k in entries if prefix and k.split(":", 1)[1].startswith(prefix)]:
            if not os.path.exists(key.split(":", 1)[1]):
                del entries[key]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".data_check.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "files": entries}, f, separators=(",", ":"))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass


def _stat(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_one(kind: str, path: str) -> dict:
    """{"info": ...} or {"error": "<path>: <reason>"} of one file."""
    try:
        return {"info": READERS[kind](path)}
    except InputError as e:
        return {"error": str(e)}
    except Exception as e:  # any other failure of a reader still means an unreadable file
        return {"error": f"{path}: unreadable ({type(e).__name__}: {e})"}


def check_files(files, quiet: bool = False, root: str | None = None) -> dict:
    """Read `files` ((kind, path) pairs) in threads, or take them from the cache when the path, size and
    modification time match. Returns {(kind, path): {"info": dict} | {"error": str} | {"missing": True}}; the
    cache is updated (and its entries of vanished files under `root` dropped)."""
    files = sorted(set(files))
    cache_path = cache_file()
    cache = _load_cache(cache_path)
    results, todo, stats = {}, [], {}
    for kind, path in files:
        stat = _stat(path)
        if stat is None:
            results[kind, path] = {"missing": True}
            continue
        key = f"{kind}:{path}"
        entry = cache.get(key)
        if entry is not None and entry.get("stat") == stat:
            results[kind, path] = entry["result"]
        else:
            todo.append((kind, path))
            stats[key] = stat
    if todo:
        from tqdm import tqdm
        threads = max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1, len(todo)))
        pool = ThreadPoolExecutor(threads)
        try:
            with tqdm(total=len(todo), desc="checking data", unit="file", delay=2.0, disable=quiet,
                      dynamic_ncols=True) as bar:
                for item, result in zip(todo, pool.map(lambda kp: _read_one(*kp), todo)):
                    results[item] = result
                    bar.update(1)
        finally:  # an interrupted check keeps what it read, and does not wait for the files still queued
            pool.shutdown(wait=False, cancel_futures=True)
            _save_cache(cache_path, {f"{k}:{p}": {"stat": stats[f"{k}:{p}"], "result": results[k, p]}
                                     for k, p in todo if (k, p) in results}, root)
    return results


# ------------------------------------------------------------------------------------------------- cases

def _path_or_missing(root: str, case: str, name: str) -> str:
    """`<root>/<case>/<case>_<name>.nii.gz` (or `.nii` when only that exists)."""
    stem = os.path.join(root, case, f"{case}_{name}")
    gz, plain = stem + ".nii.gz", stem + ".nii"
    return plain if not os.path.isfile(gz) and os.path.isfile(plain) else gz


def _brats_cases(d, root: str) -> list[Case]:
    from jaxdiff.data import pipeline
    from jaxdiff.data.sources import brats
    modalities = parse_modalities(d.get("modality", "t2"), brats.MODALITIES)
    names = brats.list_cases(root)
    parts = brats.case_parts(names, pipeline._case_split(d), int(d.get("seed", 42)), pipeline._fractions(d))
    split_of = {c: s for s, cs in parts.items() for c in cs}
    return [Case(c, split_of.get(c), tuple((m, "nifti", _path_or_missing(root, c, m)) for m in (*modalities, "seg")))
            for c in names]


def _ixi_cases(d, root: str) -> list[Case]:
    import glob
    from jaxdiff.data.sources import ixi
    files = sorted(glob.glob(os.path.join(root, ixi.PATTERN)))
    if not files:
        raise InputError(f"config key data.root: no {ixi.PATTERN} files in {root!r}")
    parts = split_cases(range(len(files)), int(d.get("seed", 0)), tuple(d.get("fractions", DEFAULT_FRACTIONS)))
    split_of = {i: s for s, idx in parts.items() for i in idx}
    return [Case(os.path.basename(f), split_of.get(i), (("t1", "nifti", f),)) for i, f in enumerate(files)]


def _mask_folder_cases(d, root: str) -> list[Case]:
    from jaxdiff.data.sources import mask_folder
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        mask_folder.list_pairs(root)        # its one-line error
    names = sorted(f for f in os.listdir(images_dir)
                   if f.lower().endswith(mask_folder.IMAGE_EXTENSIONS) and not f.startswith("."))
    stems = [os.path.splitext(f)[0] for f in names]
    parts = split_cases(stems, int(d.get("seed", 0)), tuple(d.get("fractions", DEFAULT_FRACTIONS)))
    split_of = {n: s for s, ns in parts.items() for n in ns}
    return [Case(stem, split_of.get(stem), (("image", "image", os.path.join(images_dir, f)),
                                            ("mask", "image", os.path.join(root, "masks", stem + ".png"))))
            for stem, f in zip(stems, names)]


def _lgg_cases(d, root: str) -> list[Case]:
    from jaxdiff.data.sources import lgg
    # Every slice is checked (the lgg_3536_393 split needs every mask read to place a slice), so no split is given.
    return [Case(s.name, None, (("image", "lgg_image", s.image), ("mask", "lgg_mask", s.mask)))
            for s in lgg.list_slices(root)]


def _mrnet_cases(d, root: str) -> list[Case]:
    from jaxdiff.data.sources import mrnet
    plane = d.get("plane", "coronal")
    cases = []
    for folder in ("train", "valid"):
        directory = os.path.join(root, folder, plane)
        if not os.path.isdir(directory):
            continue        # the source reports a missing folder when built
        exams = sorted(int(f[:-4]) for f in os.listdir(directory) if f.endswith(".npy") and f[:-4].isdigit())
        split_of = ({e: "train" for e in exams} if folder == "train" else
                    {e: s for s, es in split_cases(exams, int(d.get("seed", 0)), (0.0, 0.5, 0.5)).items() for e in es})
        cases += [Case(mrnet.exam_name(folder, plane, e), split_of.get(e),
                       (("exam", "npy", os.path.join(directory, f"{e:04d}.npy")),)) for e in exams]
    return cases


LISTERS = {"brats": _brats_cases, "ixi": _ixi_cases, "mask_folder": _mask_folder_cases, "lgg": _lgg_cases,
           "mrnet": _mrnet_cases}


# ------------------------------------------------------------------------------------------------- case checks

def _spacing(affine) -> tuple:
    return tuple(float(x) for x in np.round(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)), 4))


def _fmt(shape) -> str:
    return "x".join(str(n) for n in shape)


def _brats_problems(d, case: Case, infos: dict) -> list[str]:
    """Consistency of one BraTS case whose files all read: 3D, one shape and affine, integer seg."""
    problems = []
    # the reference is the geometry most files share (the first file's on a tie), so one odd file is the one named
    geometry = {path: (tuple(infos[path]["shape"]), _spacing(infos[path]["affine"])) for _, _, path in case.files}
    common = collections.Counter(geometry.values()).most_common(1)[0][0]
    ref = next(path for _, _, path in case.files if geometry[path] == common)
    ref_info = infos[ref]
    for role, _, path in case.files:
        info = infos[path]
        if len(info["shape"]) != 3:
            problems.append(f"{path}: expected a 3D volume, got shape {tuple(info['shape'])}")
        elif path != ref and info["shape"] != ref_info["shape"]:
            problems.append(f"{path}: shape {_fmt(info['shape'])} differs from {ref} {_fmt(ref_info['shape'])}")
        elif path != ref and _spacing(info["affine"]) != _spacing(ref_info["affine"]):
            problems.append(f"{path}: voxel spacing {_fmt(_spacing(info['affine']))} mm differs from {ref} "
                            f"{_fmt(_spacing(ref_info['affine']))} mm")
        elif path != ref and not np.allclose(info["affine"], ref_info["affine"], atol=1e-3):
            problems.append(f"{path}: affine differs from {ref} (modalities not co-registered)")
        if role == "seg" and not info["integer"]:
            problems.append(f"{path}: segmentation has non-integer values")
    return problems


def _brats_slice_problems(d, cases: list[Case], infos: dict, bad: dict) -> None:
    """Configured slice indices outside a case's depth (data.slices; unset: the depth of the split's first
    good case, which `BratsSlices` takes), added to `bad`."""
    from jaxdiff.data.sources import brats
    slices = d.get("slices", None)
    if isinstance(slices, str):
        from jaxdiff.config_defaults import renamed_value
        slices = brats.SLICE_RECIPES.get(renamed_value("data.slices", slices))
    first_depth = {}
    for case in cases:
        if case.name in bad:
            continue
        seg = case.files[-1][2]
        depth = infos[seg]["shape"][2]
        if slices:
            wanted = [int(round(k)) for k in slices]
        else:
            wanted = range(first_depth.setdefault(case.split, depth))
        out = [k for k in wanted if not 0 <= k < depth]
        if out:
            bad[case.name] = [f"{seg}: {depth} axial slices, slice index {out[0]} out of range"
                              + ("" if slices else " (the split's first case has more; set data.slices)")]


def _case_problems(source: str, d, case: Case, infos: dict) -> list[str]:
    if source == "brats":
        return _brats_problems(d, case, infos)
    if source in ("lgg", "mask_folder"):
        image, mask = (infos[p] for _, _, p in case.files)
        if mask["shape"] != image["shape"]:
            return [f"{case.files[1][2]}: mask size {_fmt(mask['shape'])} differs from its image "
                    f"{case.files[0][2]} {_fmt(image['shape'])}"]
    if source == "mrnet":
        (_, _, path), = case.files
        shape, need = infos[path]["shape"], int(d.get("slices_per_exam", 5))
        if len(shape) != 3 or shape[0] < need:
            return [f"{path}: shape {tuple(shape)} is not (slices >= {need}, H, W)"]
    if source == "ixi":
        (_, _, path), = case.files
        info = infos[path]
        if len(info["shape"]) != 3:
            return [f"{path}: expected a 3D volume, got shape {tuple(info['shape'])}"]
        if info["constant"]:
            return [f"{path}: constant intensities, cannot normalise"]
    return []


def _shape_warning(cases: list[Case], infos: dict, bad: dict, d) -> str | None:
    """One line naming the BraTS cases whose shape is not the most common one, or None."""
    shapes = {c.name: tuple(infos[c.files[0][2]]["shape"]) for c in cases if c.name not in bad}
    if len(set(shapes.values())) < 2:
        return None
    counts = collections.Counter(shapes.values())
    common, n_common = counts.most_common(1)[0]
    others = sorted((s, n) for s, n in counts.items() if s != common)
    names = sorted(c for c, s in shapes.items() if s != common)
    listed = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
    return (f"warning: {len(names)} of {len(shapes)} cases are not {_fmt(common)} like the other {n_common}: "
            + ", ".join(f"{n} of {_fmt(s)}" for s, n in others)
            + f" ({listed}); their slices are padded to a square and resized to data.image_size="
            + f"{d.get('image_size', 240)}")


# ------------------------------------------------------------------------------------------------- entry point

def check_data(data_config, splits=SPLITS, quiet: bool = False) -> list[str]:
    """Check every file of the cases that `splits` read from the source `data_config` describes.

    Args:
      data_config: a config's `data` block (`source`, `root`, the source's keys, `skip_bad_cases`,
        `exclude_cases`: cases already left out, not checked).
      splits: the splits whose cases are checked (LGG: always every slice).
      quiet: no progress bar (it appears only when reading takes over 2 s).
    Returns:
      The names of the cases skipped (with `data.skip_bad_cases`; they are added to `data_config.exclude_cases`
      and a warning naming them goes to stderr); [] when every case is good or the source has no files.
    Raises:
      DataCheckError listing every problem, one line each naming the file (without `data.skip_bad_cases`);
      InputError for a missing root folder or an empty listing.
    """
    source = data_config.get("source", None)
    if source == "image_folder":        # decodes every file when built and skips a bad one with a warning
        from jaxdiff.data.sources import image_folder
        root = str(data_config.get("root", "") or "")
        if root and os.path.isdir(root):
            image_folder.readable_items(os.path.abspath(root))
        return []
    if source not in LISTERS:
        return []
    from jaxdiff.data import pipeline
    root = os.path.abspath(pipeline._root(data_config, source))
    excluded = set(excluded_cases(data_config))
    cases = [c for c in LISTERS[source](data_config, root)
             if c.name not in excluded and (c.split is None or c.split in splits)]
    results = check_files([(kind, path) for c in cases for _, kind, path in c.files], quiet=quiet, root=root)
    infos, bad = {}, {}
    for case in cases:
        errors = [f"{path}: missing ({role} of case {case.name})" if "missing" in results[kind, path]
                  else results[kind, path]["error"]
                  for role, kind, path in case.files if "info" not in results[kind, path]]
        if errors:
            bad[case.name] = errors
            continue
        infos.update({path: results[kind, path]["info"] for _, kind, path in case.files})
        problems = _case_problems(source, data_config, case, infos)
        if problems:
            bad[case.name] = problems
    if source == "brats":
        _brats_slice_problems(data_config, cases, infos, bad)
        warning = _shape_warning(cases, infos, bad, data_config)
        if warning:
            print(warning, file=sys.stderr)
    if not bad:
        return []
    split_of = {c.name: c.split for c in cases}
    names = [c.name for c in cases if c.name in bad]
    if not data_config.get("skip_bad_cases", False):
        problems = [p for n in names for p in bad[n]]
        raise DataCheckError(f"data check: {len(problems)} problem(s) in {len(names)} of {len(cases)} cases under "
                             f"data.root={root} (--config.data.skip_bad_cases=True trains without these cases):",
                             problems)
    print(f"warning: data.skip_bad_cases: left out {len(names)} of {len(cases)} cases with bad files: "
          + ", ".join(f"{n} ({split_of[n]})" if split_of[n] else n for n in names), file=sys.stderr)
    new = tuple(sorted(excluded | set(names)))
    if hasattr(data_config, "unlocked"):
        with data_config.unlocked():
            data_config["exclude_cases"] = new
    else:
        data_config["exclude_cases"] = new
    return names
