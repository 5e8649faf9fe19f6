"""Generated vs real images or volumes: KID on 2D image features, and the 3D report's feature and pixel MMD and
MS-SSIM diversity."""
from __future__ import annotations

from jaxdiff.evaluators import features3d
from jaxdiff.metrics import distribution, image_quality

VOLUME_KEYS = ("feature_mmd_random_conv3d", "pixel_mmd", "ms_ssim_generated", "ms_ssim_real")


def kid(extractor, real, generated) -> dict:
    """KID (Bińkowski et al. 2018, as the Keras DDIM example reports it) of generated (M, H, W, C) vs real
    (N, H, W, C) images in [-1, 1] on the features of `extractor` (`jaxdiff.evaluators.features`).

    Returns {"kid": mean, "kid_std": std over subsets, "kid_features": the extractor's description line}."""
    value, std = distribution.kid(extractor(real), extractor(generated))
    return {"kid": value, "kid_std": std, "kid_features": extractor.description}


def volume_metrics(samples, ref) -> dict:
    """Generated `samples` vs real `ref` volumes (N, X, Y, Z, C) in [-1, 1]: squared MMD on the features of the
    default 3D encoder (`features3d`: a fixed random 3D CNN, not a trained encoder) and on 8x8x8 block means, and
    the mean pairwise MS-SSIM within each set (diversity: lower is more varied). Keys `VOLUME_KEYS`; all None
    below 2 volumes in a set."""
    if len(samples) < 2 or len(ref) < 2:
        return dict.fromkeys(VOLUME_KEYS)
    return {"feature_mmd_random_conv3d": features3d.distance(ref, samples, kind="mmd"),
            "pixel_mmd": distribution.mmd_rbf(distribution.block_means(samples), distribution.block_means(ref)),
            "ms_ssim_generated": image_quality.pairwise_ms_ssim(samples),
            "ms_ssim_real": image_quality.pairwise_ms_ssim(ref)}
