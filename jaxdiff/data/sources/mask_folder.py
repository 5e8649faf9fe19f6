"""A folder of 2D images with binary masks: `<root>/images/NAME.png|jpg|jpeg` + `<root>/masks/NAME.png`.

This is the layout `python -m jaxdiff.sam --input-dir D --output-dir O` writes (SAM pseudo-masks), so a
segmenter can train on it: `--config.data.source=mask_folder --config.data.root=O`. Examples are
{"image": (S, S, C) float32 in [-1, 1], "mask": (S, S, 1) float32 in {0, 1}, "case": int32 (position in the
sorted list of names)}: both are resized to S x S (no aspect-preserving padding, as the original toolkit's cv2.resize),
bilinear for the image and bilinear-then-threshold-0.5 for the mask. The split is image-level, deterministic
(`sources.split_cases` with data.seed and data.fractions). An image without its mask raises InputError naming
the missing mask file.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxdiff.data.sources import DEFAULT_FRACTIONS, check_split, excluded_cases, split_cases
from jaxdiff.errors import InputError
from jaxdiff.preprocess.imageio import read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_pairs(root: str, skip=()) -> list[tuple[str, str, str]]:
    """Sorted (name, image path, mask path) of `root`; InputError naming the folder or a missing mask (but for
    the names in `skip`, which are listed whether their mask is there or not)."""
    images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    if not os.path.isdir(images_dir):
        raise InputError(f"{images_dir}: folder not found (expected <root>/images/*.png and <root>/masks/*.png)")
    names = sorted(f for f in os.listdir(images_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not names:
        raise InputError(f"{images_dir}: no .png/.jpg images")
    pairs = []
    for f in names:
        stem = os.path.splitext(f)[0]
        mask = os.path.join(masks_dir, stem + ".png")
        if not os.path.isfile(mask) and stem not in skip:
            raise InputError(f"{mask}: missing mask for image {os.path.join(images_dir, f)}")
        pairs.append((stem, os.path.join(images_dir, f), mask))
    return pairs


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float32 -> (size, size, C), bilinear (antialiased when shrinking)."""
    if a.shape[:2] == (size, size):
        return a
    return np.stack([np.asarray(Image.fromarray(a[..., c]).resize((size, size), Image.BILINEAR))
                     for c in range(a.shape[-1])], axis=-1)


class MaskFolder:
    """Random-access source over the `split` part of a mask folder (see the module docstring).

    Args:
      root: folder holding images/ and masks/.
      split: "train", "val" or "test".
      image_size: output side S in pixels.
      channels: 1 (grey; colour images are averaged) or 3 (grey repeated).
      seed, fractions: the split's permutation seed and (train, val, test) fractions.
      exclude: image names (file stems) to leave out (`data.exclude_cases`), removed after the split.
    """

    def __init__(self, root: str, split: str = "train", image_size: int = 64, channels: int = 1, seed: int = 0,
                 fractions=DEFAULT_FRACTIONS, exclude=()):
        self.root = os.fspath(root)
        pairs = list_pairs(self.root, skip=exclude)
        self.case_ids = {name: i for i, (name, _, _) in enumerate(pairs)}
        by_name = {p[0]: p for p in pairs}
        excluded = set(exclude)
        self.pairs = [by_name[n] for n in split_cases(list(by_name), seed, fractions)[check_split(split)]
                      if n not in excluded]
        if not self.pairs:
            raise InputError(f"{self.root}: {len(pairs)} images leave split {split!r} empty")
        if channels not in (1, 3):
            raise InputError(f"config key data.channels: {channels} is not 1 or 3")
        self.image_size, self.channels = int(image_size), int(channels)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int) -> dict:
        name, image_path, mask_path = self.pairs[idx]
        image = _resize(read_image(image_path, self.channels), self.image_size)
        mask = _resize(read_image(mask_path, 1), self.image_size)
        return {"image": (2.0 * np.clip(image, 0.0, 1.0) - 1.0).astype(np.float32),
                "mask": (mask > 0.5).astype(np.float32), "case": np.int32(self.case_ids[name])}


def from_config(data_config, split: str) -> MaskFolder:
    """The `mask_folder` source of a config `data` block: root, image_size, channels, seed, fractions."""
    d = data_config
    root = str(d.get("root", "") or "")
    if not root or not os.path.isdir(root):
        raise InputError(f"config key data.root: mask folder {root!r} not found")
    fractions = tuple(d.get("fractions", DEFAULT_FRACTIONS))
    if len(fractions) != 3:
        raise InputError(f"config key data.fractions: {fractions!r} is not (train, val, test)")
    return MaskFolder(root, split, image_size=int(d.get("image_size", 64)), channels=int(d.get("channels", 1) or 1),
                      seed=int(d.get("seed", 0)), fractions=fractions, exclude=excluded_cases(d))
