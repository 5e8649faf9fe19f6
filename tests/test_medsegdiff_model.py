"""MedSegDiff denoiser and FF-Parser: seed parameter count, shapes, FF-Parser maths, faithful flags."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models
from jaxdiff.errors import InputError
from jaxdiff.models.ffparser import FFParser
from jaxdiff.models.layers import timestep_embedding
from jaxdiff.models.medsegdiff import seed_time_embedding, space_to_depth
from jaxdiff.tasks.base import cast_floating

SEED = dict(name="medsegdiff", image_size=32, num_layers=2, first_conv_channels=16, time_embedding_dim=128,
            image_channels=3, mask_channels=1)
PAPER = dict(name="medsegdiff", image_size=256, first_conv_channels=128, num_layers=6,
             channel_mults=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attention_resolutions=(16,), time_embedding_dim=512)
TINY = dict(name="medsegdiff", image_size=8, first_conv_channels=8, time_embedding_dim=16, num_res_blocks=1,
            attention_heads=2, attention_head_dim=4, resnet_groups=4, attention_resolutions=(4,))


def inputs(cfg, batch=2, seed=0):
    s = cfg["image_size"]
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (batch, s, s, cfg.get("mask_channels", 1)))
    image = jax.random.normal(k2, (batch, s, s, cfg.get("image_channels", 3)))
    return x, jnp.arange(batch, dtype=jnp.int32) * 7 + 3, {"image": image}


def abstract_params(cfg):
    model = models.build(cfg)
    return model, jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs(cfg, batch=1))["params"]


def n_params(cfg):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract_params(cfg)[1]))


def random_params(cfg, seed=0):
    """Model and cheap random parameters with init's shapes (avoids compiling the initialisers on CPU):
    kernels ~ N(0, 1/fan_in), biases small, norm gains 1, FF-Parser weights the identity."""
    model, shapes = abstract_params(cfg)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "ff_parser_attn_map"):
            return jnp.ones(leaf.shape)
        if name == "complex_weight":
            return jnp.stack([jnp.ones(leaf.shape[:-1]), jnp.zeros(leaf.shape[:-1])], -1)
        if name == "bias":
            return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), jnp.float32)

    return model, {"params": jax.tree_util.tree_map_with_path(fill, shapes)}


@pytest.fixture(scope="module")
def seed_run():
    """Seed-config model, random parameters, inputs, the jitted apply and its output."""
    cfg = {**SEED, "faithful_ffparser": True}
    model, variables = random_params(cfg)
    apply = jax.jit(model.apply)
    args = inputs(cfg)
    return variables, args, apply, apply(variables, *args)


@pytest.fixture(scope="module")
def tiny():
    model, variables = random_params(TINY)
    return variables, inputs(TINY), jax.jit(model.apply)(variables, *inputs(TINY))


# --- parameter counts ---------------------------------------------------------------------------------
def test_seed_param_count_exact():
    assert n_params({**SEED, "faithful_ffparser": True}) == 405_041
    # The paper's complex rfft2 weight: (H, W//2+1, C, 2) instead of (C, H, W) at 32x32x16 and 16x16x16.
    assert n_params(SEED) == 405_041 + (32 * 17 * 16 * 2 - 16 * 32 * 32) + (16 * 9 * 16 * 2 - 16 * 16 * 16)


def test_faithful_flags_keep_param_count():
    flags = dict(faithful_ffparser=True, faithful_fusion=True, faithful_time_embedding=True)
    assert n_params({**SEED, **flags}) == 405_041


def test_paper_scale_param_count():
    assert n_params(PAPER) == 130_471_553
    assert n_params({**PAPER, "faithful_ffparser": True}) == 130_324_097


# --- forward ------------------------------------------------------------------------------------------
def test_seed_forward_shape_jitted(seed_run):
    *_, out = seed_run
    assert out.shape == (2, 32, 32, 1) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


def test_output_depends_on_image_and_time(seed_run):
    variables, (x, t, cond), apply, out = seed_run
    other_image = apply(variables, x, t, {"image": cond["image"][::-1]})
    assert float(jnp.max(jnp.abs(other_image - out))) > 1e-3
    other_t = apply(variables, x, t + 40, cond)
    assert float(jnp.max(jnp.abs(other_t - out))) > 1e-3


def test_bf16_stays_bf16(tiny):
    variables, args, _ = tiny
    out = jax.eval_shape(models.build(TINY).apply, cast_floating(variables, jnp.bfloat16),
                         *cast_floating(args, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and out.shape == args[0].shape


@pytest.mark.parametrize("flag", ["faithful_fusion", "faithful_time_embedding"])
def test_faithful_flags_change_outputs(tiny, flag):
    variables, args, out = tiny
    flipped = jax.jit(models.build({**TINY, flag: True}).apply)(variables, *args)  # same parameter tree
    assert float(jnp.max(jnp.abs(flipped - out))) > 1e-3


def test_dropout_acts_in_training(tiny):
    variables, args, out = tiny  # `out`: the same parameters without dropout
    apply = jax.jit(models.build({**TINY, "dropout": 0.5}).apply, static_argnames="train")
    dropped = apply(variables, *args, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    assert bool(jnp.all(jnp.isfinite(dropped))) and float(jnp.max(jnp.abs(dropped - out))) > 1e-3


def test_bad_inputs_name_the_key():
    model = models.build(TINY)
    x, t, cond = inputs(TINY)
    with pytest.raises(InputError, match="model.image_size"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), x[:, :4, :4], t, {"image": cond["image"][:, :4, :4]})
    with pytest.raises(InputError, match="model.image_channels"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, {"image": cond["image"][..., :1]})
    with pytest.raises(InputError, match="model.channel_mults"):
        jax.eval_shape(models.build({**TINY, "channel_mults": (1, 2, 4)}).init, jax.random.PRNGKey(0), x, t, cond)


# --- pieces -------------------------------------------------------------------------------------------
def test_seed_time_embedding_formula():
    t = jnp.array([0, 3, 99])
    emb = seed_time_embedding(t, 8)
    f = 10000.0 ** (-np.arange(4) / 3)
    expected = np.asarray(t, np.float64)[:, None] * np.concatenate([np.sin(f), np.cos(f)])[None]
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(emb[0]))) == 0.0  # t * [...] vanishes at t = 0; sin/cos(t f) does not
    assert float(jnp.max(jnp.abs(timestep_embedding(t, 8)[0, 4:] - 1.0))) == 0.0


def test_space_to_depth_channel_order():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    y = space_to_depth(x)
    assert y.shape == (2, 2, 3, 12)
    for c, p1, p2 in [(0, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)]:
        np.testing.assert_array_equal(y[:, :, :, c * 4 + p1 * 2 + p2], x[:, p1::2, p2::2, c])


@pytest.mark.parametrize("faithful", [False, True])
@pytest.mark.parametrize("hw", [(8, 8), (6, 7)])
def test_ffparser_identity_init_is_identity(faithful, hw):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *hw, 5))
    module = FFParser(faithful)
    variables = module.init(jax.random.PRNGKey(0), x)
    (weight,) = jax.tree.leaves(variables)
    assert weight.shape == ((5, *hw) if faithful else (hw[0], hw[1] // 2 + 1, 5, 2))
    np.testing.assert_allclose(module.apply(variables, x), x, atol=1e-5)


@pytest.mark.parametrize("faithful", [False, True])
def test_ffparser_dc_only_gives_spatial_mean(faithful):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 6, 3))
    module = FFParser(faithful)
    (weight,) = jax.tree.leaves(module.init(jax.random.PRNGKey(0), x))
    dc = jnp.zeros_like(weight)
    dc = dc.at[:, 0, 0].set(1.0) if faithful else dc.at[0, 0, :, 0].set(1.0)
    name = "ff_parser_attn_map" if faithful else "complex_weight"
    out = module.apply({"params": {name: dc}}, x)
    np.testing.assert_allclose(out, jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape), atol=1e-5)


def _eqns(jaxpr):
    """Every equation of `jaxpr` and of the jaxprs nested in its equations' parameters (jit, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


@pytest.mark.parametrize("faithful", [False, True])
def test_ffparser_bf16_computes_in_float32(faithful):
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 6, 4)).astype(jnp.bfloat16)
    module = FFParser(faithful)
    variables = module.init(jax.random.PRNGKey(0), x.astype(jnp.float32))
    noise = jax.random.normal(jax.random.PRNGKey(1), jax.tree.leaves(variables)[0].shape)
    variables = cast_floating(jax.tree.map(lambda w: w + 0.5 * noise, variables), jnp.bfloat16)  # not identity
    apply = jax.jit(module.apply)
    out = apply(variables, x)
    assert out.dtype == jnp.bfloat16
    # bf16 only in the casts at the edges: every FFT, product and scaling runs in float32 / complex64
    jaxpr = jax.make_jaxpr(module.apply)(variables, x).jaxpr
    inner = [e for e in _eqns(jaxpr) if e.primitive.name not in ("convert_element_type", "pjit", "jit")]
    assert any(e.primitive.name == "fft" for e in inner)
    for e in inner:
        assert all(getattr(v.aval, "dtype", None) != jnp.bfloat16 for v in (*e.invars, *e.outvars)), e
    # float64 NumPy reference on the same bf16 inputs: the result is it rounded once to bf16 (half an ulp,
    # 2^-8 relative); rounding the spectrum or the product to bf16 on the way misses this on ~half the pixels
    xn = np.asarray(x.astype(jnp.float32), np.float64)
    w = np.asarray(jax.tree.leaves(variables)[0].astype(jnp.float32), np.float64)
    if faithful:
        ref = np.fft.ifft2(np.fft.fft2(xn, axes=(1, 2)) * w.transpose(1, 2, 0), axes=(1, 2)).real
    else:
        ref = np.fft.irfft2(np.fft.rfft2(xn, axes=(1, 2), norm="ortho") * (w[..., 0] + 1j * w[..., 1]),
                            s=xn.shape[1:3], axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, rtol=2.0 ** -8 * 1.01, atol=1e-5)


@pytest.mark.parametrize("channels", [6, 20])
def test_linear_attention_is_lucidrains_formula(channels):
    """Attention(linear=True) forms the context from (k^T x_norm) w_v instead of k^T v: same values and gradients as
    the textbook per-head form (v formed, softmax of q over features and of k over positions, output LayerNorm),
    with the input narrower (6) and wider (20) than heads x d (2 x 4 = 8)."""
    from jaxdiff.models.medsegdiff import Attention

    heads, d = 2, 4
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, channels))
    module = Attention(heads, d, linear=True)
    variables = module.init(jax.random.PRNGKey(1), x)
    p = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.shape), variables)["params"]

    def layer_norm(a, gain):
        mean = a.mean(-1, keepdims=True)
        return (a - mean) / jnp.sqrt(((a - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * gain

    def reference(p, x):
        b, h, w, c = x.shape
        qkv = layer_norm(x, p["LayerNorm_0"]["scale"]).reshape(b, h * w, c) @ p["to_qkv"]["kernel"]
        q, k, v = (a.reshape(b, h * w, heads, d) for a in jnp.split(qkv, 3, axis=-1))
        q = jax.nn.softmax(q, axis=-1) * d ** -0.5
        k = jax.nn.softmax(k, axis=1)
        context = jnp.einsum("bnhd,bnhe->bhde", k, v)
        out = jnp.einsum("bnhd,bhde->bnhe", q, context).reshape(b, h * w, heads * d)
        out = out @ p["to_out"]["kernel"] + p["to_out"]["bias"]
        return x + layer_norm(out.reshape(b, h, w, c), p["LayerNorm_1"]["scale"])

    got = module.apply({"params": p}, x)
    np.testing.assert_allclose(got, reference(p, x), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda p, x: jnp.sum(jnp.sin(f(p, x)))  # noqa: E731
    g_got = jax.grad(loss(lambda p, x: module.apply({"params": p}, x)), argnums=(0, 1))(p, x)
    g_ref = jax.grad(loss(reference), argnums=(0, 1))(p, x)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
