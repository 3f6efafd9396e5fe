"""Few-shot linear evaluation on frozen features, as in the ViT paper: closed-form ridge regression
from features to {-1, +1} one-vs-rest targets, k images per class, accuracy on the validation set."""

import numpy as np
import torch


def ridge_fit(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float) -> np.ndarray:
    """Weights (D + 1, C) minimising ||[X 1] W - Y||^2 + l2 ||W||^2 with Y in {-1, +1}."""
    x = np.hstack([features, np.ones((len(features), 1))])
    y = -np.ones((len(labels), num_classes))
    y[np.arange(len(labels)), labels] = 1.0
    return np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y)


def ridge_predict(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    return (np.hstack([features, np.ones((len(features), 1))]) @ weights).argmax(1)


def few_shot(train_x, train_y, val_x, val_y, num_classes: int, shots=(1, 5, 10, 25), trials: int = 3,
             l2: float = 1.0, seed: int = 0) -> dict:
    """Mean and std accuracy over `trials` draws of k training images per class, for each k."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in shots:
        accs = []
        for _ in range(trials):
            idx = np.concatenate([rng.choice(np.nonzero(train_y == c)[0], k, replace=False)
                                  for c in range(num_classes) if (train_y == c).sum() >= k])
            w = ridge_fit(train_x[idx], train_y[idx], num_classes, l2)
            accs.append(float((ridge_predict(w, val_x) == val_y).mean()))
        out[f"{k}shot_acc"] = float(np.mean(accs))
        out[f"{k}shot_acc_std"] = float(np.std(accs))
    return out


def features(model, dataset, accelerator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits features (the classifier's input) of a dataset, every sample once."""
    from common.engine import predict

    class Backbone(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_head(self.m.forward_features(x), pre_logits=True)

    feats, targets = predict(Backbone(model), dataset, accelerator, batch)
    return feats.numpy(), targets.numpy()
