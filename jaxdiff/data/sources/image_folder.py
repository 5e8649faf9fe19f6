"""Class-per-folder 2D images, e.g. the Kaggle "brain MRI images for brain tumor detection" layout
`root/yes/*.jpg`, `root/no/*.jpg`: mixed sizes, RGB or grey, JPEG or PNG.

Classes are the sub-folders of `root`, sorted by name, labelled 0, 1, ... (so the yes/no layout gives
"no" = 0 and "yes" = 1). Image files are those with an image extension directly in a class folder; each is
decoded once when the source is built (Pillow), and one that does not decode is skipped with a one-line
`warning: skipped <file>: ...` on stderr; a class folder left without images is an InputError.

Examples: {"image": (S, S, C) float32 in [-1, 1], "label": int32}: decoded, converted to `channels` (1: grey,
3: RGB), resized to S x S (bilinear, antialiased, aspect not kept, as Keras' image_dataset_from_directory),
then mapped 0..255 -> -1..1 like every jaxdiff source. Splits are stratified: each class is split by
`split_cases(seed, fractions)` on its own. Class imbalance (`balance`): "weights" exposes `class_weights`
(inverse frequency on the train split, n / (num_classes * n_c), mean 1 over the train examples); "oversample"
repeats minority-class indices of the train split (cycling in file order) until every class has the majority
count; "none" does neither (`class_weights` is None then).
"""
from __future__ import annotations

import functools
import os
import sys

import numpy as np
from PIL import Image

from jaxdiff.data.sources import DEFAULT_FRACTIONS, check_split, split_cases
from jaxdiff.errors import InputError
from jaxdiff.preprocess.imageio import read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
BALANCE_MODES = ("none", "weights", "oversample")


def list_classes(root: str) -> tuple[tuple, list]:
    """(class names sorted, [(path, label), ...]) of the image files in `root`'s class sub-folders."""
    if not os.path.isdir(root):
        raise InputError(f"{root}: image folder not found")
    classes = tuple(sorted(d for d in os.listdir(root) if not d.startswith(".")
                           and os.path.isdir(os.path.join(root, d))))
    if not classes:
        raise InputError(f"{root}: no class sub-folders (expected e.g. {root}/yes and {root}/no)")
    items = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        items += [(os.path.join(folder, f), label) for f in sorted(os.listdir(folder))
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return classes, items


@functools.lru_cache(maxsize=4)
def readable_items(root: str) -> tuple[tuple, tuple]:
    """`list_classes` without the files that do not decode (each warned about once); InputError naming
    the class folder that ends up empty. Cached per root, so the three splits decode each file once."""
    classes, items = list_classes(root)
    kept = []
    for path, label in items:
        try:
            read_image(path)
        except InputError as e:
            print(f"warning: skipped {e}", file=sys.stderr)
            continue
        kept.append((path, label))
    for label, name in enumerate(classes):
        if not any(lab == label for _, lab in kept):
            raise InputError(f"{os.path.join(root, name)}: class folder has no readable image")
    return classes, tuple(kept)


def stratified_split(labels: np.ndarray, seed: int, fractions=DEFAULT_FRACTIONS) -> dict:
    """{"train", "val", "test": sorted int index arrays}: each class split by `split_cases` on its own."""
    parts = {s: [] for s in ("train", "val", "test")}
    for c in np.unique(labels):
        for name, idx in split_cases(np.flatnonzero(labels == c), seed, fractions).items():
            parts[name] += list(idx)
    return {name: np.sort(np.asarray(idx, np.int64)) for name, idx in parts.items()}


def oversample(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Repeat each class's indices (cycling in order) up to the largest class count; classes concatenated."""
    per_class = [indices[labels[indices] == c] for c in np.unique(labels[indices])]
    top = max(len(p) for p in per_class)
    return np.concatenate([np.resize(p, top) for p in per_class])


class ImageFolder:
    """Random-access source over a class-per-folder image tree (module docstring).

    Args:
      root: folder with one sub-folder per class.
      split: "train", "val" or "test".
      image_size: output side S.
      channels: 1 (grey) or 3 (RGB).
      seed, fractions: the stratified split.
      balance: "none", "weights" or "oversample" (the latter changes the train split only).
    Attributes: classes (names by label), num_classes, paths and labels (of this split, after oversampling),
      class_weights ((num_classes,) float32 or None).
    """

    def __init__(self, root: str, split: str, image_size: int = 224, channels: int = 3, seed: int = 0,
                 fractions=DEFAULT_FRACTIONS, balance: str = "none"):
        if channels not in (1, 3):
            raise InputError(f"config key data.channels: {channels} (expected 1 or 3)")
        if balance not in BALANCE_MODES:
            raise InputError(f"config key data.balance: {balance!r} is not one of {', '.join(BALANCE_MODES)}")
        if not root or not os.path.isdir(root):
            raise InputError(f"config key data.root: image folder {root!r} not found")
        self.classes, items = readable_items(os.path.abspath(root))
        self.num_classes, self.image_size, self.channels = len(self.classes), int(image_size), int(channels)
        all_labels = np.asarray([lab for _, lab in items], np.int32)
        parts = stratified_split(all_labels, seed, fractions)
        idx = parts[check_split(split)]
        if balance == "oversample" and split == "train":
            idx = oversample(idx, all_labels)
        counts = np.bincount(all_labels[parts["train"]], minlength=self.num_classes)
        self.class_weights = (len(parts["train"]) / (self.num_classes * np.maximum(counts, 1))).astype(
            np.float32) if balance == "weights" else None
        self.paths = [items[i][0] for i in idx]
        self.labels = all_labels[idx]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        a = read_image(self.paths[i], channels=self.channels)
        return {"image": self._resize(a), "label": np.int32(self.labels[i])}

    def _resize(self, a: np.ndarray) -> np.ndarray:
        """(H, W, C) in [0, 1] -> (S, S, C) in [-1, 1], bilinear with antialiasing (per channel, Pillow)."""
        s = self.image_size
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c])).resize((s, s), Image.BILINEAR))
                  for c in range(a.shape[-1])]
        return (np.stack(planes, axis=-1) * 2.0 - 1.0).clip(-1.0, 1.0).astype(np.float32)


def from_config(data_config, split: str) -> ImageFolder:
    """The source of a config `data` block: root, image_size, channels, seed, fractions, balance."""
    d = data_config
    fractions = tuple(d.get("fractions", DEFAULT_FRACTIONS))
    if len(fractions) != 3:
        raise InputError(f"config key data.fractions: {fractions!r} is not (train, val, test)")
    return ImageFolder(str(d.get("root", "") or ""), split, image_size=int(d.get("image_size", 224)),
                       channels=int(d.get("channels", 3)), seed=int(d.get("seed", 0)), fractions=fractions,
                       balance=str(d.get("balance", "none") or "none"))
