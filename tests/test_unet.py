"""Shared blocks (jaxdiff.models.layers) and the diffusion UNet: shapes in 2D and 3D, exact parameter counts,
remat equivalence, global attention, class conditioning, dropout, registry, input validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models
from jaxdiff.errors import InputError
from jaxdiff.models.layers import (Attention, Downsample, FiLM, ResBlock, SEBlock, TimeEmbedding, Upsample,
                                   timestep_embedding)
from jaxdiff.models.unet import UNet

KEY = jax.random.key(0)
T = np.array([3, 70], np.int32)


def tiny(**kw):
    """A 2-level UNet small enough for CPU tests."""
    cfg = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
               groups=4, time_dim=16)
    return UNet(**{**cfg, **kw})


def mini(**kw):
    """A 1-level UNet (ResBlock, attention, middle, decoder): quickest to compile, for behaviour tests."""
    return tiny(**{"channel_mults": (1,), "attention_levels": (0,), **kw})


def count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def shapes_of(module, *args):
    """Variable shapes from `module.init(key, *args)`, traced but never compiled or allocated."""
    return jax.eval_shape(module.init, KEY, *args)


def shapes(model, x, cond=None):
    return shapes_of(model, x, T[: x.shape[0]], cond)


def random_variables(module, *args, seed=0, scale=0.2):
    """Gaussian-noise variables of the shapes `module.init(key, *args)` gives (zero-initialised output convs
    would hide any effect; drawn with NumPy so that no initialiser has to be compiled)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype),
                        jax.eval_shape(module.init, KEY, *args))


def random_params(model, x, cond=None, scale=0.2):
    return random_variables(model, x, T[: x.shape[0]], cond, scale=scale)


def run_block(module, *args):
    """(NumPy output, variables) of a block with random variables, compiled once."""
    v = random_variables(module, *args)
    return np.asarray(jax.jit(module.apply)(v, *args)), v


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def apply(model):
    return jax.jit(model.apply, static_argnames="train")


# --- parameter-count formula, written independently of the Flax code (guided-diffusion layout) ----------------
def conv_p(k, d, cin, cout):
    return k ** d * cin * cout + cout


def res_p(d, cin, cout, emb):
    skip = conv_p(1, d, cin, cout) if cin != cout else 0
    return 2 * cin + conv_p(3, d, cin, cout) + emb * 2 * cout + 2 * cout + 2 * cout + conv_p(3, d, cout, cout) + skip


def attn_p(c):
    return 2 * c + 3 * c * c + 3 * c + c * c + c


def unet_p(d, cin, cout, base, mults, nres, attn, time_dim, num_classes=0):
    total = base * time_dim + time_dim + time_dim * time_dim + time_dim          # time MLP
    total += (num_classes + 1) * time_dim if num_classes else 0                      # label table (+ null)
    ch = base * mults[0]
    total += conv_p(3, d, cin, ch)
    skips = [ch]
    for level, m in enumerate(mults):
        for _ in range(nres):
            total += res_p(d, ch, base * m, time_dim) + attn_p(base * m) * (level in attn)
            ch = base * m
            skips.append(ch)
        if level != len(mults) - 1:
            total += conv_p(3, d, ch, ch)
            skips.append(ch)
    total += 2 * res_p(d, ch, ch, time_dim) + attn_p(ch)
    for level, m in reversed(list(enumerate(mults))):
        for _ in range(nres + 1):
            total += res_p(d, ch + skips.pop(), base * m, time_dim) + attn_p(base * m) * (level in attn)
            ch = base * m
        if level:
            total += conv_p(3, d, ch, ch)
    return total + 2 * ch + conv_p(3, d, ch, cout)


def test_param_count_minimal_by_hand():
    # 1 level, 1 res block, attention at level 0, base 8, time dim 32, 1 -> 1 channel, 2D:
    time = (8 * 32 + 32) + (32 * 32 + 32)                                    # 1344
    conv_in = 9 * 1 * 8 + 8                                                  # 80
    res_8_8 = 2 * 8 + (9 * 8 * 8 + 8) + (32 * 16 + 16) + 2 * 8 + (9 * 8 * 8 + 8)  # 1728
    res_16_8 = 2 * 16 + (9 * 16 * 8 + 8) + (32 * 16 + 16) + 2 * 8 + (9 * 8 * 8 + 8) + (16 * 8 + 8)  # 2456
    attn = 2 * 8 + (8 * 24 + 24) + (8 * 8 + 8)                               # 304
    out = 2 * 8 + 9 * 8 * 1 + 1                                              # 89
    expected = time + conv_in + (res_8_8 + attn) + (2 * res_8_8 + attn) + 2 * (res_16_8 + attn) + out
    assert expected == 12825
    model = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_levels=(0,), groups=4, time_dim=32)
    assert count(shapes(model, np.zeros((1, 8, 8, 1), np.float32))) == expected
    assert unet_p(2, 1, 1, 8, (1,), 1, (0,), 32) == expected
    # 3D: every 3x3 kernel becomes 3x3x3 (18 more taps per in/out channel pair), 1x1 skips unchanged.
    conv_pairs = 1 * 8 + 2 * 8 * 8 + 4 * 8 * 8 + 2 * (16 * 8 + 8 * 8) + 8 * 1   # in, enc, mid, dec, out
    assert count(shapes(model, np.zeros((1, 4, 4, 4, 1), np.float32))) == expected + 18 * conv_pairs


def test_param_count_formula_multilevel_and_classes():
    model = tiny(channel_mults=(1, 2, 3), num_res_blocks=2, attention_levels=(0, 2), num_classes=5, out_channels=2)
    for shape, d in (((1, 8, 8, 3), 2), ((1, 4, 4, 4, 3), 3)):
        expected = unet_p(d, 3, 2, 8, (1, 2, 3), 2, (0, 2), 16, num_classes=5)
        assert count(shapes(model, np.zeros(shape, np.float32))) == expected


def test_param_count_braindiffusion_3d():
    """The S2 configuration (3D, base 64, mults 1,2,4,8, attention at levels 2,3), counted without allocating."""
    model = UNet(base_channels=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2, attention_levels=(2, 3),
                 time_dim=256)
    expected = unet_p(3, 1, 1, 64, (1, 2, 4, 8), 2, (2, 3), 256)
    assert count(shapes(model, np.zeros((1, 8, 8, 8, 1), np.float32))) == expected == 168_088_385


def test_output_is_zero_at_init():
    model, x = mini(), np.ones((1, 4, 4, 1), np.float32)
    y = jax.jit(lambda k: model.apply(model.init(k, x, T[:1]), x, T[:1]))(jax.random.key(0, impl="rbg"))
    np.testing.assert_array_equal(y, 0.0)


def test_forward_shapes_2d_and_3d_same_module():
    model = tiny(out_channels=None, learn_sigma=True)
    run = apply(model)
    for shape in ((2, 16, 16, 3), (2, 8, 8, 8, 3)):
        x = normal(*shape)
        v = random_params(model, x)
        assert v["params"]["conv_in"]["kernel"].shape == (3,) * (len(shape) - 2) + (3, 8)
        y = run(v, x, T)
        assert y.shape == shape[:-1] + (6,)
        assert np.all(np.isfinite(y)) and np.std(y) > 0


def test_remat_same_outputs_and_gradients():
    x = normal(2, 4, 4, 1)
    plain, remat = mini(dropout=0.3), mini(dropout=0.3, remat=True)
    v = random_params(plain, x)
    assert jax.tree.structure(v) == jax.tree.structure(shapes(remat, x))
    regions = [str(jax.make_jaxpr(lambda p, m=m: m.apply(p, x, T))(v)).count("remat") for m in (plain, remat)]
    assert regions == [0, 5 + 4]                             # 5 ResBlocks and 4 attention blocks recomputed

    def loss(model, params):
        y = model.apply({"params": params}, x, T, train=True, rngs={"dropout": jax.random.key(7)})
        return jnp.mean(y ** 2)

    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(v["params"]) for m in (plain, remat))
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g0))


@pytest.mark.parametrize("shape", [(1, 8, 8, 8), (1, 4, 4, 4, 8)])
def test_attention_is_global_and_matches_reference(shape):
    x = normal(*shape)
    block = Attention(num_heads=2, groups=4)
    v = random_variables(block, x, scale=0.3)
    f = jax.jit(block.apply)
    y = np.asarray(f(v, x))
    far = (0,) + (-1,) * (len(shape) - 2)
    x2 = x.copy()
    x2[(0,) + (0,) * (len(shape) - 2)] += 10.0               # perturb one corner pixel / voxel
    assert np.abs(np.asarray(f(v, x2))[far] - y[far]).max() > 1e-3
    # reference: softmax(q k^T / sqrt(head dim)) v over all positions, 2 heads of 4 channels
    p = jax.tree.map(np.asarray, v["params"])
    g = x.reshape(1, -1, 4, 2)
    h = ((g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5))
    h = h.reshape(1, -1, 8) * p["norm"]["scale"] + p["norm"]["bias"]
    q, k, w = np.split(h @ p["qkv"]["kernel"] + p["qkv"]["bias"], 3, axis=-1)
    heads = []
    for s in (slice(0, 4), slice(4, 8)):
        logits = q[..., s] @ k[..., s].swapaxes(1, 2) / 2.0
        a = np.exp(logits - logits.max(-1, keepdims=True))
        heads.append(a / a.sum(-1, keepdims=True) @ w[..., s])
    ref = np.concatenate(heads, -1) @ p["proj"]["kernel"] + p["proj"]["bias"]
    np.testing.assert_allclose(y, x + ref.reshape(shape), rtol=1e-4, atol=1e-4)


def test_class_conditioning_and_null_label():
    model = mini(num_classes=3)
    run = apply(model)
    x = normal(2, 4, 4, 1)
    v = random_params(model, x)
    assert v["params"]["label_embed"]["embedding"].shape == (4, 16)
    y0, y1, null = (run(v, x, T, {"label": np.array([c, c], np.int32)}) for c in (0, 1, 3))
    assert max_diff(y0, y1) > 1e-3 and max_diff(null, y0) > 1e-3
    np.testing.assert_allclose(run(v, x, T, None), null, rtol=1e-6)


def test_dropout_only_in_train():
    model = mini(dropout=0.5)
    x = normal(2, 4, 4, 1)
    v = random_params(model, x)
    f = apply(model)
    run = lambda seed, train: f(v, x, T, train=train, rngs={"dropout": jax.random.key(seed)})
    np.testing.assert_array_equal(run(1, False), run(2, False))
    assert max_diff(run(1, True), run(2, True)) > 1e-3
    np.testing.assert_array_equal(run(1, True), run(1, True))
    assert max_diff(run(1, True), run(1, False)) > 1e-3


def test_image_and_low_res_conditioning():
    model = mini(low_res_channels=1)
    x = normal(2, 4, 4, 1)
    cond = {"low_res": np.ones((2, 4, 4, 1), np.float32), "image": np.ones((2, 4, 4, 3), np.float32)}
    v = random_params(model, x, cond)
    assert v["params"]["conv_in"]["kernel"].shape == (3, 3, 5, 8)
    run = apply(model)
    y = run(v, x, T, cond)
    assert max_diff(y, run(v, x, T, {**cond, "low_res": -cond["low_res"]})) > 1e-3
    with pytest.raises(InputError, match="model.low_res_channels"):
        shapes(model, x, {"image": cond["image"]})
    with pytest.raises(InputError, match="model.low_res_channels"):
        shapes(model, x, {**cond, "low_res": np.ones((2, 2, 2, 1), np.float32)})
    with pytest.raises(InputError, match="image"):
        shapes(model, x, {**cond, "image": np.ones((2, 2, 2, 3), np.float32)})


def test_bad_inputs_raise():
    x = np.zeros((1, 8, 8, 1), np.float32)
    with pytest.raises(InputError, match="model.channel_mults"):
        shapes(tiny(), np.zeros((1, 9, 9, 1), np.float32))
    with pytest.raises(InputError, match="model.dims"):
        shapes(tiny(dims=3), x)
    with pytest.raises(InputError, match="model.attention_levels"):
        shapes(tiny(attention_levels=(2,)), x)
    with pytest.raises(InputError, match="model.groups"):
        shapes(tiny(groups=3), x)
    with pytest.raises(InputError, match="model.num_heads"):
        shapes(tiny(num_heads=3), x)
    with pytest.raises(InputError, match="model.time_act"):
        shapes(tiny(time_act="tanh"), x)
    assert count(shapes(tiny(time_act="gelu"), x)) == count(shapes(tiny(), x))


def test_registry_build():
    model = models.build({"name": "unet", "base_channels": 8, "channel_mults": (1, 2), "groups": 4,
                          "attention_levels": (1,), "dims": 3})
    assert isinstance(model, UNet) and model.base_channels == 8 and model.dims == 3
    x = np.zeros((1, 4, 4, 4, 1), np.float32)
    out = jax.eval_shape(lambda: model.apply(model.init(KEY, x, T[:1]), x, T[:1]))
    assert out.shape == (1, 4, 4, 4, 1)
    with pytest.raises(InputError, match="model.base_chanels"):
        models.build({"name": "unet", "base_chanels": 8})


def test_bf16_compute_stays_bf16():
    model = mini(num_classes=2)
    x = normal(1, 4, 4, 4, 1)
    v = random_params(model, x, scale=0.1)
    cond = {"label": np.array([1], np.int32)}
    run = apply(model)
    y = run(jax.tree.map(lambda a: np.asarray(a).astype(jnp.bfloat16), v), x.astype(jnp.bfloat16), T[:1], cond)
    assert y.dtype == jnp.bfloat16
    ref = run(v, x, T[:1], cond)
    assert max_diff(y, ref) < 0.1 * np.abs(np.asarray(ref)).max()


def test_blocks_any_rank():
    x = normal(2, 4, 6, 8, 16)
    assert run_block(Downsample(32), x)[0].shape == (2, 2, 3, 4, 32)
    pooled = run_block(Downsample(use_conv=False), x)[0]
    np.testing.assert_allclose(pooled[0, 0, 0, 0], x[0, :2, :2, :2].mean(axis=(0, 1, 2)), rtol=1e-5)
    up = run_block(Upsample(use_conv=False), x)[0]
    np.testing.assert_array_equal(up[:, ::2, ::2, ::2], x)
    np.testing.assert_array_equal(up[:, 1::2, 1::2, 1::2], x)
    assert run_block(Upsample(4), x)[0].shape == (2, 8, 12, 16, 4)
    # SE: 2 * C * C/r weights, output = x scaled per channel by a value in (0, 1)
    y, v = run_block(SEBlock(reduction=4), x)
    assert count(v) == 2 * 16 * 4
    ratio = y / x
    assert np.all((ratio > 0) & (ratio < 1))
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1, :1], ratio.shape), rtol=1e-4)


def test_resblock_variants_and_film():
    x, emb = normal(2, 8, 8, 8), normal(2, 12, seed=1)
    # guided-diffusion and lucidrains / MedSegDiff orderings
    for norm_first in (True, False):
        norm_in = 0 if norm_first else 2 * 16 - 2 * 8                      # conv first: both norms on 16 ch
        assert count(shapes_of(ResBlock(16, groups=4, norm_first=norm_first), x, emb)) == res_p(2, 8, 16, 12) + norm_in
    assert set(shapes_of(ResBlock(8, groups=4), x)["params"]) == {"conv_0", "conv_1", "norm_0", "norm_1"}
    add = shapes_of(ResBlock(8, groups=4, use_scale_shift_norm=False), x, emb)
    assert add["params"]["film"]["dense"]["kernel"].shape == (12, 8)
    film, fv = run_block(FiLM(8), x, emb)
    d = jax.tree.map(np.asarray, fv["params"]["dense"])
    scale, shift = np.split(emb @ d["kernel"] + d["bias"], 2, -1)
    np.testing.assert_allclose(film, x * (1 + scale[:, None, None]) + shift[:, None, None], rtol=1e-5, atol=1e-5)
    te, tv = run_block(TimeEmbedding(8), T)
    assert te.shape == (2, 32) and count(tv) == 8 * 32 + 32 + 32 * 32 + 32
    np.testing.assert_allclose(timestep_embedding(jnp.array([0]), 4), [[0.0, 0.0, 1.0, 1.0]])
