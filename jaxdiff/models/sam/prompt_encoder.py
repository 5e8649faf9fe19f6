"""SAM prompt encoder: points, boxes and low-resolution masks -> sparse and dense prompt embeddings.

Coordinates are pixels (x, y) in the padded model input frame (image_size x image_size, the image resized so
its longest side is image_size, padded bottom/right). Point labels: 1 foreground, 0 background, -1 "not a
point" (padding). Positions are encoded with random Fourier features (`PositionEmbeddingRandom`), shared with
the dense image positional encoding used by the mask decoder. Names follow the official checkpoint.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models.layers import LayerNorm
from jaxdiff.models.sam.image_encoder import LN_EPS, gelu


class PositionEmbeddingRandom(nn.Module):
    """[sin, cos](2 pi (2 c - 1) @ G) of coordinates c in [0, 1]^2; G (2, num_feats) ~ N(0, scale^2)."""

    num_feats: int
    scale: float = 1.0

    @nn.compact
    def __call__(self, coords):
        """coords (..., 2) as (x, y) in [0, 1] -> (..., 2 * num_feats)."""
        g = self.param("positional_encoding_gaussian_matrix", nn.initializers.normal(self.scale), (2, self.num_feats))
        proj = 2.0 * jnp.pi * ((2.0 * coords - 1.0) @ g)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def grid_coords(size: int):
    """(size, size, 2) pixel-centre coordinates (x, y) of a square grid, normalised to [0, 1]."""
    c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    return jnp.stack(jnp.meshgrid(c, c, indexing="xy"), axis=-1)


class MaskDownscaling(nn.Module):
    """Mask prompt (B, 4g, 4g, 1) logits -> (B, g, g, dim): two stride-2 2x2 convs with LN + GELU, then 1x1."""

    dim: int
    mask_in_chans: int = 16

    @nn.compact
    def __call__(self, m):
        m = nn.Conv(self.mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID", name="conv1")(m)
        m = gelu(LayerNorm(epsilon=LN_EPS, name="ln1")(m))
        m = nn.Conv(self.mask_in_chans, (2, 2), strides=(2, 2), padding="VALID", name="conv2")(m)
        m = gelu(LayerNorm(epsilon=LN_EPS, name="ln2")(m))
        return nn.Conv(self.dim, (1, 1), name="conv3")(m)


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Attributes:
      dim: embedding width (the image embedding channels, 256).
      image_size: side of the padded model input in pixels (1024).
      grid: side of the image embedding grid (image_size / patch_size, 64).
      mask_in_chans: hidden channels of the mask-prompt downscaler.
    """

    dim: int = 256
    image_size: int = 1024
    grid: int = 64
    mask_in_chans: int = 16

    def setup(self):
        init = nn.initializers.normal(1.0)
        self.pe_layer = PositionEmbeddingRandom(self.dim // 2)
        self.point_embeddings = [self.param(f"point_embeddings_{i}", init, (1, self.dim)) for i in range(4)]
        self.not_a_point_embed = self.param("not_a_point_embed", init, (1, self.dim))
        self.no_mask_embed = self.param("no_mask_embed", init, (1, self.dim))
        self.mask_downscaling = MaskDownscaling(self.dim, self.mask_in_chans)

    def dense_pe(self):
        """Positional encoding of the image embedding grid, (grid, grid, dim)."""
        return self.pe_layer(grid_coords(self.grid))

    def _encode_pixels(self, xy):
        """Pixel coordinates (..., 2), shifted to pixel centres -> (..., dim)."""
        return self.pe_layer((xy + 0.5) / self.image_size)

    def embed_points(self, points, labels, pad: bool):
        """points (B, N, 2) pixels, labels (B, N) (None: all 1) -> (B, N [+1], dim); `pad` appends a
        not-a-point token."""
        labels = jnp.ones(points.shape[:2], jnp.int32) if labels is None else labels
        if pad:
            points = jnp.concatenate([points, jnp.zeros_like(points[:, :1])], axis=1)
            labels = jnp.concatenate([labels, -jnp.ones_like(labels[:, :1])], axis=1)
        emb = self._encode_pixels(points.astype(jnp.float32))
        lab = labels[..., None]
        emb = jnp.where(lab == -1, self.not_a_point_embed, emb)
        return emb + jnp.where(lab == 0, self.point_embeddings[0], 0.0) \
            + jnp.where(lab == 1, self.point_embeddings[1], 0.0)

    def embed_boxes(self, boxes):
        """boxes (B, 4) as (x0, y0, x1, y1) pixels -> (B, 2, dim) corner tokens."""
        corners = self._encode_pixels(boxes.astype(jnp.float32).reshape(-1, 2, 2))
        return corners + jnp.concatenate([self.point_embeddings[2], self.point_embeddings[3]], axis=0)

    def __call__(self, points=None, labels=None, boxes=None, masks=None, batch_size: int = 1):
        """Sparse (B, T, dim) and dense (B, grid, grid, dim) prompt embeddings.

        Args:
          points: optional (B, N, 2) pixel (x, y) coordinates, with `labels` (B, N) int.
          boxes: optional (B, 4) pixel boxes (x0, y0, x1, y1).
          masks: optional (B, 4 grid, 4 grid, 1) mask logits (e.g. a previous low-resolution prediction).
          batch_size: B when no prompt gives it.
        Returns:
          T = N + 1 (a padding token) for points alone, N + 2 with a box, 2 for a box alone, 0 for neither.
        """
        sparse = []
        if points is not None:
            sparse.append(self.embed_points(points, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        b = next((s.shape[0] for s in sparse), masks.shape[0] if masks is not None else batch_size)
        sparse = jnp.concatenate(sparse, axis=1) if sparse else jnp.zeros((b, 0, self.dim), jnp.float32)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            if self.is_initializing():      # create the mask-prompt parameters even when no mask is given
                self.mask_downscaling(jnp.zeros((1, 4 * self.grid, 4 * self.grid, 1), jnp.float32))
            dense = jnp.broadcast_to(self.no_mask_embed.reshape(1, 1, 1, -1), (b, self.grid, self.grid, self.dim))
        return sparse, dense
