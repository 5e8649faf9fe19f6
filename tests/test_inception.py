"""Flax InceptionV3 vs a PyTorch InceptionV3 (torchvision architecture and key names) with the same random
weights and random BatchNorm statistics, in eval mode.

Parity runs on the FID variant at a small input without the 299 resize (75x107: 75 is the smallest side
Inception accepts, and the other side gives the last blocks a 2x2 grid, so padding and pooling borders matter),
one compile. The pooling kinds that tell the variants apart and the resize (vs torch's `F.interpolate(bilinear,
align_corners=False)`) are checked on small arrays.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for plain `pytest`

from benchmarks.torch_models import count_params  # noqa: E402
from benchmarks.torch_models.inception import Inception3  # noqa: E402
from benchmarks.torch_models.inception import pool3x3 as t_pool3x3  # noqa: E402
from jaxdiff import models  # noqa: E402
from jaxdiff.errors import InputError  # noqa: E402
from jaxdiff.evaluators import features  # noqa: E402
from jaxdiff.models.inception import load_torch_state_dict, pool3x3, resize_bilinear  # noqa: E402


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """N(0, 2/fan_in) conv/linear weights, N(0, 0.1) biases and BN means, 1 + N(0, 0.1) BN scales, U(0.5, 1.5)
    BN variances, so nothing is at its default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(1.0 + 0.1 * noise if name.endswith("bn.weight") else 0.1 * noise)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return module.eval()


def n_params(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_parameter_counts_match_torchvision():
    """torchvision's inception_v3 counts; the Flax FID variant's count is checked in the parity test."""
    with torch.device("meta"):
        assert count_params(Inception3()) == 27_161_264  # torchvision inception_v3 (aux_logits=True)
        assert count_params(Inception3(aux_logits=False)) == 23_834_568
    model = models.build(dict(name="inception_v3", aux_logits=True))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
    assert n_params(shapes["params"]) == 27_161_264


@pytest.fixture(scope="module")
def fid_net():
    return randomize(Inception3(num_classes=1008, aux_logits=False, fid_variant=True), seed=1)


def test_fid_variant_parity_with_torch(fid_net):
    """The whole network (FID variant: the features FID uses), run through the "inception" feature extractor;
    torchvision's pooling is checked below."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 75, 107, 3)).astype(np.float32)
    extractor = features.get_extractor("inception", weights=fid_net.state_dict(), batch_size=2, resize_to=None)
    out = extractor.outputs(x)
    ported = load_torch_state_dict(fid_net.state_dict(), fid_variant=True)  # shapes cached: no second trace
    assert n_params(ported["params"]) == count_params(fid_net) == 23_850_960
    with torch.no_grad():
        pool3, logits = fid_net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    for got, want in ((out["features"], pool3), (out["logits"], logits)):
        want = want.numpy()
        assert got.shape == want.shape
        assert np.std(want) > 1e-3  # not a vacuous comparison
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("kind", ["avg", "avg_exclude_pad", "max"])
def test_pool_branch_matches_torch(kind):
    """The only difference between the torchvision and FID variants, on a 4x5 map (borders included)."""
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype(np.float32)
    want = t_pool3x3(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), kind).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(pool3x3(jnp.asarray(x), kind)), want, rtol=1e-6, atol=1e-6)


def test_resize_matches_torch_bilinear():
    x = np.random.default_rng(0).normal(size=(1, 9, 13, 2)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=(31, 31),
                                           mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), 31)), want, atol=1e-5)


def test_load_errors_name_the_file(tmp_path, fid_net):
    state = fid_net.state_dict()
    with pytest.raises(InputError, match="missing.pth"):
        load_torch_state_dict(str(tmp_path / "missing.pth"), fid_variant=True)
    partial = str(tmp_path / "partial.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("Conv2d_1a")}, partial)
    with pytest.raises(InputError, match="partial.pth.*missing"):
        load_torch_state_dict(partial, fid_variant=True)
    with pytest.raises(InputError, match="fc.weight"):
        load_torch_state_dict(state, fid_variant=False)  # 1008 logits where 1000 are expected
    np.savez(tmp_path / "renamed.npz", **{"model.fc.bias": state["fc.bias"].numpy()})
    with pytest.raises(InputError, match="renamed.npz.*unexpected key"):
        load_torch_state_dict(str(tmp_path / "renamed.npz"), fid_variant=True)
    variables = load_torch_state_dict(state, fid_variant=True)  # cached shapes: cheap the second time
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].numpy().T)
    np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  state["Mixed_7c.branch_pool.bn.running_var"].numpy())
