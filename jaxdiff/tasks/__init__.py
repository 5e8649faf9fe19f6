"""Tasks: what a model is trained for (loss, prediction, metrics). `build(config)` picks one by `config.task`."""
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


def build(config):
    """Instantiate the task named by `config.task` with the whole config."""
    if config.task not in TASKS:
        raise InputError(f"config key task: unknown task {config.task!r}; known: {sorted(TASKS)}")
    module, cls = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module), cls)(config)
