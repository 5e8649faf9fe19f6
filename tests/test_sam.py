"""Flax SAM: parity with Hugging Face's PyTorch SamModel (tiny random config), checkpoint import in both
layouts, the ViT-B parameter count, and the `python -m jaxdiff.sam` command (single and batch mode)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import sam as sam_cli
from jaxdiff.errors import InputError
from jaxdiff.models.sam import model as sam_model, port

TINY = dict(vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                               image_size=64, patch_size=16, window_size=3, global_attn_indexes=[1], num_pos_feats=8),
            prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=8),
            mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                     iou_head_hidden_dim=16))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random HF SamModel (window 3 on a 4x4 grid: padded windows), saved as an HF folder and as an
    official-layout .pth; plus the Flax model ported from the folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.SamModel(transformers.SamConfig(**TINY)).eval()
    with torch.no_grad():
        for p in hf.parameters():          # rel-pos and pos-embed start at zero: perturb every weight
            p.add_(0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("sam")
    hf.save_pretrained(root / "hf")
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    torch.save({k: torch.from_numpy(v) for k, v in port.hf_to_official(state).items()}, root / "official.pth")
    model, variables = port.load_checkpoint(root / "hf")
    return dict(torch=torch, hf=hf, root=root, model=model, variables=variables)


def _close(ours, ref):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_parity_with_hf_point_box_and_mask_prompts(tiny):
    torch, hf = tiny["torch"], tiny["hf"]
    embed, prompt = sam_model.jitted_fns(tiny["model"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    emb = embed(tiny["variables"], jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    with torch.no_grad():
        _close(emb, hf.get_image_embeddings(x).numpy().transpose(0, 2, 3, 1))
    pts, lab = torch.tensor([[[[20.0, 30.0], [41.0, 9.0]]]]), torch.tensor([[[1, 0]]])
    box = torch.tensor([[[5.0, 8.0, 50.0, 40.0]]])
    mask_in = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():      # points -> 3 masks; box + mask prompt -> the single-mask output (token 0)
        ref_pts = hf(pixel_values=x, input_points=pts, input_labels=lab, multimask_output=True)
        ref_box = hf(pixel_values=x, input_boxes=box, input_masks=mask_in, multimask_output=False)
    v = tiny["variables"]
    low, iou = prompt(v, emb, jnp.asarray(pts[:, 0].numpy()), jnp.asarray(lab[:, 0].numpy()), None)
    assert low.shape == (1, 16, 16, 3) and iou.shape == (1, 3)
    _close(low, ref_pts.pred_masks[:, 0].numpy().transpose(0, 2, 3, 1))
    _close(iou, ref_pts.iou_scores[:, 0].numpy())
    low, iou = prompt(v, emb, None, None, jnp.asarray(box[:, 0].numpy()),
                      jnp.asarray(mask_in.numpy().transpose(0, 2, 3, 1)), multimask_output=False)
    assert low.shape == (1, 16, 16, 1) and iou.shape == (1, 1)
    _close(low, ref_box.pred_masks[:, 0].numpy().transpose(0, 2, 3, 1))
    _close(iou, ref_box.iou_scores[:, 0].numpy())


def test_postprocess_matches_torch_interpolate(tiny):
    torch = tiny["torch"]
    low = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    ours = sam_model.postprocess_masks(jnp.asarray(low), (48, 64), (30, 40), 64)
    t = torch.nn.functional.interpolate(torch.from_numpy(low.transpose(0, 3, 1, 2)), (64, 64), mode="bilinear",
                                        align_corners=False)[..., :48, :64]
    t = torch.nn.functional.interpolate(t, (30, 40), mode="bilinear", align_corners=False)
    _close(ours, t.numpy().transpose(0, 2, 3, 1))


def test_official_layout_maps_to_the_same_flax_params(tiny):
    names = set(port.hf_to_official({k: v.numpy() for k, v in tiny["hf"].state_dict().items()}))
    for key in ("image_encoder.blocks.1.norm2.weight", "image_encoder.neck.3.bias",
                "image_encoder.patch_embed.proj.weight", "prompt_encoder.mask_downscaling.6.weight",
                "prompt_encoder.point_embeddings.3.weight",
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "mask_decoder.output_upscaling.3.weight", "mask_decoder.iou_prediction_head.layers.2.bias",
                "mask_decoder.output_hypernetworks_mlps.3.layers.1.weight",
                "mask_decoder.transformer.layers.1.norm4.bias", "mask_decoder.transformer.norm_final_attn.weight"):
        assert key in names, key
    assert not any(k.startswith(("vision_encoder", "shared_image")) or "proj_in" in k or "layer_norm" in k
                   for k in names)
    state, hf_config = port.read_checkpoint(tiny["root"] / "official.pth")
    assert hf_config == {} and port.config_from_state(state)["decoder_heads"] == 8      # official default
    model, variables = port.from_state(state, decoder_heads=2, decoder_ln_eps=1e-6)
    assert model == tiny["model"]
    jax.tree.map(np.testing.assert_array_equal, variables, tiny["variables"])


def _no_torch(monkeypatch):
    """Make `import torch` fail for the rest of the test (a None entry in sys.modules raises ImportError)."""
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)


def test_safetensors_is_declared_and_official_layout_reads_without_torch(tmp_path, monkeypatch):
    from importlib.metadata import version
    from packaging.requirements import Requirement
    from safetensors.numpy import save_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    declared = [r for r in reqs if r.name == "safetensors"]
    assert declared and declared[0].specifier.contains(version("safetensors"))
    rng = np.random.default_rng(0)
    state = {"image_encoder.patch_embed.proj.weight": rng.standard_normal((32, 3, 16, 16)).astype(np.float32),
             "image_encoder.pos_embed": rng.standard_normal((1, 4, 4, 32)).astype(np.float32),
             "image_encoder.blocks.0.attn.rel_pos_h": rng.standard_normal((5, 16)).astype(np.float32),
             "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": rng.standard_normal((2, 8)).astype(
                 np.float32),
             "mask_decoder.mask_tokens.weight": rng.standard_normal((4, 16)).astype(np.float32),
             "pixel_mean": np.array([123.675, 116.28, 103.53], np.float32)}
    save_file(state, str(tmp_path / "sam_official.safetensors"))
    _no_torch(monkeypatch)
    got, hf_config = port.read_checkpoint(tmp_path / "sam_official.safetensors")
    assert hf_config == {} and sorted(got) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(got[key], value)
    hf = {"vision_encoder.layers.0.layer_norm1.weight": np.ones(32, np.float32),      # HF layout: renamed
          "shared_image_embedding.positional_embedding": state[
              "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]}
    save_file(hf, str(tmp_path / "model.safetensors"))
    got, _ = port.read_checkpoint(tmp_path / "model.safetensors")
    assert sorted(got) == ["image_encoder.blocks.0.norm1.weight",
                           "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]


def test_official_safetensors_loads_the_same_model_without_torch(tiny, tmp_path, monkeypatch):
    from safetensors.numpy import save_file
    state, _ = port.read_checkpoint(tiny["root"] / "official.pth")
    save_file(state, str(tmp_path / "sam_tiny.safetensors"))
    _no_torch(monkeypatch)
    model, variables = port.load_checkpoint(tmp_path / "sam_tiny.safetensors", decoder_heads=2,
                                            decoder_ln_eps=1e-6)
    assert model == tiny["model"]
    jax.tree.map(np.testing.assert_array_equal, variables, tiny["variables"])


def test_safetensors_missing_is_one_clear_error(tmp_path, monkeypatch):
    import sys
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(InputError, match=r"model\.safetensors: .*needs the safetensors package"):
        port.read_checkpoint(tmp_path / "model.safetensors")


def test_vit_b_config_parameter_count_equals_hf_sam_vit_base():
    """configs/sam_vit_b.py through its task, shapes only (what `jaxdiff.summary` prints)."""
    from configs import sam_vit_b
    from jaxdiff.summary import count
    from jaxdiff.tasks.promptable_segmentation import PromptableSegmentationTask
    task = PromptableSegmentationTask(sam_vit_b.get_config())
    assert task.model == sam_model.Sam()                      # the config spells out the defaults
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), task.example_batch(1))
    # HF SamModel(SamConfig()) counts 93,735,728 (torch, tied positional matrix once); the official
    # torch model's parameters() give 93,735,472: its (2, 128) Fourier matrix is a buffer there.
    assert count(shapes["params"]) == 93_735_728


def test_promptable_segmentation_boxes_and_loss():
    from configs import sam_vit_b
    from jaxdiff.tasks.promptable_segmentation import PromptableSegmentationTask, mask_boxes
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[0, 4:10, 7:20] = 1.0
    np.testing.assert_array_equal(mask_boxes(jnp.asarray(mask)), [[7, 4, 19, 9], [0, 0, 31, 31]])
    config = sam_vit_b.get_config()
    config.model.update(dict(image_size=32, encoder_dim=16, encoder_depth=1, encoder_heads=2, window_size=0,
                             global_attn_indexes=(0,), prompt_dim=16, mask_in_chans=4, decoder_depth=1,
                             decoder_heads=2, decoder_mlp_dim=16, iou_head_hidden_dim=8))
    task = PromptableSegmentationTask(config)
    batch = {"image": np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32), "mask": mask}
    rng = np.random.default_rng(1)                            # compiling the initialisers is slow on CPU
    params = jax.tree.map(lambda a: rng.normal(0, 0.2, a.shape).astype(np.float32),
                          jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)["params"])
    loss, (metrics, _) = jax.jit(lambda p, b: task.loss(p, {}, b, None, train=False))(params, batch)
    assert np.isfinite(float(loss)) and float(loss) > float(metrics["bce"]) > 0


def test_missing_checkpoint_says_which_file(tmp_path, capsys):
    for args in ([], ["--checkpoint", str(tmp_path / "nope.pth")]):
        with pytest.raises(SystemExit) as e:
            sam_cli.main(["sam", *args, "--image", "x.png", "--points", "1,2"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "sam_vit_b_01ec64.pth" in err and "facebook/sam-vit-base" in err


def test_prompt_parsing_and_overlay():
    pts, lab, box = sam_cli.parse_prompts("10,12;30,4", "1,0", "2,3,40,30")
    assert pts.tolist() == [[10, 12], [30, 4]] and lab.tolist() == [1, 0] and box.tolist() == [2, 3, 40, 30]
    assert sam_cli.parse_prompts("5,6", None, None)[1].tolist() == [1]
    for bad in (("1,2,3", None, None), ("1,2", "1,1", None), ("1,2", "2", None), (None, None, "5,5,1,9"),
                (None, None, None), ("a,b", None, None)):
        with pytest.raises(sam_cli.InputError):
            sam_cli.parse_prompts(*bad)
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    out = sam_cli.overlay(image, mask, pts, lab, box)
    assert out.shape == image.shape and out[7, 7, 0] > 100 and (out[15, 20] == 100).all()


def test_cli_single_image_and_batch_pseudo_masks(tiny, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(3):                                           # one size: one post-processing compile
        img = (rng.uniform(0, 60, (40, 48))).astype(np.uint8)
        img[10:20, 12 + i:24 + i] = 230                          # a bright blob: the brightest cluster
        Image.fromarray(img).save(tmp_path / f"case{i}.png")
    folder = str(tiny["root"] / "hf")
    out = tmp_path / "single"
    assert sam_cli.main(["sam", "--checkpoint", folder, "--image", str(tmp_path / "case0.png"), "--points",
                         "17,14", "--labels", "1", "--out", str(out)]) == 0       # the batch's prompt shape
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["iou"]) == 3 and scores["best"] == int(np.argmax(scores["iou"]))
    for name in ("mask_0.png", "mask_1.png", "mask_2.png", "mask_best.png", "overlay.png"):
        assert np.asarray(Image.open(out / name)).shape[:2] == (40, 48), name
    capsys.readouterr()
    pseudo = tmp_path / "pseudo"
    assert sam_cli.main(["sam", "--checkpoint", folder, "--input-dir", str(tmp_path), "--output-dir", str(pseudo),
                         "--prompt", "brightest-cluster", "--clusters", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    prompts = json.loads((pseudo / "prompts.json").read_text())["images"]
    x, y = prompts["case0"]["point"]
    assert 11 <= x <= 24 and 9 <= y <= 20                         # inside the bright blob
    assert sorted(os.listdir(pseudo / "masks")) == ["case0.png", "case1.png", "case2.png"]
    from jaxdiff.data.sources.mask_folder import from_config
    source = from_config({"root": str(pseudo), "image_size": 16, "channels": 1, "fractions": (1, 0, 0)}, "train")
    ex = source[0]
    assert len(source) == 3 and ex["image"].shape == (16, 16, 1) and ex["mask"].shape == (16, 16, 1)
    assert set(np.unique(ex["mask"])) <= {0.0, 1.0}
