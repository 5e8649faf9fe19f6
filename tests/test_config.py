"""Command-line config parsing (`jaxdiff.config.parse`): optional keys, overrides and one-line errors."""
import os

import pytest

from jaxdiff import config as config_lib
from jaxdiff.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def parse(*args):
    config, _ = config_lib.parse(["train", *args])
    return config


def test_optional_keys_are_added_with_their_defaults_and_take_overrides():
    """quickstart.py derives from the base config (`jaxdiff.config_defaults`); parse adds any optional key of its
    sections it lacks, and overrides of them work as for keys the file states (typed: a tuple of regexes, a bool,
    a string). A file written without the base gets them all (`test_values_in_the_file_win_over_optional_defaults`)."""
    from configs import quickstart
    written, plain = quickstart.get_config(), parse("--config", QUICKSTART)
    added = 0
    for dotted, default in config_lib.OPTIONAL_KEYS.items():
        section, key = dotted.rpartition(".")[::2]
        if section and section not in written:
            assert section not in plain, dotted  # no section is invented
            continue
        in_file = (written[section] if section else written).get(key, "absent")
        got = (plain[section] if section else plain)[key]
        assert got == (default if in_file == "absent" else in_file), dotted
        added += in_file == "absent"
    assert added == 0  # the base config states them all
    config = parse(f"--config={QUICKSTART}", "--config.train.trainable=('out', 'down_0')",
                   "--config.train.freeze_batch_stats=False", "--config.xla_cpu_fusion=dot,reduce",
                   "--config.train.steps=7")
    assert config.train.trainable == ("out", "down_0")
    assert config.train.freeze_batch_stats is False
    assert config.xla_cpu_fusion == "dot,reduce"
    assert config.train.steps == 7
    assert config.train.lr == plain.train.lr  # the rest of the file as written
    assert parse("--config", QUICKSTART, "--config.train.trainable=head").train.trainable == ("head",)


def test_values_in_the_file_win_over_optional_defaults(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import ml_collections\n"
                    "def get_config():\n"
                    "    return ml_collections.ConfigDict(dict(train=dict(steps=3, weight_decay=0.25)))\n")
    config = parse("--config", str(path))
    assert config.train.weight_decay == 0.25
    assert config.train.trainable == () and config.train.freeze_batch_stats is True
    assert config.xla_cpu_fusion == ""
    assert "data" not in config  # optional keys are added to sections the file has, none is invented


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], r"config key train.stepz: unknown in .*quickstart.py \(did you mean 'steps'\?\)"),
    (["--config.train.freeze_batch_stats=maybe"], r"train.freeze_batch_stats"),
    (["--config.train.steps=many"], r"train.steps"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(args, message):
    with pytest.raises(InputError, match=message) as e:
        parse("--config", QUICKSTART, *args)
    assert "\n" not in str(e.value)


def test_bad_config_files_are_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="missing --config FILE"):
        parse("--workdir", "w")
    with pytest.raises(InputError, match="missing --config FILE"):
        parse("--workdir", "w", "--config")
    with pytest.raises(InputError, match=r"config file .*nope.py: not found"):
        parse("--config", str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(InputError, match=r"config file .*broken.py: SyntaxError"):
        parse("--config", str(broken))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(InputError, match=r"config file .*empty.py: defines no get_config\(\)"):
        parse("--config", str(empty))


def test_a_saved_config_json_reads_back_with_the_optional_keys(tmp_path):
    """A work directory written before a key became optional still loads, with the key at its default."""
    config = parse("--config", QUICKSTART, "--config.train.trainable=('out',)")
    path = tmp_path / "config.json"
    path.write_text(config_lib.to_json(config))
    back = config_lib.from_json_file(str(path))
    assert back.train.trainable == ("out",) and back.train.steps == config.train.steps
    raw = config.to_dict()
    del raw["train"]["freeze_batch_stats"], raw["xla_cpu_fusion"]
    import ml_collections
    path.write_text(config_lib.to_json(ml_collections.ConfigDict(raw)))
    old = config_lib.from_json_file(str(path))
    assert old.train.freeze_batch_stats is True and old.xla_cpu_fusion == ""


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_every_config_file_keeps_its_values_after_parse():
    """The optional keys only add what a file leaves out: every key a config file sets keeps its value."""
    import glob
    import importlib.util
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        spec = importlib.util.spec_from_file_location("cfg_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            continue
        written, parsed = dict(_flat(module.get_config().to_dict())), dict(_flat(parse("--config", path).to_dict()))
        assert {k: parsed.get(k, "absent") for k in written} == written, path


@pytest.mark.parametrize("config, args, key, expected", [
    # a key left at None in the file (transformer_unet_tiny) and one the file leaves out (medsegdiff_tiny): both
    # take a value, read as a config file would write it
    ("transformer_unet_tiny", ["--config.data.slices=linspace_70_100_10"], "data.slices", "linspace_70_100_10"),
    ("transformer_unet_tiny", ["--config.data.slices=(60, 80)"], "data.slices", (60, 80)),
    ("medsegdiff_tiny", ["--config.data.slices", "(60,80)"], "data.slices", (60, 80)),
    ("medsegdiff_tiny", ["--config.data.skip_bad_cases=True"], "data.skip_bad_cases", True),
    ("classifier_tiny", ["--config.eval.num_examples=5"], "eval.num_examples", 5),
    ("classifier_tiny", ["--config.train.label_smoothing=0.1"], "train.label_smoothing", 0.1),
    # keys whose default depends on the data source / model, absent from the file, settable all the same
    ("quickstart", ["--config.data.tumour_fraction=0.5"], "data.tumour_fraction", 0.5),
    ("transformer_unet_tiny", ["--config.model.in_channels=2"], "model.in_channels", 2),
    ("quickstart", ["--config.diffusion.eta=1.0", "--config.train.steps=7"], "diffusion.eta", 1.0),
    ("quickstart", ["--config.data.slices=None"], "data.slices", None),
])
def test_none_and_absent_keys_that_code_reads_take_overrides(config, args, key, expected):
    parsed = parse("--config", os.path.join(REPO, "configs", f"{config}.py"), *args)
    section, name = key.split(".")
    assert parsed[section][name] == expected
    assert type(parsed[section][name]) is type(expected)


def test_optional_keys_hold_the_defaults_their_readers_use():
    """data.slices and data.skip_bad_cases are in every config (None / False), so a config that never names them
    takes them on the command line; unknown keys stay errors, with a hint that includes keys read by code."""
    plain = parse("--config", os.path.join(REPO, "configs", "medsegdiff_tiny.py"))
    assert plain.data.slices is None and plain.data.skip_bad_cases is False
    with pytest.raises(InputError, match=r"config key data.sliecs: unknown in .*medsegdiff_tiny.py "
                                         r"\(did you mean 'slices'\?\)"):
        parse("--config", os.path.join(REPO, "configs", "medsegdiff_tiny.py"), "--config.data.sliecs=3")
    with pytest.raises(InputError, match=r"config key model.in_channel: unknown .*did you mean 'in_channels'"):
        parse("--config", os.path.join(REPO, "configs", "transformer_unet_tiny.py"), "--config.model.in_channel=2")
    with pytest.raises(InputError, match=r"config key eval: unknown"):  # quickstart has no eval section
        parse("--config", QUICKSTART, "--config.eval.num_examples=3")


def test_a_work_directory_config_json_loads_as_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(config_lib.to_json(parse("--config", QUICKSTART, "--config.train.steps=9")))
    assert parse("--config", str(path)).train.steps == 9


def test_a_derived_config_loads_from_another_working_directory(tmp_path):
    """`configs/medsegdiff_tiny.py` imports `configs.medsegdiff_phantom`: given by its absolute path from a folder
    outside the repository (no PYTHONPATH), it still loads."""
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("from jaxdiff import config; c, _ = config.parse(['x', '--config', %r]); print(c.data.num_cases)"
            % os.path.join(repo, "configs", "medsegdiff_tiny.py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "64"
