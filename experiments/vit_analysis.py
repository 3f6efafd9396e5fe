"""What ViTs learn from each pretraining source, side by side: one picture per measure, one panel per source.

    python -m experiments.vit_analysis --source scratch=scratch --source single=RUN/model.safetensors \
        --source in1k=timm:deit_small_patch16_224.fb_in1k --model deit_small_patch16_224 \
        [--model-kwargs YAML] [--img-size 224] [--images CIFAR_OR_FOLDER] --out DIR

Pictures (DIR/): attention_distance.png (mean attention distance per layer and head),
pos_embed_similarity.png (cosine similarity of every patch's position embedding to all others),
patch_embed_pcs.png (principal components of the patch-embedding filters), attention_rollout.png
(Abnar & Zuidema's rollout on sample images); attention_distance.csv holds the numbers. Weights
with a model.json sidecar bring their own model and normalisation; scratch and timm: sources use
--model (and --model-kwargs), normalised with the weights' pretrained config (0.5/0.5 for scratch).
"""

import os
import sys

import numpy as np
import torch
import yaml
from matplotlib.ticker import MaxNLocator

from common.errors import ArgumentParser, UserError, run_main
from common.models import create_model, read_sidecar
from common.plots import plt, save
from common.runs import check_out_folder
from finetune.analyze import attention_distance, attention_maps, sample_images

PCS = 12       # principal components shown per source
SAMPLES = 4    # images in the rollout picture


def load_source(init: str, model: str | None, model_kwargs: dict, img_size: int | None):
    """(model in eval mode, img_size, mean, std) for one source."""
    side = read_sidecar(init) if init != "scratch" and not init.startswith("timm:") else None
    if side:
        net = create_model(side["model"], side["num_classes"], img_size=side["img_size"], init=init,
                           model_kwargs=side.get("model_kwargs"))
        return net.eval(), side["img_size"], side["mean"], side["std"]
    if not model:
        raise UserError(f"source {init} has no model.json beside it: pass --model <timm name>")
    torch.manual_seed(0)  # a scratch model is a pure function of the seed
    size = img_size or 224
    net = create_model(model, 1000, img_size=size, init=init, model_kwargs=model_kwargs)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean, std = ((cfg.get("mean"), cfg.get("std")) if init.startswith("timm:") and cfg.get("mean")
                 else ([0.5] * 3, [0.5] * 3))
    return net.eval(), size, list(mean), list(std)


def rollout(model, images: torch.Tensor) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): per image, how much each patch flows into the class
    token (mean over patch queries for models without one), (B, gh, gw)."""
    maps = attention_maps(model, images)
    tokens = maps[0].shape[-1]
    flow = torch.eye(tokens).expand(len(images), tokens, tokens)
    for attn in maps:
        a = 0.5 * attn.mean(1) + 0.5 * torch.eye(tokens)  # the residual path counts as half
        flow = (a / a.sum(-1, keepdim=True)) @ flow
    prefix = model.num_prefix_tokens
    patches = flow[:, 0, prefix:] if prefix else flow.mean(1)
    gh, gw = model.patch_embed.grid_size
    return patches.reshape(len(images), gh, gw).numpy()


def pos_embed_mosaic(model) -> np.ndarray:
    """(gh*gh, gw*gw): tile (i, j) is patch (i, j)'s cosine similarity to every position."""
    pe = model.pos_embed[0, 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens:].detach()
    gh, gw = model.patch_embed.grid_size
    pe = torch.nn.functional.normalize(pe, dim=-1)
    sim = (pe @ pe.T).reshape(gh, gw, gh, gw).numpy()
    return sim.transpose(0, 2, 1, 3).reshape(gh * gh, gw * gw)


def patch_pcs(model, count: int = PCS) -> np.ndarray:
    w = model.patch_embed.proj.weight.detach().numpy()  # (D, C, p, p)
    flat = w.reshape(len(w), -1)
    _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    return vt[:count].reshape(-1, *w.shape[1:])


def analyse(sources: dict, model: str | None, model_kwargs: dict, img_size: int | None, images: str | None,
            out: str) -> list[str]:
    loaded = {name: load_source(init, model, model_kwargs, img_size) for name, init in sources.items()}
    for name, (net, *_) in loaded.items():
        if not (hasattr(net, "pos_embed") and hasattr(net, "blocks")):
            raise UserError(f"source {name} is not a ViT ({type(net).__name__}); the analysis needs one")
    os.makedirs(out, exist_ok=True)
    names, n = list(loaded), len(loaded)
    raw = {name: sample_images(images, net, size, [0.0] * 3, [1.0] * 3, n=16) for name, (net, size, _, _) in loaded.items()}

    def normalised(name):
        _, _, mean, std = loaded[name]
        return (raw[name] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    # 1. mean attention distance per layer and head
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), sharey=True, squeeze=False)
    rows = []
    for ax, name in zip(axes[0], names):
        d = attention_distance(loaded[name][0], normalised(name))
        for layer, heads in enumerate(d):
            ax.scatter([layer + 1] * len(heads), heads, s=10)
            rows += [[name, layer + 1, h, float(v)] for h, v in enumerate(heads)]
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean attention distance (px)")
    save(fig, os.path.join(out, "attention_distance.png"))
    with open(os.path.join(out, "attention_distance.csv"), "w") as f:
        f.write("source,layer,head,distance_px\n" + "".join(f"{s},{l},{h},{v:.3f}\n" for s, l, h, v in rows))

    # 2. position-embedding similarity
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.imshow(pos_embed_mosaic(loaded[name][0]), vmin=-1, vmax=1, cmap="viridis")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle("position-embedding cosine similarity (tile i,j: patch i,j against every position)", fontsize=9)
    save(fig, os.path.join(out, "pos_embed_similarity.png"))

    # 3. patch-embedding principal components: one row per source
    fig, axes = plt.subplots(n, PCS, figsize=(0.9 * PCS, 1.0 * n + 0.4), squeeze=False)
    for row, name in zip(axes, names):
        pcs = patch_pcs(loaded[name][0])
        for k, ax in enumerate(row):
            ax.axis("off")
            if k < len(pcs):
                f = pcs[k]
                f = (f - f.min()) / max(f.max() - f.min(), 1e-8)
                ax.imshow(f.transpose(1, 2, 0) if f.shape[0] == 3 else f[0], cmap=None if f.shape[0] == 3 else "gray")
        row[0].set_title(name, fontsize=8, loc="left")
    fig.suptitle("patch-embedding filters: first principal components", fontsize=9)
    save(fig, os.path.join(out, "patch_embed_pcs.png"))

    # 4. attention rollout on the same sample images: one column per source
    fig, axes = plt.subplots(SAMPLES, n + 1, figsize=(2.0 * (n + 1), 2.0 * SAMPLES), squeeze=False)
    maps = {name: rollout(loaded[name][0], normalised(name)[:SAMPLES]) for name in names}
    first = raw[names[0]]
    for i in range(SAMPLES):
        axes[i][0].imshow(first[i].permute(1, 2, 0).clamp(0, 1).numpy())
        for ax, name in zip(axes[i][1:], names):
            image = raw[name][i].permute(1, 2, 0).clamp(0, 1).numpy()
            heat = torch.nn.functional.interpolate(torch.from_numpy(maps[name][i])[None, None], size=image.shape[:2],
                                                   mode="bilinear")[0, 0].numpy()
            ax.imshow(image)
            ax.imshow(heat, alpha=0.6, cmap="inferno")
            if i == 0:
                ax.set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    axes[0][0].set_title("image", fontsize=8)
    save(fig, os.path.join(out, "attention_rollout.png"))
    return ["attention_distance.png", "pos_embed_similarity.png", "patch_embed_pcs.png", "attention_rollout.png"]


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", required=True, metavar="NAME=INIT",
                    help="a source: scratch, a model.safetensors (with model.json), or timm:<name>.<tag>")
    ap.add_argument("--model", help="the timm model of scratch and timm: sources")
    ap.add_argument("--model-kwargs", default="{}", help="extra timm.create_model arguments (YAML mapping)")
    ap.add_argument("--img-size", type=int, default=None, help="input size of scratch and timm: sources (default 224)")
    ap.add_argument("--images", help="CIFAR-10 folder or image folder for the attention pictures (default: noise)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    sources = {}
    for text in args.source:
        name, sep, init = text.partition("=")
        if not sep or not name or not init:
            raise UserError(f"--source {text!r} must look like NAME=INIT (e.g. single=runs/x/model.safetensors)")
        sources[name] = init
    kwargs = yaml.safe_load(args.model_kwargs)
    if not isinstance(kwargs, dict):
        raise UserError(f"--model-kwargs must be a YAML mapping, got {args.model_kwargs!r}")
    check_out_folder(args.out)
    made = analyse(sources, args.model, kwargs, args.img_size, args.images, args.out)
    print(f"{args.out}: " + ", ".join(made))


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
