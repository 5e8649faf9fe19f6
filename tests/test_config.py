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
    """quickstart.py names few of the optional keys; parse adds the others, and overrides of them work as for
    keys the file has (typed: a tuple of regexes, a bool, a string)."""
    from configs import quickstart
    written, plain = quickstart.get_config(), parse("--config", QUICKSTART)
    added = 0
    for dotted, default in config_lib.OPTIONAL_KEYS.items():
        section, key = dotted.rpartition(".")[::2]
        in_file = (written[section] if section else written).get(key, "absent")
        got = (plain[section] if section else plain)[key]
        assert got == (default if in_file == "absent" else in_file), dotted
        added += in_file == "absent"
    assert added >= 3
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
