"""Pictures of results: the one plotting setup (headless matplotlib, `plt`, and `save`, which
writes a PNG atomically) and the run pictures, learning curves and confusion matrices."""

import matplotlib

matplotlib.use("Agg")  # no display anywhere this runs
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import save_atomically  # noqa: E402


def save(fig, path: str) -> None:
    """Lay out, write as PNG (complete or absent; legends placed outside the axes included) and free the figure."""
    fig.tight_layout()
    save_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)


def curves(records: list, path: str, title: str = "") -> None:
    """Loss / accuracy / macro-F1 per epoch, train vs validation, from metrics.jsonl epoch records."""
    epochs = [r for r in records if "val_loss" in r or "train_loss" in r]
    panels = [("loss", "loss"), ("acc", "accuracy"), ("macro_f1", "macro-F1")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(r["epoch"], r[f"{split}_{key}"]) for r in epochs if f"{split}_{key}" in r]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save(fig, path)


def confusion(cm: np.ndarray, classes: list, path: str, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class)."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(4, min(14, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), [str(c)[:12] for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c)[:12] for c in classes], fontsize=7)
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save(fig, path)
