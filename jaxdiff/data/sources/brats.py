"""BraTS on disk: `<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz` (or `.nii`), read in RAS.

Every sub-folder of `root` is a case. Files are checked lazily: a case is read, and its modalities validated
(present, readable, finite, same 3D shape and affine, integer seg), the first time one of its slices is asked
for; any problem raises an InputError naming the file (`python -m jaxdiff.train` reads every case of every split
up front, `jaxdiff.data.check`, so a run meets none of these). Labels follow BraTS (1 necrotic core, 2 oedema,
4 enhancing tumour; 3 in BraTS 2023); the mask is the whole tumour, seg > 0, or with `data.regions` the nested
regions as channels ("brats": WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; "brats2023": label 3 for 4).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from jaxdiff.data.sources import DEFAULT_FRACTIONS, NORMALISATIONS, axial_slices, check_split, \
    normalise as normalise_volume, parse_modalities, region_set, split_cases
from jaxdiff.config_defaults import renamed_names
from jaxdiff.errors import InputError
from jaxdiff.io.nifti import load_nifti, nifti_shape

MODALITIES = ("t1", "t1ce", "t2", "flair")

# data.split: "random" (by seed and fractions) or "brats_250_73_45", the case split of the original transformer-UNet
# BraTS segmenter (UNet + SE blocks + transformer bottleneck, `models/transformer_unet.py`).
CASE_SPLITS = ("random", "brats_250_73_45")
SPLIT_250_73_45 = (250, 73, 45)   # train, val, test of the 368 BraTS2020 training cases in that split
# data.slices="linspace_70_100_10": the 10 axial slices per case that segmenter trained on
LINSPACE_70_100_10 = tuple(int(k) for k in np.rint(np.linspace(70, 100, 10)))     # 70, 73, 77, ..., 97, 100
SLICE_RECIPES = {"linspace_70_100_10": LINSPACE_70_100_10}

# Names of earlier versions, still importable (with a FutureWarning).
_RENAMED = {"SEED_S0_CASES": "SPLIT_250_73_45", "SEED_S0_SLICES": "LINSPACE_70_100_10",
            "seed_s0_split": "split_250_73_45"}

__all__ = ["CASE_SPLITS", "LINSPACE_70_100_10", "MODALITIES", "SLICE_RECIPES", "SPLIT_250_73_45", "BratsSlices",
           "case_file", "case_parts", "list_cases", "load_case", "split_250_73_45", "split_cases"]


__getattr__ = renamed_names(globals(), _RENAMED)


def list_cases(root: str) -> list[str]:
    """Sorted case folder names under `root`; InputError naming `root` if it is missing or has none."""
    if not os.path.isdir(root):
        raise InputError(f"{root}: BraTS folder not found")
    cases = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not cases:
        raise InputError(f"{root}: no case folders (expected <root>/<case>/<case>_t2.nii.gz ...)")
    return cases


def split_250_73_45(cases) -> dict:
    """The case split of the original transformer-UNet BraTS segmenter: sklearn `train_test_split(cases,
    test_size=118, random_state=42)`, then the 118 held-out cases `train_test_split(held, test_size=45,
    random_state=42)` into val (73) and test (45).

    On the 368 BraTS2020 training cases this gives train 250 / val 73 / test 45. With another number n of
    cases the held-out and test counts are scaled by the same fractions, round(n * 118 / 368) and
    round(held * 45 / 118) (each split keeps at least one case), so the original's exact cases are only
    reproduced on the full 368-case folder (listed in sorted order, as `list_cases` does).

    Args:
      cases: case identifiers, at least 3.
    Returns:
      {"train": [...], "val": [...], "test": [...]}, disjoint, each in the input order.
    """
    from sklearn.model_selection import train_test_split      # a dependency of nilearn
    cases = list(cases)
    n = len(cases)
    if n < 3:
        raise InputError(f"config key data.split: 'brats_250_73_45' needs at least 3 cases, got {n}")
    n_train, n_val, n_test = SPLIT_250_73_45
    n_held = min(max(round(n * (n_val + n_test) / (n_train + n_val + n_test)), 2), n - 1)
    n_held_test = min(max(round(n_held * n_test / (n_val + n_test)), 1), n_held - 1)
    train, held = train_test_split(cases, test_size=n_held, random_state=42)
    val, test = train_test_split(held, test_size=n_held_test, random_state=42)
    order = {c: i for i, c in enumerate(cases)}
    return {name: sorted(part, key=order.__getitem__) for name, part in (("train", train), ("val", val),
                                                                          ("test", test))}


def case_parts(cases, case_split: str = "random", seed: int = 42, fractions=DEFAULT_FRACTIONS) -> dict:
    """{"train", "val", "test": case names} of `cases` (all the case folders, sorted) under `case_split`."""
    from jaxdiff.config_defaults import renamed_value
    case_split = renamed_value("data.split", case_split)
    if case_split not in CASE_SPLITS:
        raise InputError(f"config key data.split: {case_split!r} is not one of {', '.join(CASE_SPLITS)}")
    return split_250_73_45(cases) if case_split == "brats_250_73_45" else split_cases(cases, seed, fractions)


def case_file(root: str, case: str, name: str) -> str:
    """Path of `<root>/<case>/<case>_<name>.nii.gz` (or `.nii`); InputError naming it when absent."""
    stem = os.path.join(root, case, f"{case}_{name}")
    for ext in (".nii.gz", ".nii"):
        if os.path.isfile(stem + ext):
            return stem + ext
    raise InputError(f"{stem}.nii.gz: missing BraTS file ({name} of case {case})")


def load_case(root: str, case: str, modalities: tuple) -> dict:
    """Read and validate one case.

    Returns:
      {"volumes": [C arrays (X, Y, Z) float32, in `modalities` order], "seg": (X, Y, Z) int16,
       "affine": (4, 4) float64}, RAS.
    """
    paths = [case_file(root, case, m) for m in (*modalities, "seg")]
    arrays, affine = [], None
    for path in paths:
        data, aff = load_nifti(path)
        if data.ndim == 4 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
        if arrays and data.shape != arrays[0].shape:
            raise InputError(f"{path}: shape {data.shape} differs from {paths[0]} {arrays[0].shape}")
        if affine is not None and not np.allclose(aff, affine, atol=1e-3):
            raise InputError(f"{path}: affine differs from {paths[0]} (modalities not co-registered)")
        arrays.append(data)
        affine = aff
    seg = arrays.pop()
    if not np.all(seg == np.round(seg)):
        raise InputError(f"{paths[-1]}: segmentation has non-integer values")
    return {"volumes": arrays, "seg": seg.astype(np.int16), "affine": affine}


@functools.lru_cache(maxsize=512)
def _slice_stack(root, case, modalities, slices, image_size, method, regions=None):
    """(images (N, S, S, C), masks (N, S, S, K)) of one case's axial `slices` (K: see `axial_slices`); cached
    per case (512 cases: with the linspace_70_100_10 recipe, 10 slices of 240 x 240, about 2.3 MB per case and
    modality). With
    `regions`, a seg label that no region contains raises an InputError naming the seg file."""
    data = load_case(root, case, modalities)
    depth = data["seg"].shape[2]
    bad = [k for k in slices if not 0 <= k < depth]
    if bad:
        raise InputError(f"{case_file(root, case, 'seg')}: {depth} axial slices, slice index {bad[0]} out of range")
    if regions is not None:
        extra = sorted(set(np.unique(data["seg"]).tolist()) - {0} - {k for r in region_set(regions) for k in r.labels})
        if extra:
            raise InputError(f"{case_file(root, case, 'seg')}: labels {extra} are in no region of data.regions="
                             f"{regions!r}" + (" (BraTS 2023 labels: use 'brats2023')" if 3 in extra else ""))
    return axial_slices([normalise_volume(v, method) for v in data["volumes"]], data["seg"], slices, image_size,
                        regions)


class BratsSlices:
    """Axial BraTS slices: {"image": (S, S, C) float32 in [-1, 1], "mask": (S, S, K) float32 {0, 1}, "case": int
    (position in `list_cases(root)`)}; C = len(modalities), in that order; K = 1 (whole tumour, seg > 0) or, with
    `regions`, one channel per nested region (WT, TC, ET).

    Args:
      root: folder of case folders.
      split: "train", "val" or "test", a deterministic case-level split chosen by `case_split`.
      modalities: names among t1, t1ce, t2, flair (or a "t1,t2" string).
      image_size: output side S (slices are padded to a square and zoomed; 240 keeps BraTS' native size).
      slice_indices: axial indices k per case (rounded to ints); "linspace_70_100_10" is
        `LINSPACE_70_100_10` = linspace(70, 100, 10) rounded (the transformer-UNet segmenter's slices); None
        takes every slice of the first case's depth (read from its header).
      normalise: "volume_max" (the transformer-UNet segmenter's) or "zscore", per volume and modality (see
        `sources.normalise`).
      case_split: "random" (`split_cases(cases, seed, fractions)`) or "brats_250_73_45"
        (`split_250_73_45(cases)`; `seed` and `fractions` are then unused).
      exclude: case folder names to leave out (`data.exclude_cases`); removed after the split, so the other
        cases stay in their splits.
      regions: `data.regions`: None (whole tumour), "brats" or "brats2023" (`sources.REGION_SETS`).
    """

    def __init__(self, root: str, split: str = "train", modalities=("t2",), image_size: int = 240,
                 slice_indices=None, normalise: str = "volume_max", seed: int = 42, fractions=DEFAULT_FRACTIONS,
                 case_split: str = "random", exclude=(), regions=None):
        self.root = os.fspath(root)
        self.regions = None if region_set(regions) is None else regions.lower()
        self.modalities = parse_modalities(modalities, MODALITIES)
        all_cases = list_cases(self.root)
        excluded = set(exclude)
        self.cases = [c for c in case_parts(all_cases, case_split, seed, fractions)[check_split(split)]
                      if c not in excluded]
        if not self.cases:
            raise InputError(f"{self.root}: {len(all_cases)} case folders leave split {split!r} empty"
                             + (f" (data.exclude_cases leaves out {len(excluded)})" if excluded else ""))
        self.case_ids = {c: i for i, c in enumerate(all_cases)}
        if isinstance(slice_indices, str):
            from jaxdiff.config_defaults import renamed_value
            name = renamed_value("data.slices", slice_indices)
            if name not in SLICE_RECIPES:
                raise InputError(f"config key data.slices: {slice_indices!r} is not "
                                 f"{' or '.join(map(repr, SLICE_RECIPES))} or a list of indices")
            slice_indices = SLICE_RECIPES[name]
        if slice_indices is None:
            first = case_file(self.root, self.cases[0], self.modalities[0])
            slice_indices = range(nifti_shape(first)[2])
        self.slices = tuple(int(round(k)) for k in slice_indices)
        if not self.slices:
            raise InputError("config key data.slices: empty list of slice indices")
        if normalise not in NORMALISATIONS:
            raise InputError(f"config key data.normalise: {normalise!r} is not one of {', '.join(NORMALISATIONS)}")
        self.image_size, self.normalise = int(image_size), normalise

    def __len__(self) -> int:
        return len(self.cases) * len(self.slices)

    def case_volumes(self, cases=None):
        """Whole cases of this split as stored (every slice, RAS, no resizing or normalisation).

        cases: case folder names from `self.cases` (None: all, in split order). Yields {"case": folder name,
        "images": {modality: (X, Y, Z) float32}, "seg": (X, Y, Z) int16 labels, "affine": (4, 4) float64 RAS}.
        """
        for case in (self.cases if cases is None else cases):
            data = load_case(self.root, case, self.modalities)
            yield {"case": case, "images": dict(zip(self.modalities, data["volumes"])), "seg": data["seg"],
                   "affine": np.asarray(data["affine"], np.float64)}

    def __getitem__(self, idx: int) -> dict:
        case, slot = self.cases[idx // len(self.slices)], idx % len(self.slices)
        images, masks = _slice_stack(self.root, case, self.modalities, self.slices, self.image_size, self.normalise,
                                     self.regions)
        return {"image": images[slot].copy(), "mask": masks[slot].copy(), "case": np.int32(self.case_ids[case])}
