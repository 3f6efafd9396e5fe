"""Write scikit-learn's bundled handwritten digits as an ImageFolder (train/<class>/, val/<class>/).

The digits ship inside scikit-learn (1,797 real 8x8 scans, no download), so the main job can
fine-tune and evaluate on real images on a machine with no network. Images are upscaled to
`--size` pixels and made RGB; the split is stratified and seeded.

    python -m experiments.prepare_digits --out data/digits --size 32
"""

import argparse
import os
import shutil

import numpy as np
from PIL import Image


def write_digits(out: str, size: int = 32, val_fraction: float = 0.3, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    split = {}
    for label in np.unique(digits.target):  # stratified: the same fraction of every class
        idx = rng.permutation(np.nonzero(digits.target == label)[0])
        n_val = int(round(len(idx) * val_fraction))
        split.update({int(i): "val" for i in idx[:n_val]})
        split.update({int(i): "train" for i in idx[n_val:]})
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"train": 0, "val": 0}
    for i, (image, label) in enumerate(zip(images, digits.target)):
        folder = os.path.join(tmp, split[i], str(label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).resize((size, size), Image.BICUBIC).convert("RGB").save(
            os.path.join(folder, f"{i:04d}.png"))
        counts[split[i]] += 1
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # complete or absent, never half-written
    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = write_digits(args.out, args.size, seed=args.seed)
    print(f"{args.out}: {counts['train']} train, {counts['val']} val images in 10 classes")


if __name__ == "__main__":
    main()
