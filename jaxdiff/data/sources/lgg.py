"""LGG on disk, the kaggle "lgg-mri-segmentation/kaggle_3m" layout: `<root>/TCGA_<...>/<name>_<n>.tif` with its
mask `<name>_<n>_mask.tif`.

Each `TCGA_*` folder is a patient (110 in kaggle_3m, 3,929 slices). Images are (256, 256, 3) uint8 TIFFs whose
channels are the pre-contrast, FLAIR and post-contrast sequences; masks are single-channel 0/255 TIFFs. Other
files (`data.csv`, `README.md`) and folders are ignored. Listing checks that every image has its mask and every
mask its image; reading a slice checks that both files decode, that the mask is binary and has the image's
size. Every problem raises an InputError naming the file.
"""
from __future__ import annotations

import functools
import os
import re
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tifffile

from jaxdiff.data.sources import DEFAULT_FRACTIONS, SPLITS, _resize_stack, check_split, split_cases
from jaxdiff.config_defaults import renamed_names
from jaxdiff.errors import InputError

CHANNELS = ("pre_contrast", "flair", "post_contrast")
# data.split: "random" (patient-level) or "lgg_3536_393", the slice-level split of the MedSegDiff notebook that
# trained on kaggle_3m (`configs/medsegdiff_lgg.py`)
SPLIT_MODES = ("random", "lgg_3536_393")
PATIENT_PREFIX = "TCGA_"
MASK_SUFFIX = "_mask"
SLICE_SPLIT_TEST_SIZE = 0.1      # sklearn train_test_split(test_size=0.1, stratify=has_tumour, random_state=42)
SLICE_SPLIT_RANDOM_STATE = 42
SPLIT_3536_393 = (3536, 393)     # train, test of the 3,929 kaggle_3m slices

_TIFF_EXTENSIONS = (".tif", ".tiff")
_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, RuntimeError, struct.error)

# Names of earlier versions, still importable (with a FutureWarning).
_RENAMED = {"SEED_S1_SIZES": "SPLIT_3536_393", "SEED_S1_TEST_SIZE": "SLICE_SPLIT_TEST_SIZE",
            "SEED_S1_RANDOM_STATE": "SLICE_SPLIT_RANDOM_STATE", "seed_s1_split": "split_3536_393"}

__all__ = ["CHANNELS", "SPLIT_3536_393", "SPLIT_MODES", "LggSlices", "SliceFiles", "list_slices", "load_slice",
           "patient_split", "read_image", "read_mask", "split_3536_393"]


__getattr__ = renamed_names(globals(), _RENAMED)


class SliceFiles(NamedTuple):
    """One kaggle_3m slice: its patient folder name and the paths of its image and mask TIFFs."""
    patient: str
    image: str
    mask: str

    @property
    def name(self) -> str:
        """The slice's case name, `<patient>/<image file stem>` (what `data.exclude_cases` lists)."""
        return f"{self.patient}/{os.path.splitext(os.path.basename(self.image))[0]}"


def _natural_key(name: str) -> list:
    """Sort key putting `x_2` before `x_10`: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _patient_slices(root: str, patient: str) -> list[SliceFiles]:
    """The paired slices of one patient folder, in slice-number order; InputError naming an unpaired file."""
    folder = os.path.join(root, patient)
    stems = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(folder))
             if f.lower().endswith(_TIFF_EXTENSIONS) and not f.startswith(".")}
    masks = {s[:-len(MASK_SUFFIX)]: f for s, f in stems.items() if s.endswith(MASK_SUFFIX)}
    images = {s: f for s, f in stems.items() if not s.endswith(MASK_SUFFIX)}
    for stem in sorted(set(masks) - set(images)):
        raise InputError(f"{os.path.join(folder, masks[stem])}: mask without its image {stem}.tif")
    for stem in sorted(set(images) - set(masks)):
        raise InputError(f"{os.path.join(folder, images[stem])}: image without its mask {stem}{MASK_SUFFIX}.tif")
    if not images:
        raise InputError(f"{folder}: patient folder has no <name>_<n>.tif slices")
    return [SliceFiles(patient, os.path.join(folder, images[s]), os.path.join(folder, masks[s]))
            for s in sorted(images, key=_natural_key)]


def list_slices(root: str) -> list[SliceFiles]:
    """Every paired slice under `root`, by patient folder name (sorted) then slice number.

    Raises InputError naming `root` when it is missing or has no `TCGA_*` folder, and naming the file when an
    image has no mask or a mask no image.
    """
    if not os.path.isdir(root):
        raise InputError(f"{root}: LGG kaggle_3m folder not found")
    patients = sorted(d for d in os.listdir(root)
                      if d.startswith(PATIENT_PREFIX) and os.path.isdir(os.path.join(root, d)))
    if not patients:
        raise InputError(f"{root}: no {PATIENT_PREFIX}* patient folders (expected the kaggle_3m layout "
                         f"<root>/{PATIENT_PREFIX}<...>/<name>_<n>.tif and <name>_<n>{MASK_SUFFIX}.tif)")
    return [s for p in patients for s in _patient_slices(root, p)]


def _read_tiff(path: str) -> np.ndarray:
    try:
        return np.asarray(tifffile.imread(path))
    except _READ_ERRORS as e:
        raise InputError(f"{path}: unreadable TIFF ({type(e).__name__}: {e})") from None


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 image (pre-contrast, FLAIR, post-contrast); InputError naming `path` otherwise."""
    image = _read_tiff(path)
    if image.ndim != 3 or image.shape[-1] != len(CHANNELS):
        raise InputError(f"{path}: expected an (H, W, 3) image (pre-contrast, FLAIR, post-contrast), "
                         f"got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"{path}: expected 8-bit pixels, got {image.dtype}")
    return image


def read_mask(path: str) -> np.ndarray:
    """(H, W) bool mask from a single-channel TIFF with values in {0, 255} or {0, 1}; InputError naming `path`
    for another shape or any other value."""
    mask = _read_tiff(path)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"{path}: expected a single-channel (H, W) mask, got shape {mask.shape}")
    values = set(np.unique(mask).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        raise InputError(f"{path}: mask is not binary (0/255 or 0/1), found values {sorted(values)[:8]}")
    return mask > 0


def load_slice(image_path: str, mask_path: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and resize one slice.

    The image maps uint8 -> x / 127.5 - 1 and is resized with anti-aliasing (Gaussian prefilter, then linear
    zoom; non-square slices are first padded to a square with -1); the mask is resized linearly and thresholded
    at 0.5.

    Returns:
      image (S, S, 3) float32 in [-1, 1]; mask (S, S, 1) float32 in {0, 1}; S = image_size.
    """
    image, mask = read_image(image_path), read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise InputError(f"{mask_path}: mask size {mask.shape} differs from its image {image_path} "
                         f"{image.shape[:2]}")
    x = image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    x = np.clip(_resize_stack(x, image_size, -1.0, order=1), -1.0, 1.0).transpose(1, 2, 0)
    m = _resize_stack(mask[None].astype(np.float32), image_size, 0.0, order=1)[0] > 0.5
    return x.astype(np.float32), m[..., None].astype(np.float32)


def patient_split(patients: Sequence[str], seed: int = 42, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict:
    """Patient-level split of a slice list: `split_cases(sorted unique patients, seed, fractions)`.

    Args:
      patients: the patient of each slice (N names).
      seed, fractions: as `split_cases`.
    Returns:
      {"train", "val", "test": sorted int arrays of slice indices}; no patient is in two splits.
    """
    patients = np.asarray(list(patients), dtype=object)
    parts = split_cases(sorted(set(patients)), seed, fractions)
    return {name: np.flatnonzero(np.isin(patients, np.asarray(parts[name], dtype=object))) for name in SPLITS}


def split_3536_393(has_tumour: Sequence[bool], stratified: bool = True) -> dict:
    """The slice-level split of the MedSegDiff notebook trained on kaggle_3m: sklearn `train_test_split(slices,
    test_size=0.1, stratify=has_tumour, random_state=42)`; validation is the test split (the notebook had no
    other).

    On the 3,929 kaggle_3m slices this gives 3,536 train / 393 test. Which slices land where depends only on N,
    the labels and their order, so the notebook's exact split needs its slice order (it globbed the folder;
    `list_slices` sorts). Slices of one patient fall on both sides.

    Args:
      has_tumour: per slice, whether its mask has a foreground pixel (N booleans).
      stratified: stratify on `has_tumour` (as the notebook did); False draws the same sizes without
        stratification.
    Returns:
      {"train", "val", "test": sorted int arrays of slice indices}; "val" equals "test".
    """
    from sklearn.model_selection import train_test_split      # a dependency of nilearn
    labels = np.asarray(list(has_tumour), dtype=bool)
    try:
        train, test = train_test_split(np.arange(labels.size), test_size=SLICE_SPLIT_TEST_SIZE,
                                       random_state=SLICE_SPLIT_RANDOM_STATE, stratify=labels if stratified else None)
    except ValueError as e:
        raise InputError(f"config key data.split: 'lgg_3536_393' cannot split {labels.size} slices ({e})") from None
    test = np.sort(test)
    return {"train": np.sort(train), "val": test, "test": test}


@functools.lru_cache(maxsize=4)
def _has_tumour(mask_paths: tuple) -> tuple:
    """Per mask file, whether it has a foreground pixel (reads and checks every mask; cached per file list);
    a None path (an excluded slice) counts as no tumour."""
    return tuple(p is not None and bool(read_mask(p).any()) for p in mask_paths)


class LggSlices:
    """kaggle_3m slices: {"image": (S, S, 3) float32 in [-1, 1] (pre-contrast, FLAIR, post-contrast), "mask":
    (S, S, 1) float32 {0, 1}, "case": int32 (the patient's position among the sorted `TCGA_*` folders)}.

    Args:
      root: the kaggle_3m folder.
      split: "train", "val" or "test".
      image_size: output side S (256 keeps the native size; the MedSegDiff notebook used 32).
      seed, fractions: the patient-level split (`patient_split`); unused with split_mode "lgg_3536_393".
      split_mode: "random", a patient-level split (no patient in two splits), or "lgg_3536_393", the MedSegDiff
        notebook's slice-level split stratified on has-tumour (`split_3536_393`; reads every mask once when
        built).
      stratified: with "lgg_3536_393", stratify on has-tumour as the notebook did.
      exclude: slice names `<patient>/<stem>` to leave out (`data.exclude_cases`), removed after the split (with
        "lgg_3536_393" an excluded slice's mask is not read and counts as no tumour in the stratification).
    """

    modalities = CHANNELS

    def __init__(self, root: str, split: str = "train", image_size: int = 32, seed: int = 42,
                 fractions=DEFAULT_FRACTIONS, split_mode: str = "random", stratified: bool = True, exclude=()):
        self.root = os.fspath(root)
        check_split(split)
        from jaxdiff.config_defaults import renamed_value
        split_mode = renamed_value("data.split", split_mode)
        if split_mode not in SPLIT_MODES:
            raise InputError(f"config key data.split: {split_mode!r} is not one of {', '.join(SPLIT_MODES)}")
        if int(image_size) < 1:
            raise InputError(f"config key data.image_size: {image_size!r} is not a positive int")
        slices = list_slices(self.root)
        patients = [s.patient for s in slices]
        excluded = set(exclude)
        if split_mode == "lgg_3536_393":
            parts = split_3536_393(_has_tumour(tuple(None if s.name in excluded else s.mask for s in slices)),
                                   stratified)
        else:
            parts = patient_split(patients, seed, fractions)
        self.slices = [slices[i] for i in parts[split] if slices[i].name not in excluded]
        if not self.slices:
            raise InputError(f"{self.root}: {len(slices)} slices of {len(set(patients))} patients leave split "
                             f"{split!r} empty")
        ids = {p: i for i, p in enumerate(sorted(set(patients)))}
        self.case_ids = np.asarray([ids[s.patient] for s in self.slices], dtype=np.int32)
        self.patients = sorted({s.patient for s in self.slices})
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, idx: int) -> dict:
        files = self.slices[idx]
        image, mask = load_slice(files.image, files.mask, self.image_size)
        return {"image": image, "mask": mask, "case": self.case_ids[idx]}
