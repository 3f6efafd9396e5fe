"""Time the public Numba renderer of Anderson & Farrell (catalys1/fractal-pretraining) on this
machine, with the same settings as bench_render.py's kernel figure (100k points, 256 px, colour,
patch rendering), so the two can be compared side by side.

The reference code is not part of this project: check it out anywhere and point at it, in a venv
with numba, numpy, opencv-python-headless (it imports cv2):

    python benchmarks/bench_reference.py /path/to/fractal-pretraining
"""

import sys
import time


def main(path: str, images: int = 300) -> None:
    sys.path.insert(0, path)
    from fractal_learning.fractals import ifs  # the reference implementation

    systems = [ifs.sample_system(rng=None) for _ in range(50)]

    def one(i):
        coords = ifs.iterate(systems[i % len(systems)], 100_000)
        return ifs.colorize(ifs.render(coords, 256, binary=False, patch=True))

    one(0)
    t = time.perf_counter()
    for i in range(images):
        one(i)
    rate = images / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(images):
        ifs.iterate(systems[i % len(systems)], 100_000)
    iterate = (time.perf_counter() - t) / images / 100_000 * 1e9
    print(f"reference iterate + render + colorize, 1 core: {rate:,.0f} img/s (iterate {iterate:.1f} ns/point)")


if __name__ == "__main__":
    main(sys.argv[1])
