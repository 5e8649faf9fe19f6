"""Seed S0 segmenter (TransformerUNet) and its error-map VAE: exact parameter counts and multiply-adds of the
full model (abstractly, never allocated), narrow-variant shapes, Dropout2d, BatchNorm statistics, the
transformer layer against PyTorch's formulas, the 2-D and the seed's (faithful) positional encodings."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import kernels, models
from jaxdiff.models.layers import PatchConvTranspose
from jaxdiff.errors import InputError
from jaxdiff.models.transformer_unet import (ConvBlock, ErrorVAE, TransformerBottleneck, TransformerEncoderLayer,
                                             TransformerUNet, batch_indexed_pe, sincos_2d)

KEY = jax.random.key(0)
NARROW = dict(widths=(8, 16, 16, 32, 32), num_heads=2, ff_dim=32)


def count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def normal(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def random_variables(module, *args, seed=0):
    """Variables of `module` without compiling its initialisers (slow on CPU): random kernels scaled by
    1/sqrt(fan-in), random biases and norm scales, BatchNorm statistics at their initial 0 / 1."""
    rng = np.random.default_rng(seed)
    fill = dict(kernel=lambda s: rng.normal(size=s) / np.sqrt(np.prod(s[:-1])), bias=lambda s: 0.1 * rng.normal(size=s),
                scale=lambda s: 1 + 0.1 * rng.normal(size=s), mean=np.zeros, var=np.ones)
    abstract = jax.eval_shape(lambda *a: module.init({"params": KEY, "dropout": KEY}, *a), *args)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.asarray(fill[path[-1].key](a.shape), a.dtype), abstract)


def jitted(module, **kwargs):
    """jit of `module.apply(variables, *args, rngs=rngs, **kwargs)` as f(variables, *args, rngs=None)."""
    return jax.jit(lambda variables, *args, rngs=None: module.apply(variables, *args, rngs=rngs, **kwargs))


@pytest.fixture(scope="module")
def full():
    """The seed-size model and its abstract variables at 240x240 (shapes only)."""
    model = TransformerUNet()
    x = jax.ShapeDtypeStruct((1, 240, 240, 1), jnp.float32)
    return model, x, jax.eval_shape(lambda x: model.init(KEY, x), x)


@pytest.fixture(scope="module")
def narrow():
    model = TransformerUNet(**NARROW)
    x = normal((2, 48, 48, 1))
    return model, x, random_variables(model, x)


# --- the full model: parameters and multiply-adds (SPECS S0) --------------------------------------------------
def test_full_parameter_counts(full):
    _, _, variables = full
    p = variables["params"]
    assert count(p) == 49_455_873
    expected = dict(enc1=38_464, enc2=232_320, enc3=927_488, enc4=3_706_368, enc5=14_818_304, up1=9_736_192,
                    up2=2_435_072, up3=609_280, up4=152_576, final=65)
    assert {k: count(p[k]) for k in expected} == expected
    assert set(p["bottleneck"]) == {"layer1", "layer2"}
    assert [count(p["bottleneck"][k]) for k in ("layer1", "layer2")] == [8_399_872, 8_399_872]
    assert count(p["up1"]["upconv"]) == 2_097_664 and count(p["up1"]["block"]) == 7_638_528
    # BatchNorm statistics are not trainable parameters: two BN layers (mean and var of C) per ConvBlock.
    assert count(variables["batch_stats"]) == 2 * 2 * (sum((64, 128, 256, 512, 1024)) + sum((512, 256, 128, 64)))


def _captured(model, x, variables, types):
    """Abstract outputs of every submodule of the given types, keyed by module path."""
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=lambda m, _: isinstance(m, types),
                                                      mutable=["intermediates"]), variables, x)
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    return {tuple(k.key for k in path[:-2]): out for path, out in flat}  # path ends in ('__call__', 0)


def _params_at(params, path):
    for k in path:
        params = params[k]
    return params


def test_multiply_adds_match_specs(full):
    """SPECS' 52.23 G is torchinfo's count: (weights + bias) x output positions for every Conv, ConvTranspose and
    Linear; the attention projections (DenseGeneral here, F.multi_head_attention_forward there) not counted."""
    model, x, variables = full
    outs = _captured(model, x, variables, (nn.Conv, nn.ConvTranspose, PatchConvTranspose, nn.Dense))
    macs = sum(count(_params_at(variables["params"], path)) * math.prod(out.shape[:-1]) for path, out in outs.items())
    print(f"\nS0 multiply-adds, torchinfo convention: {macs / 1e9:.4f} G (SPECS: 52.23 G)")
    assert abs(macs / 1e9 - 52.23) < 0.01 * 52.23


def test_compiled_flops_match_true_multiply_adds(full):
    """XLA's flop count of the compiled forward pass / 2 against the true multiply-adds (kernel taps x output
    positions, transposed convs at input resolution, plus QK^T and AV); XLA skips the taps on SAME padding."""
    model, x, variables = full
    outs = _captured(model, x, variables, (nn.Conv, nn.ConvTranspose, nn.Dense, nn.DenseGeneral))
    true = 0
    for path, out in outs.items():
        kernel = _params_at(variables["params"], path)["kernel"]
        feature_dims = 2 if path[-1] in ("query", "key", "value") else 1  # (B, N, heads, head_dim) outputs
        positions = math.prod(out.shape[:-feature_dims]) // (4 if path[-1] == "upconv" else 1)  # k2 s2 ConvT
        true += kernel.size * positions
    tokens, d = 15 * 15, 1024
    true += 2 * 2 * tokens * tokens * d  # two layers of QK^T and AV
    with kernels.disabled():  # XLA counts no FLOPs in the native convolution's custom calls
        lowered = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x)
    cost = lowered.compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"] / 2
    print(f"\nS0 true multiply-adds {true / 1e9:.3f} G, XLA flops/2 {xla / 1e9:.3f} G")
    assert abs(xla / true - 1) < 0.03


# --- the narrow variant: shapes, train mode, registry ---------------------------------------------------------
def test_narrow_forward_shapes_and_train_mode(narrow):
    model, x, variables = narrow
    evaluate = jitted(model, capture_intermediates=lambda m, _: isinstance(m, TransformerBottleneck),
                      mutable=["intermediates"])
    out, state = evaluate(variables, x)
    assert out.shape == (2, 48, 48, 1) and out.dtype == jnp.float32
    assert state["intermediates"]["bottleneck"]["__call__"][0].shape == (2, 3, 3, 32)  # 9 tokens of width 32
    train = jitted(model, train=True, mutable=["batch_stats"])
    train_out, updates = train(variables, x, rngs={"dropout": KEY})
    assert train_out.shape == out.shape and bool(jnp.all(jnp.isfinite(train_out)))
    assert jax.tree.structure(updates) == jax.tree.structure({"batch_stats": variables["batch_stats"]})
    assert not np.allclose(train_out, out)
    again = train(variables, x, rngs={"dropout": jax.random.key(1)})[0]
    assert not np.allclose(again, train_out)  # dropout masks follow the "dropout" rng
    np.testing.assert_array_equal(evaluate(variables, x)[0], out)  # eval is deterministic


def test_registry_and_bad_input():
    model = models.build(dict(name="transformer_unet", faithful_pe=True, **NARROW))
    assert isinstance(model, TransformerUNet) and model.faithful_pe
    assert isinstance(models.build(dict(name="vae_error_head", latent_channels=4)), ErrorVAE)
    with pytest.raises(InputError, match="divisible by 16"):
        jax.eval_shape(lambda x: model.init(KEY, x), jax.ShapeDtypeStruct((1, 40, 40, 1), jnp.float32))


def test_faithful_pe_changes_the_output_not_the_parameters(narrow):
    model, x, variables = narrow
    faithful = TransformerUNet(faithful_pe=True, **NARROW)
    abstract = jax.eval_shape(lambda x: faithful.init(KEY, x), x)
    assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, variables)
    assert not np.allclose(jitted(faithful)(variables, x), jitted(model)(variables, x))


# --- ConvBlock: Dropout2d and BatchNorm ----------------------------------------------------------------------
def test_dropout2d_zeroes_whole_channels():
    block = ConvBlock(16, channel_dropout=0.5)
    x = normal((4, 8, 8, 3))
    variables = random_variables(block, x)
    is_drop = lambda m, _: isinstance(m, nn.Dropout)  # noqa: E731
    _, state = jitted(block, train=True, capture_intermediates=is_drop, mutable=["batch_stats", "intermediates"])(
        variables, x, rngs={"dropout": KEY})
    h = np.asarray(state["intermediates"]["drop2d"]["__call__"][0])
    zero = (h == 0).reshape(4, 64, 16)
    dropped, kept = zero.all(axis=1), ~zero.any(axis=1)
    assert np.all(dropped | kept)  # every (sample, channel) map is entirely zero or entirely kept
    assert 0 < dropped.sum() < dropped.size
    assert len({tuple(row) for row in dropped}) > 1  # a mask per sample, not one for the batch
    _, state = jitted(block, capture_intermediates=is_drop, mutable=["intermediates"])(variables, x)
    assert np.all(np.asarray(state["intermediates"]["drop2d"]["__call__"][0]) != 0)  # no dropout in eval


def test_batchnorm_statistics_update_in_train_and_are_used_in_eval():
    block = ConvBlock(8, channel_dropout=0.0)
    x = 3.0 + 2.0 * normal((4, 6, 6, 3))
    variables = random_variables(block, x)
    is_conv1 = lambda m, _: m.name == "conv1"  # noqa: E731
    out, state = jitted(block, train=True, capture_intermediates=is_conv1, mutable=["batch_stats", "intermediates"])(
        variables, x)
    h = np.asarray(state["intermediates"]["conv1"]["__call__"][0]).reshape(-1, 8)
    stats = state["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)  # PyTorch momentum 0.1
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(0), rtol=1e-4)
    # Train mode normalises by the batch: a sample's output depends on the rest of the batch.
    alone = jitted(block, train=True, mutable=["batch_stats"])(variables, x[:1])[0]
    assert not np.allclose(alone, out[:1], atol=1e-4)
    # Eval mode normalises by the running statistics: batch-independent, and it changes with the statistics.
    updated = {**variables, "batch_stats": state["batch_stats"]}
    evaluate = jitted(block)
    ev = evaluate(updated, x)
    np.testing.assert_allclose(evaluate(updated, x[:1]), ev[:1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ev, evaluate(variables, x), atol=1e-3)


# --- transformer layer and positional encodings ---------------------------------------------------------------
def _layer_norm(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _reference_layer(x, p, heads):
    """PyTorch TransformerEncoderLayer(norm_first=True, gelu) in eval mode, in NumPy."""
    from scipy.special import erf

    a = p["self_attn"]
    h = _layer_norm(x, p["norm1"])
    q, k, v = (np.einsum("bnd,dhk->bhnk", h, a[n]["kernel"]) + a[n]["bias"][None, :, None] for n in
               ("query", "key", "value"))
    s = np.einsum("bhnk,bhmk->bhnm", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    o = np.einsum("bhnm,bhmk->bhnk", w / w.sum(-1, keepdims=True), v)
    x = x + np.einsum("bhnk,hkd->bnd", o, a["out"]["kernel"]) + a["out"]["bias"]
    f = _layer_norm(x, p["norm2"]) @ p["linear1"]["kernel"] + p["linear1"]["bias"]
    f = 0.5 * f * (1 + erf(f / np.sqrt(2)))  # exact GELU
    return x + f @ p["linear2"]["kernel"] + p["linear2"]["bias"]


def test_transformer_layer_matches_pytorch_formulas():
    layer = TransformerEncoderLayer(num_heads=2, ff_dim=24)
    x = normal((2, 5, 8))
    params = random_variables(layer, x)["params"]
    out = jitted(layer)({"params": params}, x)
    ref = _reference_layer(np.asarray(x, np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), params), 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    train = jitted(layer, train=True)({"params": params}, x, rngs={"dropout": KEY})
    assert not np.allclose(train, out)


def test_sincos_2d_values():
    h, w, d = 3, 4, 16
    pe = np.asarray(sincos_2d(h, w, d))
    freqs = 10000.0 ** (-np.arange(d // 4) / (d // 4))
    for r in range(h):
        for c in range(w):
            row, col = r * freqs, c * freqs
            np.testing.assert_allclose(pe[r * w + c], np.concatenate([np.sin(row), np.cos(row), np.sin(col),
                                                                      np.cos(col)]), atol=1e-6)


def test_batch_indexed_pe_is_the_pytorch_table():
    d = 8
    pe = np.asarray(batch_indexed_pe(3, d))
    table = np.zeros((3, d))
    position, div = np.arange(3)[:, None], np.exp(np.arange(0, d, 2) * (-math.log(10000.0) / d))
    table[:, 0::2], table[:, 1::2] = np.sin(position * div), np.cos(position * div)
    assert pe.shape == (3, 1, d)
    np.testing.assert_allclose(pe[:, 0], table, atol=1e-6)


def _bottleneck(faithful):
    module = TransformerBottleneck(num_layers=1, num_heads=2, ff_dim=16, dropout=0.0, faithful_pe=faithful)
    return jitted(module), random_variables(module, jnp.zeros((2, 3, 3, 16)))


def test_default_pe_gives_tokens_their_grid_position():
    module, variables = _bottleneck(False)
    const = jnp.broadcast_to(normal((16,)), (2, 3, 3, 16))  # nine identical tokens, two identical samples
    tokens = np.asarray(module(variables, const)).reshape(2, 9, 16)
    distance = np.abs(tokens[0][:, None] - tokens[0][None]).max(-1)
    assert np.all(distance[~np.eye(9, dtype=bool)] > 1e-3)  # every grid cell (row AND column) is told apart
    np.testing.assert_allclose(tokens[0], tokens[1], atol=1e-6)  # and the position is not the batch index


def test_faithful_pe_reproduces_the_batch_indexing_bug():
    module, variables = _bottleneck(True)
    const = jnp.broadcast_to(normal((16,)), (2, 3, 3, 16))
    tokens = np.asarray(module(variables, const)).reshape(2, 9, 16)
    np.testing.assert_allclose(np.broadcast_to(tokens[:, :1], tokens.shape), tokens, atol=1e-6)  # no positions
    assert np.abs(tokens[0] - tokens[1]).max() > 1e-3  # identical samples differ by batch index
    x = normal((2, 3, 3, 16))
    perm = np.random.default_rng(0).permutation(9)
    permuted = x.reshape(2, 9, 16)[:, perm].reshape(x.shape)
    out = module(variables, x).reshape(2, 9, 16)
    np.testing.assert_allclose(module(variables, permuted).reshape(2, 9, 16), out[:, perm], atol=1e-5)


# --- error-map VAE (stand-in architecture) ---------------------------------------------------------------------
def test_error_vae_shapes_and_sampling():
    vae = ErrorVAE()
    err = jnp.abs(normal((2, 32, 32, 1)))
    variables = random_variables(vae, err)
    recon, mu, logvar = jitted(vae)(variables, err)
    assert recon.shape == (2, 32, 32, 1) and mu.shape == logvar.shape == (2, 8, 8, 8)
    recon2, mu2, _ = jitted(vae, train=True)(variables, err, rngs={"sample": KEY})
    np.testing.assert_allclose(mu2, mu, rtol=1e-6)  # the encoder is deterministic
    assert not np.allclose(recon2, recon)  # train decodes a sample around mu, eval decodes mu
    with pytest.raises(InputError, match="divisible by 4"):
        jax.eval_shape(lambda x: vae.init(KEY, x), jax.ShapeDtypeStruct((1, 30, 30, 1), jnp.float32))
