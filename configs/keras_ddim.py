"""The keras.io DDIM example (residual U-Net, widths 32/64/96/128, block depth 2, 1,950,497
parameters at 1 channel) on built-in phantom T1 slices, 64x64, one channel.

Faithful to the example: continuous cosine-angle schedule (signal rates 0.95 .. 0.02, discretised at T = 1000
steps; the model embeds the noise variance sin^2(angle)), eps prediction with MAE loss, AdamW lr 1e-3 wd 1e-4
(constant, no clipping), batch 64, EMA 0.999, deterministic DDIM sampling (eta 0, 20 steps for images; the
example uses 5 for KID). Differences: one grey channel instead of the example's RGB flowers (or the toolkit's
Kaggle JPEGs; point data.source at an image folder for those), images in [-1, 1] instead of standardised to
zero mean / unit variance, integer timesteps t -> diffusion time (t + 1) / T instead of continuous times,
x0 not clipped during sampling (as in the example), EMA of the parameters only (Keras also averages the
BatchNorm statistics). Steps: the toolkit's 1000 epochs of 10 steps.

Run:   python -m jaxdiff.train --config configs/keras_ddim.py --workdir runs/keras_ddim
Check: python -m jaxdiff.summary --config configs/keras_ddim.py   (params: 1950497)
Cost:  a GPU/TPU config (10,000 steps at batch 64); see configs/keras_ddim_tiny.py for a CPU run.
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    num_timesteps = ml_collections.FieldReference(1000)   # the model converts t with the schedule's T
    c = config_defaults.get_config("data", "diffusion", "train", "mesh", "sample")
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="keras_ddim", out_channels=1, widths=(32, 64, 96, 128), block_depth=2, embedding_dims=32,
        embedding_min_frequency=1.0, embedding_max_frequency=1000.0, num_timesteps=num_timesteps,
        min_signal_rate=0.02, max_signal_rate=0.95))
    c.diffusion.update(dict(schedule="cosine_angle", loss="l1", sample_steps=20, clip_x0=0.0))
    c.diffusion.num_timesteps = num_timesteps
    c.data.update(dict(source="phantom", image_size=64, channels=1, modality="t1", num_cases=128, slices_per_case=8,
                       seed=0))
    c.train.update(dict(steps=10000, batch_size=64, lr=1e-3, lr_schedule="constant", weight_decay=1e-4, ema=0.999,
                        keep_checkpoints=2))
    c.sample.kid = True
    return c
