"""Render images with a reference generator, for benchmarks/fidelity.py (which runs this file).

Runs in the reference's own venv (numpy, numba, opencv-python-headless, pillow), never in the project's:
it imports the public reference code from the path it is given and calls its functions; none of that
code is part of this project.

    python benchmarks/fidelity_ref.py single|multi  /path/to/fractal-pretraining  OUT.npz --n 5000 --size 128
    python benchmarks/fidelity_ref.py fractaldb     /path/to/FractalDB-Pretrained-ResNet-PyTorch OUT.npz ...
    python benchmarks/fidelity_ref.py search        /path/to/FractalDB-Pretrained-ResNet-PyTorch OUT.npz --n 400
    python benchmarks/fidelity_ref.py background    /path/to/fractal-pretraining OUT.npz --n 5000 --size 64
    python benchmarks/fidelity_ref.py single-classes /path/to/fractal-pretraining OUT_DIR --n 80000 --val 2000 \
        --classes 20 --size 32 --points 2000 [--no-jitter]
    python benchmarks/fidelity_ref.py fractaldb-classes /path/to/FractalDB-Pretrained-ResNet-PyTorch OUT_DIR \
        --n 100000 --val 2000 --classes 20 --size 32 --points 2000 --weights 0.1 --workers 2

single-classes writes a class folder instead (OUT_DIR/train/<class>/*.png, OUT_DIR/val/<class>/*.png, the
layout the trainer reads with data.source=imagenet): the authors' Single-Instance classification data
(FractalClassDataset with IFSGenerator at its defaults, parameter jitter on), for transfer parity;
fractaldb-classes the same for the authors' FractalDB (make_fractaldb.py's instances of the first
published class systems). Both write OUT_DIR/systems.json, the classes in fractalgen's systems format.

Writes OUT.npz: images (n, S, S, C) uint8, masks (n, S, S) bool (fractal pixels before blur), systems
(an object array of (maps, 6) arrays in fractalgen's (a, b, c, d, e, f) layout), per-image extras.
"""

import argparse
import os
import sys
import time

import numpy as np

try:
    from tqdm import tqdm
except ImportError:  # the reference venv may lack tqdm
    def tqdm(it, **kw):
        return it


def seed_numba(seed):
    """Seed the reference's numba-side np.random (separate from numpy's global state)."""
    import numba

    @numba.njit
    def _seed(s):
        np.random.seed(s)

    _seed(seed)


def reference_generators(path):
    """The reference's generator module, loaded from its file: importing it as a package would run
    fractal_learning/training/datamodule/__init__.py, which needs their training stack (pytorch_lightning,
    fgvcdata, torchvision) that rendering does not use."""
    import importlib.util

    sys.path.insert(0, path)
    file = os.path.join(path, "fractal_learning", "training", "datamodule", "datasets", "generator.py")
    spec = importlib.util.spec_from_file_location("reference_generator", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_rows(system):
    """A reference (n, 2, 3) system [[a, b, e], [c, d, f]] as fractalgen rows (a, b, c, d, e, f)."""
    s = np.asarray(system, np.float64)
    return np.stack([s[:, 0, 0], s[:, 0, 1], s[:, 1, 0], s[:, 1, 1], s[:, 0, 2], s[:, 1, 2]], 1)


def seeded_ifs_generator(path, size, points, seed, jitter):
    """(the reference's ifs module, its IFSGenerator at `size` / `points` / `jitter`), every random
    stream it uses (numpy's, numba's, the generator's own) seeded with `seed`."""
    generators = reference_generators(path)  # puts the checkout on sys.path
    from fractal_learning.fractals import ifs

    np.random.seed(seed)
    seed_numba(seed)
    gen = generators.IFSGenerator(size=size, jitter_params=jitter, niter=points)
    gen.rng = np.random.default_rng(seed)
    return ifs, gen


def single(path, n, size, points, seed, jitter):
    """Anderson & Farrell IFSGenerator (their defaults: scale 0.5-2, translate 0.2, flips, colour, plasma
    background, blur p 0.5), one freshly sampled system (2-4 maps) per image."""
    ifs, gen = seeded_ifs_generator(path, size, points, seed, jitter)
    images, masks, systems = [], [], []
    for _ in tqdm(range(n), desc="reference single", file=sys.stderr):
        system = ifs.sample_system(n=(2, 5), rng=gen.rng)
        # IFSGenerator.generate, step by step, to keep the foreground mask
        fg = gen.render(gen.jitter(system))
        fg = gen.random_flips(fg)
        fg = gen.to_color(fg)
        mask = fg.any(-1)
        img = gen.composite(fg, gen.render_background())
        if gen.blur_p and gen.rng.random() > 0.5:
            img = gen.random_blur(img)
        images.append(img)
        masks.append(mask)
        systems.append(as_rows(system))
    return {"images": np.stack(images), "masks": np.stack(masks), "systems": systems}


def single_classes(path, out, n, val, size, points, seed, classes, jitter=True):
    """Anderson & Farrell's Single-Instance classification data as their FractalClassDataset makes it:
    `classes` systems sampled once (ifs.sample_system, 2-4 maps), image i of class i % classes rendered
    by IFSGenerator at its defaults (jitter on, scale 0.5-2, translate 0.2, flips, colour, plasma
    background, blur p 0.5). Their loader's 512-image cache (a throughput device replaying affine-
    transformed earlier images) is left out: every image here is a fresh render. Written to out.partial,
    renamed to out when complete, so a stopped run leaves no folder that looks finished."""
    import shutil

    from PIL import Image

    ifs, gen = seeded_ifs_generator(path, size, points, seed, jitter)
    systems = [ifs.sample_system(n=(2, 5), rng=gen.rng) for _ in range(classes)]
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "val"):
        for c in range(classes):
            os.makedirs(os.path.join(tmp, split, f"{c:04d}"))
    for i in tqdm(range(n + val), desc="reference single classes", file=sys.stderr):
        c = i % classes
        image = gen(systems[c].copy())  # generate() jitters a copy; the class system stays as sampled
        split = "train" if i < n else "val"
        Image.fromarray(image).save(os.path.join(tmp, split, f"{c:04d}", f"{i:07d}.png"), compress_level=1)
    np.save(os.path.join(tmp, "systems.npy"), np.stack([np.pad(as_rows(s), ((0, 4 - len(s)), (0, 0)))
                                                         for s in systems]))
    write_systems_json(tmp)
    os.rename(tmp, out)


def write_systems_json(folder):
    """folder/systems.npy (class systems zero-padded to 4 maps) as folder/systems.json, the systems file
    fractalgen reads (`fractalgen render --kind single --systems FILE`: the same classes, rendered by
    fractalgen)."""
    padded = np.load(os.path.join(folder, "systems.npy"), allow_pickle=False)
    systems = [s[np.abs(s).sum(1) > 0].tolist() for s in padded]  # drop the padding maps
    write_systems(folder, systems, "catalys1/fractal-pretraining ifs.sample_system (2-4 maps)")


def write_systems(folder, systems, source):
    """folder/systems.json in fractalgen/systems.py's format, written here by hand: this venv cannot
    import fractalgen."""
    import json

    doc = {"format": "fractalgen-systems/1", "source": source, "systems": systems}
    with open(os.path.join(folder, "systems.json.tmp"), "w") as f:
        json.dump(doc, f)
    os.replace(os.path.join(folder, "systems.json.tmp"), os.path.join(folder, "systems.json"))


def background(path, n, size, seed):
    """The reference background alone (diamondsquare.colorized_ds at `size`), n of them."""
    sys.path.insert(0, path)
    from fractal_learning.fractals import diamondsquare

    np.random.seed(seed)
    seed_numba(seed)
    images = np.stack([diamondsquare.colorized_ds(size) for _ in tqdm(range(n), desc="reference background",
                                                                      file=sys.stderr)])
    return {"images": images, "masks": np.zeros(images.shape[:3], bool), "systems": []}


def multi(path, n, size, points, seed, classes, cache):
    """Anderson & Farrell MultiGenerator (1-5 instances from a cache of `cache` half-resolution renders,
    resized to 0.15-0.6 of the side, one new render every second image as their dataset's period 2),
    the cache filled first (its steady state). Also records instance counts and sizes."""
    MultiGenerator = reference_generators(path).MultiGenerator  # puts the checkout on sys.path
    from cv2 import INTER_LINEAR, resize
    from fractal_learning.fractals import ifs

    np.random.seed(seed)
    seed_numba(seed)
    gen = MultiGenerator(size=size, cache_size=cache, niter=points)
    gen.rng = rng = np.random.default_rng(seed)
    systems = [ifs.sample_system(n=(2, 5), rng=rng) for _ in range(classes)]
    for _ in range(cache):
        k = int(rng.integers(classes))
        gen.add_sample(systems[k], label=k)
    images, masks, counts, sizes = [], [], [], []
    for i in tqdm(range(n), desc="reference multi", file=sys.stderr):
        k = int(rng.integers(classes))
        if i % 2 == 0:
            gen.add_sample(systems[k], label=k)
        # MultiGenerator.generate, step by step, to keep the foreground mask
        img = gen.cache["bg"][rng.integers(0, len(gen))].copy()
        mask = np.zeros((size, size), bool)
        m = rng.choice(range(gen.n_objects[0], gen.n_objects[1] + 1), p=gen.nobj_p)
        for _ in range(m):
            fg = gen.cache["fg"][rng.integers(0, len(gen))]
            fg = gen.to_color(gen.random_flips(fg))
            s = int(rng.uniform(*gen.size_range) * size)
            fg = resize(fg, (s, s), interpolation=INTER_LINEAR)
            x, y = rng.integers(-(s // 2), size - (s // 2), 2)
            x1, x2 = (0 if x >= 0 else -x), (s if x < size - s else size - x)
            y1, y2 = (0 if y >= 0 else -y), (s if y < size - s else size - y)
            fg = fg[y1:y2, x1:x2]
            y, x = max(y, 0), max(x, 0)
            gen.composite(fg, img[y:y + fg.shape[0], x:x + fg.shape[1]])
            mask[y:y + fg.shape[0], x:x + fg.shape[1]] |= fg.any(-1)
            sizes.append(s / size)
        counts.append(m)
        if gen.blur_p and rng.random() > gen.blur_p:
            img = gen.random_blur(img)
        images.append(img)
        masks.append(mask)
    return {"images": np.stack(images), "masks": np.stack(masks), "systems": [as_rows(s) for s in systems],
            "instance_counts": np.array(counts), "instance_sizes": np.array(sizes)}


def fractaldb_systems(path, classes):
    """The first `classes` published FractalDB-1k class systems (data/csv_rate0.2_category1000)."""
    root = os.path.join(path, "data", "csv_rate0.2_category1000")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".csv"))
    if len(files) < classes:
        sys.exit(f"error: {root} has {len(files)} class files, fewer than {classes}")
    return [np.loadtxt(f, delimiter=",") for f in files[:classes]]


def fractaldb_renderer(path):
    """Kataoka et al.'s renderer, loaded from the checkout, with PIL's save captured: draw_patch saves its
    4 flipped PNGs (the renderer's only side effect); keep them as gray arrays instead. Returns a
    function (class system, weight row, size, points) -> the render's 4 flips."""
    ifs_function = import_ifs_function(path)
    from PIL import Image

    saved = []
    Image.Image.save = lambda image, *args, **kw: saved.append(np.array(image)[..., 0])

    def render(params, w, size, points):
        gen = ifs_function(prev_x=0.0, prev_y=0.0, save_root="/nonexistent", fractal_name="x", fractal_weight_count="0")
        for p in params:
            gen.set_param(*map(float, p[:7]), weight_a=w[0], weight_b=w[1], weight_c=w[2], weight_d=w[3],
                          weight_e=w[4], weight_f=w[5])
        gen.calculate(points)  # np.random.seed(100) inside: a class and weight row always give the same points
        saved.clear()
        gen.draw_patch(size, size, 6, 6, "gray", 0)  # a random 3x3 patch per point (the random module)
        return list(saved)

    return render


def import_ifs_function(path):
    """The renderer's class, loaded from path/fractal_renderer/ifs_function.py by file (no sys.path or
    sys.modules entry left behind); one error line if the file is not there."""
    import importlib.util

    file = os.path.join(path, "fractal_renderer", "ifs_function.py")
    if not os.path.isfile(file):
        sys.exit(f"error: {path} has no fractal_renderer/ifs_function.py; give the FractalDB-Pretrained-ResNet-PyTorch "
                 f"checkout")
    spec = importlib.util.spec_from_file_location("reference_ifs_function", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ifs_function


def weight_rows(path, weights):
    file = os.path.join(path, "fractal_renderer", "weights", f"weights_{weights}.csv")
    if not os.path.isfile(file):
        sys.exit(f"error: {file} does not exist; --weights names one of fractal_renderer/weights/weights_*.csv")
    return np.loadtxt(file, delimiter=",")


def fractaldb(path, n, size, points, seed, classes, weights):
    """Kataoka et al.'s renderer (ifs_function: np.random.seed(100) chaos game from (0, 0), 6-px margin,
    draw_patch gray: a random 3x3 patch per point, 127 on black, 4 flips per render) for the first
    `classes` published class systems; n images drawn at random from class x weight row x flip."""
    import random

    render = fractaldb_renderer(path)
    random.seed(seed)
    rng = np.random.default_rng(seed)
    rows = weight_rows(path, weights)
    params = fractaldb_systems(path, classes)
    images, labels = [], []
    for _ in tqdm(range(n // 4 + 1), desc="reference fractaldb", file=sys.stderr):
        c, w = int(rng.integers(classes)), rows[rng.integers(len(rows))]
        flips = render(params[c], w, size, points)
        images.extend(flips)
        labels.extend([c] * len(flips))
    images = np.stack(images[:n])
    return {"images": images[..., None], "masks": images > 0, "systems": [p[:, :6] for p in params],
            "labels": np.array(labels[:n])}


_WORKER = {}


def _fractaldb_worker_init(path, params, rows, size, points, seed):
    _WORKER.update(render=fractaldb_renderer(path), params=params, rows=rows, size=size, points=points, seed=seed)


def _fractaldb_class_render(k):
    """Render k of fractaldb_classes: class k % classes, weight row (k // classes) % rows, its patches
    seeded by (seed, k) so that the folder does not depend on the number of workers."""
    import random

    w = _WORKER
    classes = len(w["params"])
    c = k % classes
    random.seed(f"fractaldb-classes-{w['seed']}-{k}")
    return c, w["render"](w["params"][c], w["rows"][(k // classes) % len(w["rows"])], w["size"], w["points"])


def fractaldb_classes(path, out, n, val, size, points, seed, classes, weights, workers):
    """Kataoka et al.'s FractalDB classification data as make_fractaldb.py builds it, for the first
    `classes` published class systems: every render (a class, one of its weight rows, fresh random
    patches) is saved in its 4 flips, as the official instances are (weight row x patch re-render x
    flip); renders go round the classes, then the weight rows. Images 0..n-1 are train, the next `val`
    val. Written to out.partial, renamed to out when complete (as single_classes)."""
    import multiprocessing
    import shutil

    from PIL import Image

    # every input is read and checked here: a worker that fails to start makes a Pool start another, forever
    params, rows = fractaldb_systems(path, classes), weight_rows(path, weights)
    import_ifs_function(path)
    save = Image.Image.save  # fractaldb_renderer replaces it, in the workers only
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ("train", "val"):
        for c in range(classes):
            os.makedirs(os.path.join(tmp, split, f"{c:04d}"))
    renders = -(-(n + val) // 4)
    i = 0
    with multiprocessing.get_context("fork").Pool(workers, _fractaldb_worker_init,
                                                  (path, params, rows, size, points, seed)) as pool:
        done = pool.imap(_fractaldb_class_render, range(renders), chunksize=64)
        for c, flips in tqdm(done, total=renders, desc="reference fractaldb classes", file=sys.stderr):
            for image in flips[: n + val - i]:
                split = "train" if i < n else "val"
                save(Image.fromarray(image), os.path.join(tmp, split, f"{c:04d}", f"{i:07d}.png"), compress_level=1)
                i += 1
    write_systems(tmp, [p[:, :6].tolist() for p in params],
                  f"hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch data/csv_rate0.2_category1000, first {classes}")
    os.rename(tmp, out)


def search(path, n, seed):
    """Kataoka et al.'s class search (param_search/ifs_search.py: np.random.seed(1), 2-7 maps, all 6N
    parameters U(-1, 1), 512 px, 100k points, pad 6): the filling rate of each of the first n candidates."""
    sys.path.insert(0, os.path.join(path, "param_search"))
    from ifs_simple import ifs_function

    np.random.seed(seed)
    rates, systems = [], []
    t = time.perf_counter()
    for _ in tqdm(range(n), desc="reference search", file=sys.stderr):
        m = np.random.randint(2, 8)
        params = np.zeros((m, 7))
        for i in range(m):
            a, b, c, d, e, f = np.random.uniform(-1.0, 1.0, 6)
            params[i] = a, b, c, d, e, f, abs(a * d - b * c)
        params[:, 6] /= params[:, 6].sum()
        gen = ifs_function(prev_x=0.0, prev_y=0.0)
        for p in params:
            gen.set_param(*map(float, p))
        gen.calculate(100_000)
        with np.errstate(all="ignore"):
            try:
                img = gen.draw_point(512, 512, 6, 6, "gray", 0)
                rates.append(np.count_nonzero(img[:, :, 0]) / img[:, :, 0].size)
            except Exception:  # a divergent candidate: the original crashes on it (counted as empty)
                rates.append(0.0)
        systems.append(params[:, :6])
    return {"rates": np.array(rates), "systems": systems, "seconds": time.perf_counter() - t}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["single", "multi", "fractaldb", "search", "background", "single-classes",
                                    "fractaldb-classes",
                                    "systems-json"],
                   help="systems-json: write OUT/systems.json (fractalgen's format) from a single-classes folder "
                        "made before that file was written (PATH is not read)")
    p.add_argument("path", help="the reference checkout")
    p.add_argument("out", help="output .npz (single-classes, fractaldb-classes: the class folder to create)")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--cache", type=int, default=512)
    p.add_argument("--val", type=int, default=2000, help="single-classes, fractaldb-classes: validation images after the n training ones")
    p.add_argument("--jitter", action="store_true", help="single: the reference's default parameter jitter")
    p.add_argument("--no-jitter", action="store_true",
                   help="single-classes: switch the reference's default parameter jitter off (jitter_params=False)")
    p.add_argument("--weights", default="0.4", help="fractaldb: weights_X.csv (the release script's 0.4; "
                   "0.1 is the x0.8-1.2 variants fractalgen draws)")
    p.add_argument("--workers", type=int, default=1, help="fractaldb-classes: render processes (same images for any number)")
    a = p.parse_args()
    if a.kind == "systems-json":
        if not os.path.isfile(os.path.join(a.out, "systems.npy")):
            sys.exit(f"error: {a.out} has no systems.npy; give a folder made by single-classes")
        return write_systems_json(a.out)
    if not os.path.isdir(a.path):
        sys.exit(f"error: reference checkout {a.path} does not exist")
    if a.kind in ("single-classes", "fractaldb-classes"):
        if os.path.exists(a.out):
            sys.exit(f"error: {a.out} exists; give a new folder (nothing is overwritten)")
        if a.kind == "fractaldb-classes":
            return fractaldb_classes(a.path, a.out, a.n, a.val, a.size, a.points, a.seed, a.classes, a.weights,
                                     a.workers)
        return single_classes(a.path, a.out, a.n, a.val, a.size, a.points, a.seed, a.classes, not a.no_jitter)
    if a.kind == "single":
        out = single(a.path, a.n, a.size, a.points, a.seed, a.jitter)
    elif a.kind == "multi":
        out = multi(a.path, a.n, a.size, a.points, a.seed, a.classes, a.cache)
    elif a.kind == "fractaldb":
        out = fractaldb(a.path, a.n, a.size, a.points, a.seed, a.classes, a.weights)
    elif a.kind == "background":
        out = background(a.path, a.n, a.size, a.seed)
    else:
        out = search(a.path, a.n, a.seed)
    systems = np.empty(len(out["systems"]), object)
    systems[:] = [np.asarray(s, np.float64) for s in out.pop("systems")]
    np.savez(a.out, systems=systems, **out)


if __name__ == "__main__":
    main()
