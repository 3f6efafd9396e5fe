"""Renderer speed: kernel images/s per core, end-to-end shard writing, and 2-worker scaling.

    python benchmarks/bench_render.py [--n 4000] [--size 256] [--points 100000]

Figures go to docs/benchmarks.md with the command that made them. Not a test: timings depend on
the machine and on what else runs on it.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from fractalgen import DatasetSpec, render_dataset, render_sample
from fractalgen import kernels
from fractalgen.rng import generator, kernel_seed
from fractalgen.writer import rate_split


def kernel_rate(spec: DatasetSpec, images: int) -> float:
    """Images/s on one core for: draw patch + seed, chaos game, rasterise, patch, colour (no
    background, blur or encoding) — the work the public renderer's 150-175 img/s figure covers."""
    size, points = spec.size, spec.options["points"]

    def one(i):
        cls = i % spec.num_classes
        rng = generator(0, "bench", i)
        patch = rng.integers(0, 2, (3, 3)).astype(np.uint8)
        patch[1, 1] = 1
        ok, counts = kernels.render_counts(spec.systems[cls], spec._thresholds[cls], points, kernel_seed(rng),
                                           size, size, 1.0, 1.0, 0.0, 0.0, False, False, False, patch)
        rgb = np.zeros((size, size, 3), np.uint8)
        kernels.colorize(counts, rng.random(), 0.8, 0.9, rgb, np.zeros((size, size), np.bool_))

    one(0)
    t = time.perf_counter()
    for i in range(images):
        one(i)
    return images / (time.perf_counter() - t)


def sample_rate(spec: DatasetSpec, images: int) -> float:
    render_sample(spec, 0)
    t = time.perf_counter()
    for i in range(images):
        render_sample(spec, i)
    return images / (time.perf_counter() - t)


def end_to_end(spec: DatasetSpec, workers: int, shard_size: int) -> float:
    out = tempfile.mkdtemp(prefix="fractalgen-bench-")
    try:
        t = time.perf_counter()
        render_dataset(spec, out, shard_size=shard_size, workers=workers, progress=False)
        return spec.n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000, help="samples for the end-to-end runs")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=100)
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}  size {args.size}  points {args.points}")
    single = DatasetSpec.create("single", args.n, args.classes, size=args.size, points=args.points)
    multi = DatasetSpec.create("multi", args.n, args.classes, size=args.size, points=args.points)

    k = kernel_rate(single, 500)
    print(f"kernel (chaos game + rasterise + patch + colour), 1 core: {k:,.0f} img/s "
          f"({1e9 / k / args.points:.2f} ns/point all in)")
    for name, spec in (("single", single), ("multi", multi)):
        print(f"render_sample {name} (with background, blur), 1 core: {sample_rate(spec, 300):,.0f} img/s")
        split = rate_split(spec, 200, "png")
        total = sum(split.values())
        print("  split per image: " + ", ".join(f"{k} {v * 1e3:.2f} ms ({v / total:.0%})" for k, v in split.items()))

    shard = max(1, args.n // 16)
    one = end_to_end(single, 1, shard)
    two = end_to_end(single, 2, shard)
    print(f"end to end single, shards of {shard}: 1 worker {one:,.0f} img/s, 2 workers {two:,.0f} img/s "
          f"(scaling {two / one:.2f}x)")
    print(f"  => 1,000,000 images at {args.size} px with 2 workers: {1e6 / two / 60:.1f} min")
    m2 = end_to_end(multi, 2, shard)
    print(f"end to end multi, 2 workers: {m2:,.0f} img/s")


if __name__ == "__main__":
    main()
