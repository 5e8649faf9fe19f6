"""Config files and command-line parsing shared by the entry points.

A config is a Python file with `get_config() -> ml_collections.ConfigDict` (see configs/). Command lines take
`--config FILE` and ml_collections overrides `--config.a.b=value`. Every mistake (missing file, unknown key,
unparsable value) becomes an `InputError` naming the file or key, so the entry points can exit with one line.

Keys in `OPTIONAL_KEYS` work with every model: a config file may leave them out, and `parse` adds them with their
defaults before it applies the overrides, so `--config.train.trainable="('head',)"` works for any config.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff.errors import InputError


# Keys that every task and model reads (with these defaults) and a config file may omit: "section.key" -> default.
OPTIONAL_KEYS = {
    "xla_cpu_fusion": "",            # XLA:CPU fusion types for YNNPACK ("" = jaxdiff's default set)
    "train.trainable": (),           # regexes of trained parameter names (() = all); others frozen
    "train.freeze_batch_stats": True,  # with train.trainable: frozen BatchNorm layers use running statistics
    "train.weight_decay": 0.0,       # adamw's decoupled weight decay
    "train.final_lr_fraction": 0.0,  # cosine schedule ends at lr * this
}


def with_optional_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with each `OPTIONAL_KEYS` entry it lacks set to its default (sections must exist)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for dotted, default in OPTIONAL_KEYS.items():
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node.get(section) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and key not in node:
            node[key] = default
    return config


def _load(config_path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, with `OPTIONAL_KEYS` filled in."""
    # a fresh module each time (ml_collections' loader re-executes into one shared `config` module, so a file
    # without get_config() would inherit the previous file's)
    spec = importlib.util.spec_from_file_location("jaxdiff_config_file", config_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error or failing import inside the user's file
        raise InputError(f"config file {config_path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not callable(getattr(module, "get_config", None)):
        raise InputError(f"config file {config_path}: defines no get_config()")
    return with_optional_keys(module.get_config())


def _check_override_keys(config, config_path: str, argv: list[str]) -> None:
    """Raise InputError for `--config.x.y=` overrides whose key is not in `config` (loaded from `config_path`)."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        node = config
        for i, part in enumerate(path.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                hint = difflib.get_close_matches(part, known, n=1)
                prefix = ".".join(path.split(".")[: i + 1])
                raise InputError(f"config key {prefix}: unknown in {config_path}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            node = node[part]


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    """(FILE of `--config FILE` or `--config=FILE`, or None; argv without it). A `--config` with no FILE after it
    is an InputError."""
    i = next((i for i, a in enumerate(argv) if a.split("=")[0] == "--config"), None)
    if i is None:
        return None, list(argv)
    if "=" not in argv[i] and i + 1 == len(argv):
        raise InputError("missing --config FILE (a config file from configs/)")
    config_path = argv[i].split("=", 1)[1] if "=" in argv[i] else argv[i + 1]
    return config_path, argv[:i] + argv[i + (1 if "=" in argv[i] else 2):]


def parse(argv: list[str], define_extra=None, require_config: bool = True):
    """Parse `--config FILE [--config.k=v ...]` plus extra absl flags.

    Args:
      argv: sys.argv-style list (program name first).
      define_extra: optional callable(flag_values) that defines entry-point specific flags on a fresh FlagValues.
      require_config: if False, `--config` may be omitted (e.g. `sample --workdir W` reads config.json).
    Returns:
      (config or None, FlagValues).
    """
    fv = flags.FlagValues()
    if define_extra is not None:
        define_extra(fv)
    config_path, rest = split_config_arg(argv)
    if config_path is None and require_config:
        raise InputError("missing --config FILE (a config file from configs/)")
    holder = None
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise InputError(f"config file {config_path}: not found")
        config = _load(config_path)
        _check_override_keys(config, config_path, rest)
        # the loaded config (optional keys included) takes the `--config.a.b=value` overrides
        holder = config_flags.DEFINE_config_dict("config", config, "Config from --config FILE.", flag_values=fv,
                                                 lock_config=True, sys_argv=rest)
    try:
        fv(rest)
    except flags.Error as e:
        raise InputError(str(e).splitlines()[0]) from None
    return (holder.value if holder is not None else None), fv


def to_json(config) -> str:
    """Serialise a ConfigDict to JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json_file(path: str) -> ml_collections.ConfigDict:
    """Read a `config.json` written by `train` back into a ConfigDict (JSON lists become tuples)."""
    from jaxdiff.io import files
    if not files.path(path).is_file():
        raise InputError(f"{path}: not found (is this a jaxdiff work directory?)")
    try:
        raw = json.loads(files.path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None

    def tuples(x):
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(tuples(v) for v in x) if isinstance(x, list) else x

    return with_optional_keys(ml_collections.ConfigDict(tuples(raw)))
