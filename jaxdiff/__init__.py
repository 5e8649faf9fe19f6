"""jaxdiff: medical-imaging diffusion and segmentation models in JAX/Flax.

Layout (see README): `models` (Flax modules), `diffusion` (schedules, losses, samplers), `tasks` (loss and
prediction per task), `training` (the shared sharded step, loop, checkpoints), `data` (grain pipelines),
`metrics`, `io`, `viz`. Command-line entry points: `python -m jaxdiff.{train,sample,evaluate,summary}`.
"""
__version__ = "0.1.0"
