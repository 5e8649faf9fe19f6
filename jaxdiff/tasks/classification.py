"""Image classification (e.g. brain MRI tumour yes/no) with the classifiers of `jaxdiff.models.classifiers`.

Batch: {"image": (B, H, W, C) in [-1, 1], "label": (B,) int32}. A source without "label" but with a "mask"
(B, H, W, 1) (e.g. the phantom slices) is read as "does this slice show a tumour": label = any(mask > 0.5).

Loss: softmax cross-entropy with optional label smoothing (`train.label_smoothing`) and class weights
(`train.class_weights`: K numbers as "1, 3", or "balanced"; `data.balance = "weights"` means "balanced"
too): "balanced" takes the training source's `class_weights` (image_folder with data.balance="weights") or
else N / (K * count_k) from its labels. Weighted loss = sum_i w[y_i] ce_i / sum_i w[y_i] (PyTorch's convention).
`data.input_norm = "imagenet"` feeds the model ImageNet-normalised RGB (what torchvision weights expect).
Prediction: class probabilities (B, K). Evaluation: `jaxdiff.metrics.classification.report` plus a
confusion-matrix figure. Weight import: `train.init_from` = a torchvision / Hugging Face state-dict file,
loaded by `initial_state` into a fresh state (see `jaxdiff.models.classifiers.port`).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import reporting
from jaxdiff.errors import InputError
from jaxdiff.metrics import classification as cls_metrics
from jaxdiff.tasks.base import Task, progress_bar, progress_line, split_name, zeros_like_spec


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # torchvision's, on [0, 1] RGB


def labels_of(batch: dict, xp=jnp):
    """(B,) int32 labels: batch["label"], or any(mask > 0.5) per example when the batch has only a mask.
    `xp` is jax.numpy (traced, in the loss) or numpy (on the host)."""
    if "label" in batch:
        return xp.asarray(batch["label"]).astype(xp.int32).reshape(-1)
    if "mask" in batch:
        mask = xp.asarray(batch["mask"])
        return xp.any(mask.reshape(mask.shape[0], -1) > 0.5, axis=1).astype(xp.int32)
    raise InputError("data: examples have neither 'label' nor 'mask' (needed by task classification)")


def balanced_weights(counts) -> np.ndarray:
    """(K,) class weights N / (K * count_k) (scikit-learn's "balanced"); a class with no examples gets 0."""
    counts = np.asarray(counts, np.float64)
    return np.divide(counts.sum(), len(counts) * counts, out=np.zeros_like(counts), where=counts > 0)


def source_labels(source) -> np.ndarray:
    """(N,) int labels of a source: its `labels` attribute if it has one, else read example by example."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [labels_of({k: np.asarray(v)[None] for k, v in source[i].items() if k in ("label", "mask")},
                            np)[0] for i in range(len(source))]
    return np.asarray(labels, np.int64)


class ClassificationTask(Task):
    """Train a classifier with (weighted, smoothed) cross-entropy; evaluate accuracy, precision, recall, F1,
    ROC-AUC and the confusion matrix."""

    def __init__(self, config):
        super().__init__(config)
        self.num_classes = int(self.model.num_classes)
        self.label_smoothing = float(config.train.get("label_smoothing", 0.0))
        self._class_weights = None
        self.input_norm = str(config.data.get("input_norm", "none") or "none")
        if self.input_norm not in ("none", "imagenet"):
            raise InputError(f"config key data.input_norm: {self.input_norm!r} is not none or imagenet")
        if self.input_norm == "imagenet" and int(config.data.get("channels", 3)) != 3:
            raise InputError("config key data.input_norm: imagenet normalisation needs data.channels = 3")

    # --- batches and model plumbing --------------------------------------------------------------------
    def example_batch(self, batch_size):
        s, c = int(self.config.data.image_size), int(self.config.data.get("channels", 3))
        return zeros_like_spec({"image": ((s, s, c), np.float32), "label": ((), np.int32)}, batch_size)

    def model_inputs(self, batch):
        return (jnp.asarray(batch["image"]),), {}

    def model_images(self, images):
        """Images as the model sees them: the batch's [-1, 1] values, or with `data.input_norm = "imagenet"`
        (for torchvision ImageNet weights) ((x + 1) / 2 - mean) / std per RGB channel."""
        if self.input_norm == "none":
            return images
        return ((images + 1.0) * 0.5 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)

    def class_weights(self):
        """(K,) float32 loss weights or None (read once; see the module docstring). `train.class_weights`:
        "" / None (unweighted), "balanced", or K numbers ("1, 3" or a tuple)."""
        spec = self.config.train.get("class_weights", None)
        if not spec and self.config.data.get("balance", None) == "weights":
            spec = "balanced"
        if not spec:
            return None
        if self._class_weights is None:
            if spec == "balanced":
                from jaxdiff import data
                source = data.get_source(self.config.data, "train")
                given = getattr(source, "class_weights", None)     # image_folder with data.balance="weights"
                self._class_weights = np.asarray(given, np.float64) if given is not None else balanced_weights(
                    np.bincount(self.check_labels(source_labels(source)), minlength=self.num_classes))
            else:
                try:
                    values = spec.strip("()[] ").split(",") if isinstance(spec, str) else spec
                    self._class_weights = np.asarray([float(v) for v in values], np.float64)
                except ValueError:
                    self._class_weights = np.zeros(0)
            if self._class_weights.shape != (self.num_classes,):
                raise InputError(f"config key train.class_weights: {spec!r} is not 'balanced' or "
                                 f"{self.num_classes} numbers")
        return jnp.asarray(self._class_weights, jnp.float32)

    def check_labels(self, labels: np.ndarray) -> np.ndarray:
        """`labels` (host array), or InputError when one is outside 0 .. num_classes - 1."""
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise InputError(f"config key model.num_classes: {self.num_classes} but the data has label "
                             f"{int(labels.max() if labels.max() >= self.num_classes else labels.min())}")
        return labels

    def loss(self, params, model_state, batch, rng, train=True):
        labels = labels_of(batch)
        mutable = list(model_state) if train and model_state else False
        out = self.apply({"params": params, **model_state}, self.model_images(batch["image"]), rng=rng,
                         train=train, mutable=mutable)
        logits, new_state = out if mutable else (out, model_state)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, self.num_classes), self.label_smoothing)
        ce = optax.softmax_cross_entropy(logits, targets)
        weights = self.class_weights()
        w = jnp.ones_like(ce) if weights is None else weights[labels]
        loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)
        acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return loss, ({"loss": loss, "accuracy": acc}, new_state)

    def predict(self, variables, images):
        """Class probabilities (B, K) for images (B, H, W, C)."""
        return jax.nn.softmax(self.apply(variables, self.model_images(images), train=False), axis=-1)

    # --- weight import ---------------------------------------------------------------------------------
    def initial_state(self, state):
        """`state` with the weights of `train.init_from` (a PyTorch state-dict file; "" = unchanged) in its
        parameters, EMA parameters and BatchNorm statistics, each placed with the sharding of the leaf it
        replaces. A `head` of another shape keeps its initialisation unless `train.init_head` is True
        (then a mismatch is an error). Call it on a fresh state only (not after restoring a checkpoint)."""
        path = str(self.config.train.get("init_from", "") or "")
        if not path:
            return state
        from jaxdiff.models.classifiers import port
        sd = port.load_state_dict(path)
        variables, _ = port.port_state_dict(state.variables(ema=False), sd, self.model, source=path,
                                            skip_head=not bool(self.config.train.get("init_head", False)))

        def place(new, old):  # imported leaves are numpy arrays; the others (a skipped head) stay as they are
            if not isinstance(new, np.ndarray):
                return old
            return jax.make_array_from_callback(old.shape, old.sharding, lambda idx: new[idx])

        return state.replace(params=jax.tree.map(place, variables["params"], state.params),
                             ema_params=jax.tree.map(place, variables["params"], state.ema_params),
                             model_state={k: jax.tree.map(place, variables[k], v)
                                          for k, v in state.model_state.items()})

    # --- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, state, source, out_dir: str, rng=None, num: int | None = None, num_steps=None,
                 split: str | None = None) -> dict:
        """Metrics of `jaxdiff.metrics.classification.report` on the first `num` examples of `source` (all by
        default, or `eval.num_examples`) with EMA parameters (raw ones when `train.ema` is 0); writes
        `<out_dir>/confusion_matrix.png` and `<out_dir>/predictions.json` (labels and probabilities); `split` names
        the data in the progress line."""
        ev = self.config.get("eval", {})
        limit = num or ev.get("num_examples")
        n = len(source) if limit is None else min(int(limit), len(source))
        if n == 0:
            raise InputError("data: the evaluation split has no examples")
        variables = state.variables(ema=float(self.config.train.get("ema", 0.0)) > 0)
        fn, bs = jax.jit(self.predict), int(ev.get("batch_size", 16))
        labels, probs = [], []
        progress_line(f"scoring {split_name(source, split)}: {n} examples, in batches of {min(bs, n)}")
        for start in progress_bar(range(0, n, bs), "classifying", total=-(-n // bs)):
            ex = [source[i] for i in range(start, min(start + bs, n))]
            images = np.stack([np.asarray(e["image"], np.float32) for e in ex])
            pad = bs - len(ex)   # pad the last batch: one compiled shape
            padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)]) if pad else images
            probs.append(np.asarray(jax.device_get(fn(variables, padded)))[:len(ex)])
            labels.append(labels_of({k: np.stack([np.asarray(e[k]) for e in ex]) for k in ("label", "mask")
                                     if k in ex[0]}, np))
        labels, probs = self.check_labels(np.concatenate(labels)), np.concatenate(probs)
        result = cls_metrics.report(labels, probs)
        names = getattr(source, "classes", None) or [str(k) for k in range(self.num_classes)]
        reporting.write_classification(out_dir, result["confusion_matrix"], list(names), labels, probs)
        return result

    def finalize(self, state, workdir, val_source, rng) -> dict:
        return self.evaluate(state, val_source, os.path.join(workdir, "samples"), rng, split="val")
