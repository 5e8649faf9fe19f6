"""Model-based measures: networks that turn images or volumes into features, and the evaluations built on them.

Modules are imported by name, e.g. `from jaxdiff.evaluators import features`:
  features          2D feature extractors (FID InceptionV3 from pytorch-fid's weights file, an in-project random
                    encoder) and the LPIPS-style perceptual distance on their feature maps
  features3d        a 3D random-conv encoder (or your own) and MMD / Fréchet distance between sets of volumes
  super_resolution  SR outputs vs interpolation baselines: scores, table, CSV and figure (`sr_report`)

The distances themselves (FID, KID, MMD, Inception Score on feature arrays) are plain functions in
`jaxdiff.metrics.distribution`; files are written by `jaxdiff.reporting`.
"""
