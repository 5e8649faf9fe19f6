"""Config files and command-line parsing shared by the entry points.

A config is a Python file with `get_config() -> ml_collections.ConfigDict` (see configs/). Command lines take
`--config FILE` and ml_collections overrides `--config.a.b=value`. Every mistake (missing file, unknown key,
unparsable value) becomes an `InputError` naming the file or key, so the entry points can exit with one line.
"""
from __future__ import annotations

import difflib
import json
import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff.errors import InputError


def _check_override_keys(config_path: str, argv: list[str]) -> None:
    """Raise InputError for `--config.x.y=` overrides whose key is not in the config file."""
    config = config_flags.config_flags._LoadConfigModule("config", config_path).get_config()  # noqa: SLF001
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
    holder = config_flags.DEFINE_config_file("config", None, "Path to a config file.", flag_values=fv,
                                             lock_config=True)
    if define_extra is not None:
        define_extra(fv)
    config_path = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
                        for i, a in enumerate(argv) if a.split("=")[0] == "--config" and
                        ("=" in a or i + 1 < len(argv))), None)
    if config_path is None and require_config:
        raise InputError("missing --config FILE (a config file from configs/)")
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise InputError(f"config file {config_path}: not found")
        _check_override_keys(config_path, argv)
    saved, sys.argv = sys.argv, list(argv)  # ml_collections' config flag reads its overrides from sys.argv
    try:
        fv(argv)
    except flags.Error as e:
        raise InputError(str(e).splitlines()[0]) from None
    finally:
        sys.argv = saved
    return (holder.value if config_path is not None else None), fv


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

    return ml_collections.ConfigDict(tuples(raw))
