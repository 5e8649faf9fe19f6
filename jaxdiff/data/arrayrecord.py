"""Pod-scale input path: any jaxdiff data source prepared once as a TFDS ArrayRecord data set, then read with
`tfds.data_source` through the same grain pipeline (random access, per-process sharding, checkpointable).

    python -m jaxdiff.prepare_data --config configs/medsegdiff_phantom.py --out gs://bucket/tfds   # once
    python -m jaxdiff.train --config configs/medsegdiff_phantom.py --config.data.source=tfds \
        --config.data.root=gs://bucket/tfds/jaxdiff_phantom

Preparing stores the source's *raw* examples (before the config's CLAHE / augmentation, which the pipeline
applies on reading exactly as for the original source), in the source's order (`disable_shuffling`), one
ArrayRecord file per split. Features are inferred from the first example: arrays and numpy scalars become
`tfds.features.Tensor` of their shape and dtype, strings `tfds.features.Text`. TFDS's builder and
`tfds.data_source` need no TensorFlow (tensorflow-datasets >= 4.9 with array_record); `data_dir` may be a local
folder or any path etils/epath reaches (gs:// with gcsfs on TPU VMs).
"""
from __future__ import annotations

import os

import numpy as np

from jaxdiff.data.sources import SPLITS
from jaxdiff.errors import InputError

VERSION = "1.0.0"


def dataset_name(data_config) -> str:
    """TFDS name under which `prepare` writes a source: "jaxdiff_<data.source>"."""
    return f"jaxdiff_{data_config.source}"


def _feature(key: str, value):
    """TFDS feature describing one example value."""
    import tensorflow_datasets as tfds
    if isinstance(value, (str, bytes)):
        return tfds.features.Text()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise InputError(f"data key {key!r}: cannot store dtype {arr.dtype} in an ArrayRecord data set")
    return tfds.features.Tensor(shape=arr.shape, dtype=arr.dtype)


def prepare(data_config, data_dir: str, splits=SPLITS, progress: bool = True) -> dict:
    """Write the raw examples of `data_config`'s source, split by split, as the TFDS data set
    `dataset_name(data_config)` under `data_dir` (so in `data_dir/<name>/<VERSION>/`). Returns
    {split: number of examples}."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    from jaxdiff.data import pipeline
    sources = {s: pipeline.raw_source(data_config, s) for s in splits}
    first = next((src[0] for src in sources.values() if len(src)), None)
    if first is None:
        raise InputError(f"config key data.source: {data_config.source!r} has no examples to prepare")
    features = tfds.features.FeaturesDict({k: _feature(k, v) for k, v in first.items()})
    name = dataset_name(data_config)

    def examples(split):
        src = sources[split]
        for i in tqdm(range(len(src)), desc=f"{name}/{split}", disable=not progress, leave=False):
            yield i, {k: v for k, v in src[i].items()}

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        __module__ = __name__
        VERSION = tfds.core.Version(globals()["VERSION"])

        def _info(self):
            return self.dataset_info_from_configs(features=features, disable_shuffling=True,
                                                  description=f"jaxdiff source {data_config.source!r}")

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in splits if len(sources[s])}

        def _generate_examples(self, split):
            return examples(split)

    Builder.name = name
    from jaxdiff.io import files
    with files.staging_folder(data_dir) as local_dir:  # ArrayRecord writes local files: a URL gets a copy
        Builder(data_dir=local_dir, file_format="array_record").download_and_prepare()
    return {s: len(sources[s]) for s in splits}


class TfdsSource:
    """grain random-access source over a prepared split: `__getitem__(i)` -> the stored example (numpy)."""

    def __init__(self, data_source):
        self.data_source = data_source
        features = data_source.dataset_info.features
        self.dtypes = {k: f.np_dtype for k, f in features.items() if hasattr(f, "np_dtype") and f.shape is not None}

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        """The stored example with the dtypes it was written with (TFDS returns scalars as Python numbers)."""
        return {k: v.decode() if isinstance(v, bytes) else np.asarray(v, self.dtypes.get(k))
                for k, v in self.data_source[idx].items()}


def from_config(data_config, split: str):
    """The prepared split `split` read from `data.root` = DATA_DIR/NAME, the folder `prepare` wrote."""
    import tensorflow_datasets as tfds
    from jaxdiff.io import files
    root = files.local_folder(str(data_config.get("root", "") or "").rstrip("/"))  # a URL: read from a local copy
    if not root:
        raise InputError("config key data.root: set it to the prepared data set's folder (DATA_DIR/NAME)")
    if "://" not in root and not os.path.isdir(os.path.join(root, VERSION)):
        raise InputError(f"config key data.root: {root!r} is not a prepared data set "
                         f"(no {VERSION}/ inside; run python -m jaxdiff.prepare_data first)")
    data_dir, name = os.path.split(root)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, try_gcs=False)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise InputError(f"config key data.root: cannot read split {split!r} of {root!r}: "
                         f"{str(e).splitlines()[0]}") from None
    return TfdsSource(source)
