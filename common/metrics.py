"""Classification metrics from scikit-learn.

Single-label: accuracy, macro-F1 (over the classes present in the evaluated set), confusion matrix.
Multi-label: per-label F1 and macro-F1 at a 0.5 probability threshold, mean average precision (mAP,
over labels with at least one positive), exact-match accuracy.

`StreamingMetrics` gives the same numbers from per-batch counts, so training metrics need memory
independent of the epoch length (single-label: a confusion matrix; multi-label: the CPU scores mAP
needs, a few floats per image).
"""

import numpy as np
import torch
from sklearn import metrics as skm


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[t, p] = how many samples of true class t were predicted as p."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def from_confusion(cm: np.ndarray) -> dict:
    """Accuracy and macro-F1 of a confusion matrix (each cell weighs its (true, predicted) pair)."""
    k = len(cm)
    true, pred = np.repeat(np.arange(k), k), np.tile(np.arange(k), k)
    present = np.nonzero(cm.sum(1) > 0)[0]  # macro over the classes that occur in the evaluated set
    if not len(present):
        return {"acc": 0.0, "macro_f1": 0.0, "confusion": cm}
    weights = cm.ravel()
    f1 = skm.f1_score(true, pred, labels=present, average="macro", sample_weight=weights, zero_division=0)
    return {"acc": float(np.trace(cm) / cm.sum()), "macro_f1": float(f1), "confusion": cm}


def single_label(logits: np.ndarray, y_true: np.ndarray, num_classes: int) -> dict:
    return from_confusion(confusion_matrix(y_true, logits.argmax(1), num_classes))


def multi_label(logits: np.ndarray, y_true: np.ndarray, threshold: float = 0.5) -> dict:
    y_true = y_true.astype(bool)
    pred = (1.0 / (1.0 + np.exp(-logits))) >= threshold
    f1 = skm.f1_score(y_true, pred, average=None, zero_division=0)
    # AP is undefined for a label with no positive: such labels are left out of the mean
    ap = [skm.average_precision_score(y_true[:, k], logits[:, k]) for k in range(y_true.shape[1]) if y_true[:, k].any()]
    return {"macro_f1": float(f1.mean()), "per_label_f1": np.round(f1, 4).tolist(),
            "map": float(np.mean(ap)) if ap else 0.0, "acc": float((pred == y_true).all(1).mean())}


def compute(logits: np.ndarray, targets: np.ndarray, num_classes: int, multilabel: bool) -> dict:
    return multi_label(logits, targets) if multilabel else single_label(logits, targets, num_classes)


class StreamingMetrics:
    """Loss and metrics accumulated batch by batch on the device, summed over ranks at the end."""

    def __init__(self, num_classes: int, multilabel: bool, device):
        self.num_classes, self.multilabel, self.device = num_classes, multilabel, device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)
        self.confusion = torch.zeros(self.num_classes ** 2, dtype=torch.int64, device=self.device)
        self.scores, self.labels = [], []  # multi-label only, on the CPU

    def state_dict(self) -> dict:
        """The accumulators as tensors (a checkpoint taken inside an epoch keeps them)."""
        state = {"loss_sum": self.loss_sum.cpu(), "count": self.count.cpu(), "confusion": self.confusion.cpu()}
        if self.scores:
            state.update(scores=torch.cat(self.scores), labels=torch.cat(self.labels))
        return state

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        self.loss_sum += state["loss_sum"].to(self.device)
        self.count += state["count"].to(self.device)
        self.confusion += state["confusion"].to(self.device)
        if "scores" in state:
            self.scores, self.labels = [state["scores"]], [state["labels"]]

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.detach().float()
        if self.multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="sum")
            self.loss_sum += loss.double() / targets.shape[1]  # mean over labels, as the unreduced BCE loss
            self.scores.append(logits.cpu())
            self.labels.append(targets.cpu())
        else:
            self.loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
            self.confusion += torch.bincount(targets * self.num_classes + logits.argmax(1),
                                             minlength=self.num_classes ** 2)
        self.count += targets.shape[0]

    def result(self, accelerator) -> dict:
        """Metrics over every rank's batches (a collective: call it on every rank)."""
        loss_sum, count = accelerator.reduce(self.loss_sum, "sum"), accelerator.reduce(self.count, "sum")
        if not int(count):
            return {}
        out = {"loss": float(loss_sum / count)}
        if self.multilabel:
            scores = accelerator.gather(torch.cat(self.scores).to(self.device)).cpu().numpy()
            labels = accelerator.gather(torch.cat(self.labels).to(self.device)).cpu().numpy()
            out.update(multi_label(scores, labels))
        else:
            cm = accelerator.reduce(self.confusion, "sum").cpu().numpy().reshape(self.num_classes, self.num_classes)
            out.update(from_confusion(cm))
        out.pop("confusion", None)
        return out
