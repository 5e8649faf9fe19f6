"""Classification task (seed S4): metrics against scikit-learn, weighted / smoothed cross-entropy, frozen-backbone
transfer learning through the shared train step, evaluation outputs, and weight import into a fresh state."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import classifier_tiny
from jaxdiff.errors import InputError
from jaxdiff.metrics import classification as cm
from jaxdiff.tasks.classification import ClassificationTask, balanced_weights, labels_of
from jaxdiff.training.state import TrainState, make_optimizer
from jaxdiff.training.step import make_train_step


def test_metrics_match_sklearn():
    from sklearn import metrics  # installed with nilearn
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    probs = rng.dirichlet([1, 1], 50)
    probs[:10, 1] = probs[10:20, 1]                                   # ties in the scores
    probs[:, 0] = 1 - probs[:, 1]
    r = cm.report(labels, probs)
    preds = probs.argmax(1)
    assert r["accuracy"] == pytest.approx(metrics.accuracy_score(labels, preds))
    assert r["precision"] == pytest.approx(metrics.precision_score(labels, preds))
    assert r["recall"] == pytest.approx(metrics.recall_score(labels, preds))
    assert r["f1"] == pytest.approx(metrics.f1_score(labels, preds))
    assert r["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, probs[:, 1]))
    assert r["confusion_matrix"] == metrics.confusion_matrix(labels, preds).tolist()
    # 3 classes, class 2 never predicted: precision 0 by convention (sklearn zero_division=0), macro means.
    labels3 = rng.integers(0, 3, 60)
    probs3 = rng.dirichlet([1, 1, 1], 60) * [1, 1, 0.01]
    probs3 /= probs3.sum(1, keepdims=True)
    r3 = cm.report(labels3, probs3)
    preds3 = probs3.argmax(1)
    assert 2 not in preds3 and r3["per_class"]["precision"][2] == 0.0
    assert r3["precision"] == pytest.approx(metrics.precision_score(labels3, preds3, average="macro",
                                                                    zero_division=0))
    assert r3["f1"] == pytest.approx(metrics.f1_score(labels3, preds3, average="macro", zero_division=0))
    assert r3["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels3, probs3,
                                                                multi_class="ovr", average="macro"))
    assert np.isnan(cm.roc_auc(np.ones(4, int), np.full((4, 2), 0.5)))        # one class only: undefined


def tiny_config(**train):
    c = classifier_tiny.get_config()
    c.model = ml_collections.ConfigDict(dict(name="simple_cnn", widths=(4, 8), dropout=0.0, num_classes=2))
    c.data.update(dict(image_size=8, balance="none"))
    c.train.update(dict({"class_weights": ""}, **train))
    return c


def fake_variables(task, example, seed=0):
    """Random variables of `task`'s model without compiling its init: normal(0, 0.3) parameters, BatchNorm
    mean 0 / var 1."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if str(getattr(path[0], "key", "")) == "batch_stats":
            return jnp.full(s.shape, 1.0 if name == "var" else 0.0, s.dtype)
        return jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(task.init, jax.random.PRNGKey(0), example))


def batch(n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(-1, 1, (n, size, size, 1)).astype(np.float32),
            "label": np.arange(n, dtype=np.int32) % 2}


def test_weighted_smoothed_cross_entropy_and_labels_from_masks():
    task = ClassificationTask(tiny_config(class_weights="1, 3", label_smoothing=0.2))
    b = batch()
    variables = fake_variables(task, b)
    loss_and_logits = jax.jit(lambda v, b: (task.loss(v["params"], {"batch_stats": v["batch_stats"]}, b, None,
                                                      train=False)[0], task.apply(v, b["image"])))
    loss, logits = loss_and_logits(variables, b)
    logp = np.asarray(jax.nn.log_softmax(logits))
    target = np.full((4, 2), 0.1) + 0.8 * np.eye(2)[b["label"]]
    ce = -(target * logp).sum(1)
    w = np.array([1.0, 3.0])[b["label"]]
    assert float(loss) == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)
    mask = np.zeros((3, 8, 8, 1), np.float32)
    mask[1, 2, 3] = 1.0
    np.testing.assert_array_equal(np.asarray(labels_of({"mask": mask})), [0, 1, 0])
    np.testing.assert_allclose(balanced_weights([30, 10]), [40 / 60, 40 / 20])
    with pytest.raises(InputError, match="train.class_weights"):
        ClassificationTask(tiny_config(class_weights="1.0")).class_weights()


def test_imagenet_input_normalisation():
    config = tiny_config()
    config.data.update(dict(input_norm="imagenet", channels=3))
    x = np.zeros((1, 2, 2, 3), np.float32)                         # mid-grey: 0.5 on [0, 1]
    np.testing.assert_allclose(np.asarray(ClassificationTask(config).model_images(x))[0, 0, 0],
                               (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    config.data.channels = 1
    with pytest.raises(InputError, match="data.input_norm"):
        ClassificationTask(config)


@pytest.fixture(scope="module")
def frozen_run():
    """One compiled train step of the tiny CNN with only the head trainable."""
    config = tiny_config(trainable=("head",), lr=0.1, warmup_steps=0, ema=0.0)
    task = ClassificationTask(config)
    b = batch()
    state = TrainState.create(fake_variables(task, b), make_optimizer(config.train))
    new, metrics = jax.jit(make_train_step(task, config.train))(state, b, jax.random.PRNGKey(1))
    return task, state, new


def test_frozen_backbone_changes_only_the_head(frozen_run):
    _, old, new = frozen_run
    for name in old.params:
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old.params[name]),
                                                             jax.tree.leaves(new.params[name]))]
        assert all(changed) if name == "head" else not any(changed), name
    # Adam moments exist for the head only.
    moments = [x for x in jax.tree.leaves(new.opt_state) if getattr(x, "ndim", 0) > 0]
    assert sorted(x.shape for x in moments) == sorted([(8, 2), (2,)] * 2)
    with pytest.raises(InputError, match="train.trainable"):
        make_optimizer(tiny_config(trainable=("nothing",)).train).init(old.params)
    # The frozen backbone's BatchNorm layers ran on their running statistics and kept them.
    jax.tree.map(np.testing.assert_array_equal, old.model_state, new.model_state)


def test_frozen_batch_norm_uses_running_statistics():
    """Frozen BatchNorm layers normalise with running statistics in training (train mode's logits equal
    inference's when only those are frozen and dropout is 0); a trainable one, or any with
    train.freeze_batch_stats=False, uses the batch's statistics and updates its running ones."""
    b = batch()

    def run(**train):
        task = ClassificationTask(tiny_config(**train))
        variables = fake_variables(task, b)
        params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
        images = task.model_images(b["image"])
        logits, new_state = task.apply({"params": params, **state}, images, train=True, mutable=["batch_stats"])
        changed = {k: not np.array_equal(v["mean"], new_state["batch_stats"][k]["mean"])
                   for k, v in state["batch_stats"].items()}
        return np.asarray(logits), np.asarray(task.apply(variables, images, train=False)), changed

    train_logits, eval_logits, changed = run(trainable=("head",))
    np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-6)
    assert changed == {"block0_bn": False, "block1_bn": False}
    train_logits, eval_logits, changed = run(trainable=("block1", "head"))
    assert changed == {"block0_bn": False, "block1_bn": True}
    assert not np.allclose(train_logits, eval_logits)
    _, _, changed = run(trainable=("head",), freeze_batch_stats=False)
    assert changed == {"block0_bn": True, "block1_bn": True}


def test_evaluate_writes_confusion_matrix_and_metrics(frozen_run, tmp_path):
    task, _, state = frozen_run
    source = [{"image": x, "label": y} for x, y in zip(*batch(n=7, seed=3).values())]
    result = task.evaluate(state, source, str(tmp_path), num=None)
    assert result["num_examples"] == 7 and np.sum(result["confusion_matrix"]) == 7
    probs = np.asarray(jax.nn.softmax(task.apply(state.variables(ema=False), np.stack([s["image"] for s in source]))))
    assert result["accuracy"] == pytest.approx(cm.report([s["label"] for s in source], probs)["accuracy"])
    assert os.path.getsize(tmp_path / "confusion_matrix.png") > 1000
    assert (tmp_path / "predictions.json").exists()


def test_initial_state_imports_weights_and_keeps_a_new_head(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=4, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_labels=5))
    path = str(tmp_path / "resnet.pth")
    torch.save(hf.state_dict(), path)
    config = tiny_config(init_from=path)
    config.model = ml_collections.ConfigDict(dict(name="resnet50", depths=(1, 1, 1, 1), widths=(2, 2, 2, 2),
                                                  stem_channels=4, num_classes=2))
    config.data.update(dict(image_size=32, channels=3))
    task = ClassificationTask(config)
    state = TrainState.create(fake_variables(task, task.example_batch(1)), optax.sgd(0.1))
    new = task.initial_state(state)
    sd = hf.state_dict()
    np.testing.assert_array_equal(new.params["conv1"]["kernel"],
                                  sd["resnet.embedder.embedder.convolution.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(new.ema_params["layer4_0"]["conv3"]["kernel"],
                                  new.params["layer4_0"]["conv3"]["kernel"])
    np.testing.assert_array_equal(new.model_state["batch_stats"]["bn1"]["var"],
                                  sd["resnet.embedder.embedder.normalization.running_var"].numpy())
    np.testing.assert_array_equal(new.params["head"]["kernel"], state.params["head"]["kernel"])   # 5 -> 2 classes
    config.train.init_head = True
    with pytest.raises(InputError, match="fc.weight"):
        ClassificationTask(config).initial_state(state)


def test_balanced_weights_from_an_image_folder(tmp_path):
    from PIL import Image
    for name, n in (("no", 3), ("yes", 9)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((6 + i, 5, 3), 20 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    config = tiny_config(class_weights="balanced")
    config.data.update(dict(source="image_folder", root=str(tmp_path), channels=3, fractions=(1.0, 0.0, 0.0)))
    weights = np.asarray(ClassificationTask(config).class_weights())
    np.testing.assert_allclose(weights, [12 / (2 * 3), 12 / (2 * 9)], rtol=1e-6)


def test_batch_norm_without_scale_and_bias_follows_its_path_name():
    """A BatchNorm with no parameters is frozen unless `train.trainable` matches its own path: "head_bn"
    normalises with batch statistics and updates them; "body_bn" keeps them, even though a pattern names a scale
    and bias it does not have."""
    import flax.linen as nn
    import ml_collections
    from jaxdiff.tasks.base import _frozen_batch_norm_interceptor

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            bn = dict(use_running_average=False, use_scale=False, use_bias=False, momentum=0.5)
            x = nn.Dense(3, name="body_dense")(x)
            x = nn.BatchNorm(**bn, name="body_bn")(x)
            return nn.BatchNorm(**bn, name="head_bn")(nn.Dense(2, name="head")(x))

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4)) * 3 + 1
    variables = Net().init(jax.random.PRNGKey(1), x)
    cfg = ml_collections.ConfigDict(dict(trainable=("head", "body_bn/(scale|bias)"), freeze_batch_stats=True))
    with nn.intercept_methods(_frozen_batch_norm_interceptor(cfg)):
        _, updates = Net().apply(variables, x, mutable=["batch_stats"])
    before, after = variables["batch_stats"], updates["batch_stats"]
    np.testing.assert_array_equal(before["body_bn"]["mean"], after["body_bn"]["mean"])
    assert not np.allclose(before["head_bn"]["mean"], after["head_bn"]["mean"])
