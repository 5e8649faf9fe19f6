"""Segment (or classify) your own scans with a trained work directory: the Python side of `jaxdiff.predict`.

    from jaxdiff import inference
    predictor = inference.load_run("runs/transformer_unet_tiny")   # config, task, EMA variables of the latest step
    out = predictor.segment("case_t2.nii.gz")                # {"mask": Nifti1Image uint8, "uncertainty": ... | None}
    mask = predictor.segment_volume(nib.load("case_t2.nii.gz"))   # the label volume alone
    masks = predictor.segment_images(images)                 # (N, S, S, C) in [-1, 1] -> {"mask", "prob", ...}

Volumes (slice-wise 2D models: tasks segmentation and segmentation_diffusion) go through the training
preprocessing and back:
  1. nibabel's closest canonical (RAS) orientation (`nib.as_closest_canonical`), the original orientation kept;
  2. resampling to the training voxel spacing (`training_geometry`; trilinear, antialiased when shrinking);
  3. the training normalisation (`data.normalise`, or the phantom's fixed intensity scale), axial slices cut as
     `jaxdiff.data.sources.axial_slices` cuts them (rot90, centred square padding, zoom to `data.image_size`)
     and `data.clahe` if the run used it;
  4. every slice through the model in batches of one compiled shape (the last batch padded), MedSegDiff's
     ensemble as one batched sampler call per batch, split over the devices (`training.sharding`); slices in
     which every modality is constant (outside the head: air, or the zero background of a skull-stripped scan)
     are not run and get probability 0, as nnU-Net crops a case to its non-zero region;
  5. each slice's probability zoomed back to its padded square, the padding cropped, rot90 undone, the volume
     resampled back to the input grid (trilinear on probabilities), thresholded at 0.5 and reoriented to the
     input's own axes. The mask has the input's shape, affine and header (dtype uint8).
Labels (`labels_from_probabilities`): one foreground channel (whole tumour) is written as label 1; a run trained
on `data.regions="brats"` (WT, TC, ET channels) gets BraTS labels 2 / 1 / 4 (nnU-Net's region-to-label rule).

Images (PNG/JPEG/TIFF) for the same models are resized as the run's source resized them (LGG: centred square
padding + antialiased zoom; others: a bilinear resize to S x S), predicted and resized back to the image's own
size. Classifiers give class probabilities per image (`Predictor.classify_files`).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from jaxdiff.errors import InputError

if TYPE_CHECKING:
    import nibabel as nib

SEGMENTATION_TASKS = ("segmentation", "segmentation_diffusion")
TASKS = (*SEGMENTATION_TASKS, "classification")
PROMPT_TASKS = ("promptable_segmentation",)   # SAM: images with prompts (`Predictor.segment_prompts`)
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_MODALITIES = ("t1", "t1ce", "t2", "flair")
IGNORED_SUFFIXES = ("seg",)               # BraTS truth files beside the modalities: not inputs
LGG_AS_MODALITIES = ("t1", "flair", "t1ce")  # the LGG channels (pre-contrast, FLAIR, post-contrast) as volumes
SPACING_RTOL = 0.01                       # voxel sizes within 1% of the training spacing are not resampled


# ------------------------------------------------------------------------------------------------------------
# What the run was trained on
# ------------------------------------------------------------------------------------------------------------
def training_geometry(data_config):
    """Voxel spacing (mm) the run's volumes had in training: a float (isotropic), a 3-tuple (X, Y, Z), or None.

    brats: 1.0 (BraTS is distributed resampled to 1 mm isotropic); phantom: the phantom grid's voxel size
    (`jaxdiff.data.sources.phantom.DEFAULT_VOXEL_MM`, 2 mm); ixi: `data.spacing`; any other source: None, the
    input is taken at its own spacing (no resampling).
    """
    source = data_config.get("source", None)
    if source == "brats":
        return 1.0
    if source == "phantom":
        from jaxdiff.data.sources.phantom import DEFAULT_VOXEL_MM
        return float(DEFAULT_VOXEL_MM)
    if source == "ixi":
        from jaxdiff.data.sources.ixi import DEFAULT_SPACING
        spacing = data_config.get("spacing", DEFAULT_SPACING)
        return tuple(float(s) for s in spacing) if isinstance(spacing, (tuple, list)) else float(spacing)
    return None


def model_modalities(data_config) -> tuple:
    """The volume modalities of the model's input channels, in channel order: `data.modality` for the volume
    sources ("t2" -> ("t2",), "t1,t2,flair" -> three); LGG's channels as (t1, flair, t1ce); else
    `data.channels` unnamed channels ("image", or "channel0", ...)."""
    from jaxdiff.data.sources import parse_modalities
    source = data_config.get("source", None)
    if source in ("brats", "phantom"):
        return parse_modalities(data_config.get("modality", "t2"), VOLUME_MODALITIES)
    if source == "lgg":
        return LGG_AS_MODALITIES
    channels = int(data_config.get("channels", 1) or 1)
    return ("image",) if channels == 1 else tuple(f"channel{c}" for c in range(channels))


def normalise_volume(volume: np.ndarray, data_config) -> np.ndarray:
    """One modality (X, Y, Z) -> [-1, 1] float32 as the run's source did: the phantom's fixed calibration
    (`phantom.to_unit_range`) for phantom runs, else `sources.normalise` with `data.normalise` (default
    "volume_max")."""
    if data_config.get("source", None) == "phantom":
        from jaxdiff.data.sources.phantom import to_unit_range
        return to_unit_range(volume)
    from jaxdiff.data.sources import normalise
    return normalise(volume, data_config.get("normalise", "volume_max") or "volume_max")


def labels_from_probabilities(prob: np.ndarray, config) -> np.ndarray:
    """(..., R) probabilities -> (...) uint8 labels.

    R = 1 (the whole tumour, or the mask-folder / LGG foreground): label 1 where p > 0.5.
    R regions of `config.data.regions` (`jaxdiff.data.sources.REGION_SETS`, outermost first; "brats": WT, TC,
    ET): each thresholded at 0.5 and clipped to the region enclosing it (nesting enforced: ET <= TC <= WT), then
    each region's label written in order, inner ones overwriting (nnU-Net's BraTS rule): 2 (oedema) in WT, 1
    (necrotic core) in TC, 4 (enhancing) in ET; "brats2023" writes 3 for ET.
    """
    from jaxdiff.data.sources import region_set
    prob = np.asarray(prob)
    if prob.shape[-1] == 1:
        return (prob[..., 0] > 0.5).astype(np.uint8)
    data = config.get("data", None) if config is not None else None
    regions = region_set(data.get("regions", None)) if data is not None else None
    if regions is not None and prob.shape[-1] == len(regions):
        inside = np.minimum.accumulate(prob > 0.5, axis=-1)
        labels = np.zeros(prob.shape[:-1], np.uint8)
        for r, region in enumerate(regions):
            labels[inside[..., r]] = region.label
        return labels
    raise InputError(f"config key model: the model gives {prob.shape[-1]} output channels; predict maps one "
                     f"foreground channel to labels (add the region rule to labels_from_probabilities)")


# ------------------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------------------
def _zooms(affine) -> np.ndarray:
    return np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))


def resample_shape(shape, affine, spacing) -> tuple:
    """Grid shape (X, Y, Z) of a volume `shape` with voxel axes `affine` resampled to `spacing` mm (same field
    of view, rounded), or `shape` itself when `spacing` is None or within 1% of the voxel size."""
    shape = tuple(int(n) for n in shape[:3])
    if spacing is None:
        return shape
    zooms, target = _zooms(affine), np.broadcast_to(np.asarray(spacing, np.float64), (3,))
    if np.allclose(zooms, target, rtol=SPACING_RTOL):
        return shape
    return tuple(max(1, int(round(n * z / t))) for n, z, t in zip(shape, zooms, target))


def zoom_to(volume: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """(X, Y, Z[, C]) -> `shape` (X', Y', Z'[, C]) covering the same field of view (grid_mode: voxel edges
    aligned), linear by default, with a Gaussian prefilter along the axes that shrink."""
    shape = tuple(int(n) for n in shape)
    if tuple(volume.shape[:3]) == shape:
        return volume
    factors = np.asarray(shape, np.float64) / np.asarray(volume.shape[:3])
    extra = (1.0,) * (volume.ndim - 3)
    if order > 0 and np.any(factors < 1):
        sigma = np.maximum(0.5 / factors - 0.5, 0.0)
        volume = ndimage.gaussian_filter(volume, (*sigma, *(0.0,) * len(extra)))
    return ndimage.zoom(volume, (*factors, *extra), order=order, mode="nearest", grid_mode=True)


def unpad_square(stack: np.ndarray, h: int, w: int) -> np.ndarray:
    """Undo the centred square padding and zoom of `sources._resize_stack` for model outputs: (N, S, S, R) ->
    (N, h, w, R), each image zoomed (linear) back to its padded side max(h, w), then the padding cropped."""
    side, s = max(h, w), stack.shape[1]
    if side != s:
        stack = ndimage.zoom(stack, (1, side / s, side / s, 1), order=1, mode="nearest", grid_mode=True)
    top, left = (side - h) // 2, (side - w) // 2
    return stack[:, top:top + h, left:left + w]


def slices_to_volume(stack: np.ndarray, shape_xy) -> np.ndarray:
    """Undo `axial_slices` for model outputs: (Z, S, S, R) slices -> (X, Y, Z, R) volume of in-plane shape
    `shape_xy` (X, Y): `unpad_square` to the (Y, X) slice (rot90(volume[:, :, k]) is (Y, X)), rot90 undone."""
    nx, ny = (int(n) for n in shape_xy)
    stack = unpad_square(stack, ny, nx)
    return np.rot90(stack.transpose(1, 2, 0, 3), k=-1, axes=(0, 1))      # (Y, X, Z, R) -> (X, Y, Z, R)


# ------------------------------------------------------------------------------------------------------------
# Reading inputs
# ------------------------------------------------------------------------------------------------------------
def _strip_nifti(name: str) -> str | None:
    """File stem without .nii / .nii.gz, or None when `name` is not a NIfTI file."""
    low = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def _load_image(item, what: str):
    """A nibabel image from a path or an image; InputError naming the file when unreadable."""
    import nibabel as nib
    if isinstance(item, (str, os.PathLike)):
        from jaxdiff.io.nifti import _open
        return _open(os.fspath(item)), os.fspath(item)
    if isinstance(item, nib.spatialimages.SpatialImage):
        return item, what
    raise InputError(f"{what}: expected a NIfTI path or a nibabel image, got {type(item).__name__}")


def read_volumes(items: dict) -> dict:
    """Read the modality files of one case {modality: path or nibabel image}, checked.

    Returns {"image": the first modality's nibabel image (its grid is the output's), "volumes": [C arrays
    (X, Y, Z) float32 in RAS], "affine": the RAS affine (4, 4), "ornt": the input's orientation (nibabel
    ornt array)}. InputError naming the file for an unreadable, non-3D or non-finite volume, or one whose
    shape or affine differs from the first modality's.
    """
    import nibabel as nib
    first, first_name, volumes, affine = None, None, [], None
    for modality, item in items.items():
        img, name = _load_image(item, f"input {modality}")
        shape = tuple(img.shape)
        if len(shape) == 4 and shape[-1] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise InputError(f"{name}: expected a 3D volume, got shape {tuple(img.shape)}")
        if first is None:
            first, first_name = img, name
        elif shape != tuple(first.shape[:3]) or not np.allclose(img.affine, first.affine, atol=1e-3):
            raise InputError(f"{name}: {'shape' if shape != tuple(first.shape[:3]) else 'affine'} differs from "
                             f"{first_name} (modalities of a case must share one grid)")
        try:
            canon = nib.as_closest_canonical(img)
            data = np.asarray(canon.get_fdata(dtype=np.float32))
        except Exception as e:  # truncated or corrupt data fail only when read
            raise InputError(f"{name}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
        data = data.reshape(data.shape[:3])
        if not np.all(np.isfinite(data)):
            raise InputError(f"{name}: contains NaN or infinite values")
        volumes.append(data)
        affine = np.asarray(canon.affine, np.float64)
    return {"image": first, "name": first_name, "volumes": volumes, "affine": affine,
            "ornt": nib.orientations.io_orientation(first.affine)}


def to_input_grid(volume: np.ndarray, image, ornt) -> np.ndarray:
    """A RAS (X, Y, Z[, ...]) array on the canonical grid of `image` -> the array in `image`'s own axis order
    (the exact inverse of `nib.as_closest_canonical`)."""
    import nibabel as nib
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return nib.orientations.apply_orientation(volume, back)


def _nifti_like(array: np.ndarray, image, dtype) -> "nib.Nifti1Image":
    """`array` (input grid) as a NIfTI-1 image with `image`'s affine and a copy of its header, dtype `dtype`."""
    import nibabel as nib
    header = nib.Nifti1Header.from_header(image.header)
    out = nib.Nifti1Image(np.asarray(array, dtype), image.affine, header=header)
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def find_volume_cases(path: str, modalities: tuple) -> tuple[list, list]:
    """Cases of a NIfTI input: one file, a folder of files, or a BraTS-layout folder (`<root>/<case>/<case>_<m>
    .nii.gz`), for a model taking `modalities`.

    Files named `<case>_<m>.nii.gz` (m a BraTS modality or seg) are grouped by case and matched to the model's
    modalities by that suffix (seg is ignored); other files are single-modality cases named by their stem,
    accepted only when the model takes one modality. Returns (cases [(name, {modality: path})], problems
    [(name or path, message)]).
    """
    if os.path.isfile(path):
        folders, single = [], [path]
    elif os.path.isdir(path):
        folders, single = [(None, path)], []
        folders += [(d, os.path.join(path, d)) for d in sorted(os.listdir(path))
                    if not d.startswith(".") and os.path.isdir(os.path.join(path, d))]
    else:
        raise InputError(f"--input {path}: not found")
    cases, problems = [], []

    def add(case_dir, files):
        groups, plain = {}, []
        for f in files:
            stem = _strip_nifti(os.path.basename(f))
            head, _, tail = stem.rpartition("_")
            if head and tail.lower() in (*VOLUME_MODALITIES, *IGNORED_SUFFIXES):
                if tail.lower() not in IGNORED_SUFFIXES:
                    groups.setdefault(head, {})[tail.lower()] = f
            else:
                plain.append((stem, f))
        for stem, f in plain:
            if len(modalities) == 1:
                cases.append((stem, {modalities[0]: f}))
            else:
                problems.append((f, f"{f}: the model takes {len(modalities)} modalities ({', '.join(modalities)}); "
                                    f"name the files <case>_<modality>.nii.gz"))
        if case_dir is not None and len(groups) == 1:
            groups = {case_dir: next(iter(groups.values()))}     # BraTS: the case is the folder's name
        for name, found in sorted(groups.items()):
            missing = [m for m in modalities if m not in found]
            if missing:
                problems.append((name, f"{os.path.join(os.path.dirname(next(iter(found.values()))), name)}: no "
                                       f"{', '.join(missing)} file (the model takes {', '.join(modalities)}; "
                                       f"found {', '.join(sorted(found))})"))
            else:
                cases.append((name, {m: found[m] for m in modalities}))

    if single:
        if _strip_nifti(os.path.basename(path)) is None:
            raise InputError(f"--input {path}: not a NIfTI file (.nii or .nii.gz)")
        add(None, single)
    for case_dir, folder in folders:
        add(case_dir, sorted(os.path.join(folder, f) for f in os.listdir(folder)
                             if _strip_nifti(f) is not None and not f.startswith(".")))
    return cases, problems


def find_image_files(path: str) -> list[str]:
    """Image files (PNG/JPEG/TIFF/BMP) of `path`: the file itself, or those in the folder and its sub-folders
    one level down (LGG `TCGA_*` patient folders, a mask folder's `images/`), leaving out `*_mask.*` files and
    a `masks/` folder (truths, not inputs)."""
    if os.path.isfile(path):
        return [path]
    out = []
    for root, dirs, names in os.walk(path):
        depth = os.path.relpath(root, path).count(os.sep) + (root != path)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "masks" and depth < 1)
        out += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)
                and not n.startswith(".") and not os.path.splitext(n)[0].endswith("_mask")]
    return out


def is_image_input(path: str) -> bool:
    """True when `path` is an image file or a folder holding image files rather than NIfTI volumes."""
    if os.path.isfile(path):
        return path.lower().endswith(IMAGE_EXTENSIONS)
    if not os.path.isdir(path):
        return False
    for root, dirs, names in os.walk(path):
        if any(_strip_nifti(n) for n in names):
            return False
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names):
            return True
    return False


# ------------------------------------------------------------------------------------------------------------
# The predictor
# ------------------------------------------------------------------------------------------------------------
def _bar(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr, disable=None)


class Predictor:
    """A trained model ready to predict: `config` (the run's), `task` (built from it) and `variables` (EMA
    parameters when the run kept them, and model state).

    Args:
      config, task, variables: as `load_run` gives them (or a config, `tasks.build(config)` and fresh
        variables, e.g. to time a model).
      batch_size: slices per compiled batch (0: `eval.batch_size`, else 16).
      ensemble, num_steps: MedSegDiff ensemble size and sampler steps (0 / None: the config's).
      seed: the default PRNG seed of MedSegDiff's sampler.
      skip_empty: leave out of the model the axial slices in which every modality is constant (probability 0
        there); False runs every slice.
    """

    def __init__(self, config, task, variables, batch_size: int = 0, ensemble: int = 0, num_steps: int | None = None,
                 seed: int = 0, skip_empty: bool = True):
        if config.task not in (*TASKS, *PROMPT_TASKS):
            raise InputError(f"config key task: predict handles {', '.join((*TASKS, *PROMPT_TASKS))}, not "
                             f"{config.task!r}")
        self.config, self.task, self.variables = config, task, variables
        self.batch_size = int(batch_size or config.get("eval", {}).get("batch_size", 0) or 16)
        self.diffusion = config.task == "segmentation_diffusion"
        self.ensemble = int(ensemble or (config.diffusion.get("ensemble", 5) if self.diffusion else 1))
        self.num_steps = int(num_steps) if num_steps else None
        self.seed, self.skip_empty = int(seed), bool(skip_empty)
        self.image_size = int(config.data.image_size)
        self.modalities = model_modalities(config.data)
        self.spacing = training_geometry(config.data)

    # --- the model on model-space batches ---------------------------------------------------------------
    @functools.cached_property
    def _placed(self):
        """(jitted function, variables placed on the devices one batch is split over, batch sharding)."""
        import jax
        from jaxdiff.training import sharding as shd
        if self.diffusion:
            ens, steps = self.ensemble, self.num_steps
            _, variables, _ = shd.place_for_sampling(ens * self.batch_size, self.variables, None)

            def fn(v, x, rng):                 # one batched sampler call for the whole ensemble of the batch
                out = self.task.predict(v, x, rng, ensemble=ens, num_steps=steps)
                return {"prob": out["prob"], "variance": out["variance"]}
            return jax.jit(fn), variables, None
        sharding, variables, _ = shd.place_for_sampling(self.batch_size, self.variables, None)
        if self.config.task == "classification":
            return jax.jit(lambda v, x, rng: {"prob": self.task.predict(v, x)}), variables, sharding
        return jax.jit(lambda v, x, rng: {"prob": self.task.predict(v, x)["prob"]}), variables, sharding

    def _run_batch(self, images: np.ndarray, rng) -> dict:
        """The model on one batch (batch_size, S, S, C) in [-1, 1] -> numpy {"prob": (B, S, S, R) or (B, K)
        for a classifier, MedSegDiff also "variance" (B, S, S, R)}."""
        import jax
        fn, variables, sharding = self._placed
        x = jax.device_put(images, sharding) if sharding is not None else images
        return {k: np.asarray(v) for k, v in jax.device_get(fn(variables, x, rng)).items()}

    def predict_batches(self, images: np.ndarray, rng=None, bar=None) -> dict:
        """`_run_batch` over (N, S, S, C) images in batches of `batch_size` (the last one padded by repeating
        its last image, so one compiled shape serves all); numpy outputs with a leading N axis."""
        import jax
        images = np.asarray(images, np.float32)
        n, bs = len(images), self.batch_size
        if n == 0:
            raise InputError("no images to predict")
        rng = jax.random.PRNGKey(self.seed) if rng is None else rng
        outs = []
        for b, start in enumerate(range(0, n, bs)):
            chunk = images[start:start + bs]
            pad = bs - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
            out = self._run_batch(chunk, jax.random.fold_in(rng, b))
            outs.append({k: v[:bs - pad] for k, v in out.items()})
            if bar is not None:
                bar.update(bs - pad)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def _preprocess_slices(self, images: np.ndarray) -> np.ndarray:
        """The run's every-split transform (`data.clahe`) on (N, S, S, C) model-space images."""
        from jaxdiff.data import transforms
        every_split, _ = transforms.from_config(self.config.data)
        if every_split is None:
            return images
        return np.stack([every_split({"image": im})["image"] for im in images]).astype(np.float32)

    def segment_images(self, images, rng=None) -> dict:
        """Segment model-space images (N, S, S, C) float in [-1, 1] (S = data.image_size, already resized).

        Returns {"mask": (N, S, S) uint8 labels, "prob": (N, S, S, R) float32} and for MedSegDiff "variance"
        (N, S, S, R), the ensemble's per-pixel variance. `data.clahe` is applied as in training.
        """
        self._check_segmenter()
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, len(self.modalities)):
            raise InputError(f"images: expected (N, {self.image_size}, {self.image_size}, {len(self.modalities)}), "
                             f"got {images.shape}")
        out = self.predict_batches(self._preprocess_slices(images), rng)
        return {"mask": labels_from_probabilities(out["prob"], self.config), **out}

    def _check_segmenter(self):
        if self.config.task not in SEGMENTATION_TASKS:
            raise InputError(f"config key task: {self.config.task!r} is not a segmentation task")

    # --- volumes ----------------------------------------------------------------------------------------
    def _case_items(self, case) -> dict:
        """{modality: path or image} of one case given as a path (file or BraTS case folder), an image, a
        dict, or a list in the model's modality order."""
        import nibabel as nib
        if isinstance(case, dict):
            missing = [m for m in self.modalities if m not in case]
            if missing:
                raise InputError(f"input: no {', '.join(missing)} (the model takes {', '.join(self.modalities)})")
            return {m: case[m] for m in self.modalities}
        if isinstance(case, (list, tuple)):
            if len(case) != len(self.modalities):
                raise InputError(f"input: {len(case)} volumes for the model's {len(self.modalities)} modalities "
                                 f"({', '.join(self.modalities)})")
            return dict(zip(self.modalities, case))
        if isinstance(case, (str, os.PathLike)) and os.path.isdir(case):
            cases, problems = find_volume_cases(os.fspath(case), self.modalities)
            if problems:
                raise InputError(problems[0][1])
            if len(cases) != 1:
                raise InputError(f"{case}: {len(cases)} cases in the folder; segment one at a time")
            return cases[0][1]
        if isinstance(case, (str, os.PathLike, nib.spatialimages.SpatialImage)):
            if len(self.modalities) != 1:
                raise InputError(f"input: the model takes {len(self.modalities)} modalities "
                                 f"({', '.join(self.modalities)}); give {{modality: volume}} or a case folder")
            return {self.modalities[0]: case}
        raise InputError(f"input: expected a NIfTI path, a nibabel image, a case folder, a dict or an array, "
                         f"got {type(case).__name__}")

    def segment(self, case, rng=None, progress: str | None = None) -> dict:
        """Segment one volume case.

        Args:
          case: a NIfTI path or nibabel image (one-modality models), a BraTS case folder, {modality: path or
            image}, a list of those in `self.modalities` order, or a numpy array (X, Y, Z) / (X, Y, Z, C)
            taken as RAS at the training spacing (the returned images then have that diagonal affine).
          rng: PRNG key of MedSegDiff's sampler (default PRNGKey(seed)).
          progress: description of a tqdm bar over the slices (None: no bar).
        Returns:
          {"mask": Nifti1Image (input grid, uint8 labels), "uncertainty": Nifti1Image (float32 ensemble variance)
           for MedSegDiff, else None}.
        """
        import nibabel as nib
        self._check_segmenter()
        if isinstance(case, np.ndarray):
            array = case if case.ndim == 4 else case[..., None]
            if array.ndim != 4 or array.shape[-1] != len(self.modalities):
                raise InputError(f"input: expected (X, Y, Z) or (X, Y, Z, {len(self.modalities)}), got {case.shape}")
            spacing = np.broadcast_to(np.asarray(self.spacing or 1.0, np.float64), (3,))
            case = [nib.Nifti1Image(np.asarray(array[..., c], np.float32), np.diag([*spacing, 1.0]))
                    for c in range(array.shape[-1])]
        data = read_volumes(self._case_items(case))
        return self._segment_read(data, rng, progress)

    def segment_volume(self, case, rng=None) -> "nib.Nifti1Image":
        """The label volume of `segment(case)` (a Nifti1Image on the input's grid, uint8)."""
        return self.segment(case, rng)["mask"]

    def _segment_read(self, data: dict, rng, progress) -> dict:
        from jaxdiff.data.sources import axial_slices
        canonical_shape = data["volumes"][0].shape
        shape = resample_shape(canonical_shape, data["affine"], self.spacing)
        if self.config.data.get("source", None) == "phantom":
            _warn_phantom_range(data)
        volumes = [zoom_to(normalise_volume(v, self.config.data), shape) for v in data["volumes"]]
        volumes = [np.clip(v, -1.0, 1.0) for v in volumes]
        depth = shape[2]
        # Slices where every modality is constant (outside the head) are not run: probability and variance 0.
        live = [k for k in range(depth) if not self.skip_empty
                or any(v[:, :, k].max() > v[:, :, k].min() for v in volumes)]
        side = self.image_size
        out = {"prob": np.zeros((depth, side, side, 1), np.float32)}
        if self.diffusion:
            out["variance"] = np.zeros((depth, side, side, 1), np.float32)
        if live:
            images, _ = axial_slices(volumes, np.zeros(shape, np.uint8), live, side)
            bar = _bar(len(live), progress, "slice") if progress else None
            try:
                run = self.predict_batches(self._preprocess_slices(images), rng, bar)
            finally:
                if bar is not None:
                    bar.close()
            for key, value in run.items():
                if key not in out or out[key].shape[1:] != value.shape[1:]:
                    out[key] = np.zeros((depth, *value.shape[1:]), np.float32)
                out[key][live] = value
        prob = zoom_to(slices_to_volume(out["prob"], shape[:2]), canonical_shape)
        labels = to_input_grid(labels_from_probabilities(prob, self.config), data["image"], data["ornt"])
        result = {"mask": _nifti_like(labels, data["image"], np.uint8), "uncertainty": None}
        if "variance" in out:
            var = zoom_to(slices_to_volume(out["variance"], shape[:2]), canonical_shape)[..., 0]
            result["uncertainty"] = _nifti_like(to_input_grid(var, data["image"], data["ornt"]), data["image"],
                                                np.float32)
        return result

    # --- 2D images --------------------------------------------------------------------------------------
    def _square_pad(self) -> bool:
        """Whether the run's source padded images to a centred square before resizing (LGG and the volume
        slices) rather than resizing them to S x S directly (mask_folder, image_folder)."""
        return self.config.data.get("source", None) not in ("mask_folder", "image_folder", "mrnet")

    def _channels(self) -> int:
        return len(self.modalities) if self.config.task in SEGMENTATION_TASKS else int(
            self.config.data.get("channels", 3) or 3)

    def load_image(self, path: str) -> tuple[np.ndarray, tuple]:
        """One image file -> ((S, S, C) float32 in [-1, 1] as the run's source prepared it, the file's own
        (H, W)); InputError naming the file when it does not decode."""
        from jaxdiff.preprocess.imageio import read_image
        channels = self._channels()
        a = read_image(path, channels=1 if channels == 1 else 3)
        if a.shape[-1] != channels:
            raise InputError(f"{path}: the model takes {channels} channels")
        return self.prepare_image(a), a.shape[:2]

    def prepare_image(self, a: np.ndarray) -> np.ndarray:
        """An image (H, W, C) float in [0, 1] -> (S, S, C) float32 in [-1, 1] as the run's source resized it."""
        from jaxdiff.data.sources import _resize_stack
        from PIL import Image
        s = self.image_size
        if self._square_pad():
            x = np.clip(_resize_stack(2.0 * a.transpose(2, 0, 1) - 1.0, s, -1.0, order=1), -1.0, 1.0)
            return x.transpose(1, 2, 0).astype(np.float32)
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c], np.float32)).resize(
            (s, s), Image.BILINEAR)) for c in range(a.shape[-1])]
        return (np.stack(planes, -1) * 2.0 - 1.0).clip(-1.0, 1.0).astype(np.float32)

    def to_model_coords(self, xy, size) -> np.ndarray:
        """Pixel coordinates (..., 2) as (x, y) on an image of `size` (H, W) -> the (S, S) model frame of
        `prepare_image` (centred square padding then zoom, or the direct resize; `sam.model.to_input_coords`)."""
        from jaxdiff.models.sam.model import to_input_coords
        h, w = (int(n) for n in size)
        xy = np.asarray(xy, np.float32)
        if self._square_pad():
            side = max(h, w)
            xy, (h, w) = xy + np.array([(side - w) // 2, (side - h) // 2], np.float32), (side, side)
        return to_input_coords(xy, (h, w), (self.image_size, self.image_size))

    def to_image_size(self, values: np.ndarray, size) -> np.ndarray:
        """(S, S, R) model output -> (H, W, R) on an image's own `size` (H, W): the source's resize undone
        (`unpad_square`, or a bilinear resize for the sources that resized to S x S directly)."""
        from PIL import Image
        h, w = (int(n) for n in size)
        if self._square_pad():
            return unpad_square(values[None], h, w)[0]
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(values[..., r], np.float32))
                                    .resize((w, h), Image.BILINEAR)) for r in range(values.shape[-1])], -1)

    def _read_images(self, paths, on_error):
        good, images, sizes = [], [], []
        for path in paths:
            try:
                image, size = self.load_image(path)
            except InputError as e:
                if on_error is None:
                    raise
                on_error(path, str(e))
                continue
            good.append(path)
            images.append(image)
            sizes.append(size)
        return good, images, sizes

    def _predict_files(self, images, rng, progress):
        bar = _bar(len(images), progress, "image") if progress else None
        try:
            return self.predict_batches(self._preprocess_slices(np.stack(images)), rng, bar)
        finally:
            if bar is not None:
                bar.close()

    def segment_files(self, paths, rng=None, on_error=None, progress: str | None = None):
        """Segment image files. Returns [(path, (H, W) uint8 labels, (H, W) float32 MedSegDiff variance or
        None)] for the readable images, on each image's own size; `on_error(path, message)` is called for the
        others (None: the InputError is raised)."""
        self._check_segmenter()
        good, images, sizes = self._read_images(paths, on_error)
        if not good:
            return []
        out = self._predict_files(images, rng, progress)
        results = []
        for i, path in enumerate(good):
            var = self.to_image_size(out["variance"][i], sizes[i])[..., 0] if "variance" in out else None
            results.append((path, labels_from_probabilities(self.to_image_size(out["prob"][i], sizes[i]),
                                                            self.config), var))
        return results

    # --- promptable segmentation (SAM) ---------------------------------------------------------------
    @functools.cached_property
    def _sam_fns(self):
        """(embed, prompt) of `jaxdiff.models.sam.model.jitted_fns` for the run's SAM."""
        from jaxdiff.models.sam.model import jitted_fns
        return jitted_fns(self.task.model)

    def _image01(self, image) -> np.ndarray:
        """A path or an array (H, W) / (H, W, C), uint8 or float in [0, 1] -> (H, W, C) float32 in [0, 1] with
        the model's channels."""
        from jaxdiff.preprocess.imageio import read_image
        channels = self._channels()
        if isinstance(image, (str, os.PathLike)):
            return read_image(os.fspath(image), channels=1 if channels == 1 else 3)
        a = np.asarray(image)
        a = a[..., None] if a.ndim == 2 else a
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise InputError(f"image: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")
        a = a[..., :3].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise InputError("image: a float image must lie in [0, 1] (or give uint8)")
        if channels == 1 and a.shape[-1] == 3:
            a = a.mean(-1, keepdims=True)
        elif channels == 3 and a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        return np.ascontiguousarray(a, np.float32)

    def segment_prompts(self, image, boxes=None, points=None, labels=None) -> dict:
        """Segment one image with Segment Anything prompts (a promptable_segmentation run): the image is
        embedded once and each prompt decoded with the single-mask output the run was fine-tuned with.

        The image is resized as the run's source resized it (`prepare_image`), the prompts mapped to that frame
        (`to_model_coords`), the low-resolution logits upscaled to S x S as in training
        (`sam.model.postprocess_masks`) and taken back to the image's own size (`to_image_size`).

        Args:
          image: an image file path, or an array (H, W) / (H, W, C), uint8 or float in [0, 1].
          boxes: (4,) or (K, 4) pixel boxes (x0, y0, x1, y1) on the image: one prompt each.
          points: (N, 2) pixel points (x, y), one prompt; or (K, N, 2), K prompts.
          labels: (N,) / (K, N) point labels, 1 object, 0 background (default all 1).
          With both boxes and points, the K boxes and K point sets pair up: one prompt of a box and its points.
        Returns:
          {"mask": (K, H, W) uint8 (1 = object), "prob": (K, H, W) float32, "iou": (K,) float32 predicted IoU}.
        """
        if self.config.task not in PROMPT_TASKS:
            raise InputError(f"config key task: {self.config.task!r} does not take prompts ({PROMPT_TASKS[0]} does)")
        prompts = _prompt_list(boxes, points, labels)
        a = self._image01(image)
        return self._decode_prompts(self.prepare_image(a), a.shape[:2], prompts)

    def _decode_prompts(self, x: np.ndarray, size, prompts) -> dict:
        """Model-space image (S, S, C) in [-1, 1] of an image of `size` (H, W), prompts [(points (N, 2) | None,
        labels (N,) | None, box (4,) | None)] in the image's pixels -> `segment_prompts`' dict."""
        import jax.numpy as jnp
        from scipy.special import expit
        from jaxdiff.models.sam.model import postprocess_masks
        from jaxdiff.tasks.promptable_segmentation import to_sam_input
        embed, prompt = self._sam_fns
        s = self.image_size
        emb = embed(self.variables, to_sam_input(jnp.asarray(x[None])))
        probs, ious = [], []
        for pts, lab, box in prompts:
            p = None if pts is None else jnp.asarray(self.to_model_coords(pts, size)[None])
            lb = None if pts is None else jnp.asarray(np.asarray(lab, np.int32)[None])
            b = None if box is None else jnp.asarray(
                self.to_model_coords(np.reshape(box, (2, 2)), size).reshape(1, 4))
            low, iou = prompt(self.variables, emb, p, lb, b, multimask_output=False)
            logits = np.asarray(postprocess_masks(low, (s, s), (s, s), s)[0], np.float32)     # (S, S, 1)
            probs.append(self.to_image_size(expit(logits), size)[..., 0].astype(np.float32))
            ious.append(float(np.asarray(iou)[0, 0]))
        prob = np.stack(probs)
        return {"mask": (prob > 0.5).astype(np.uint8), "prob": prob, "iou": np.asarray(ious, np.float32)}

    # --- classifiers ------------------------------------------------------------------------------------
    def class_names(self) -> list:
        """Class names by label: image_folder runs: the class folders of `data.root` (sorted) when it is there;
        mask-labelled sources (phantom, brats, lgg, mask_folder: "does the slice show a tumour"): no_tumour,
        tumour; else class_0, class_1, ..."""
        k = int(self.task.num_classes)
        d = self.config.data
        if d.get("source", None) == "image_folder" and os.path.isdir(str(d.get("root", "") or "")):
            names = sorted(n for n in os.listdir(d.root) if not n.startswith(".") and os.path.isdir(
                os.path.join(d.root, n)))
            if len(names) == k:
                return names
        if k == 2 and d.get("source", None) in ("phantom", "brats", "lgg", "mask_folder"):
            return ["no_tumour", "tumour"]
        return [f"class_{i}" for i in range(k)]

    def classify_images(self, images, rng=None) -> np.ndarray:
        """Class probabilities (N, K) of model-space images (N, S, S, C) in [-1, 1]."""
        if self.config.task != "classification":
            raise InputError(f"config key task: {self.config.task!r} is not classification")
        return self.predict_batches(self._preprocess_slices(np.asarray(images, np.float32)), rng)["prob"]

    def classify_files(self, paths, on_error=None, progress: str | None = None):
        """(readable paths, (N, K) class probabilities) of image files; `on_error(path, message)` is called for
        the others (None: the InputError is raised)."""
        if self.config.task != "classification":
            raise InputError(f"config key task: {self.config.task!r} is not classification")
        good, images, _ = self._read_images(paths, on_error)
        if not good:
            return [], np.zeros((0, int(self.task.num_classes)), np.float32)
        return good, self._predict_files(images, None, progress)["prob"]


def _prompt_list(boxes, points, labels) -> list:
    """`segment_prompts`' boxes / points / labels -> [(points (N, 2) | None, labels (N,) | None, box (4,) | None)]
    checked (InputError naming the argument)."""
    bx = None if boxes is None else np.asarray(boxes, np.float32)
    if bx is not None:
        bx = bx[None] if bx.ndim == 1 else bx
        if bx.ndim != 2 or bx.shape[1] != 4 or np.any(bx[:, 2] <= bx[:, 0]) or np.any(bx[:, 3] <= bx[:, 1]):
            raise InputError(f"boxes: expected (4,) or (K, 4) x0, y0, x1, y1 with x1 > x0 and y1 > y0, got "
                             f"{np.asarray(boxes).tolist()}")
    pt = lb = None
    if points is not None:
        pt = np.asarray(points, np.float32)
        pt = pt[None] if pt.ndim == 2 else pt
        if pt.ndim != 3 or pt.shape[-1] != 2 or pt.shape[1] == 0:
            raise InputError(f"points: expected (N, 2) or (K, N, 2) (x, y), got shape {np.shape(points)}")
        lb = np.ones(pt.shape[:2], np.int32) if labels is None else np.asarray(labels)
        if lb.size != pt.shape[0] * pt.shape[1] or not np.all(np.isin(lb, (0, 1))):
            raise InputError(f"labels: expected one 0 or 1 per point (shape {pt.shape[:2]})")
    elif labels is not None:
        raise InputError("labels given without points")
    if bx is None and pt is None:
        raise InputError("no prompt: give boxes and/or points")
    if bx is not None and pt is not None and len(bx) != len(pt):
        raise InputError(f"{len(bx)} boxes and {len(pt)} point sets: with both, give one box per point set")
    k = len(bx) if bx is not None else len(pt)
    lb = None if lb is None else lb.reshape(pt.shape[:2]).astype(np.int32)
    return [(None if pt is None else pt[i], None if lb is None else lb[i],
             None if bx is None else bx[i]) for i in range(k)]


def _warn_phantom_range(data: dict) -> None:
    """A warning line when a phantom-trained model gets intensities far outside the phantom's calibrated range
    (the model then sees saturated images: real scans need a run trained on their own kind of data)."""
    from jaxdiff.data.sources.phantom import INTENSITY_SCALE
    top = max(float(np.percentile(v, 99)) for v in data["volumes"])
    if top > 2 * INTENSITY_SCALE:
        print(f"warning: {data['name']}: intensities up to {top:.4g} (99th percentile), the model was trained on "
              f"the built-in phantom (calibrated intensities, white matter ~0.9): the input saturates",
              file=sys.stderr)


def load_run(workdir: str, overrides: dict | None = None, **kwargs) -> Predictor:
    """A `Predictor` for the latest checkpoint of a work directory (`jaxdiff.experiment.load_for_inference`),
    with its EMA parameters (the raw ones for a non-diffusion run trained with `train.ema` 0).
    overrides: config keys set before the task is built (`load_for_inference`), e.g. {"diffusion.sampler": "dpm++"}.
    kwargs: `Predictor`'s batch_size, ensemble, num_steps, seed, skip_empty."""
    from jaxdiff import config as config_lib
    task_name = str(config_lib.from_json_file(os.path.join(os.fspath(workdir), "config.json")).get("task", ""))
    if task_name not in (*TASKS, *PROMPT_TASKS):
        raise InputError(f"{workdir} is a {task_name} run; predict handles tasks "
                         f"{', '.join((*TASKS, *PROMPT_TASKS))}")
    from jaxdiff.experiment import load_for_inference
    config, task, state = load_for_inference(os.fspath(workdir), overrides)
    ema = config.task == "segmentation_diffusion" or float(config.train.get("ema", 0.0)) > 0
    return Predictor(config, task, state.variables(ema=ema), **kwargs)
