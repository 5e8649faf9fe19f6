"""The start-up data check (`jaxdiff.data.check`): every file of every split read in full before training, each
problem one line naming the file, nothing written to the work directory; `data.skip_bad_cases` leaves the bad
cases out without moving the others between splits; files already checked are not read again."""
from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import REPO, run_python
from jaxdiff.data.check import check_data
from jaxdiff.data.pipeline import get_source
from jaxdiff.data.sources import brats
from jaxdiff.errors import DataCheckError, InputError
from jaxdiff.io import nifti, save_nifti

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (6, 6, 5)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """The check's cache in the test's own folder (never the user's ~/.cache)."""
    home = tmp_path / "cache_home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def _write_brats(root, n_cases=8, shape=SHAPE) -> list[str]:
    rng = np.random.default_rng(0)
    names = [f"BraTS20_Training_{c:03d}" for c in range(n_cases)]
    for case in names:
        os.makedirs(root / case)
        for m in brats.MODALITIES:
            save_nifti(str(root / case / f"{case}_{m}.nii.gz"), rng.random(shape).astype(np.float32) * 100, AFFINE)
        seg = np.zeros(shape, np.uint8)
        seg[1:3, 1:3, 1:3] = 2
        save_nifti(str(root / case / f"{case}_seg.nii.gz"), seg, AFFINE)
    return names


def _brats_config(root, **kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(source="brats", root=str(root), modality="t1,t2", seed=42, image_size=8,
                                          **kw))


def _parts(root) -> dict:
    return brats.case_parts(brats.list_cases(str(root)), "random", 42, (0.8, 0.1, 0.1))


def _break_cases(root) -> dict:
    """Five bad cases (one problem each) in an 8-case folder: {case: (bad file, words of its problem line)}."""
    parts = _parts(root)
    val, train = parts["val"][0], parts["train"]
    bad = {}
    path = root / val / f"{val}_t2.nii.gz"                       # a truncated .nii.gz in the val case
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    bad[val] = (path, "truncated")
    nan = np.ones(SHAPE, np.float32)
    nan[2, 2, 2] = np.nan
    path = root / train[0] / f"{train[0]}_t2.nii.gz"             # NaN in a training case
    save_nifti(str(path), nan, AFFINE)
    bad[train[0]] = (path, "NaN")
    path = root / train[1] / f"{train[1]}_t1.nii.gz"             # a missing modality
    path.unlink()
    bad[train[1]] = (path, "missing")
    path = root / train[2] / f"{train[2]}_seg.nii.gz"            # a seg of another shape than its images
    save_nifti(str(path), np.zeros((6, 6, 4), np.uint8), AFFINE)
    bad[train[2]] = (path, "shape 6x6x4 differs")
    path = root / train[3] / f"{train[3]}_t2.nii.gz"             # a modality with another voxel spacing
    save_nifti(str(path), np.ones(SHAPE, np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]))
    bad[train[3]] = (path, "spacing 1.0x1.0x2.0 mm differs")
    return bad


def test_every_problem_is_one_line_naming_its_file(tmp_path):
    root = tmp_path / "brats"
    _write_brats(root)
    bad = _break_cases(root)
    with pytest.raises(DataCheckError) as e:
        check_data(_brats_config(root))
    summary, *lines = str(e.value).splitlines()
    assert summary.startswith("data check: 5 problem(s) in 5 of 8 cases") and "skip_bad_cases" in summary
    assert len(lines) == 5 and isinstance(e.value, InputError)
    for path, words in bad.values():
        assert sum(line.startswith(f"  {path}: ") and words in line for line in lines) == 1, (path, lines)


def test_train_cli_lists_the_problems_and_creates_no_workdir(tmp_path, cache_home):
    root, workdir = tmp_path / "brats", tmp_path / "new_run"
    _write_brats(root)
    bad = _break_cases(root)
    proc = run_python(["-m", "jaxdiff.train", "--config", "configs/quickstart.py", "--workdir", str(workdir),
                       "--quiet", "--config.data.source=brats", f"--config.data.root={root}",
                       "--config.data.modality=t1,t2"],
                      env_extra={"JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(cache_home)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: data check: 5 problem(s)") and len(lines) == 6, proc.stderr[-3000:]
    assert all(any(str(path) in line for line in lines[1:]) for path, _ in bad.values())
    assert not workdir.exists()


def test_skip_bad_cases_leaves_them_out_and_keeps_the_splits(tmp_path, capsys):
    root = tmp_path / "brats"
    _write_brats(root)
    bad = _break_cases(root)
    parts = _parts(root)
    config = _brats_config(root, skip_bad_cases=True)
    config.lock()
    skipped = check_data(config)
    assert skipped == sorted(bad) and tuple(config.exclude_cases) == tuple(sorted(bad))
    warning, = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "5 of 8 cases" in warning and all(f"{case} ({split})" in warning for split in parts
                                             for case in parts[split] if case in bad)
    for split, cases in parts.items():   # the good cases stay where they were
        if all(c in bad for c in cases):
            with pytest.raises(InputError, match="exclude_cases"):
                get_source(config, split)
            continue
        source = get_source(config, split)
        assert source.cases == [c for c in cases if c not in bad]
        assert source[0]["image"].shape == (8, 8, 2)


def test_a_second_check_reads_no_file_and_a_changed_file_is_read_again(tmp_path, cache_home, monkeypatch):
    root = tmp_path / "brats"
    names = _write_brats(root, n_cases=4)
    reads = []
    real = nifti.check_nifti
    monkeypatch.setattr(nifti, "check_nifti", lambda path: reads.append(path) or real(path))
    config = _brats_config(root)
    assert check_data(config) == [] and len(reads) == 4 * 3           # t1, t2 and seg of each case
    assert (cache_home / "jaxdiff" / "data_check.json").is_file()
    assert not any("data_check" in f for _, _, fs in os.walk(root) for f in fs)
    reads.clear()
    assert check_data(config) == [] and reads == []
    changed = root / names[1] / f"{names[1]}_t2.nii.gz"
    save_nifti(str(changed), np.full(SHAPE, np.inf, np.float32), AFFINE)
    with pytest.raises(DataCheckError, match="NaN or infinite"):
        check_data(config)
    assert reads == [str(changed)]
    reads.clear()
    with pytest.raises(DataCheckError, match="NaN or infinite"):   # a bad file is remembered as bad
        check_data(config)
    assert reads == []


def test_cases_of_another_shape_are_named_in_one_warning(tmp_path, capsys):
    root = tmp_path / "brats"
    names = _write_brats(root, n_cases=5)
    for odd in names[3:]:
        for m in (*brats.MODALITIES, "seg"):
            save_nifti(str(root / odd / f"{odd}_{m}.nii.gz"), np.ones((5, 5, 5), np.uint8), AFFINE)
    assert check_data(_brats_config(root)) == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 of 5 cases are not 6x6x5 like the other 3: 2 of 5x5x5" in warnings[0]
    assert names[3] in warnings[0] and names[4] in warnings[0]


def test_slices_outside_a_case_are_found_up_front(tmp_path):
    root = tmp_path / "brats"
    _write_brats(root, n_cases=4)
    with pytest.raises(DataCheckError, match="5 axial slices, slice index 7 out of range"):
        check_data(_brats_config(root, slices=(2, 7)))


# ---------------------------------------------------------------- the other file sources

def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _mask_folder(root):
    for i in range(6):
        _png(root / "images" / f"im{i}.png", np.full((8, 8), 40 * i))
        _png(root / "masks" / f"im{i}.png", np.eye(8) * 255)
    (root / "images" / "im1.png").write_bytes((root / "images" / "im1.png").read_bytes()[:40])
    _png(root / "masks" / "im2.png", np.zeros((6, 8)))
    (root / "masks" / "im3.png").unlink()
    return {"im1": "not a readable image", "im2": "mask size 6x8 differs", "im3": "missing (mask of case im3)"}


def _ixi(root):
    os.makedirs(root)
    rng = np.random.default_rng(0)
    for i in range(6):
        save_nifti(str(root / f"IXI{i:03d}-Guys-T1.nii.gz"), rng.random(SHAPE).astype(np.float32), AFFINE)
    save_nifti(str(root / "IXI001-Guys-T1.nii.gz"), np.full(SHAPE, np.nan, np.float32), AFFINE)
    save_nifti(str(root / "IXI002-Guys-T1.nii.gz"), np.ones(SHAPE, np.float32), AFFINE)
    return {"IXI001-Guys-T1.nii.gz": "NaN", "IXI002-Guys-T1.nii.gz": "constant intensities"}


def _lgg(root):
    for p in range(3):
        patient = f"TCGA_CS_{p}"
        os.makedirs(root / patient)
        for k in (1, 2):
            tifffile.imwrite(root / patient / f"{patient}_{k}.tif", np.full((8, 8, 3), 50 * k, np.uint8))
            tifffile.imwrite(root / patient / f"{patient}_{k}_mask.tif", np.eye(8, dtype=np.uint8) * 255)
    tifffile.imwrite(root / "TCGA_CS_1" / "TCGA_CS_1_2_mask.tif", np.full((8, 8), 7, np.uint8))
    (root / "TCGA_CS_2" / "TCGA_CS_2_1.tif").write_bytes(b"II*\0garbage")
    return {"TCGA_CS_1/TCGA_CS_1_2": "not binary", "TCGA_CS_2/TCGA_CS_2_1": "expected an (H, W, 3) image"}


def _mrnet(root):
    for folder, exams in (("train", range(4)), ("valid", range(4, 8))):
        os.makedirs(root / folder / "coronal")
        for e in exams:
            np.save(root / folder / "coronal" / f"{e:04d}.npy", np.ones((6, 8, 8), np.uint8))
        (root / f"{folder}-abnormal.csv").write_text("".join(f"{e:04d},1\n" for e in exams))
    np.save(root / "train" / "coronal" / "0001.npy", np.ones((2, 8, 8), np.uint8))
    (root / "valid" / "coronal" / "0005.npy").write_bytes(b"\x93NUMPY garbage")
    return {"train/coronal/0001": "is not (slices >= 5", "valid/coronal/0005": "not a readable .npy"}


@pytest.mark.parametrize("source, build, keys", [
    ("mask_folder", _mask_folder, {}),
    ("ixi", _ixi, {"image_size": 6}),
    ("lgg", _lgg, {"fractions": (0.4, 0.3, 0.3)}),
    ("mrnet", _mrnet, {"image_size": 8}),
])
def test_other_file_sources_are_checked(source, build, keys, tmp_path):
    root = tmp_path / source
    bad = build(root)
    config = ml_collections.ConfigDict(dict(source=source, root=str(root), **keys))
    with pytest.raises(DataCheckError) as e:
        check_data(config)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == len(bad), lines
    assert all(sum(words in line for line in lines) == 1 for words in bad.values()), lines
    config.skip_bad_cases = True
    assert check_data(config) == sorted(bad)
    for split in ("train", "val", "test"):
        try:
            src = get_source(config, split)
        except InputError as err:                # a split left empty by the exclusion says so
            assert "empty" in str(err)
            continue
        for i in range(len(src)):                # every example left reads
            src[i]


def test_first_batch_error_leaves_no_new_workdir(tmp_path, monkeypatch):
    """An error in the first batch (one the check cannot see) is raised before the work directory exists."""
    from jaxdiff import config as config_lib
    from jaxdiff.data.sources import phantom
    from jaxdiff import experiment

    def broken(self, idx):
        raise InputError("phantom slice: broken on purpose")

    monkeypatch.setattr(phantom.PhantomSlices, "__getitem__", broken)
    config, _ = config_lib.parse(["train", "--config", os.path.join(REPO, "configs/quickstart.py"),
                                  "--config.data.image_size=16", "--config.model.base_channels=8", "--config.model.channel_mults=(1,)",
                                  "--config.model.attention_levels=()", "--config.model.groups=4",
                                  "--config.data.num_cases=3", "--config.train.batch_size=2"])
    workdir = tmp_path / "new_run"
    with pytest.raises(Exception, match="broken on purpose"):
        experiment.run(config, str(workdir), quiet=True)
    assert not workdir.exists()
