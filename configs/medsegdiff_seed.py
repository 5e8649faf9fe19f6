"""Seed S1 exactly: MedSegDiff `Unet(image_size=32, num_layers=2, first_conv_channels=16, time_embedding_dim=128)`,
405,041 parameters; T = 100 cosine schedule, MSE on the noise, Adam 2e-4, batch 16, ancestral sampling.

The seed's FF-Parser (a real (C, H, W) weight on fft2) and fusion LN(x)*LN(img)*LN(img) are its architecture and
are kept here; its time-embedding bug (t * [sin f, cos f]) is fixed unless `--config.model.faithful_time_embedding=True`.
The seed trained on LGG kaggle_3m (3-channel 32x32 images); the built-in phantom stands in with T1, FLAIR and T1ce
channels; point it at LGG with --config.data.source=lgg --config.data.root=/path/to/kaggle_3m.
The seed used ReduceLROnPlateau(0.5, patience 3) on the validation loss; here the schedule is constant.

Run:   python -m jaxdiff.train --config configs/medsegdiff_seed.py --workdir runs/msd_seed
Check: python -m jaxdiff.summary --config configs/medsegdiff_seed.py        (params: 405041)
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.task = "segmentation_diffusion"
    c.model = ml_collections.ConfigDict(dict(
        name="medsegdiff", image_size=32, image_channels=3, mask_channels=1, first_conv_channels=16, num_layers=2,
        time_embedding_dim=128, faithful_ffparser=True, faithful_fusion=True, faithful_time_embedding=False))
    c.diffusion = ml_collections.ConfigDict(dict(
        schedule="cosine", num_timesteps=100, prediction="eps", loss="mse", min_snr_gamma=0.0, sampler="ddpm",
        sample_steps=100, eta=1.0, clip_x0=1.0, guidance_scale=0.0, ensemble=1, fusion="mean"))
    c.data = ml_collections.ConfigDict(dict(
        source="phantom", root="", image_size=32, channels=3, modality="t1,flair,t1ce", num_cases=200,
        slices_per_case=8, seed=42, num_workers=0))
    c.train = ml_collections.ConfigDict(dict(
        steps=50 * 221, batch_size=16, lr=2e-4, warmup_steps=0, lr_schedule="constant", optimizer="adam",
        grad_clip=0.0, ema=0.0, accum_steps=1, precision="fp32", log_every=50, ckpt_every=1000,
        keep_checkpoints=3, max_bad_steps=20))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.eval = ml_collections.ConfigDict(dict(num_examples=128, batch_size=32))
    return c
