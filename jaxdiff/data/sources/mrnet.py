"""Stanford MRNet knee MRI (Bien et al. 2018), as the cascaded super-resolution DDPM with a Swin bottleneck uses
it: central slices of one plane per exam.

On-disk layout (as distributed):
    ROOT/{train,valid}/{coronal,axial,sagittal}/NNNN.npy   (slices, 256, 256) per exam
    ROOT/{train,valid}-{abnormal,acl,meniscus}.csv          "NNNN,label" lines
Split: "train" = every exam of `train/`; MRNet's test set is not public, so `valid/` is cut, by exam, into
"val" and "test" halves (a seeded permutation, `data.seed`; `split_cases` with fractions (0, 0.5, 0.5)).

Example: {"image": (S, S, 1) float32 in [-1, 1], "label": int32 (data.label CSV; -1 with data.label ""),
"exam": int32}. Each exam gives `slices_per_exam` (5) central slices of `plane` (coronal), scaled per exam
to [0, 1] by its min and max (as that cascade did), then to [-1, 1] like every jaxdiff image source, and resized to
data.image_size (antialiased linear zoom). Headers are checked when the source is built (a bad or too thin
file raises InputError naming it); pixels are read on first use and cached per exam.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from jaxdiff.data.sources import _resize_stack, check_split, excluded_cases, split_cases
from jaxdiff.errors import InputError

PLANES = ("coronal", "axial", "sagittal")
LABELS = ("abnormal", "acl", "meniscus")


def read_labels(path: str) -> dict:
    """{exam id: 0/1} from an MRNet label CSV ("NNNN,label" lines); InputError naming a bad file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: MRNet label file not found")
    labels = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                exam, label = line.strip().split(",")
                labels[int(exam)] = int(float(label))
            except ValueError:
                raise InputError(f"{path}: line {n} is not 'NNNN,label'") from None
    return labels


def _check_exam(path: str, slices: int) -> None:
    """Read the .npy header; InputError naming the file unless it is a (slices >= `slices`, H, W) array."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 3 or arr.shape[0] < slices:
        raise InputError(f"{path}: shape {arr.shape} is not (slices >= {slices}, H, W)")


@functools.lru_cache(maxsize=256)
def _exam_slices(path: str, slices: int, size: int) -> np.ndarray:
    """(slices, size, size) float32 in [-1, 1]: the central `slices` of an exam, min-max scaled, resized."""
    arr = np.load(path, allow_pickle=False)
    start = arr.shape[0] // 2 - slices // 2
    x = arr[start:start + slices].astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{path}: contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(_resize_stack(2.0 * x - 1.0, size, -1.0, order=1), -1.0, 1.0).astype(np.float32)


def exam_name(folder: str, plane: str, exam: int) -> str:
    """An exam's case name, `<train|valid>/<plane>/NNNN` (what `data.exclude_cases` lists)."""
    return f"{folder}/{plane}/{int(exam):04d}"


class MRNetSlices:
    """Central slices of MRNet exams (see module docstring); `len` = exams x slices_per_exam. `exclude` names
    exams to leave out (`exam_name`s, `data.exclude_cases`), removed after the val/test split."""

    def __init__(self, root: str, split: str = "train", plane: str = "coronal", image_size: int = 256,
                 slices_per_exam: int = 5, label: str = "abnormal", seed: int = 0, exclude=()):
        check_split(split)
        if plane not in PLANES:
            raise InputError(f"config key data.plane: {plane!r} is not one of {', '.join(PLANES)}")
        if label and label not in LABELS:
            raise InputError(f"config key data.label: {label!r} is not '' or one of {', '.join(LABELS)}")
        folder = "train" if split == "train" else "valid"
        directory = os.path.join(root, folder, plane)
        if not os.path.isdir(directory):
            raise InputError(f"{directory}: MRNet folder not found (expected ROOT/{folder}/{plane}/NNNN.npy)")
        exams = sorted(int(f[:-4]) for f in os.listdir(directory) if f.endswith(".npy") and f[:-4].isdigit())
        if split != "train":
            exams = split_cases(exams, seed, (0.0, 0.5, 0.5))[split]
        excluded = set(exclude)
        exams = [e for e in exams if exam_name(folder, plane, e) not in excluded]
        if not exams:
            raise InputError(f"{directory}: no NNNN.npy exams for split {split!r}")
        self.paths = [os.path.join(directory, f"{e:04d}.npy") for e in exams]
        self.slices, self.image_size = int(slices_per_exam), int(image_size)
        for p in self.paths:
            _check_exam(p, self.slices)
        csv = os.path.join(root, f"{folder}-{label}.csv")
        labels = read_labels(csv) if label else {}
        missing = [e for e in exams if label and e not in labels]
        if missing:
            raise InputError(f"{csv}: no label for exam {missing[0]:04d}")
        self.exams = exams
        self.labels = [labels.get(e, -1) for e in exams]

    def __len__(self) -> int:
        return len(self.paths) * self.slices

    def __getitem__(self, idx: int) -> dict:
        e, k = divmod(int(idx), self.slices)
        image = _exam_slices(self.paths[e], self.slices, self.image_size)[k]
        return {"image": image[..., None].copy(), "label": np.int32(self.labels[e]), "exam": np.int32(self.exams[e])}


def from_config(data_config, split: str) -> MRNetSlices:
    """The MRNet source of a `data` config block: root (required), plane, image_size, slices_per_exam, label,
    seed."""
    d = data_config
    root = str(d.get("root", "") or "")
    if not root or not os.path.isdir(root):
        raise InputError(f"config key data.root: MRNet folder {root!r} not found")
    return MRNetSlices(root, split, plane=d.get("plane", "coronal"), image_size=int(d.get("image_size", 256)),
                       slices_per_exam=int(d.get("slices_per_exam", 5)), label=d.get("label", "abnormal"),
                       seed=int(d.get("seed", 0)), exclude=excluded_cases(d))
