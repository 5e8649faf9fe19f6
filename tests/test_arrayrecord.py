"""The pod-scale input path: a source prepared as a TFDS ArrayRecord data set (no TensorFlow) reads back the same
examples in the same order, and the same grain pipeline gives the same batches from it."""
from __future__ import annotations

import contextlib
import io
import json

import ml_collections
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("array_record")

from jaxdiff import prepare_data  # noqa: E402
from jaxdiff.data import arrayrecord, get_source, make_dataset  # noqa: E402
from jaxdiff.errors import InputError  # noqa: E402

PHANTOM = dict(source="phantom", image_size=16, modality="t1,flair", channels=2, num_cases=5, seed=3, root="")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data_dir, the CLI's JSON report) of the tiny phantom prepared through the CLI."""
    out = tmp_path_factory.mktemp("tfds")
    argv = ["prepare_data", "--config=configs/quickstart.py", "--out", str(out), "--quiet"]
    argv += [f"--config.data.{k}={v}" for k, v in PHANTOM.items() if k != "root"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert prepare_data.main(argv) == 0
    return out, json.loads(printed.getvalue().strip().splitlines()[-1])


def _cfg(**kw):
    return ml_collections.ConfigDict({**PHANTOM, **kw})


def test_prepared_splits_read_back_identically(prepared):
    root = prepared[0] / "jaxdiff_phantom"
    assert (root / arrayrecord.VERSION / "features.json").is_file()
    for split in ("train", "val", "test"):
        original, stored = get_source(_cfg(), split), get_source(_cfg(source="tfds", root=str(root)), split)
        assert len(stored) == len(original) > 0
        for i in range(len(original)):
            a, b = original[i], stored[i]
            assert sorted(a) == sorted(b)
            for key in a:
                np.testing.assert_array_equal(b[key], a[key])
                assert np.asarray(b[key]).dtype == np.asarray(a[key]).dtype


def test_same_batches_through_the_grain_pipeline(prepared):
    root = str(prepared[0] / "jaxdiff_phantom")
    batches = []
    for cfg in (_cfg(), _cfg(source="tfds", root=root)):
        ds = make_dataset(get_source(cfg, "train"), batch_size=3, seed=7, shard_index=0, shard_count=1)
        it = iter(ds)
        batches.append([next(it) for _ in range(3)])
    for x, y in zip(*batches):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["case"], y["case"])


def test_cli_prints_the_train_overrides(prepared):
    out, report = prepared
    root = str(out / "jaxdiff_phantom")
    counts = {split: len(get_source(_cfg(), split)) for split in ("train", "val", "test")}
    assert report["prepared"] == root and report["examples"] == counts
    assert report["train_overrides"] == f"--config.data.source=tfds --config.data.root={root}"


def test_unprepared_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="data.root") as err:
        get_source(_cfg(source="tfds", root=str(tmp_path / "nothing")), "train")
    assert "nothing" in str(err.value) and "\n" not in str(err.value)
