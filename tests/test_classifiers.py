"""Classifiers (seed S4): exact torchvision parameter counts, replaceable head, and PyTorch weight import with
logit parity against Hugging Face ResNet / ConvNeXt (random weights, built from a config, no download) and
the torchvision-layout twins of VGG and EfficientNetV2 in benchmarks/torch_models/classifiers.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models
from jaxdiff.errors import InputError
from jaxdiff.models.classifiers import common, port
from jaxdiff.models.classifiers.convnext import ConvNeXtBlock
from jaxdiff.summary import count

RNGS = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}


def abstract_variables(model, size=32, channels=3):
    return jax.eval_shape(model.init, RNGS, jnp.zeros((1, size, size, channels)))


@pytest.mark.parametrize("name,expected", [("vgg16", 138_357_544), ("resnet50", 25_557_032),
                                           ("efficientnetv2_s", 21_458_488), ("convnext_t", 28_589_128),
                                           ("simple_cnn", 389_410)])
def test_parameter_counts(name, expected):
    """torchvision's counts with 1000-class heads (the CNN: 2 classes); they do not depend on the input size."""
    model = models.build({"name": name, "num_classes": 2 if name == "simple_cnn" else 1000})
    assert count(abstract_variables(model, size=32)["params"]) == expected


def test_replaceable_head_and_drop_path():
    model = models.build({"name": "convnext_t", "depths": (1, 1, 1, 1), "dims": (8, 8, 8, 8), "num_classes": 5})
    assert abstract_variables(model)["params"]["head"]["kernel"].shape == (8, 5)
    block = ConvNeXtBlock(drop_rate=0.5, layer_scale_init=1.0)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 4, 4, 8))
    shapes = jax.eval_shape(block.init, RNGS, x)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.1, s.dtype), shapes)
    fn = jax.jit(lambda v, x, key: block.apply(v, x, train=True, rngs={"dropout": key}))
    dropped = [np.all(np.asarray(fn(variables, x, jax.random.PRNGKey(k))) == np.asarray(x), axis=(1, 2, 3))
               for k in (3, 4)]
    assert 0 < dropped[0].sum() < 16          # per-example drop path with the "dropout" rng ...
    assert not np.array_equal(*dropped)       # ... drawn anew for another key


@pytest.mark.parametrize("size", [7, 9, 13])
def test_adaptive_avg_pool_matches_torch(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, size, size + 3, 4)).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3).numpy()
    np.testing.assert_allclose(np.asarray(common.adaptive_avg_pool(jnp.asarray(x), 3)), ref.transpose(0, 2, 3, 1),
                               rtol=1e-6, atol=1e-6)


def _randomise_bn(torch, module):
    """Random BatchNorm affine and running statistics, so eval-mode parity tests the statistics mapping."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in ((m.weight.data, 0.5, 1.5), (m.bias.data, -0.3, 0.3),
                              (m.running_mean, -0.3, 0.3), (m.running_var, 0.5, 1.5)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return module.eval()


def _check_parity(torch, ref_model, jax_config, size=32, in_channels=3):
    """Port `ref_model`'s state dict into the Flax model of `jax_config`; logits within 1e-4 relative."""
    x = np.random.default_rng(1).standard_normal((2, in_channels, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x))
    ref = (ref.logits if hasattr(ref, "logits") else ref).numpy()
    model = models.build(jax_config)
    sd = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    variables, skipped = port.port_state_dict(abstract_variables(model, size, in_channels), sd, model)
    assert skipped == []
    out = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    return sd, model


def test_resnet_parity_with_huggingface():
    """HF ResNetForImageClassification (bottleneck, stride on the 3x3: the ResNet-50 block layout) at
    narrow widths; its keys are renamed to torchvision's by `port.from_huggingface`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[2, 1, 2, 1], layer_type="bottleneck",
        num_labels=5))
    _check_parity(torch, _randomise_bn(torch, hf), {"name": "resnet50", "depths": (2, 1, 2, 1),
                                                    "widths": (4, 8, 16, 32), "stem_channels": 8, "num_classes": 5})


def test_convnext_parity_with_huggingface():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1], layer_norm_eps=1e-6, layer_scale_init_value=0.5,
        num_labels=5)).eval()
    _check_parity(torch, hf, {"name": "convnext_t", "depths": (1, 2, 1, 1), "dims": (8, 16, 24, 32),
                              "layer_scale_init": 0.5, "num_classes": 5})


def test_vgg_and_efficientnet_parity_with_torchvision_layout_twins():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_models import classifiers as twins
    torch.manual_seed(0)
    vgg = {"name": "vgg16", "layers": (8, "M", 16, 16, "M"), "hidden": 16, "pool_size": 3, "num_classes": 4}
    _check_parity(torch, twins.VGG.from_jax_config(vgg).eval(), vgg, size=20)   # 5x5 -> 3x3: overlapping bins
    eff = {"name": "efficientnetv2_s", "stages": ((True, 1, 3, 1, 8, 2), (True, 2, 3, 2, 8, 1),
                                                  (False, 2, 3, 2, 16, 2)),
           "stem_channels": 8, "top_channels": 32, "num_classes": 4}
    _check_parity(torch, _randomise_bn(torch, twins.EfficientNetV2.from_jax_config(eff)), eff)


def test_port_skips_a_different_head_and_names_bad_keys(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_labels=10))
    path = str(tmp_path / "convnext.pth")
    torch.save(hf.state_dict(), path)
    sd = port.load_state_dict(path)
    model = models.build({"name": "convnext_t", "depths": (1, 1, 1, 1), "dims": (8, 8, 8, 8), "num_classes": 2})
    target = abstract_variables(model)
    variables, skipped = port.port_state_dict(target, sd, model, source=path)
    assert skipped == ["classifier.2.weight", "classifier.2.bias"]
    assert variables["params"]["head"]["kernel"] is target["params"]["head"]["kernel"]   # left as it was
    np.testing.assert_array_equal(variables["params"]["final_norm"]["scale"], sd["convnext.layernorm.weight"])
    with pytest.raises(InputError, match="classifier.2.weight"):
        port.port_state_dict(target, sd, model, source=path, skip_head=False)
    del sd["convnext.encoder.stages.1.layers.0.pwconv1.weight"]
    with pytest.raises(InputError, match=r"missing key 'features.3.0.block.3.weight'"):
        port.port_state_dict(target, sd, model, source=path)
    with pytest.raises(InputError, match="nothere.pth"):
        port.load_state_dict(str(tmp_path / "nothere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="junk.pth"):
        port.load_state_dict(str(tmp_path / "junk.pth"))
