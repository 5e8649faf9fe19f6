"""PyTorch reference implementations of jaxdiff's models, written as PyTorch users write them (NCHW / NCDHW).

Each module has the same architecture as its jaxdiff counterpart, so `benchmarks.port` maps its weights 1:1
onto the Flax parameter tree, and a `from_jax_config(model_config)` constructor taking the keys of the
jaxdiff config's `model` block:

- `unet.UNet`: the diffusion UNet (jaxdiff.models.unet), 2D or 3D; also the 3D brain DDPM's UNet3D
  (the original code's crash fixed).
- `medsegdiff.MedSegDiff`: MedSegDiff, Wu et al. 2023 (jaxdiff.models.medsegdiff), with its faithful_* flags.
- `transformer_unet.TransformerUNet` and `transformer_unet.ErrorVAE`: the TransUNet-style BraTS
  segmenter (jaxdiff.models.transformer_unet).

`diffusion_loss` is the training loss of jaxdiff's diffusion tasks (eps prediction, MSE), in PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; alphas_cumprod (T,), x0 and noise (B, ...), t (B,) int64."""
    a = alphas_cumprod[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def diffusion_loss(model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   alphas_cumprod: torch.Tensor, cond: dict | None = None, prediction: str = "eps") -> torch.Tensor:
    """Scalar MSE between `model(q_sample(x0, t, noise), t, cond)` and its target: `noise` (jaxdiff's "eps" /
    "mse" loss) or, with prediction "v", v = sqrt(a_t) noise - sqrt(1 - a_t) x0.

    x0, noise: (B, C, *spatial); t: (B,) int64 indices into alphas_cumprod (T,) (float32 or float64).
    """
    x_t = q_sample(alphas_cumprod, x0, t, noise).to(x0.dtype)
    target = noise
    if prediction == "v":
        a = alphas_cumprod[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    elif prediction != "eps":
        raise ValueError(f"prediction {prediction!r} is not eps or v")
    return F.mse_loss(model(x_t, t, cond), target)


def count_params(module: torch.nn.Module) -> int:
    """Number of parameters of `module` (works on the "meta" device, which allocates nothing)."""
    return sum(p.numel() for p in module.parameters())
