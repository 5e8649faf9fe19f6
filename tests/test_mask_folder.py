"""The mask_folder data source (images/ + masks/, e.g. SAM pseudo-masks) and its use by the segmentation task."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdiff.data.sources.mask_folder import MaskFolder, from_config
from jaxdiff.errors import InputError


def _make_folder(root, n: int = 6, size=(30, 40)):
    """n grey images (PNG and JPEG) with a bright rectangle and its 0/255 mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = np.full(size, 40, np.uint8)
        img[5:15, 8 + i:20 + i] = 220
        mask = (img > 128).astype(np.uint8) * 255
        Image.fromarray(img).save(root / "images" / (f"img{i}.png" if i % 2 else f"img{i}.jpg"))
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


def test_examples_shapes_ranges_and_split(tmp_path):
    root = _make_folder(tmp_path / "d")
    parts = {s: MaskFolder(root, s, image_size=16, seed=3, fractions=(0.5, 0.25, 0.25))
             for s in ("train", "val", "test")}
    names = [{p[0] for p in src.pairs} for src in parts.values()]
    assert sum(map(len, names)) == 6 and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    ex = parts["train"][0]
    assert ex["image"].shape == (16, 16, 1) and ex["image"].dtype == np.float32
    assert ex["image"].min() >= -1.0 and ex["image"].max() <= 1.0 and ex["image"].max() > 0.5
    assert ex["mask"].shape == (16, 16, 1) and set(np.unique(ex["mask"])) == {0.0, 1.0}
    # the mask covers the bright rectangle: rows 5..14 of 30 -> about rows 3..7 of 16
    assert ex["mask"][5, :, 0].any() and not ex["mask"][12, :, 0].any()
    rgb = from_config({"root": str(root), "image_size": 8, "channels": 3, "seed": 3,
                       "fractions": (0.5, 0.25, 0.25)}, "val")
    assert rgb[0]["image"].shape == (8, 8, 3) and [p[0] for p in rgb.pairs] == [p[0] for p in parts["val"].pairs]


def test_missing_mask_and_folder_errors(tmp_path):
    root = _make_folder(tmp_path / "d", n=3)
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(InputError, match=r"masks/img1\.png: missing mask"):
        MaskFolder(root, "train")
    with pytest.raises(InputError, match="data.root"):
        from_config({"root": str(tmp_path / "nope")}, "train")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no .png/.jpg images"):
        MaskFolder(tmp_path / "empty", "train")


def test_segmentation_task_trains_on_a_mask_folder(tmp_path):
    """transformer_unet_tiny with data.source=mask_folder: the pipeline batch feeds the task's loss, and 8
    gradient steps of the config's optimiser on that fixed batch lower it (dropout off: a deterministic loss)."""
    import optax
    from jaxdiff.training.state import make_optimizer
    from configs import transformer_unet_tiny
    from jaxdiff import tasks
    from jaxdiff.data import pipeline
    root = _make_folder(tmp_path / "pseudo", n=8)
    config = transformer_unet_tiny.get_config()
    config.data.update(dict(source="mask_folder", root=str(root), image_size=16, seed=0))
    config.model.update(dict(widths=(4, 4, 4), num_layers=1, num_heads=2, ff_dim=8))
    source = pipeline.get_source(config.data, "train")
    batch = next(iter(pipeline.make_dataset(source, batch_size=2, transform=pipeline.train_transform(config.data))))
    assert batch["image"].shape == (2, 16, 16, 1) and batch["mask"].shape == (2, 16, 16, 1)
    task = tasks.build(config)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0), batch)     # compiling initialisers is slow on CPU
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.uniform(0.02, 0.1, a.shape).astype(a.dtype), abstract)   # var > 0
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, s, b: task.loss(p, s, b, jax.random.PRNGKey(1), train=False), has_aux=True))
    (loss, (metrics, _)), grads = loss_and_grad(params, state, batch)
    assert np.isfinite(float(loss)) and float(loss) > 0 and "seg_loss" in metrics
    config.train.update(dict(steps=8, lr=1e-2, warmup_steps=0, lr_schedule="constant"))
    tx = make_optimizer(config.train)

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state, losses = tx.init(params), [float(loss)]
    for _ in range(8):
        params, opt_state = update(grads, opt_state, params)
        (loss, _), grads = loss_and_grad(params, state, batch)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
