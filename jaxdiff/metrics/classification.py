"""Classification metrics: plain NumPy functions on integer labels, predicted classes and probabilities.

Inputs
  labels: (N,) true classes in 0..K-1.  preds: (N,) predicted classes.  probs: (N, K) class probabilities
  (softmax outputs; ROC-AUC ranks each column's scores across examples).

Conventions (those of scikit-learn with `zero_division=0`, so the numbers can be compared)
  precision of a class never predicted = 0.0; recall of a class absent from `labels` = 0.0;
  F1 = 0.0 when precision + recall = 0.
  Binary problems (K = 2) report precision / recall / F1 of class 1 (the positive class: tumour, "yes");
  K > 2 reports their unweighted means over all K classes ("macro").
  ROC-AUC is the probability that a random positive scores above a random negative (ties count 1/2), from
  average ranks (Mann-Whitney U). Binary: scores = probs[:, 1]. K > 2: macro mean of one-vs-rest AUCs over the
  classes that have both positives and negatives in `labels`. It is nan when no class has both.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    labels, preds = np.asarray(labels, np.int64).ravel(), np.asarray(preds, np.int64).ravel()
    return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray) -> dict:
    """{"precision", "recall", "f1": (K,) arrays} from a confusion matrix (conventions above)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0).astype(np.float64), cm.sum(1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1}


def binary_roc_auc(is_positive, scores) -> float:
    """ROC-AUC of `scores` (N,) for the boolean target `is_positive` (N,); nan if either class is absent."""
    pos = np.asarray(is_positive, bool).ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64).ravel())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(labels, probs) -> float:
    """Binary (K = 2: probs[:, 1]) or macro one-vs-rest ROC-AUC (K > 2); see the module conventions."""
    labels, probs = np.asarray(labels).ravel(), np.asarray(probs, np.float64)
    if probs.shape[1] == 2:
        return binary_roc_auc(labels == 1, probs[:, 1])
    aucs = [binary_roc_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def report(labels, probs) -> dict:
    """All metrics of predictions `argmax(probs)`: accuracy, precision, recall, f1 (binary: class 1; else
    macro), roc_auc, balanced_accuracy (mean of the K recalls), per-class lists and the confusion matrix (as lists)."""
    labels, probs = np.asarray(labels, np.int64).ravel(), np.asarray(probs, np.float64)
    k = probs.shape[1]
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds, k)
    pc = per_class(cm)
    pick = (lambda v: float(v[1])) if k == 2 else (lambda v: float(np.mean(v)))
    return {"accuracy": float(np.mean(preds == labels)) if len(labels) else float("nan"),
            "precision": pick(pc["precision"]), "recall": pick(pc["recall"]), "f1": pick(pc["f1"]),
            "roc_auc": roc_auc(labels, probs), "balanced_accuracy": float(np.mean(pc["recall"])),
            "num_examples": int(len(labels)), "confusion_matrix": cm.tolist(),
            "per_class": {name: v.tolist() for name, v in pc.items()}}
