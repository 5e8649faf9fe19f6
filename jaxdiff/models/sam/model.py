"""Segment Anything (SAM): image encoder + prompt encoder + mask decoder, and its pre/post-processing.

The image embedding is computed once per image (`embed_image`, the expensive ViT) and reused for any number
of prompts (`decode`, a few milliseconds). `jitted_fns(model)` returns both as separately jitted pure
functions. Pre-processing (`preprocess`, NumPy/PIL, outside jit): resize the longest side to `image_size`,
normalise with the ImageNet pixel mean/std (0-255 scale), pad bottom/right to a square. Post-processing
(`postprocess_masks`, jitted): bilinear upscale of the low-resolution logits to the padded input, crop the
padding, bilinear resize to the original image; a mask is logits > 0.

Channels-last throughout: images (B, S, S, 3), embeddings (B, g, g, C), masks (B, H, W, K).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from jaxdiff.models import register
from jaxdiff.models.sam.image_encoder import ImageEncoderViT
from jaxdiff.models.sam.mask_decoder import MaskDecoder
from jaxdiff.models.sam.prompt_encoder import PromptEncoder

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


@register("sam")
class Sam(nn.Module):
    """SAM with every size configurable; the defaults are ViT-B/16 (sam_vit_b, facebook/sam-vit-base).

    Attributes:
      image_size, patch_size: padded input side (1024) and patch size (16); the embedding grid is their ratio.
      encoder_dim, encoder_depth, encoder_heads, mlp_ratio: the ViT (768, 12, 12, 4).
      window_size, global_attn_indexes: windowed attention side (14) and the blocks with global attention.
      prompt_dim: image-embedding / prompt / decoder width (256).
      mask_in_chans: hidden channels of the mask-prompt downscaler (16).
      decoder_depth, decoder_heads, decoder_mlp_dim: the two-way transformer (2, 8, 2048).
      num_multimask_outputs, iou_head_depth, iou_head_hidden_dim: decoder heads (3, 3, 256).
      decoder_ln_eps: LayerNorm eps in the two-way blocks (1e-5 official; Hugging Face's port uses 1e-6).
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: Sequence[int] = (2, 5, 8, 11)
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_ln_eps: float = 1e-5

    def setup(self):
        grid = self.image_size // self.patch_size
        self.image_encoder = ImageEncoderViT(self.image_size, self.patch_size, self.encoder_dim, self.encoder_depth,
                                             self.encoder_heads, self.mlp_ratio, self.window_size,
                                             tuple(self.global_attn_indexes), self.prompt_dim)
        self.prompt_encoder = PromptEncoder(self.prompt_dim, self.image_size, grid, self.mask_in_chans)
        self.mask_decoder = MaskDecoder(self.prompt_dim, self.num_multimask_outputs, self.decoder_heads,
                                        self.decoder_mlp_dim, self.decoder_depth, self.iou_head_depth,
                                        self.iou_head_hidden_dim, self.decoder_ln_eps)

    def embed_image(self, images):
        """Normalised padded images (B, S, S, 3) -> image embeddings (B, g, g, prompt_dim)."""
        return self.image_encoder(images)

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask_output=True):
        """Masks for prompts on precomputed embeddings.

        Args:
          embeddings: (B, g, g, C) from `embed_image`.
          points, labels: optional (B, N, 2) pixel (x, y) in the padded input frame and (B, N) labels
            (1 foreground, 0 background, -1 padding).
          boxes: optional (B, 4) pixel boxes (x0, y0, x1, y1).
          mask_input: optional (B, 4g, 4g, 1) low-resolution mask logits.
          multimask_output: three ambiguity masks (True) or the single-mask output.
        Returns:
          (low-resolution mask logits (B, 4g, 4g, K), predicted IoU (B, K)), K = 3 or 1.
        """
        sparse, dense = self.prompt_encoder(points, labels, boxes, mask_input, batch_size=embeddings.shape[0])
        return self.mask_decoder(embeddings, self.prompt_encoder.dense_pe(), sparse, dense, multimask_output)

    def __call__(self, images, points=None, labels=None, boxes=None, mask_input=None, *,
                 multimask_output: bool = True, train: bool = False):
        """`decode(embed_image(images), ...)`; `train` is accepted for the shared interface (no dropout)."""
        return self.decode(self.embed_image(images), points, labels, boxes, mask_input, multimask_output)


def jitted_fns(model: Sam):
    """(embed, prompt): jitted `embed(variables, images) -> embeddings` and
    `prompt(variables, embeddings, points, labels, boxes, mask_input=None, multimask_output=True)
    -> (low_res, iou)` (see `Sam.decode`; points/labels/boxes may be None). Each compiles once per input
    shape; embed runs once per image, prompt once per prompt. Equal model configurations share the same
    functions and so their compilations."""
    return _jitted_fns(model.clone(global_attn_indexes=tuple(model.global_attn_indexes)))


@functools.lru_cache(maxsize=8)
def _jitted_fns(model: Sam):
    embed = jax.jit(lambda variables, images: model.apply(variables, images, method=Sam.embed_image))

    @functools.partial(jax.jit, static_argnames=("multimask_output",))
    def prompt(variables, embeddings, points, labels, boxes, mask_input=None, multimask_output=True):
        return model.apply(variables, embeddings, points, labels, boxes, mask_input,
                           multimask_output=multimask_output, method=Sam.decode)

    return embed, prompt


def resized_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """(h, w) of an image whose longest side is scaled to `image_size` (rounded half up, as SAM)."""
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image, image_size: int = 1024):
    """A (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 image -> (normalised (S, S, 3) float32, (h, w) resized).

    Grey images are repeated to RGB and alpha dropped; the resized (h, w) image sits top-left, zero-padded.
    """
    from PIL import Image
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
    h, w = resized_shape(img.shape[0], img.shape[1], image_size)
    img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32)
    out = np.zeros((image_size, image_size, 3), np.float32)
    out[:h, :w] = (img - PIXEL_MEAN) / PIXEL_STD
    return out, (h, w)


def to_input_coords(xy, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (..., 2) as (x, y) in the original (H, W) image -> the resized model input frame."""
    xy = np.asarray(xy, np.float32)
    return xy * np.array([resized[1] / original[1], resized[0] / original[0]], np.float32)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def postprocess_masks(low_res, resized: tuple, original: tuple, image_size: int):
    """Low-resolution logits (B, 4g, 4g, K) -> logits (B, H, W, K) on the original image.

    Bilinear (half-pixel, no antialiasing, as torch `interpolate(align_corners=False)`) to (S, S), crop the
    resized (h, w) region, bilinear to the original (H, W). Threshold at 0 for binary masks.
    """
    b, _, _, k = low_res.shape
    up = jax.image.resize(low_res, (b, image_size, image_size, k), "linear", antialias=False)
    up = up[:, :resized[0], :resized[1]]
    return jax.image.resize(up, (b, *original, k), "linear", antialias=False)
