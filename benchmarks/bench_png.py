"""PNG encoding per kind: the Sub filter against no filter, ISA-L level 1, CPU time and bytes per image.

    python benchmarks/bench_png.py [--images 200] [--rounds 3]

Renders --images samples of each kind at its default size (single / multi at 256 px), then encodes
each the two ways. The figures in docs/benchmarks.md ("Grayscale PNG without a filter") came from this
measurement; fractalgen/png.py uses no filter for grayscale and Sub for colour. Not a test.
"""

import argparse
import time

import numpy as np
from isal import isal_zlib

from fractalgen import DatasetSpec, render_sample
from fractalgen.png import _filtered_rows

KINDS = {"rcdb": {}, "visualatom": {}, "1p-frac": {}, "exfractal": {}, "single": {"size": 256}, "multi": {"size": 256}}


def sub_filtered(image: np.ndarray) -> np.ndarray:
    """The Sub filter for any channel count (what png.py applies to colour images)."""
    h, w = image.shape[:2]
    ch = 1 if image.ndim == 2 else 3
    rows = np.ascontiguousarray(image).reshape(h, w * ch)
    out = np.empty((h, w * ch + 1), np.uint8)
    out[:, 0] = 1
    out[:, 1:ch + 1] = rows[:, :ch]
    np.subtract(rows[:, ch:], rows[:, :-ch], out=out[:, ch + 1:])
    return out


def unfiltered(image: np.ndarray) -> np.ndarray:
    h = image.shape[0]
    out = np.zeros((h, image.size // h + 1), np.uint8)
    out[:, 1:] = image.reshape(h, -1)
    return out


def cost(filter_fn, images, rounds):
    isal_zlib.compress(filter_fn(images[0]), 1)
    t = time.process_time()
    for _ in range(rounds):
        for image in images:
            isal_zlib.compress(filter_fn(image), 1)
    ms = (time.process_time() - t) / rounds / len(images) * 1e3
    return ms, np.mean([len(isal_zlib.compress(filter_fn(image), 1)) for image in images]) / 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print("| kind | Sub filter | no filter | png.py uses |\n|---|---|---|---|")
    for kind, size in KINDS.items():
        spec = DatasetSpec.create(kind, 10**6, 100, **size)
        images = [render_sample(spec, int(i)).image for i in np.linspace(0, 10**6 - 1, args.images).astype(int)]
        (a, ka), (b, kb) = cost(sub_filtered, images, args.rounds), cost(unfiltered, images, args.rounds)
        used = "Sub" if _filtered_rows(images[0], 1 if images[0].ndim == 2 else 3)[0, 0] == 1 else "none"
        print(f"| {kind}, {images[0].shape[0]} px | {a:.3f} ms, {ka:.1f} kB | {b:.3f} ms, {kb:.1f} kB | {used} |")


if __name__ == "__main__":
    main()
