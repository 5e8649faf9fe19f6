"""Model registry: `build(config.model)` turns a config block into a Flax module.

A config block `model = dict(name="unet", base_channels=64, ...)` builds `REGISTRY["unet"](base_channels=64,
...)`: every key other than `name` must be a field of the module, so a misspelt key is an error naming it.
Model files register themselves with `@register("name")` and know nothing of training.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from jaxdiff.errors import InputError

REGISTRY: dict = {}

# Model files are imported lazily by `build` (every module and subpackage of jaxdiff.models, found by name), so
# that `import jaxdiff.models` stays cheap and a new model file registers itself by existing.
_SKIP = ("layers",)


def register(name: str):
    """Class decorator adding a Flax module to the registry under `name`."""

    def wrap(cls):
        REGISTRY[name] = cls
        return cls

    return wrap


def _load_all():
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"jaxdiff.models.{info.name}")


def build(model_config):
    """Build the Flax module named by `model_config.name` with the other keys as fields.

    Raises InputError naming `model.name` or `model.<key>` when the name or a key is unknown.
    """
    _load_all()
    cfg = dict(model_config)
    name = cfg.pop("name", None)
    if name not in REGISTRY:
        raise InputError(f"config key model.name: unknown model {name!r}; known: {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    for key in cfg:
        if key not in fields:
            raise InputError(f"config key model.{key}: not a field of {cls.__name__} ({name})")
    return cls(**cfg)
