"""PyTorch reference models vs jaxdiff: random torch weights, ported to Flax (`benchmarks.port`), give the same
outputs, the same training loss and the same gradients (fp32, 1e-4 relative), and the same parameter counts."""
from __future__ import annotations

import copy
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for plain `pytest`

from benchmarks import port  # noqa: E402
from benchmarks.torch_models import count_params, diffusion_loss  # noqa: E402
from benchmarks.torch_models import medsegdiff as t_medsegdiff  # noqa: E402
from benchmarks.torch_models import transformer_unet as t_transformer_unet  # noqa: E402
from benchmarks.torch_models import unet as t_unet  # noqa: E402
from configs import medsegdiff_seed, transformer_unet_brats  # noqa: E402
from jaxdiff import models  # noqa: E402
from jaxdiff.diffusion import gaussian, schedules  # noqa: E402
from jaxdiff.models.transformer_unet import ErrorVAE, TransformerEncoderLayer  # noqa: E402

UNET = dict(name="unet", out_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_levels=(1,), num_heads=2, groups=4, num_classes=3)
MSD_SEED = dict(medsegdiff_seed.get_config().model, faithful_time_embedding=True)
MSD_PAPER = dict(MSD_SEED, faithful_ffparser=False, faithful_fusion=False, faithful_time_embedding=False)
S0_NARROW = dict(name="transformer_unet", widths=(8, 16, 16, 32, 32), num_heads=4, ff_dim=64)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial random weights in place: N(0, 1/fan_in) weights, 1 + N(0, 0.1) norm gains and FF-Parser maps,
    N(0, 0.1) biases and BatchNorm means, U(0.5, 1.5) BatchNorm variances (undoes every zero init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("complex_weight"):
                p.copy_(0.1 * noise + torch.tensor([1.0, 0.0]))
            elif name.endswith("ff_parser_attn_map") or (p.ndim == 1 and not name.endswith("bias")):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return module


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """Max-abs error within rtol of the largest |expected|, and elementwise within rtol/atol."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert scale > 1e-3, "reference output is (nearly) zero: the comparison would be vacuous"
    assert float(np.max(np.abs(actual - expected))) <= rtol * scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def to_torch(x):
    """NHWC / NDHWC numpy -> NCHW / NCDHW torch."""
    return torch.from_numpy(np.array(np.moveaxis(np.asarray(x), -1, 1)))


def to_nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def n_params(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def assert_same_tree(ported, reference):
    """Same Flax paths and shapes as `model.init` gives (the port is complete and shaped right)."""
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)  # noqa: E731
    assert shapes(ported) == shapes(reference)


def ported_grads(module, port_fn):
    """The torch gradients of `module` as a Flax tree: port a copy whose parameters hold the gradients."""
    grads = copy.deepcopy(module)
    with torch.no_grad():
        for p, g in zip(grads.parameters(), module.parameters()):
            p.copy_(g.grad)
    return port_fn(grads)


def assert_grads_close(ported, jax_grads, rtol=1e-4):
    """Every gradient leaf (ported from torch) within rtol of the largest entry of its JAX counterpart."""
    for path, g in jax.tree_util.tree_leaves_with_path(jax_grads):
        other = ported
        for key in path:
            other = other[key.key]
        err = float(jnp.max(jnp.abs(other - g)))
        assert err <= rtol * float(jnp.max(jnp.abs(g))) + 1e-7, jax.tree_util.keystr(path)


def diffusion_parity(cfg, torch_model, port_fn, x0, t, cond, sched, grads: bool):
    """Forward and MSE-loss parity of a denoiser, and of all gradients if `grads` (a backward compile costs
    seconds); x0 and cond arrays NHWC numpy, t (B,) numpy."""
    model = models.build(cfg)
    jax_cond = {k: jnp.asarray(v) for k, v in cond.items()}
    torch_cond = {k: to_torch(v) if v.ndim > 1 else torch.from_numpy(v).long() for k, v in cond.items()}
    noise = np.random.default_rng(1).normal(size=x0.shape).astype(np.float32)
    params = port_fn(torch_model)
    reference = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x0), jnp.asarray(t), jax_cond)["params"]
    assert_same_tree(params, reference)
    assert count_params(torch_model) == n_params(reference)

    @jax.jit
    def jax_loss(p):
        x_t = gaussian.q_sample(sched, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
        pred = model.apply({"params": p}, x_t, jnp.asarray(t), jax_cond)
        return jnp.mean(gaussian.loss(sched, pred, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))), (x_t, pred)

    if grads:
        (loss, (x_t, pred)), jax_grads = jax.value_and_grad(jax_loss, has_aux=True)(params)
    else:
        loss, (x_t, pred) = jax_loss(params)
    with torch.no_grad():
        out = torch_model(to_torch(x_t), torch.from_numpy(t).long(), torch_cond)
    assert_close(pred, to_nhwc(out))
    t_loss = diffusion_loss(torch_model, to_torch(x0), torch.from_numpy(t).long(), to_torch(noise),
                            torch.from_numpy(np.array(sched.alphas_cumprod)), torch_cond)
    assert_close(loss, t_loss.detach().numpy())
    if grads:
        t_loss.backward()
        assert_grads_close(ported_grads(torch_model, port_fn), jax_grads)


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_parity(dims):
    torch.manual_seed(0)
    side = 16 if dims == 2 else 8
    cfg = dict(UNET, time_act="gelu") if dims == 3 else UNET
    torch_model = randomize(t_unet.UNet.from_jax_config(cfg, dims=dims), seed=dims)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, *[side] * dims, 1)).astype(np.float32)
    cond = {"label": np.array([2, 3])}  # 3 is the null label
    diffusion_parity(dict(cfg, dims=dims), torch_model, port.port_unet, x0, np.array([3, 970]), cond,
                     schedules.get("linear", num_timesteps=1000), grads=dims == 2)


@pytest.mark.parametrize("cfg", [MSD_SEED, MSD_PAPER], ids=["seed", "paper"])
def test_medsegdiff_parity(cfg):
    torch.manual_seed(0)
    torch_model = randomize(t_medsegdiff.MedSegDiff.from_jax_config(cfg), seed=1)
    rng = np.random.default_rng(0)
    x0 = np.sign(rng.normal(size=(2, 32, 32, 1))).astype(np.float32)
    image = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    diffusion_parity(cfg, torch_model, port.port_medsegdiff, x0, np.array([5, 97]), {"image": image},
                     schedules.get("cosine", num_timesteps=100), grads=cfg is MSD_SEED)


@pytest.mark.parametrize("faithful_pe", [False, True])
def test_transformer_unet_parity_eval(faithful_pe):
    """S0 at narrow widths in eval mode (BatchNorm running statistics), logits and the seed's loss:
    BCE(logits, mask) + 0.5 * MSE(VAE(|logits - mask|), |logits - mask|)."""
    torch.manual_seed(0)
    cfg = dict(S0_NARROW, faithful_pe=faithful_pe)
    net = randomize(t_transformer_unet.TransformerUNet.from_jax_config(cfg), seed=2).eval()
    vae = randomize(t_transformer_unet.ErrorVAE(), seed=3).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 48, 48, 1)).astype(np.float32)
    mask = (rng.random(size=(2, 48, 48, 1)) > 0.7).astype(np.float32)
    params, batch_stats = port.port_transformer_unet(net)
    vae_params = port.port_error_vae(vae)
    model, head = models.build(cfg), ErrorVAE()
    reference = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))
    assert_same_tree({"params": params, "batch_stats": batch_stats}, reference)
    assert_same_tree(vae_params, jax.eval_shape(head.init, jax.random.key(0), jnp.asarray(x))["params"])
    assert count_params(net) == n_params(reference["params"])

    @jax.jit
    def jax_loss(variables, vae_params):
        logits = model.apply(variables, jnp.asarray(x))
        error = jnp.abs(logits - mask)
        recon = head.apply({"params": vae_params}, error)[0]
        bce = jnp.mean(jnp.maximum(logits, 0) - logits * mask + jnp.log1p(jnp.exp(-jnp.abs(logits))))
        return bce + 0.5 * jnp.mean((recon - error) ** 2), logits, recon

    loss, logits, recon = jax_loss({"params": params, "batch_stats": batch_stats}, vae_params)
    with torch.no_grad():
        t_logits = net(to_torch(x))
        t_error = (t_logits - to_torch(mask)).abs()
        t_loss = torch.nn.functional.binary_cross_entropy_with_logits(t_logits, to_torch(mask)) + \
            0.5 * torch.nn.functional.mse_loss(vae(t_error)[0], t_error)
    assert_close(logits, to_nhwc(t_logits))
    assert_close(recon, to_nhwc(vae(t_error)[0].detach()))
    assert_close(loss, t_loss.numpy())


def test_transformer_layer_parity():
    """One pre-norm GELU encoder layer alone (MultiheadAttention in_proj split, head reshapes)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 8, 128, 0.1, activation="gelu", batch_first=True,
                                             norm_first=True)
    randomize(layer, seed=4).eval()
    tokens = np.random.default_rng(0).normal(size=(2, 9, 64)).astype(np.float32)
    params = port.port(layer, [])["params"]
    jax_layer = TransformerEncoderLayer(8, 128)
    assert_same_tree(params, jax.eval_shape(jax_layer.init, jax.random.key(0), jnp.asarray(tokens))["params"])
    with torch.no_grad():
        expected = layer(torch.from_numpy(tokens)).numpy()
    assert_close(jax.jit(jax_layer.apply)({"params": params}, jnp.asarray(tokens)), expected)


def test_full_size_parameter_counts():
    """S0 at full size and S1's seed, built by from_jax_config on the real configs, on the meta device."""
    with torch.device("meta"):
        s0 = t_transformer_unet.TransformerUNet.from_jax_config(transformer_unet_brats.get_config().model)
        s1 = t_medsegdiff.MedSegDiff.from_jax_config(medsegdiff_seed.get_config().model)
        layer = s0.bottleneck.encoder.layers[0]
    assert count_params(s0) == 49_455_873
    assert [count_params(m) for m in s0.encoders] == [38_464, 232_320, 927_488, 3_706_368, 14_818_304]
    assert count_params(layer) == 8_399_872
    assert count_params(s0.decoders[0].upconv) == 2_097_664
    assert count_params(s1) == 405_041


def test_port_rejects_unmapped_parameters():
    model = t_unet.UNet(base_channels=8, channel_mults=(1,), attention_levels=(), groups=4)
    model.register_parameter("stray", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="stray"):
        port.port_unet(model)
