"""MedSegDiff as the LGG kaggle_3m notebook builds it: `Unet(image_size=32, num_layers=2, first_conv_channels=16,
time_embedding_dim=128)`, 405,041 parameters; T = 100 cosine schedule, MSE on the noise, Adam 2e-4, batch 16,
ancestral sampling.

The notebook's FF-Parser (a real (C, H, W) weight on fft2) and fusion LN(x)*LN(img)*LN(img) are its architecture
and are kept here (`model.faithful_ffparser`, `model.faithful_fusion`); its time-embedding bug
(t * [sin f, cos f] instead of [sin(t f), cos(t f)]) is fixed unless `--config.model.faithful_time_embedding=True`.
The notebook trained on LGG kaggle_3m (3-channel 32x32 images, its stratified 3,536 / 393 slice split); the
built-in phantom stands in with T1, FLAIR and T1ce channels; point it at LGG with
  --config.data.source=lgg --config.data.root=/path/to/kaggle_3m --config.data.split=lgg_3536_393
The notebook used ReduceLROnPlateau(0.5, patience 3) on the validation loss; here the schedule is constant.

Run:   python -m jaxdiff.train --config configs/medsegdiff_lgg.py --workdir runs/medsegdiff_lgg
Check: python -m jaxdiff.summary --config configs/medsegdiff_lgg.py        (params: 405041)
"""
import ml_collections

from jaxdiff import config_defaults


def get_config():
    c = config_defaults.get_config("data", "diffusion", "train", "mesh", "eval")
    c.seed = 42
    c.task = "segmentation_diffusion"
    c.model = ml_collections.ConfigDict(dict(
        name="medsegdiff", image_size=32, image_channels=3, mask_channels=1, first_conv_channels=16, num_layers=2,
        time_embedding_dim=128, faithful_ffparser=True, faithful_fusion=True, faithful_time_embedding=False))
    c.diffusion.update(dict(schedule="cosine", num_timesteps=100, sampler="ddpm", sample_steps=100, eta=1.0,
                            ensemble=1))
    c.data.update(dict(source="phantom", image_size=32, channels=3, modality="t1,flair,t1ce", num_cases=200,
                       slices_per_case=8, seed=42))
    c.train.update(dict(steps=50 * 221, batch_size=16, lr=2e-4, lr_schedule="constant", optimizer="adam"))
    c.eval.update(dict(num_examples=128, batch_size=32))
    return c
