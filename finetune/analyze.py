"""What did the model learn? The pictures the ViT paper used.

    python -m finetune.analyze --weights RUN/model.safetensors [--images DIR_OR_CIFAR] --out analysis/

ViTs: cosine similarity of the position embeddings (one small grid per patch position), mean
attention distance per layer and head on sample images, and the first principal components of the
patch-embedding filters. CNNs: the first-layer filters.
"""

import os
import sys

import numpy as np
import torch

from common.errors import ArgumentParser, UserError, run_main
from common.models import create_model, read_sidecar
from common.plots import plt, save
from common.runs import check_out_folder


def _tile(filters: np.ndarray, path: str, title: str) -> None:
    """Filters (N, C, k, k) -> a grid of RGB (or gray) tiles, each normalised to [0, 1]."""
    n = len(filters)
    cols = int(np.ceil(np.sqrt(n)))
    fig, axes = plt.subplots(cols, cols, figsize=(cols * 0.9, cols * 0.9))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), filters):
        f = (f - f.min()) / max(f.max() - f.min(), 1e-8)
        ax.imshow(f.transpose(1, 2, 0) if f.shape[0] == 3 else f[0], cmap=None if f.shape[0] == 3 else "gray")
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def pos_embed_similarity(model, path: str) -> None:
    pe = model.pos_embed[0, 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens:].detach()
    gh, gw = model.patch_embed.grid_size
    pe = torch.nn.functional.normalize(pe, dim=-1)
    sim = (pe @ pe.T).reshape(gh, gw, gh, gw).numpy()
    fig, axes = plt.subplots(gh, gw, figsize=(gw * 0.8, gh * 0.8))
    for i in range(gh):
        for j in range(gw):
            ax = axes[i, j] if gh > 1 else axes[j]
            ax.imshow(sim[i, j], vmin=-1, vmax=1, cmap="viridis")
            ax.axis("off")
    fig.suptitle("position embedding cosine similarity (each tile: one patch vs all)", fontsize=9)
    save(fig, path)


def attention_maps(model, images: torch.Tensor) -> list[torch.Tensor]:
    """The attention probabilities of every block, each (B, heads, T, T), prefix tokens included."""
    captured = []
    hooks = []
    for blk in model.blocks:
        blk.attn.fused_attn = False  # the explicit path exposes the attention probabilities
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o.detach())))
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return captured


def attention_distance(model, images: torch.Tensor) -> np.ndarray:
    """Mean attention distance in pixels, (layers, heads): attention-weighted distance between query
    and key patches, averaged over patch queries and images (prefix tokens excluded)."""
    captured = attention_maps(model, images)
    gh, gw = model.patch_embed.grid_size
    ph = model.patch_embed.patch_size[0]
    ys, xs = np.divmod(np.arange(gh * gw), gw)
    dist = torch.tensor(np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None]) * ph, dtype=torch.float32)
    prefix = model.num_prefix_tokens
    out = []
    for attn in captured:  # (B, heads, T, T)
        a = attn[:, :, prefix:, prefix:]
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-9)
        out.append((a * dist).sum(-1).mean((0, 2)).numpy())
    return np.stack(out)


def plot_attention_distance(d: np.ndarray, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for layer, heads in enumerate(d):
        ax.scatter([layer + 1] * len(heads), heads, s=12)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean attention distance (px)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def patch_embed_pcs(model, path: str, count: int = 28) -> None:
    w = model.patch_embed.proj.weight.detach().numpy()  # (D, C, p, p)
    flat = w.reshape(len(w), -1)
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    _tile(vt[:count].reshape(-1, *w.shape[1:]), path, "patch-embedding filters: principal components")


def sample_images(path: str | None, model, size: int, mean, std, n: int = 16) -> torch.Tensor:
    """A batch of real images (an image folder or CIFAR-10 batches) or, without a path, noise."""
    from PIL import Image

    images = []
    if path and os.path.isdir(os.path.join(path, "cifar-10-batches-py")) or (path and os.path.exists(os.path.join(path, "test_batch"))):
        from finetune.datasets import load_cifar10

        val = load_cifar10(path).val
        images = [Image.fromarray(val.images[i]) for i in range(n)]
    elif path:
        for root, _, files in sorted(os.walk(path)):
            images += [Image.open(os.path.join(root, f)).convert("RGB") for f in sorted(files)
                       if f.lower().endswith((".png", ".jpg", ".jpeg"))][: n - len(images)]
    if not images:
        return torch.randn(n, 3, size, size)
    t = torch.stack([torch.from_numpy(np.asarray(im.resize((size, size)), np.float32) / 255).permute(2, 0, 1)
                     for im in images])
    return (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="model.safetensors with its model.json sidecar")
    ap.add_argument("--images", help="image folder or CIFAR-10 folder for attention distances")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    side = read_sidecar(args.weights)
    if not side:
        raise UserError(f"{args.weights} has no model.json beside it; analyze needs the model name and size")
    model = create_model(side["model"], side["num_classes"], img_size=side["img_size"], init=args.weights,
                         model_kwargs=side.get("model_kwargs")).eval()
    check_out_folder(args.out)
    os.makedirs(args.out, exist_ok=True)
    made = []
    if hasattr(model, "pos_embed") and hasattr(model, "blocks"):
        pos_embed_similarity(model, os.path.join(args.out, "pos_embed_similarity.png"))
        d = attention_distance(model, sample_images(args.images, model, side["img_size"], side["mean"], side["std"]))
        plot_attention_distance(d, os.path.join(args.out, "attention_distance.png"))
        np.savetxt(os.path.join(args.out, "attention_distance.csv"), d, delimiter=",", fmt="%.3f")
        patch_embed_pcs(model, os.path.join(args.out, "patch_embed_pcs.png"))
        made = ["pos_embed_similarity.png", "attention_distance.png", "patch_embed_pcs.png"]
    else:
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        _tile(conv.weight.detach().numpy(), os.path.join(args.out, "first_layer_filters.png"), "first-layer filters")
        made = ["first_layer_filters.png"]
    print(f"{args.out}: " + ", ".join(made))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
