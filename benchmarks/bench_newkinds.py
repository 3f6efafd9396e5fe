"""Speed of the few-image IFS kinds (1p-frac, ofdb) next to the fractaldb kind, measured in one run.

"fractaldb" is fractalgen's own drawing (official_draw=false, the default until 2026-11-30, which the
ratios are taken against); "fdb-official" the default since (the official renderer's drawing).

    python benchmarks/bench_newkinds.py [--images 300] [--e2e 2000] [--official /path/to/1p-frac/repo]

1. One core, per image, at the same settings for every kind (256 px / 100k points, and each kind's
   published size): the kernel alone (chaos game + rasterisation to the final uint8 image) and the whole
   render_sample (class system, seeds, metadata). Timings are the median of 5 rounds, so a loaded
   machine disturbs them less.
2. End to end to PNG shards with 2 workers at 256 px: images/s and the time that makes for 1M images.
3. With --official DIR (a checkout of SUPER-TADORY/1p-frac): the official Python renderer
   (ifs_function.calculate + draw_patch, 512 px, 100k points) on a few images, for the ratio.
4. With --official-ofdb DIR (a checkout of ryoo-nakamura/OFDB): its 2D renderer at make_2dofdb.py's
   defaults (512 px, 100k points, patch_gray), PNG saving included, against render_sample + our PNG
   encode at the same settings; both timed by CPU time on one core.

Figures go to docs/benchmarks.md with the command that made them. Not a test.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from fractalgen import DatasetSpec, render_dataset, render_sample
from fractalgen import kernels
from fractalgen.fewimage import GRAY, PAD
from fractalgen.png import encode_png
from fractalgen.rng import generator, kernel_seed
from fractalgen.search import search
from fractalgen.systems import probabilities


def _median_rate(fn, images: int, rounds: int = 5) -> float:
    fn(0)  # compile / warm up
    rates = []
    for r in range(rounds):
        t = time.perf_counter()
        for i in range(images):
            fn(r * images + i)
        rates.append(images / (time.perf_counter() - t))
    return statistics.median(rates)


def kernel_fn(spec: DatasetSpec):
    """The kernel work of one image of `spec`'s kind, ending in the uint8 image the kind stores."""
    size, points, classes = spec.size, spec.options["points"], spec.num_classes
    if spec.kind == "fractaldb" and not spec.options["official_draw"]:
        def one(i):
            rng = generator(0, "bench", i)
            patch = rng.integers(0, 2, (3, 3)).astype(np.uint8)
            patch[1, 1] = 1
            c = i % classes
            ok, counts = kernels.render_counts(spec.systems[c], spec._thresholds[c], points, kernel_seed(rng),
                                               size, size, 1.0, 1.0, 0.0, 0.0, False, False, False, patch)
            return np.where(counts > 0, np.uint8(255), np.uint8(0))
    else:
        def one(i):
            rng = generator(0, "bench", i)
            c = i % classes
            return kernels.render_random_patches(spec.systems[c], spec._thresholds[c], points, kernel_seed(rng),
                                                 kernel_seed(rng), size, PAD, np.uint8(GRAY))[1]
    return one


def specs(size: int, points: int, classes: int, fractaldb_systems) -> dict:
    systems, info = fractaldb_systems
    return {
        "fractaldb": DatasetSpec.create("fractaldb", classes, classes, systems=systems, systems_info=info,
                                        size=size, points=points, official_draw=False),
        "fdb-official": DatasetSpec.create("fractaldb", classes, classes, systems=systems, systems_info=info,
                                           size=size, points=points, official_draw=True),
        "1p-frac": DatasetSpec.create("1p-frac", classes, classes, size=size, points=points),
        "ofdb": DatasetSpec.create("ofdb", classes, classes, systems=systems, systems_info=info,
                                   size=size, points=points),
    }


def end_to_end(spec: DatasetSpec, workers: int) -> float:
    out = tempfile.mkdtemp(prefix="fractalgen-bench-")
    try:
        t = time.perf_counter()
        render_dataset(spec, out, shard_size=500, workers=workers, progress=False)
        return spec.n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(out)


def official_rate(repo: str, images: int) -> float:
    """The official 1p-frac renderer (its own ifs_function), 512 px, 100k points, no PNG saving."""
    sys.path.insert(0, os.path.join(repo, "1p-frac_generater", "src"))
    from ifs_function import ifs_function  # noqa: E402  (the official code, from the given checkout)

    spec = DatasetSpec.create("1p-frac", images, images, size=512, points=100_000)
    weights = probabilities(np.asarray(spec.systems_info["base"]))
    t = time.perf_counter()
    for c in range(images):
        gen = ifs_function(prev_x=0.0, prev_y=0.0, save_root="", fractal_name="", fractal_weight_count="")
        for row, p in zip(spec.systems[c], weights):
            gen.set_param(*map(float, row), float(p))
        gen.calculate(100_000)
        gen.draw_patch(512, 512, 6, 6, "gray", 0, threshold=0.05, imgsave=False)
    return images / (time.perf_counter() - t)


def official_ofdb_rate(repo: str, images: int, systems: list) -> tuple[float, float]:
    """(official, ours) images/s for OFDB at make_2dofdb.py's defaults, PNG included, CPU time."""
    sys.path.insert(0, os.path.join(repo, "2d-ofdb-generator", "fractal_renderer"))
    import ifs_function as official  # noqa: E402  (the official code, from the given checkout)

    out = tempfile.mkdtemp(prefix="ofdb-official-")
    try:
        t = time.process_time()
        for c in range(images):
            os.makedirs(os.path.join(out, str(c)), exist_ok=True)
            gen = official.ifs_function(prev_x=0.0, prev_y=0.0, save_root=out, fractal_name=str(c),
                                        fractal_weight_count="00")
            system = np.asarray(systems[c])
            for row, p in zip(system, probabilities(system)):
                gen.set_param(*map(float, row), float(p))
            gen.calculate(100_000)
            gen.draw_patch(512, 512, 6, 6, "gray", 0)  # writes the PNG, as make_2dofdb.py does
        official_rate = images / (time.process_time() - t)
    finally:
        shutil.rmtree(out)
    spec = DatasetSpec.create("ofdb", len(systems), len(systems), systems=systems, size=512, points=100_000)
    encode_png(render_sample(spec, 0).image)  # compile
    t = time.process_time()
    for i in range(100):
        encode_png(render_sample(spec, i % len(systems)).image)
    return official_rate, 100 / (time.process_time() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300, help="images per timing round")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--e2e", type=int, default=2000, help="images for the end-to-end runs (0: skip)")
    ap.add_argument("--official", help="a checkout of SUPER-TADORY/1p-frac, to time its renderer")
    ap.add_argument("--official-ofdb", help="a checkout of ryoo-nakamura/OFDB, to time its 2D renderer")
    ap.add_argument("--only-official", action="store_true", help="skip the kernel and end-to-end tables")
    args = ap.parse_args()

    # class systems: the search at 128 px is enough here (only the rendering is timed)
    fractaldb_systems = search(args.classes, seed=0, size=128, points=20_000, workers=2, progress=False)
    if args.only_official:
        args.e2e = 0
    else:
        print(f"one core, images/s (median of 5 rounds of {args.images}); kernel = chaos game + raster to uint8")
        print(f"{'settings':<16}{'kind':<13}{'kernel':>9}{'sample':>9}{'kernel vs fractaldb':>22}")
    for size, points in () if args.only_official else ((256, 100_000), (512, 100_000), (362, 200_000)):
        by_kind = specs(size, points, args.classes, fractaldb_systems)
        rates = {k: (_median_rate(kernel_fn(s), args.images), _median_rate(lambda i, s=s: render_sample(s, i),
                                                                              args.images))
                 for k, s in by_kind.items()}
        for kind, (kernel, sample) in rates.items():
            ratio = kernel / rates["fractaldb"][0]
            print(f"{size} px {points // 1000}k{'':<5}{kind:<13}{kernel:>9.0f}{sample:>9.0f}{ratio:>21.2f}x")

    if args.e2e:
        print(f"\nend to end, 256 px, 100k points, PNG shards of 500, 2 workers, {args.e2e} images")
        for name, spec in specs(256, 100_000, args.classes, fractaldb_systems).items():
            draw = {"official_draw": spec.options["official_draw"]} if spec.kind == "fractaldb" else {}
            spec = DatasetSpec.create(spec.kind, args.e2e, args.classes, systems=fractaldb_systems[0]
                                      if spec.kind != "1p-frac" else None, size=256, points=100_000, **draw)
            rate = end_to_end(spec, 2)
            print(f"{name:<13}{rate:>8.0f} images/s   1M images: {1e6 / rate / 3600:.1f} h")

    if args.official:
        rate = official_rate(args.official, 3)
        ours = _median_rate(lambda i, s=DatasetSpec.create("1p-frac", 10, 10): render_sample(s, i), 20)
        print(f"\nofficial 1p-frac renderer, 512 px, 100k points: {rate:.2f} images/s; "
              f"fractalgen render_sample at the same settings: {ours:.0f} images/s ({ours / rate:.0f}x)")

    if args.official_ofdb:
        official_rate, ours = official_ofdb_rate(args.official_ofdb, 3, fractaldb_systems[0])
        print(f"\nofficial OFDB renderer, 512 px, 100k points, PNG saved: {official_rate:.3f} images/s (CPU time); "
              f"fractalgen render_sample + PNG encode: {ours:.0f} images/s ({ours / official_rate:,.0f}x)")


if __name__ == "__main__":
    main()
