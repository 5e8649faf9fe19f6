"""grain input pipelines and the data-source factory used by the entry points.

`make_dataset` turns any random-access source into a deterministic, sharded, shuffled stream of batches
whose iterator state can be checkpointed (`it.get_state()` / `it.set_state(s)`, or orbax via
`grain.checkpoint.CheckpointSave(it)`): resuming reproduces exactly the batches an uninterrupted run would
have seen. `get_source` builds the source named by a config's `data` block, with its preprocessing applied;
`train_transform` is the training augmentation to pass to `make_dataset(transform=...)`.
"""
from __future__ import annotations

import inspect
import importlib
import os

import grain
import numpy as np

from jaxdiff.data import transforms
from jaxdiff.data.sources import DEFAULT_FRACTIONS, SPLITS, check_split, excluded_cases
from jaxdiff.errors import InputError

_READ_THREADS = 2          # threads computing batches ahead (the machines this targets have few cores)
_PREFETCH_BATCHES = 2


def _is_random(transform) -> bool:
    """True for a `grain.transforms.RandomMap` or a callable taking (example, rng)."""
    if isinstance(transform, grain.transforms.RandomMap):
        return True
    if isinstance(transform, grain.transforms.Map):
        return False
    params = [p for p in inspect.signature(transform).parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(params) == 2


def make_dataset(source, batch_size: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int | None = None, shard_count: int | None = None, worker_count: int = 0,
                 transform=None, drop_remainder: bool = True) -> grain.IterDataset:
    """A grain dataset of batches: `iter(ds)` yields dicts of numpy arrays with a leading batch axis.

    Args:
      source: random-access source (`__len__`, `__getitem__(i) -> dict of arrays`).
      batch_size: examples per batch on this process.
      seed: shuffle and augmentation seed; the stream is a pure function of (source, seed, shard).
      shuffle: reshuffle every epoch (grain index shuffle, no buffer).
      num_epochs: None repeats forever.
      shard_index, shard_count: this process's shard; default `jax.process_index()` / `jax.process_count()`.
        The example stream is shuffled globally and cut into batches of `batch_size`; shard i takes batches
        i, i + n, i + 2n, ... (it reads only those). So the n shards' k-th batches, concatenated in shard
        order, are the k-th global batch of n * batch_size examples, whatever n is: a run gives the same
        global batches on 1 or n processes, and each process loads only its own rows.
      worker_count: > 0 computes batches in that many worker processes (the source must be picklable).
      transform: per-example function `example -> example`, or an augmentation `(example, rng) -> example`
        (or a `grain.transforms.RandomMap`) receiving a per-example `np.random.Generator` derived from `seed`.
      drop_remainder: drop a final incomplete batch (finite `num_epochs` only).
    Returns:
      A `grain.IterDataset`; its iterators support `get_state()` / `set_state()`.
    """
    if shard_index is None or shard_count is None:
        import jax
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    if len(source) < batch_size * shard_count:
        raise InputError(f"data source: {len(source)} examples are fewer than one global batch of "
                         f"{batch_size} x {shard_count} processes")
    ds = grain.MapDataset.source(source).seed(int(seed))
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    if transform is not None:  # before sharding: augmentation draws depend on the global example index
        ds = ds.random_map(transform) if _is_random(transform) else ds.map(transform)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)[shard_index::shard_count]
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES))
    if worker_count > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():     # grain reads its absl flags in workers (google/grain#1355)
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
    return ds


def _shape3d(size) -> tuple:
    """data.image_size as a 3D shape: 32 -> (32, 32, 32); (32, 40, 32) as given."""
    shape = (int(size),) * 3 if isinstance(size, (int, float)) else tuple(int(n) for n in size)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"config key data.image_size: {size!r} is not a positive int or 3D shape")
    return shape


def _case_split(d) -> str:
    """data.split: "random" (seeded, by data.fractions) or "brats_250_73_45" (the transformer-UNet BraTS
    segmenter's case split; the old name "seed_s0" is read with a note)."""
    from jaxdiff.config_defaults import renamed_value
    from jaxdiff.data.sources.brats import CASE_SPLITS
    name = renamed_value("data.split", d.get("split", "random"))
    if name not in CASE_SPLITS:
        raise InputError(f"config key data.split: {name!r} is not one of {', '.join(CASE_SPLITS)}")
    return name


def _given_fractions(d) -> tuple:
    """data.fractions as (train, val, test)."""
    fr = tuple(d.get("fractions", DEFAULT_FRACTIONS))
    if len(fr) != 3:
        raise InputError(f"config key data.fractions: {fr!r} is not (train, val, test)")
    return fr


def _fractions(d) -> tuple:
    """(train, val, test) fractions; with data.split = "brats_250_73_45" its 250 / 73 / 45 proportions (the
    phantom sources split by fractions; BraTS uses `brats.split_250_73_45` itself)."""
    if _case_split(d) == "brats_250_73_45":
        from jaxdiff.data.sources.brats import SPLIT_250_73_45
        return SPLIT_250_73_45
    return _given_fractions(d)


def _root(d, what: str) -> str:
    """data.root, which must be an existing folder (`what` names the data set in the error)."""
    from jaxdiff.io import files
    root = files.local_folder(str(d.get("root", "") or ""))  # a URL (gs://...): a local copy of the folder
    if not root or not os.path.isdir(root):
        raise InputError(f"config key data.root: {what} folder {root!r} not found")
    return root


def _phantom(d, split: str):
    from jaxdiff.data.sources.phantom import PhantomSlices
    return PhantomSlices(split, image_size=int(d.get("image_size", 64)), num_cases=int(d.get("num_cases", 64)),
                         slices_per_case=int(d.get("slices_per_case", 8)), modality=d.get("modality", "t2"),
                         seed=int(d.get("seed", 0)), tumour_only=bool(d.get("tumour_only", False)),
                         tumour_fraction=float(d.get("tumour_fraction", 0.8)), fractions=_fractions(d),
                         regions=d.get("regions", None))


def _phantom3d(d, split: str):
    from jaxdiff.data.sources.phantom import PhantomVolumes
    return PhantomVolumes(split, shape=_shape3d(d.get("image_size", 32)), num_cases=int(d.get("num_cases", 64)),
                          modality=d.get("modality", "t1"), seed=int(d.get("seed", 0)),
                          tumour_fraction=float(d.get("tumour_fraction", 0.8)), fractions=_fractions(d))


def _brats(d, split: str):
    from jaxdiff.data.sources.brats import BratsSlices
    root = _root(d, "BraTS")
    slices = d.get("slices", None)
    return BratsSlices(root, split, modalities=d.get("modality", "t2"), image_size=int(d.get("image_size", 240)),
                       slice_indices=(slices if isinstance(slices, str) else list(slices)) if slices else None,
                       normalise=d.get("normalise", "volume_max"), seed=int(d.get("seed", 42)),
                       fractions=_fractions(d), case_split=_case_split(d), exclude=excluded_cases(d),
                       regions=d.get("regions", None))


def _lgg(d, split: str):
    from jaxdiff.data.sources.lgg import LggSlices
    return LggSlices(_root(d, "LGG kaggle_3m"), split, image_size=int(d.get("image_size", 32)),
                     seed=int(d.get("seed", 42)), fractions=_given_fractions(d), split_mode=d.get("split", "random"),
                     stratified=bool(d.get("stratified", True)), exclude=excluded_cases(d))


SOURCES = {"phantom": _phantom, "phantom3d": _phantom3d, "brats": _brats, "lgg": _lgg,
           # Sources in their own modules, as "module:factory"; factory(data_config, split) -> source.
           "ixi": "jaxdiff.data.sources.ixi:from_config",
           "mrnet": "jaxdiff.data.sources.mrnet:from_config",
           "image_folder": "jaxdiff.data.sources.image_folder:from_config",
           "mask_folder": "jaxdiff.data.sources.mask_folder:from_config",
           "tfds": "jaxdiff.data.arrayrecord:from_config"}


def raw_source(data_config, split: str):
    """The source's own examples for `split`, before patches and transforms (what `prepare_data` stores)."""
    name = data_config.get("source", None)
    if name not in SOURCES:
        raise InputError(f"config key data.source: {name!r} is not one of {', '.join(SOURCES)}")
    if data_config.get("regions", None) is not None and name not in ("phantom", "brats", "tfds"):
        raise InputError(f"config key data.regions: source {name!r} has no BraTS labels (phantom and brats have)")
    factory = SOURCES[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(data_config, check_split(split))


class TransformedSource:
    """A random-access source whose examples pass through `transform(example)` and then, if given,
    `augment(example, rng)` with `rng = np.random.default_rng((*seed, idx))`: a fixed draw per index.
    Picklable when `source` and the transforms are; other attributes are those of `source`.
    """

    def __init__(self, source, transform=None, augment=None, seed: tuple = (0,)):
        self.source, self.transform, self.augment, self.seed = source, transform, augment, tuple(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, idx: int) -> dict:
        example = self.source[idx]
        if self.transform is not None:
            example = self.transform(example)
        if self.augment is not None:
            example = self.augment(example, np.random.default_rng((*self.seed, int(idx))))
        return example

    def __getattr__(self, name):
        if name.startswith("__") or name == "source":       # not yet set while unpickling
            raise AttributeError(name)
        return getattr(self.source, name)


REGION_NAMES = tuple(f"{'right' if r else 'left'}-{'anterior' if a else 'posterior'}-"
                     f"{'superior' if s else 'inferior'}" for r in (0, 1) for a in (0, 1) for s in (0, 1))


def region_label(start, patch, shape) -> int:
    """Brain-region label of a patch: the octant of the volume holding the patch centre, in RAS voxel axes.

    label = 4 r + 2 a + s with r, a, s = 1 when the centre start + patch / 2 lies beyond the volume's middle
    along X (right), Y (anterior), Z (superior); a patch spanning a whole axis counts as 0 there. 0..7, names
    in REGION_NAMES.
    """
    bits = [int(b + p / 2 > n / 2) for b, p, n in zip(start, patch, shape)]
    return 4 * bits[0] + 2 * bits[1] + bits[2]


def region_start(label: int, patch, shape) -> tuple:
    """A representative patch origin (voxels) for region `label`: the middle of the origins that give it."""
    bits = ((int(label) >> 2) & 1, (int(label) >> 1) & 1, int(label) & 1)
    return tuple(int(round((n - p) * (0.75 if b else 0.25))) if n > p else 0 for b, p, n in zip(bits, patch, shape))


class PatchSource:
    """Random 3D patches of a volume source, each with its brain-region label (see `region_label`).

    Example j is patch j % k of volume j // k (k = patches_per_volume): origin drawn uniformly from
    `np.random.default_rng((*seed, j))`, so a patch is a pure function of (seed, j), whatever the epoch or a
    resume. Returns the volume example with every (X, Y, Z, ...) array cropped, "label" int32, "affine"
    shifted to the patch origin and "origin" (3,) int32. `volumes` is the wrapped whole-volume source.
    """

    def __init__(self, volumes, patch_size, patches_per_volume: int = 8, seed: tuple = (0,)):
        self.volumes, self.patch, self.k, self.seed = volumes, tuple(patch_size), int(patches_per_volume), tuple(seed)
        shape = tuple(volumes[0]["image"].shape[:3])
        if len(self.patch) != 3 or any(not 0 < p <= n for p, n in zip(self.patch, shape)):
            raise InputError(f"config key data.patch_size: {patch_size!r} is not a 3D size within the volume "
                             f"shape {shape}")
        if self.k < 1:
            raise InputError(f"config key data.patches_per_volume: {patches_per_volume} is not >= 1")

    def __len__(self) -> int:
        return len(self.volumes) * self.k

    def __getitem__(self, idx: int) -> dict:
        example = self.volumes[int(idx) // self.k]
        shape = example["image"].shape[:3]
        rng = np.random.default_rng((*self.seed, int(idx)))
        start = tuple(int(rng.integers(0, n - p + 1)) for n, p in zip(shape, self.patch))
        return self.crop(example, start)

    def crop(self, example: dict, start) -> dict:
        """`example` cut to the patch at voxel origin `start`, with its label, origin and shifted affine."""
        shape = example["image"].shape[:3]
        window = tuple(slice(b, b + p) for b, p in zip(start, self.patch))
        out = {k: (v[window].copy() if np.ndim(v) >= 3 and v.shape[:3] == shape else v) for k, v in example.items()}
        out["label"] = np.int32(region_label(start, self.patch, shape))
        out["origin"] = np.asarray(start, np.int32)
        if "affine" in example:
            shift = np.eye(4)
            shift[:3, 3] = start
            out["affine"] = (np.asarray(example["affine"], np.float64) @ shift).astype(np.float32)
        return out


def patch_size(data_config):
    """data.patch_size as a 3-tuple, or None when unset / 0 (whole volumes)."""
    size = data_config.get("patch_size", None)
    if not size:
        return None
    return _shape3d(size)


def train_transform(data_config):
    """The training augmentation `(example, rng) -> example` for `make_dataset(transform=...)`, or None
    (`data.augment`, see `transforms.from_config`)."""
    return transforms.from_config(data_config)[1]


def get_source(data_config, split: str):
    """The random-access source for `split` ("train", "val", "test") described by a config `data` block.

    Keys (all optional but `source`): source ("phantom": 2D slices, "phantom3d": volumes, "brats": BraTS
    slices from `root`, "lgg": kaggle_3m slices from `root`, 3 channels, `modality` unused), image_size,
    modality ("t2", "t1,t2", ...), seed, num_cases, slices_per_case, tumour_only, tumour_fraction, fractions,
    split ("random", "brats_250_73_45", or for lgg "lgg_3536_393"), stratified (lgg "lgg_3536_393"), root,
    slices (indices or "linspace_70_100_10"), normalise, channels (checked against the source's number of
    channels), clahe, augment, faithful_augment_test, patch_size and patches_per_volume (3D: every split served
    as `PatchSource` patches with region labels). Bad values raise InputError naming the `data.*` key.

    `data.clahe` applies `transforms.clahe` to every split. The training augmentation (`data.augment`) is not
    applied here but by `make_dataset(transform=train_transform(data_config))`; with
    `data.faithful_augment_test` (as the original transformer-UNet pipeline did) val and test examples are
    augmented too, each index with a fixed draw seeded by (data.seed, split, index).
    """
    name = data_config.get("source", None)
    source = raw_source(data_config, split)
    channels, modalities = data_config.get("channels", None), getattr(source, "modalities", None)
    if channels is not None and modalities is not None and int(channels) != len(modalities):
        raise InputError(f"config key data.channels: {channels} but the {name} source gives "
                         f"{len(modalities)} channel(s) {modalities}")
    every_split, augment = transforms.from_config(data_config)
    if split == "train" or not transforms.config_flag(data_config, "faithful_augment_test"):
        augment = None
    seed = (int(data_config.get("seed", 0)), SPLITS.index(split))
    if every_split is not None or augment is not None:
        source = TransformedSource(source, every_split, augment, seed=seed)
    patch = patch_size(data_config)
    if patch is None:
        return source
    return PatchSource(source, patch, int(data_config.get("patches_per_volume", 8)), seed=(*seed, 3))
