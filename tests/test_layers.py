"""The hand-written kernels in `jaxdiff.models.layers` compute the same functions (and gradients) as the
straightforward formulations they replace: fused GroupNorm + FiLM + activation, LayerNorm and attention with
their own backward passes, and the coarse-grid nearest-upsample conv."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.models import layers


def _rand(rng, shape, scale=1.0, offset=0.0):
    return jnp.asarray(rng.normal(offset, scale, shape).astype(np.float32))


def _reference_norm_act(x, gamma, beta, groups, film, act):
    """Flax's GroupNorm, then FiLM x * (1 + scale) + shift, then the activation, left to autodiff."""
    y = nn.GroupNorm(num_groups=groups, epsilon=1e-5).apply({"params": {"scale": gamma, "bias": beta}}, x)
    if film is not None:
        scale, shift = (layers.spatial_broadcast(v, x.ndim) for v in film)
        y = y * (1 + scale) + shift
    return act(y) if act else y


@pytest.mark.parametrize("shape,groups,use_film,act", [
    ((2, 6, 5, 8), 4, True, nn.silu),        # 2D, FiLM, SiLU (the ResBlock unit)
    ((2, 3, 4, 5, 6), 3, False, None),       # 3D, plain GroupNorm (attention's norm)
    ((3, 7, 4), 2, True, layers.ACTIVATIONS["gelu"]),  # 1D, exact GELU
])
def test_group_norm_act_matches_autodiff_reference(shape, groups, use_film, act):
    rng = np.random.default_rng(0)
    b, c = shape[0], shape[-1]
    x = _rand(rng, shape, 2.0, 0.5)  # non-zero mean: the one-pass variance must hold up
    gamma, beta = _rand(rng, (c,), 0.5, 1.0), _rand(rng, (c,), 0.3)
    film = (_rand(rng, (b, c), 0.3), _rand(rng, (b, c), 0.3)) if use_film else None
    cot = _rand(rng, shape)

    def fused(x, gamma, beta, film):
        mod = layers.GroupNorm(num_groups=groups)
        return mod.apply({"params": {"scale": gamma, "bias": beta}}, x, film, act)

    def reference(x, gamma, beta, film):
        return _reference_norm_act(x, gamma, beta, groups, film, act)

    out, vjp = jax.vjp(fused, x, gamma, beta, film)
    ref, ref_vjp = jax.vjp(reference, x, gamma, beta, film)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(vjp(cot)), jax.tree.leaves(ref_vjp(cot))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_group_norm_keeps_flax_parameters_and_dtype():
    x = jnp.ones((2, 4, 4, 8), jnp.bfloat16)
    variables = layers.GroupNorm(num_groups=4).init(jax.random.key(0), x)
    flax_vars = nn.GroupNorm(num_groups=4).init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(lambda a: (a.shape, a.dtype),
                                                                                  flax_vars)
    assert layers.GroupNorm(num_groups=4).apply(variables, x).dtype == jnp.bfloat16


def test_group_norm_rejects_indivisible_groups_with_the_config_key():
    with pytest.raises(Exception, match="model.groups"):
        layers.ResBlock(6, groups=4).init(jax.random.key(0), jnp.ones((1, 4, 4, 6)))


@pytest.mark.parametrize("shape,use_bias", [((2, 5, 6, 16), True), ((3, 7, 8), False)])
def test_layer_norm_is_flax_layer_norm_with_its_gradients(shape, use_bias):
    rng = np.random.default_rng(4)
    x = _rand(rng, shape, 3.0, 1.0)  # non-zero mean: the variance is two-pass
    flax_norm = nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, use_fast_variance=False)
    ours = layers.LayerNorm(epsilon=1e-5, use_bias=use_bias)
    variables = ours.init(jax.random.key(0), x)
    assert (jax.tree.map(lambda a: (a.shape, a.dtype), variables)
            == jax.tree.map(lambda a: (a.shape, a.dtype), flax_norm.init(jax.random.key(0), x)))
    variables = jax.tree.map(lambda a: a + _rand(rng, a.shape, 0.5), variables)  # not the identity init
    cot = _rand(rng, shape)
    out, vjp = jax.vjp(ours.apply, variables, x)
    ref, ref_vjp = jax.vjp(flax_norm.apply, variables, x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(vjp(cot)), jax.tree.leaves(ref_vjp(cot))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables)
    assert ours.apply(bf16, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_attention_and_its_gradient_match_jax():
    rng = np.random.default_rng(1)
    q, k, v = (_rand(rng, (2, 12, 3, 8), 1.5) for _ in range(3))
    cot = _rand(rng, (2, 12, 3, 8))
    out, vjp = jax.vjp(layers.dot_product_attention, q, k, v)
    ref, ref_vjp = jax.vjp(lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"), q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the chunked (memory-efficient) path is the same function
    np.testing.assert_allclose(layers.chunked_attention(q, k, v, chunk=5), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 3, 4, 2, 3)])
def test_upsample_conv_is_nearest_upsample_then_conv(shape):
    rng = np.random.default_rng(2)
    rank = len(shape) - 2
    x = _rand(rng, shape)
    kernel, bias = _rand(rng, (3,) * rank + (shape[-1], 4)), _rand(rng, (4,))
    cot = _rand(rng, (shape[0], *(2 * s for s in shape[1:-1]), 4))

    def reference(x, kernel, bias):
        for axis in range(1, x.ndim - 1):
            x = jnp.repeat(x, 2, axis=axis)
        dims = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, layers._conv_dims(rank))
        return jax.lax.conv_general_dilated(x, kernel, (1,) * rank, [(1, 1)] * rank, dimension_numbers=dims) + bias

    out, vjp = jax.vjp(layers.upsample_conv, x, kernel, bias)
    ref, ref_vjp = jax.vjp(reference, x, kernel, bias)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_upsample_keeps_conv_parameter_names_and_shapes():
    x = jnp.ones((1, 4, 4, 3))
    ours = layers.Upsample(5).init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, ours) == {"conv": {"kernel": (3, 3, 3, 5), "bias": (5,)}}
    assert layers.Upsample(5).apply({"params": ours}, x).shape == (1, 8, 8, 5)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 9, 3), (2, 9, 5)), ((3, 2, 7, 6), (3, 2, 7, 4)), ((11, 4), (11, 4))])
def test_tn_matmul_and_matmul_match_einsum_with_gradients(a_shape, b_shape):
    rng = np.random.default_rng(3)
    a, b = _rand(rng, a_shape), _rand(rng, b_shape)   # both branches: a smaller, b smaller, equal
    cot = _rand(rng, (*a_shape[:-2], a_shape[-1], b_shape[-1]))
    out, vjp = jax.vjp(layers.tn_matmul, a, b)
    ref, ref_vjp = jax.vjp(lambda a, b: jnp.einsum("...km,...kn->...mn", a, b), a, b)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    m = _rand(rng, (*a_shape[:-2], 5, a_shape[-2]))   # matmul: m (.., 5, K) @ a (.., K, M), and a batch-free kernel
    for rhs in (a, a[(0,) * (a.ndim - 2)]):
        out, vjp = jax.vjp(layers.matmul, m, rhs)
        ref, ref_vjp = jax.vjp(jnp.matmul, m, rhs)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        cot = _rand(rng, out.shape)
        for got, want in zip(vjp(cot), ref_vjp(cot)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dense_is_flax_dense_with_its_own_gradient():
    rng = np.random.default_rng(4)
    x = _rand(rng, (2, 3, 4, 6), 2.0, 0.7)
    cot = _rand(rng, (2, 3, 4, 5))
    for ours, theirs in [(layers.Dense(5), nn.Dense(5)), (layers.Dense(5, use_bias=False), nn.Dense(5, use_bias=False))]:
        p = theirs.init(jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, p)
        p = jax.tree.map(lambda v: v + _rand(rng, v.shape, 0.1), p)
        out, vjp = jax.vjp(lambda p, x: ours.apply(p, x), p, x)
        ref, ref_vjp = jax.vjp(lambda p, x: theirs.apply(p, x), p, x)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(vjp(cot)), jax.tree.leaves(ref_vjp(cot))):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 5, 7, 2), (2, 4, 6, 2, 3)])
def test_max_pool2_is_flax_max_pool_with_its_gradient(shape):
    rng = np.random.default_rng(5)
    x = _rand(rng, shape)  # continuous values: no ties, so the gradients agree exactly
    rank = len(shape) - 2
    out, vjp = jax.vjp(layers.max_pool2, x)
    ref, ref_vjp = jax.vjp(lambda x: nn.max_pool(x, (2,) * rank, (2,) * rank), x)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)
    cot = _rand(rng, out.shape)
    np.testing.assert_array_equal(vjp(cot)[0], ref_vjp(cot)[0])


@pytest.mark.parametrize("shape,kernel", [((2, 5, 6, 3), (2, 2)), ((2, 3, 4, 5, 3), (2, 2, 2)), ((1, 4, 4, 2), (3, 2))])
def test_patch_conv_transpose_is_flax_conv_transpose_with_its_gradients(shape, kernel):
    rng = np.random.default_rng(6)
    x = _rand(rng, shape)
    ref = nn.ConvTranspose(7, kernel, strides=kernel, padding="VALID")
    new = layers.PatchConvTranspose(7, kernel)
    params = ref.init(jax.random.PRNGKey(0), x)
    # Same parameter tree and the same initial values (checkpoints and ports are unchanged) ...
    jax.tree.map(np.testing.assert_array_equal, new.init(jax.random.PRNGKey(0), x), params)
    params = jax.tree.map(lambda p: p + _rand(rng, p.shape), params)  # ... and a non-zero bias from here on
    out, vjp = jax.vjp(new.apply, params, x)
    want, ref_vjp = jax.vjp(ref.apply, params, x)
    assert out.shape == want.shape == (shape[0], *(n * k for n, k in zip(shape[1:-1], kernel)), 7)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    cot = _rand(rng, out.shape)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), vjp(cot), ref_vjp(cot))
