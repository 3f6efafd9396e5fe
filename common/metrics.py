"""Classification metrics in NumPy (checked against hand-computed values in the tests).

Single-label: accuracy, macro-F1, confusion matrix. Multi-label: per-label F1 and macro-F1 at a
0.5 probability threshold, mean average precision (mAP) over labels, exact-match accuracy.
"""

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[t, p] = how many samples of true class t were predicted as p."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def single_label(logits: np.ndarray, y_true: np.ndarray, num_classes: int) -> dict:
    pred = logits.argmax(1)
    cm = confusion_matrix(y_true, pred, num_classes)
    tp = np.diag(cm)
    f1 = f1_from_counts(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    present = cm.sum(1) > 0  # macro over the classes that occur in the evaluated set
    return {"acc": float((pred == y_true).mean()), "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "confusion": cm}


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one label: mean precision at the rank of each relevant item (ties broken by order)."""
    if relevant.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def multi_label(logits: np.ndarray, y_true: np.ndarray, threshold: float = 0.5) -> dict:
    y_true = y_true.astype(bool)
    pred = (1.0 / (1.0 + np.exp(-logits))) >= threshold
    tp = (pred & y_true).sum(0)
    f1 = f1_from_counts(tp, (pred & ~y_true).sum(0), (~pred & y_true).sum(0))
    ap = np.array([average_precision(logits[:, k], y_true[:, k]) for k in range(y_true.shape[1])])
    return {"macro_f1": float(f1.mean()), "per_label_f1": f1.round(4).tolist(),
            "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
            "acc": float((pred == y_true).all(1).mean())}


def compute(logits: np.ndarray, targets: np.ndarray, num_classes: int, multilabel: bool) -> dict:
    return multi_label(logits, targets) if multilabel else single_label(logits, targets, num_classes)
