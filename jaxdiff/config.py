"""Config files and command-line parsing shared by the entry points.

A config is a Python file with `get_config() -> ml_collections.ConfigDict` (see configs/). Command lines take
`--config FILE` and ml_collections overrides `--config.a.b=value`. Every mistake (missing file, unknown key,
unparsable value) becomes an `InputError` naming the file or key, so the entry points can exit with one line.

Every key and its default is written once, in `jaxdiff.config_defaults`. Keys with one default everywhere
(`OPTIONAL_KEYS`) may be left out of a config file: `parse` (and `from_json_file`, for a work directory's config.json
written before a key existed) fills them in before it applies the overrides, so `--config.train.trainable="('head',)"`
works for any config. Keys whose default depends on the data source, task or model (`READ_KEYS`, and every field of
the model named by `model.name`) may be set on the command line when the file leaves them out; the reading code's
default applies otherwise. A key whose value is None (or a list) takes any value a config file could give it: the
text is read as a Python literal (`(60, 80)`, `3`, `True`), else kept as a string (`brats_250_73_45`). Names written
by earlier versions (`config_defaults.RENAMED_VALUES`, e.g. `data.split="seed_s0"`) are read as today's with a
one-line `FutureWarning`.

`--help` (`-h`) prints the entry point's usage and flags (and, with `--config FILE`, the file's keys and values);
`key_lines` lists a config's keys (`python -m jaxdiff.summary --config FILE --keys`). `check_output_dir` refuses a
work or output directory that cannot be one (a regular file, under a file, not writable) before any work starts.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import sys
import textwrap

import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxdiff import config_defaults
from jaxdiff.errors import InputError


# Keys with one default everywhere ("section.key" -> default, see `jaxdiff.config_defaults.SECTIONS`): a config file
# may omit them, and `parse` fills them in each section the config has before it applies the overrides.
OPTIONAL_KEYS = {(f"{section}.{key}" if section else key): default
                 for section, keys in config_defaults.SECTIONS.items() for key, default in keys.items()}

# Keys that some data sources, tasks or models read with their own defaults (`jaxdiff.config_defaults.READ_KEYS`
# says which): a config file may leave them out and the command line may still set them (`--config.data.seed=3`);
# left out, the reading code's default applies. Every field of the model class named by `model.name` may be set the
# same way (see `model_fields`).
READ_KEYS = {}
for _dotted in config_defaults.READ_KEYS:
    _section, _key = _dotted.split(".")
    READ_KEYS[_section] = READ_KEYS.get(_section, ()) + (_key,)
del _dotted, _section, _key

# Types whose overrides ml_collections' config flags parse (a key holding anything else, None included, is parsed
# here with `literal`).
_FLAG_TYPES = (bool, int, float, str, tuple, ml_collections.ConfigDict)
HELP_ARGS = ("--help", "-h", "-help", "--helpshort", "--helpfull")


def with_optional_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with old names read as today's (`config_defaults.upgrade`, a note each) and each
    `OPTIONAL_KEYS` entry it lacks set to its default, in the sections it has (`config_defaults.fill`)."""
    return config_defaults.fill(config)


def _import_roots(config_path: str) -> None:
    """Put the config file's folder (and, when that folder is a package such as `configs/`, its parent) on
    sys.path, so a config that derives from another (`from configs import medsegdiff_phantom`) loads from any
    working directory."""
    folder = os.path.dirname(os.path.abspath(config_path))
    roots = [folder] + ([os.path.dirname(folder)] if os.path.isfile(os.path.join(folder, "__init__.py")) else [])
    sys.path[:0] = [r for r in roots if r not in sys.path]


def _load(config_path: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file (or a work directory's config.json), with `OPTIONAL_KEYS` filled in."""
    if config_path.endswith(".json"):
        return from_json_file(config_path)
    # a fresh module each time (ml_collections' loader re-executes into one shared `config` module, so a file
    # without get_config() would inherit the previous file's)
    _import_roots(config_path)
    spec = importlib.util.spec_from_file_location("jaxdiff_config_file", config_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error or failing import inside the user's file
        raise InputError(f"config file {config_path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not callable(getattr(module, "get_config", None)):
        raise InputError(f"config file {config_path}: defines no get_config()")
    return with_optional_keys(module.get_config())


def literal(text: str):
    """A command-line value as a config file would write it: a Python literal (`3`, `(60, 80)`, `None`, `True`;
    absl's `true` / `false` too), else the text itself as a string (`brats_250_73_45`)."""
    text = {"true": "True", "false": "False"}.get(text, text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def model_fields(name) -> dict:
    """{field: default} of the model class registered as `name` (empty for an unknown name: `models.build` reports
    that); a field without a default maps to `dataclasses.MISSING`."""
    from jaxdiff import models
    models._load_all()
    cls = models.REGISTRY.get(name)
    if cls is None:
        return {}
    return {f.name: (f.default if f.default is not dataclasses.MISSING
                     else f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}


def _overrides(argv: list[str]) -> list[tuple[int, int, str, str | None]]:
    """(index, number of argv items, dotted key, value text or None) of each `--config.a.b=v` / `--config.a.b v`."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config."):].partition("=")
            if eq:
                out.append((i, 1, key, value))
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append((i, 2, key, argv[i + 1]))
                i += 1
            else:
                out.append((i, 1, key, None))  # a bare boolean flag
        i += 1
    return out


def _readable_absent(config, sections: list[str], argv: list[str]) -> list[str]:
    """Keys that code reads in the section `sections` of `config` and a config file may leave out: the section's
    `READ_KEYS`, and for `model` the fields of the model named by `model.name` (as overridden in argv)."""
    if len(sections) != 1:
        return []
    names = list(READ_KEYS.get(sections[0], ()))
    if sections[0] == "model":
        name = next((v for _, _, k, v in _overrides(argv) if k == "model.name"), None)
        names += list(model_fields(literal(name) if name is not None else config.model.get("name")))
    return names


def _split_overrides(config, config_path: str, argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Check every `--config.x.y` override's key and sort the overrides: ((dotted key, value text) of those applied
    here with `literal`: keys absent from the file that code reads, keys holding None or a type ml_collections
    cannot override), argv left for ml_collections' config flags). InputError for an unknown key."""
    manual, drop = [], set()
    for i, n, path, value in _overrides(argv):
        *sections, key = path.split(".")
        node = config
        for j, part in enumerate(sections):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                _unknown(node, sections[:j + 1], config_path)
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            _unknown(node, sections + [key], config_path)
        if key in node:
            if isinstance(node[key], _FLAG_TYPES):
                continue  # ml_collections parses it, with the key's type
        else:
            readable = _readable_absent(config, sections, argv)
            if key not in readable:
                _unknown(node, sections + [key], config_path, readable)
        if value is None:
            raise InputError(f"config key {path}: no value (write --config.{path}=VALUE)")
        manual.append((path, value))
        drop.update(range(i, i + n))
    return manual, [a for i, a in enumerate(argv) if i not in drop]


def _unknown(node, parts: list[str], config_path: str, also=()):
    """Raise the InputError for the unknown key `parts` (its last part is the first one missing from `node`); the
    hint is the closest of `node`'s keys and `also`."""
    known = (list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []) + list(also)
    hint = difflib.get_close_matches(parts[-1], known, n=1)
    raise InputError(f"config key {'.'.join(parts)}: unknown in {config_path}"
                     + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _apply(config, overrides: list[tuple[str, str]]) -> None:
    """Set each (dotted key, value text) of `overrides` in `config` to `literal(value text)`."""
    for path, text in overrides:
        *sections, key = path.split(".")
        node = config
        for part in sections:
            node = node[part]
        value = literal(text)
        if isinstance(node.get(key), list) and isinstance(value, tuple):
            value = list(value)
        try:
            with config.unlocked():
                node[key] = value
        except (TypeError, ValueError) as e:
            raise InputError(f"config key {path}: {text!r}: {str(e).splitlines()[0]}") from None


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
      define_extra: optional callable(flag_values) that defines entry-point specific flags on a fresh FlagValues;
        the docstring of the module that defines it is the usage `--help` prints.
      require_config: if False, `--config` may be omitted (e.g. `sample --workdir W` reads config.json).
    Returns:
      (config or None, FlagValues). With `--help` (`-h`): prints the usage and raises SystemExit(0).
    """
    fv = flags.FlagValues()
    if define_extra is not None:
        define_extra(fv)
    if any(a in HELP_ARGS for a in argv[1:]):
        try:
            print(help_text(argv, fv, define_extra, require_config), flush=True)
        except BrokenPipeError:  # `--help | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)
    config_path, rest = split_config_arg(argv)
    if config_path is None and require_config:
        raise InputError("missing --config FILE (a config file from configs/; --help for usage)")
    holder = None
    try:
        if config_path is not None:
            config = load(config_path)
            manual, rest = _split_overrides(config, config_path, rest)
            _apply(config, manual)
            # the loaded config (optional keys included) takes the other `--config.a.b=value` overrides
            holder = config_flags.DEFINE_config_dict("config", config, "Config from --config FILE.", flag_values=fv,
                                                     lock_config=True, sys_argv=rest)
        fv(rest)
    except flags.Error as e:
        raise InputError(str(e).splitlines()[0]) from None
    if holder is None:
        return None, fv
    return config_defaults.upgrade(holder.value), fv  # an old name given on the command line


def load(config_path: str) -> ml_collections.ConfigDict:
    """The config of `config_path` (a config file, or a work directory's config.json) with `OPTIONAL_KEYS`;
    InputError when it is missing or broken."""
    if not os.path.isfile(config_path):
        raise InputError(f"config file {config_path}: not found")
    return _load(config_path)


def _leaves(node, prefix: str = ""):
    for key in node.keys():
        value = node[key]
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def key_lines(config) -> list[str]:
    """Lines listing every key of `config` with its value (`data.image_size = 64`), then the keys that the config
    leaves out and code reads (`READ_KEYS`, the model's fields) with their defaults where one is fixed."""
    lines = [f"{k} = {v!r}" for k, v in _leaves(config)]
    absent = [f"{s}.{k}" for s, names in READ_KEYS.items() if isinstance(config.get(s), ml_collections.ConfigDict)
              for k in names if k not in config[s]]
    if isinstance(config.get("model"), ml_collections.ConfigDict):
        absent += [f"model.{k} = {v!r}" for k, v in model_fields(config.model.get("name")).items()
                   if k not in config.model and v is not dataclasses.MISSING]
    if absent:
        lines.append("# not in the file; read with the data source's, task's or model's default, settable with "
                     "--config.KEY=VALUE:")
        lines += absent
    return lines


def help_text(argv: list[str], fv, define_extra=None, require_config: bool = True) -> str:
    """Usage of an entry point: the docstring of the module defining `define_extra`, its flags with their help and
    defaults, how to set and list config keys, and (when argv names `--config FILE`) that file's keys."""
    module = sys.modules.get(getattr(define_extra, "__module__", ""), None)
    prog = getattr(module, "__spec__", None)
    prog = f"python -m {prog.name}" if prog is not None else os.path.basename(argv[0])
    out = [textwrap.dedent((getattr(module, "__doc__", None) or prog).strip("\n")).rstrip(), "", "flags:"]
    shown, required = set(), _required(fv)
    for name in sorted(fv):
        flag = fv[name]
        if id(flag) in shown or flag.name in ("flagfile", "undefok"):
            continue
        shown.add(id(flag))
        head = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
        value = flag.default
        default = ("required" if flag.name in required else "default: unset" if value is None else
                   f"default: {str(value).lower() if isinstance(value, bool) else repr(value)}")
        body = textwrap.fill(f"{flag.help} ({default})", 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
        out += [f"  {head}", body]
    if require_config:
        out += ["", "config:", "  --config FILE",
                "      A config file (configs/NAME.py, or a work directory's config.json).",
                "  --config.KEY=VALUE",
                textwrap.fill("Set one key of the config, written as in a config file: --config.train.steps=100, "
                              "--config.data.slices=\"(60, 80)\", --config.data.split=brats_250_73_45. Keys the "
                              "file leaves out that jaxdiff reads (optional keys, the data source's, task's and "
                              "model's) may be set too.", 100, initial_indent=" " * 6, subsequent_indent=" " * 6),
                "  List a config's keys, their values and the optional ones:",
                "      python -m jaxdiff.summary --config FILE --keys"]
    else:
        out += ["", "config:", "  The run's config is read from WORKDIR/config.json. List its keys and values:",
                "      python -m jaxdiff.summary --config WORKDIR/config.json --keys"]
    try:
        config_path, _ = split_config_arg(argv)
        if config_path is not None:
            config = load(config_path)
            out += ["", f"keys of {config_path}:"] + [f"  {line}" for line in key_lines(config)]
    except InputError as e:
        out += ["", f"(keys not listed: {e})"]
    return "\n".join(out)


def _required(fv) -> set:
    """Names of the flags marked required (absl keeps the mark as a validator with this message)."""
    return {flag.name for flag in fv._flags().values()
            for v in flag.validators if "must have a value other than None" in str(getattr(v, "message", ""))}


def check_output_dir(path: str, flag: str = "--workdir") -> None:
    """InputError (naming `flag` and `path`) when the local folder `path` cannot be created or written: it is a
    regular file, one of its parents is a file, or the nearest existing folder is not writable. URLs (gs://...)
    are checked only for their file system being installed (`files.check_filesystem`: gs:// needs gcsfs)."""
    from jaxdiff.io import files
    if not path or not files.is_local(path):
        files.check_filesystem(path, flag)
        return
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise InputError(f"{flag} {path}: is a file, not a folder")
    existing = full
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable")


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
