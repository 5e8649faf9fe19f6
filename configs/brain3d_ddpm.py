"""BrainDiffusion: 3D DDPM of T1 brain MRI on 128^3 patches with region FiLM conditioning.

UNet3D: base 64, mults (1, 2, 4, 8), 2 res blocks per level, multi-head attention at the two deepest levels
(query-chunked, `model.attention_chunk`), dropout 0.1, time dim 256 (GELU MLP), GN(8), region-label embedding
(8 octant labels + null) added to the time embedding and applied by every ResBlock's scale-shift FiLM, gradient
checkpointing of ResBlocks and attention, bf16 compute. 168,090,689 parameters (168,088,385 of the unconditional
BrainDiffusion UNet + 9 x 256 label embedding). Diffusion: T = 1000, linear betas 1e-4..0.02, MSE on noise,
label dropped with p = 0.1 (classifier-free guidance), DDIM 50 steps (eta 0) with guidance 3.0.

Data: built-in phantom T1 volumes (healthy, no tumours) resampled to 160 x 160 x 144 (1.2 mm); for IXI add
  --config.data.source=ixi --config.data.root=/data/IXI-T1 --config.data.image_size="(160,192,160)"
Run:    python -m jaxdiff.train --config configs/brain3d_ddpm.py --workdir runs/brain3d
Sample: python -m jaxdiff.sample --workdir runs/brain3d --num 8      (one patch per brain region, guided)
Memory: python -m jaxdiff.summary --config configs/brain3d_ddpm.py --memory   (see README: compiled train-step
        peak with and without remat at 64^3 and 128^3; a GPU is needed to train this at a useful speed)
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "diffusion", "train", "mesh", "sample")
    c.task = "generation"
    c.model = ml_collections.ConfigDict(dict(
        name="unet", out_channels=1, base_channels=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2,
        attention_levels=(2, 3), num_heads=4, head_channels=64, dropout=0.1, time_dim=256, time_act="gelu",
        groups=8, num_classes=8, remat=("res", "attn"), attention_chunk=1024, dims=3))
    c.diffusion.update(dict(schedule="linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            guidance_scale=3.0))
    # spacing (mm) and clip_percentiles are read by the IXI source only (data.source=ixi, data.root=folder)
    c.data.update(dict(source="phantom3d", dims=3, image_size=(160, 160, 144), patch_size=128, channels=1,
                       modality="t1", tumour_fraction=0.0, num_cases=64, seed=0, spacing=1.0,
                       clip_percentiles=(0.5, 99.5)))
    c.train.update(dict(steps=100_000, batch_size=1, lr=1e-4, warmup_steps=1000, final_lr_fraction=0.1,
                        grad_clip=1.0, ema=0.9999, precision="bf16", log_every=100, ckpt_every=2000,
                        keep_checkpoints=2))
    c.sample.num = 8
    return c
