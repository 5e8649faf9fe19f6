"""SAM mask decoder: a two-way transformer between prompt tokens and image embeddings, then mask and IoU heads.

`MaskDecoder` takes image embeddings (B, g, g, C), their positional encoding (g, g, C) and the prompt
embeddings, and returns mask logits at 4x the embedding resolution (B, 4g, 4g, K) with one predicted IoU per
mask (B, K): K = 3 with multimask output (the ambiguity-aware masks), else the single-mask token.
Names follow the official checkpoint (`mask_decoder.transformer.layers.0.self_attn.q_proj` ->
`transformer/layers_0/self_attn/q_proj`). LayerNorm eps inside the two-way transformer blocks is
`ln_eps`: 1e-5 in the official model (torch's default), 1e-6 in Hugging Face's port.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import LayerNorm, PatchConvTranspose
from jaxdiff.models.sam.image_encoder import LN_EPS, MLPBlock, gelu


class Attention(nn.Module):
    """Multi-head attention whose q/k/v are projected to dim / downsample_rate channels.

    q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C).
    """

    num_heads: int
    downsample_rate: int = 1

    @nn.compact
    def __call__(self, q, k, v):
        c = q.shape[-1]
        inner = c // self.downsample_rate
        hd = inner // self.num_heads

        def heads(x, name):
            return nn.Dense(inner, name=name)(x).reshape(*x.shape[:-1], self.num_heads, hd)

        q, k, v = heads(q, "q_proj"), heads(k, "k_proj"), heads(v, "v_proj")
        logits = jnp.einsum("bqnc,bknc->bnqk", q, k) * hd ** -0.5
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqk,bknc->bqnc", probs, v).reshape(*q.shape[:2], inner)
        return nn.Dense(c, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention.

    queries (B, T, C), keys (B, HW, C) and their positional encodings -> (queries, keys), same shapes.
    The first block's self-attention uses no positional encoding (`skip_first_layer_pe`).
    """

    num_heads: int
    mlp_dim: int
    downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    ln_eps: float = 1e-5

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe):
        def norm(name):
            return LayerNorm(epsilon=self.ln_eps, name=name)

        if self.skip_first_layer_pe:
            queries = Attention(self.num_heads, name="self_attn")(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + Attention(self.num_heads, name="self_attn")(q, q, queries)
        queries = norm("norm1")(queries)
        queries = queries + Attention(self.num_heads, self.downsample_rate, name="cross_attn_token_to_image")(
            queries + query_pe, keys + key_pe, keys)
        queries = norm("norm2")(queries)
        queries = norm("norm3")(queries + MLPBlock(self.mlp_dim, act="relu", name="mlp")(queries))
        keys = keys + Attention(self.num_heads, self.downsample_rate, name="cross_attn_image_to_token")(
            keys + key_pe, queries + query_pe, queries)
        return queries, norm("norm4")(keys)


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks then a final token->image attention.

    tokens (B, T, C), image (B, g, g, C), image_pe (g, g, C) -> (tokens (B, T, C), image tokens (B, g*g, C)).
    """

    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    downsample_rate: int = 2
    ln_eps: float = 1e-5

    @nn.compact
    def __call__(self, tokens, image, image_pe):
        b, c = image.shape[0], image.shape[-1]
        keys = image.reshape(b, -1, c)
        key_pe = jnp.broadcast_to(image_pe.reshape(1, -1, c), keys.shape)
        queries = tokens
        for i in range(self.depth):
            queries, keys = TwoWayAttentionBlock(self.num_heads, self.mlp_dim, self.downsample_rate, i == 0,
                                                 self.ln_eps, name=f"layers_{i}")(queries, keys, tokens, key_pe)
        attn = Attention(self.num_heads, self.downsample_rate, name="final_attn_token_to_image")
        queries = queries + attn(queries + tokens, keys + key_pe, keys)
        return LayerNorm(epsilon=1e-5, name="norm_final_attn")(queries), keys


class MLP(nn.Module):
    """`num_layers` Dense layers with ReLU between: (..., C_in) -> (..., out_dim)."""

    hidden_dim: int
    out_dim: int
    num_layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = nn.Dense(self.out_dim if last else self.hidden_dim, name=f"layers_{i}")(x)
            x = x if last else nn.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from image and prompt embeddings.

    Attributes:
      dim: transformer width C (256).
      num_multimask_outputs: ambiguity masks (3); there are num_multimask_outputs + 1 mask tokens.
      num_heads, mlp_dim, depth: the two-way transformer (8, 2048, 2).
      iou_head_depth, iou_head_hidden_dim: the IoU-prediction MLP (3, 256).
      ln_eps: LayerNorm eps of the two-way blocks (see the module docstring).
    """

    dim: int = 256
    num_multimask_outputs: int = 3
    num_heads: int = 8
    mlp_dim: int = 2048
    depth: int = 2
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    ln_eps: float = 1e-5

    @nn.compact
    def __call__(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool = True):
        """image_embeddings (B, g, g, C), image_pe (g, g, C), sparse (B, T, C), dense (B, g, g, C) ->
        (mask logits (B, 4g, 4g, K), iou (B, K)), K = num_multimask_outputs or 1."""
        n_masks = self.num_multimask_outputs + 1
        init = nn.initializers.normal(1.0)
        out_tokens = jnp.concatenate([self.param("iou_token", init, (1, self.dim)),
                                      self.param("mask_tokens", init, (n_masks, self.dim))], axis=0)
        b, g = image_embeddings.shape[0], image_embeddings.shape[1]
        tokens = jnp.concatenate([jnp.broadcast_to(out_tokens, (b, *out_tokens.shape)), sparse], axis=1)
        tokens, keys = TwoWayTransformer(self.depth, self.num_heads, self.mlp_dim, ln_eps=self.ln_eps,
                                         name="transformer")(tokens, image_embeddings + dense, image_pe)
        up = PatchConvTranspose(self.dim // 4, name="upscale_conv1")(
            keys.reshape(b, g, g, self.dim))
        up = gelu(LayerNorm(epsilon=LN_EPS, name="upscale_ln")(up))
        up = gelu(PatchConvTranspose(self.dim // 8, name="upscale_conv2")(up))
        hyper = jnp.stack([MLP(self.dim, self.dim // 8, 3, name=f"output_hypernetworks_mlps_{i}")(tokens[:, 1 + i])
                           for i in range(n_masks)], axis=-1)                          # (B, C/8, n_masks)
        masks = jnp.einsum("bhwc,bcm->bhwm", up, hyper)
        iou = MLP(self.iou_head_hidden_dim, n_masks, self.iou_head_depth, name="iou_prediction_head")(tokens[:, 0])
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[..., keep], iou[:, keep]
