"""Tasks: what a model is trained for (loss, prediction, metrics). `build(config)` picks one by `config.task`.

What a task can do beyond training is explicit: the capability protocols of `tasks.base` (`Samplable`, `Evaluable`,
`Predictable`, ...), checked on the config's task class before anything is built by `require(config, "evaluate")`.
"""
from __future__ import annotations

import importlib

from jaxdiff.errors import InputError

TASKS = {
    "generation": "jaxdiff.tasks.generation:GenerationTask",
    "segmentation_diffusion": "jaxdiff.tasks.segmentation_diffusion:SegmentationDiffusionTask",
    "segmentation": "jaxdiff.tasks.segmentation:SegmentationTask",
    "super_resolution": "jaxdiff.tasks.super_resolution:SuperResolutionTask",
    "classification": "jaxdiff.tasks.classification:ClassificationTask",
    "promptable_segmentation": "jaxdiff.tasks.promptable_segmentation:PromptableSegmentationTask",
}

# What each capability is for, in `require`'s error line.
_DOES = {"train": "train", "sample": "draw samples", "evaluate": "be evaluated", "predict": "predict",
         "generate": "generate images (a cascade's base stage)",
         "upscale": "upscale images (a cascade's super-resolution stage)"}


def task_class(name: str):
    """The task class registered as `name` (its module imported; nothing built); InputError naming config key
    `task` for an unknown name."""
    if name not in TASKS:
        raise InputError(f"config key task: unknown task {name!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _name(config_or_name) -> str:
    return str(config_or_name if isinstance(config_or_name, str) else config_or_name.get("task", ""))


def supports(config_or_name, capability: str) -> bool:
    """Whether the task of `config_or_name` (a config or a task name) has `capability`, one of
    `tasks.base.CAPABILITIES` ("train", "sample", "evaluate", "predict", "generate", "upscale")."""
    from jaxdiff.tasks.base import CAPABILITIES
    return issubclass(task_class(_name(config_or_name)), CAPABILITIES[capability])


def require(config_or_name, capability: str) -> None:
    """InputError (one line naming config key `task`) when the config's task lacks `capability`; nothing built."""
    name = _name(config_or_name)
    if not supports(name, capability):
        able = sorted(n for n in TASKS if supports(n, capability))
        raise InputError(f"config key task: task {name!r} cannot {_DOES[capability]}; the tasks that can: "
                         f"{', '.join(able) or 'none'}")


def build(config):
    """Instantiate the task named by `config.task` with the whole config."""
    return task_class(config.task)(config)
