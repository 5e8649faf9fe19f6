"""`jaxdiff.config_defaults`: every key's default in one place, configs derived from it, old names still read."""
import json
import os

import ml_collections
import pytest

from jaxdiff import config as config_lib
from jaxdiff import config_defaults
from jaxdiff.data.sources import brats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_CONFIG = os.path.join(REPO, "configs", "transformer_unet_tiny.py")


def test_base_config_holds_each_section_with_its_defaults_and_no_key_twice():
    c = config_defaults.get_config("train", "mesh", "data")
    assert c.train.trainable == () and c.train.ckpt_every == 1000 and c.mesh.data == -1 and c.data.split == "random"
    assert c.xla_cpu_fusion == "" and "diffusion" not in c
    filled = {f"{s}.{k}" for s, keys in config_defaults.SECTIONS.items() if s for k in keys}
    assert not filled & set(config_defaults.READ_KEYS)  # a key is either filled or read with a varying default
    assert config_lib.OPTIONAL_KEYS["train.log_every"] == 50 and "data.seed" not in config_lib.OPTIONAL_KEYS
    assert "seed" in config_lib.READ_KEYS["data"]


def test_fill_adds_defaults_to_the_sections_a_config_has_and_keeps_its_values():
    c = ml_collections.ConfigDict(dict(train=dict(steps=3, log_every=7), model=dict(name="unet")))
    full = config_defaults.fill(c)
    assert full.train.log_every == 7 and full.train.keep_checkpoints == 3 and full.train.steps == 3
    assert "data" not in full and "mesh" not in full and "log_every" in full.train
    assert "keep_checkpoints" not in c.train  # a copy


def _old_workdir_config(tmp_path):
    """config.json as today's trainer writes it, then given the old split / slice names and without keys that
    older versions did not write."""
    config, _ = config_lib.parse(["train", "--config", SEG_CONFIG])
    raw = json.loads(config_lib.to_json(config))
    raw["data"].update(split="seed_s0", slices="seed_s0")
    del raw["train"]["label_smoothing"], raw["mesh"]["fsdp_min_size"], raw["data"]["normalise"]
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(raw))
    return workdir / "config.json"


def test_an_old_work_directory_config_json_loads_with_new_names_and_a_note(tmp_path):
    path = _old_workdir_config(tmp_path)
    for load in (config_lib.from_json_file, config_lib.load):   # sample / evaluate, and --config config.json
        with pytest.warns(config_defaults.RenamedWarning, match=r"data.split: 'seed_s0' is the old name of "
                                                                r"'brats_250_73_45'") as notes:
            config = load(str(path))
        assert config.data.split == "brats_250_73_45" and config.data.slices == "linspace_70_100_10"
        assert any("data.slices" in str(n.message) for n in notes)
        assert all("\n" not in str(n.message) for n in notes)
        assert config.train.label_smoothing == 0.0 and config.mesh.fsdp_min_size == 2 ** 14
        assert config.data.normalise == "volume_max" and config.train.steps == 400


def test_an_old_name_on_the_command_line_is_read_as_the_new_one():
    with pytest.warns(config_defaults.RenamedWarning, match="seed_s1"):
        config, _ = config_lib.parse(["train", "--config", SEG_CONFIG, "--config.data.split=seed_s1"])
    assert config.data.split == "lgg_3536_393"


def test_the_data_layer_reads_old_names_too():
    cases = [f"c{i:03d}" for i in range(40)]
    with pytest.warns(config_defaults.RenamedWarning):
        old = brats.case_parts(cases, "seed_s0")
    assert old == brats.case_parts(cases, "brats_250_73_45") == brats.split_250_73_45(cases)
    with pytest.warns(FutureWarning, match="SPLIT_250_73_45"):
        assert brats.SEED_S0_CASES == brats.SPLIT_250_73_45 == (250, 73, 45)
    assert brats.SLICE_RECIPES["linspace_70_100_10"] == (70, 73, 77, 80, 83, 87, 90, 93, 97, 100)


def test_the_old_medsegdiff_config_file_loads_the_renamed_one():
    with pytest.warns(FutureWarning, match="medsegdiff_lgg"):
        old = config_lib.load(os.path.join(REPO, "configs", "medsegdiff_seed.py"))
    assert old.to_dict() == config_lib.load(os.path.join(REPO, "configs", "medsegdiff_lgg.py")).to_dict()
