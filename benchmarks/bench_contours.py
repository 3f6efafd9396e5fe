"""RCDB and VisualAtom: fractalgen's contour kinds side by side with the official Python renderers, one
core each, at the official default settings (512 px, the published class grids); --ours-only times any
kind alone (exfractal: its official renderer needs OpenGL/EGL).

The official scripts are not part of this project. Put them in a folder with their dependencies in a
separate venv (Python, `noise`, Pillow), e.g.:

    python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install noise==1.2.2 pillow numpy
    git show HEAD:rcdb_render/make_rcdb.py > REF/make_rcdb.py           # masora1030/CVPR2022-Pretrained-ViT-PyTorch
    git show HEAD:visual_atomic_renderer/render_VisualAtom.py > REF/render_VisualAtom.py  # ...-FDSL-on-VisualAtom
    python benchmarks/bench_contours.py --reference REF --ref-python /tmp/refvenv/bin/python

Both sides are timed by CPU time (user + sys), which a loaded machine distorts less than wall time, in
alternating rounds. The official side is timed twice: as it runs (render + PNG save) and with
Image.save replaced by a no-op (render alone); its interpreter start-up (a run with 0 images) is
subtracted. Ours: render_sample alone, and render + PNG encode (what a shard holds).
`--check-noise` compares fractalgen's Perlin noise with the `noise` package's pnoise1.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from fractalgen import DatasetSpec, render_sample  # noqa: E402
from fractalgen.png import encode_png  # noqa: E402

# The official settings (RCDB_render.sh, make_VisualAtom.sh)
OFFICIAL = {
    "rcdb": ("make_rcdb.py", ["--numof_thread=1", "--thread_num=0", "--vertex_num=200", "--perlin_min=0",
                              "--line_width=0.1", "--radius_min=0", "--oval_rate=2", "--start_pos=400"]),
    "visualatom": ("render_VisualAtom.py", ["--numof_thread=1", "--thread_num=0", "--vertex_num_min=200",
                                            "--vertex_num_max=1000", "--perlin_min=0", "--line_num_min=1",
                                            "--line_num_max=200", "--line_width=0.1", "--radius_min=10",
                                            "--oval_rate=2", "--start_pos=512", "--nami_1_min=0", "--nami_2_min=0",
                                            "--nami_1_max=20", "--nami_2_max=20"]),
}
NO_SAVE = "import PIL.Image, runpy, sys; PIL.Image.Image.save = lambda *a, **k: None; " \
          "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def child_cpu(cmd: list) -> float:
    """CPU seconds (user + sys) a child process used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def official_cpu(args, kind: str, classes: int, instances: int, save: bool, out: str) -> float:
    script, flags = OFFICIAL[kind]
    script = os.path.join(os.path.abspath(args.reference), script)
    run = [args.ref_python, script] if save else [args.ref_python, "-c", NO_SAVE, script]
    return child_cpu([*run, *flags, f"--save_root={out}", f"--numof_classes={classes}",
                      f"--numof_instances={instances}"])


def ours_cpu(spec, start: int, count: int, encode: bool) -> float:
    t = time.process_time()
    for i in range(start, start + count):
        image = render_sample(spec, i).image
        if encode:
            encode_png(image)
    return time.process_time() - t


def compare(args, kind: str) -> dict:
    spec = DatasetSpec.create(kind, 10**6, 1000)  # official defaults: 512 px, the published grid
    ours_cpu(spec, 0, 3, True)  # compile / load the kernels
    ref_images = args.ref_classes  # one image per class: the per-image cost depends mostly on the class
    out = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    startup = min(official_cpu(args, kind, 1, 0, True, out) for _ in range(3))
    ref_save = ref_render = mine = mine_png = 0.0
    n_mine = 0
    for r in range(args.rounds):
        ref_render += official_cpu(args, kind, ref_images, 1, False, out) - startup
        ref_save += official_cpu(args, kind, ref_images, 1, True, out) - startup
        # ours: one image per class of 1,000 classes, as many as fit in ~the same time
        mine += ours_cpu(spec, r * args.ours, args.ours, False)
        mine_png += ours_cpu(spec, r * args.ours, args.ours, True)
        n_mine += args.ours
    n_ref = args.rounds * ref_images
    rates = {"official render + PNG save": n_ref / ref_save, "official render only": n_ref / ref_render,
             "fractalgen render_sample": n_mine / mine, "fractalgen render + PNG encode": n_mine / mine_png}
    ours, official = rates["fractalgen render + PNG encode"], rates["official render + PNG save"]
    rates["speed-up, render only"] = rates["fractalgen render_sample"] / rates["official render only"]
    rates["speed-up, as each runs (PNG)"] = ours / official
    return rates


def end_to_end(kind: str, n: int, size: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fractalgen", "render", "--kind", kind, "--n", str(n), "--classes", "1000",
               "--size", str(size), "--workers", str(workers), "--out", os.path.join(out, "data"), "--no-progress"]
        warm = [sys.executable, "-m", "fractalgen", "render", "--kind", kind, "--n", "8", "--size", "32",
                "--workers", "1", "--out", os.path.join(out, "warm"), "--no-progress"]
        subprocess.run(warm, check=True, stdout=subprocess.DEVNULL)  # numba's cache loaded once
        t = time.perf_counter()
        cpu = child_cpu(cmd)  # the render command and its worker processes
        seconds = time.perf_counter() - t
        data = os.path.join(out, "data")
        size_mb = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data) if f.endswith(".tar")) / 1e6
    rate = n / seconds
    # on a loaded machine the wall clock undercounts: CPU seconds spread over `workers` cores say what the
    # same command does with those cores to itself
    idle_rate = n / (cpu / workers)
    return {"images": n, "size": size, "workers": workers, "img/s": rate, "minutes per 1M": 1e6 / rate / 60,
            "img/s from CPU time": idle_rate, "minutes per 1M from CPU time": 1e6 / idle_rate / 60,
            "MB per 1k images": size_mb / n * 1000}


def check_noise(args) -> None:
    from fractalgen.contours import perlin1_array

    xs = np.random.default_rng(0).uniform(0, 10000, 20000).astype(np.float32).astype(np.float64)
    code = "import json, sys, noise; print(json.dumps([noise.pnoise1(x) for x in json.load(sys.stdin)]))"
    ref = json.loads(subprocess.run([args.ref_python, "-c", code], input=json.dumps(xs.tolist()),
                                    capture_output=True, text=True, check=True).stdout)
    diff = np.abs(perlin1_array(xs) - np.array(ref)).max()
    print(f"perlin1 vs noise.pnoise1 on 20,000 points in [0, 10000): max |diff| {diff:.2e} (float32 inside pnoise1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", help="folder with make_rcdb.py and render_VisualAtom.py")
    ap.add_argument("--ref-python", default="/tmp/refvenv/bin/python", help="python of a venv with noise + Pillow")
    ap.add_argument("--kinds", nargs="+", default=["rcdb", "visualatom"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ref-classes", type=int, default=30, help="official images per round (one per class)")
    ap.add_argument("--ours", type=int, default=1000, help="our images per round")
    ap.add_argument("--check-noise", action="store_true")
    ap.add_argument("--ours-only", action="store_true", help="time fractalgen alone (kinds without a reference)")
    ap.add_argument("--end-to-end", type=int, default=0, metavar="N", help="also render N images to shards")
    ap.add_argument("--size", type=int, default=256, help="image side for --end-to-end")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.check_noise:
        check_noise(args)
    for kind in args.kinds:
        if args.reference and kind in OFFICIAL:
            for name, value in compare(args, kind).items():
                print(f"{kind:10s} {name:34s} {value:10.1f}" + ("x" if "speed-up" in name else " img/s"))
        elif args.ours_only:  # e.g. exfractal: the official renderer needs OpenGL/EGL, not available here
            spec = DatasetSpec.create(kind, 10**6, 1000)  # the kind's defaults
            ours_cpu(spec, 0, 3, True)
            n = args.rounds * args.ours
            render = n / sum(ours_cpu(spec, r * args.ours, args.ours, False) for r in range(args.rounds))
            png = n / sum(ours_cpu(spec, r * args.ours, args.ours, True) for r in range(args.rounds))
            print(f"{kind:10s} render_sample {render:.0f} img/s, render + PNG encode {png:.0f} img/s "
                  f"({spec.options['size']} px, 1 core, CPU time)")
        if args.end_to_end:
            r = end_to_end(kind, args.end_to_end, args.size, args.workers)
            print(f"{kind:10s} end to end, {r['images']} images at {r['size']} px, {r['workers']} workers: "
                  f"wall {r['img/s']:.0f} img/s -> 1M images in {r['minutes per 1M']:.1f} min; "
                  f"CPU time / {r['workers']}: {r['img/s from CPU time']:.0f} img/s -> "
                  f"{r['minutes per 1M from CPU time']:.1f} min; {r['MB per 1k images']:.1f} MB per 1k images")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
