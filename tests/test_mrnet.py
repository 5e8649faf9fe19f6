"""MRNet source on small files written in the MRNet layout."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from jaxdiff.data.sources import mrnet
from jaxdiff.errors import InputError


def _exam(slices: int, size: int = 12) -> np.ndarray:
    """Slice k is filled with 10 * k (uint8, as MRNet): slice identity survives scaling and resizing."""
    values = (10 * np.arange(slices, dtype=np.uint8))[:, None, None]
    return np.repeat(values, size * size, 1).reshape(slices, size, size)


@pytest.fixture
def root(tmp_path):
    for folder, exams in (("train", {0: 7, 1: 9, 2: 5}), ("valid", {1130: 6, 1131: 7, 1132: 8, 1133: 5})):
        for plane in ("coronal", "axial"):
            (tmp_path / folder / plane).mkdir(parents=True)
            for e, n in exams.items():
                np.save(tmp_path / folder / plane / f"{e:04d}.npy", _exam(n))
        for label in ("abnormal", "acl"):
            (tmp_path / f"{folder}-{label}.csv").write_text("".join(f"{e:04d},{e % 2}\n" for e in exams))
    return tmp_path


def _cfg(root, **kw):
    return ml_collections.ConfigDict(dict(source="mrnet", root=str(root), image_size=8, **kw))


def test_central_slices_scaled_resized_and_labelled(root):
    src = mrnet.from_config(_cfg(root), "train")
    assert len(src) == 3 * 5
    ex = src[5]                                    # exam 0001 (9 slices): central 5 are slices 2..6
    assert ex["image"].shape == (8, 8, 1) and ex["image"].dtype == np.float32
    assert int(ex["exam"]) == 1 and int(ex["label"]) == 1
    # per-exam min-max over the central slices (values 20..60) -> [0, 1] -> [-1, 1]
    firsts = [float(src[5 + k]["image"][4, 4, 0]) for k in range(5)]
    np.testing.assert_allclose(firsts, [-1.0, -0.5, 0.0, 0.5, 1.0], atol=1e-5)
    assert int(mrnet.from_config(_cfg(root, label=""), "train")[0]["label"]) == -1
    from jaxdiff.data import get_source
    np.testing.assert_array_equal(get_source(_cfg(root), "train")[5]["image"], ex["image"])


def test_val_test_split_valid_folder_by_exam(root):
    val, test = (mrnet.from_config(_cfg(root, seed=3), s) for s in ("val", "test"))
    assert sorted(val.exams + test.exams) == [1130, 1131, 1132, 1133] and not set(val.exams) & set(test.exams)
    assert val.exams == mrnet.from_config(_cfg(root, seed=3), "val").exams
    axial = mrnet.from_config(_cfg(root, plane="axial", label="acl"), "train")
    assert axial.paths[0].endswith("train/axial/0000.npy") and axial.labels == [0, 1, 0]


def test_bad_inputs_name_the_file_or_key(root):
    (root / "train" / "coronal" / "0003.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="0003.npy"):
        mrnet.from_config(_cfg(root), "train")
    np.save(root / "train" / "coronal" / "0003.npy", _exam(3))
    with pytest.raises(InputError, match="0003.npy.*slices >= 5"):
        mrnet.from_config(_cfg(root), "train")
    np.save(root / "train" / "coronal" / "0003.npy", _exam(6))
    with pytest.raises(InputError, match="train-abnormal.csv.*0003"):
        mrnet.from_config(_cfg(root), "train")
    with pytest.raises(InputError, match="data.plane"):
        mrnet.from_config(_cfg(root, plane="oblique"), "train")
    with pytest.raises(InputError, match="data.root"):
        mrnet.from_config(_cfg(root / "missing"), "train")
    with pytest.raises(InputError, match="meniscus.csv"):
        mrnet.from_config(_cfg(root, label="meniscus"), "val")
