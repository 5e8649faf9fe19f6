"""Class-per-folder image source (Kaggle yes/no layout): labels, decoding, stratified split, balance, errors."""
from __future__ import annotations

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxdiff.data import get_source
from jaxdiff.data.sources import image_folder
from jaxdiff.errors import InputError

N_NO, N_YES = 10, 20


def _write_folder(root, n_no=N_NO, n_yes=N_YES):
    """no/: n_no dark images, yes/: n_yes bright ones; mixed sizes, grey and RGB, JPEG and PNG; plus a
    truncated JPEG, a text file named .jpg and a README (not an image extension) in yes/."""
    rng = np.random.default_rng(0)
    for name, n, level in (("no", n_no, 40), ("yes", n_yes, 200)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = 8 + i % 5, 10 + i % 3
            a = np.clip(level + rng.integers(-10, 10, (h, w)), 0, 255).astype(np.uint8)
            img = Image.fromarray(a) if i % 2 else Image.fromarray(np.stack([a, a, a], -1))
            img.save(root / name / f"{name}{i}.{'png' if i % 3 else 'jpg'}")
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(buf, format="JPEG")
    (root / "yes" / "cut.jpg").write_bytes(buf.getvalue()[:60])
    (root / "yes" / "text.jpg").write_text("hello")
    (root / "yes" / "README.md").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("yesno"))


def _config(root, **kw):
    base = dict(source="image_folder", root=str(root), image_size=12, channels=3, seed=0, fractions=(0.6, 0.2, 0.2),
                balance="none")
    return ml_collections.ConfigDict({**base, **kw})


def test_labels_images_and_skipped_files(tmp_path, capsys):
    root = _write_folder(tmp_path / "data")
    src = get_source(_config(root), "train")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and any("cut.jpg" in w for w in warnings) and any("text.jpg" in w for w in warnings)
    assert src.classes == ("no", "yes") and src.num_classes == 2 and src.class_weights is None
    for i in range(len(src)):
        ex = src[i]
        assert ex["image"].shape == (12, 12, 3) and ex["image"].dtype == np.float32
        assert ex["label"].dtype == np.int32 and int(ex["label"]) == int("/yes/" in src.paths[i])
        mean = float(ex["image"].mean())                             # no: 40/255 -> about -0.69; yes: about 0.57
        assert (mean > 0.4) if ex["label"] == 1 else (mean < -0.5)
        assert -1.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    grey = get_source(_config(root, channels=1), "val")
    assert grey[0]["image"].shape == (12, 12, 1)
    assert not capsys.readouterr().err                                # each bad file is reported once


def test_stratified_split(root):
    parts = {s: image_folder.from_config(_config(root), s) for s in ("train", "val", "test")}
    paths = [p for src in parts.values() for p in src.paths]
    assert len(paths) == len(set(paths)) == N_NO + N_YES
    for split, (n_no, n_yes) in {"train": (6, 12), "val": (2, 4), "test": (2, 4)}.items():
        assert np.bincount(parts[split].labels, minlength=2).tolist() == [n_no, n_yes]
    again = image_folder.from_config(_config(root), "val")
    other = image_folder.from_config(_config(root, seed=1), "val")
    assert again.paths == parts["val"].paths and other.paths != parts["val"].paths


def test_balance_modes(root):
    weighted = get_source(_config(root, balance="weights"), "train")
    np.testing.assert_allclose(weighted.class_weights, [18 / (2 * 6), 18 / (2 * 12)])
    assert len(weighted) == 18
    over = image_folder.from_config(_config(root, balance="oversample"), "train")
    assert np.bincount(over.labels).tolist() == [12, 12] and over.class_weights is None
    assert set(over.paths) == set(weighted.paths)
    assert over.paths == image_folder.from_config(_config(root, balance="oversample"), "train").paths
    val = image_folder.from_config(_config(root, balance="oversample"), "val")
    assert np.bincount(val.labels).tolist() == [2, 4]
    with pytest.raises(InputError, match="data.balance"):
        image_folder.from_config(_config(root, balance="smote"), "train")


def test_errors(tmp_path):
    with pytest.raises(InputError, match="data.root"):
        image_folder.from_config(_config(tmp_path / "missing"), "train")
    with pytest.raises(InputError, match="data.root"):
        image_folder.from_config(_config(""), "train")
    (tmp_path / "flat").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        image_folder.from_config(_config(tmp_path / "flat"), "train")
    bad = _write_folder(tmp_path / "bad", n_no=0, n_yes=3)
    with pytest.raises(InputError, match=r"bad/no: class folder has no readable image"):
        image_folder.from_config(_config(bad), "train")
