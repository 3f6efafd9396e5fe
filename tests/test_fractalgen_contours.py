"""The contour kinds rcdb and visualatom: kernels against plain references, the published class grids,
samples, shards, reruns, bad options."""

import json
import math

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw

from fractalgen import DatasetSpec, load_card, render_sample
from fractalgen import contours as C
from fractalgen.cli import main
from fractalgen.kernels import xorshift_uniforms

SMALL = ["--size", "64", "--no-progress"]


# ---- kernels against plain references --------------------------------------------------------------

def perlin1_reference(x):
    """Improved Perlin noise in 1-D, written out in NumPy: the `noise` package's pnoise1."""
    x = np.asarray(x, np.float64)
    i = np.floor(x).astype(np.int64)
    f = x - np.floor(x)

    def grad(h, d):
        g = np.where(h & 8, -1.0, (h & 7) + 1.0)  # the package's gradient: -1 (not -g) when bit 3 is set
        return g * d

    a = grad(C._PERM[i % 256], f)
    b = grad(C._PERM[(i + 1) % 256], f - 1)
    fade = 6 * f**5 - 15 * f**4 + 10 * f**3
    return 0.4 * ((1 - fade) * a + fade * b)


def test_perlin1_matches_reference_and_the_noise_package():
    xs = np.concatenate([np.linspace(-20, 20, 997), np.random.default_rng(0).uniform(0, 10000, 1000)])
    np.testing.assert_allclose(C.perlin1_array(xs), perlin1_reference(xs), rtol=0, atol=1e-12)
    assert np.allclose(C.perlin1_array(np.arange(-5.0, 300.0)), 0.0)  # zero on the lattice
    # values printed by noise 1.2.2's pnoise1 (float32 inside, hence the tolerance)
    known = {0.37: 0.8005704283714294, 1.5: 0.20000000298023224, 2.75: 0.05859375, -3.2: 0.2236417829990387,
             517.123: -0.06996425241231918, 9999.5: 0.30000001192092896}
    np.testing.assert_allclose(C.perlin1_array(np.array(list(known))), list(known.values()), atol=2e-5)


def contour_reference(vertices, lines, perlin, gain, lw, wave, n1, n2, cx, cy, rx, ry, gray_lo, gray_hi, seed):
    """The official scripts' loop, vertex by vertex, fed with the kernel's two uniform streams."""
    ux = xorshift_uniforms(seed, lines * (vertices + 1)).reshape(lines, vertices + 1)
    uy = xorshift_uniforms(np.uint64(seed) ^ C._Y_STREAM, lines * vertices).reshape(lines, vertices)
    angle = 2 * math.pi / vertices
    x = [math.cos(angle * v) * rx + cx for v in range(vertices)]
    y = [math.sin(angle * v) * ry + cy for v in range(vertices)]
    xs, ys, grays = [], [], []
    for line in range(lines):
        grays.append(gray_lo + int(ux[line, 0] * (gray_hi - gray_lo + 1)))
        for v in range(vertices):
            harmonics = wave * (math.sin(angle * v * n1) + math.sin(angle * v * n2))
            noise_x = perlin1_reference(ux[line, 1 + v] * 10000) * perlin * gain - perlin - harmonics
            noise_y = perlin1_reference(uy[line, v] * 10000) * perlin * gain - perlin - harmonics
            x[v] -= math.cos(angle * v) * (noise_x - lw)
            y[v] -= math.sin(angle * v) * (noise_y - lw)
        xs.append(list(x))
        ys.append(list(y))
    return np.array(xs), np.array(ys), np.array(grays, np.uint8)


@pytest.mark.parametrize("gain, wave, n1, n2", [(2.0, 0.0, 0, 0), (1.0, 0.5, 3, 7)])
def test_contour_points_match_the_official_loop(gain, wave, n1, n2):
    args = (7, 5, 2.5, gain, 0.07, wave, n1, n2, 100.0, 120.0, 30.0, 45.0, 10, 200, 12345)
    xs, ys, grays = C.contour_points(*args)
    rx, ry, rg = contour_reference(*args)
    np.testing.assert_allclose(xs, rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ys, ry, rtol=0, atol=1e-9)
    assert (grays == rg).all() and 10 <= grays.min() and grays.max() <= 200


def test_draw_line_matches_pillow():
    rng = np.random.default_rng(1)
    for _ in range(200):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(-6, 46, 4))
        ref = Image.new("L", (40, 30), 0)
        ImageDraw.Draw(ref).line((x0, y0, x1, y1), fill=255, width=1)
        mine = np.zeros((30, 40), np.uint8)
        C.draw_line(mine, x0, y0, x1, y1, 255)
        C.draw_line(mine, x1, y1, x1, y1, 255)  # Pillow includes the end point; polygons share it
        assert (mine == np.asarray(ref)).all(), (x0, y0, x1, y1)


def test_draw_polygons_closes_scales_and_layers():
    xs = np.array([[2.0, 10.9, 10.9, 2.0], [4.0, 8.0, 8.0, 4.0]])
    ys = np.array([[2.0, 2.0, 10.9, 10.9], [4.0, 4.0, 8.0, 8.0]])
    canvas = np.zeros((24, 24), np.uint8)
    C.draw_polygons(canvas, xs, ys, np.array([100, 200], np.uint8), 2.0)  # frame -> pixels x2, floored
    expected = np.zeros((24, 24), np.uint8)
    draw = ImageDraw.Draw(img := Image.fromarray(expected))
    draw.rectangle((4, 4, 21, 21), outline=100)
    draw.rectangle((8, 8, 16, 16), outline=200)  # drawn second: on top
    assert (canvas == np.asarray(img)).all()


# ---- the published class grids ---------------------------------------------------------------------

def test_rcdb_class_grid_is_the_published_one():
    spec = DatasetSpec.create("rcdb", 400, 400)
    p = np.array(spec.systems)
    vertices, lines, perlin, lw = p.T
    assert set(np.unique(vertices)) <= set(range(3, 201)) and (vertices == np.round(vertices)).all()
    assert 60 < vertices.mean() < 85  # int(Exp(mean 100)) kept in (2, 200]: mean ~72
    assert lines.min() >= 1 and lines.max() <= 200 and lines.max() > 150
    assert perlin.min() >= 0 and perlin.max() <= 4 and perlin.max() > 3.5
    assert lw.min() >= 0 and lw.max() <= 0.1
    assert len({tuple(row) for row in p}) == len(p)  # every class distinct
    assert spec.channels == 1 and spec.options["size"] == 512 and spec.options["background_gray"] == 255


def test_visualatom_class_grid_is_the_published_one():
    spec = DatasetSpec.create("visualatom", 400, 400)
    p = np.array(spec.systems)
    vertices, lines, perlin, lw, radius, n1, n2, ox, oy = p.T
    assert vertices.min() >= 200 and vertices.max() <= 1000 and lines.min() >= 1 and lines.max() <= 200
    assert perlin.min() >= 0 and perlin.max() <= 4 and lw.min() >= 0 and lw.max() <= 0.1
    assert radius.min() >= 10 and radius.max() <= 60
    assert set(n1) == set(range(21)) and set(n2) <= set(range(21))
    assert ((n1 != n2) | (n1 == 0)).all()  # n2 differs from n1 unless n1 is 0
    assert ox.min() >= 1 and ox.max() <= 2 and oy.min() >= 1 and oy.max() <= 2
    assert len({tuple(row) for row in p}) == len(p)
    assert spec.options["background_gray"] == 0


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_class_parameters_depend_on_seed_and_class_only(kind):
    few, many = DatasetSpec.create(kind, 10, 5), DatasetSpec.create(kind, 50, 20)
    assert all((a == b).all() for a, b in zip(few.systems, many.systems))
    other = DatasetSpec.create(kind, 10, 5, seed=1)
    assert not any((a == b).all() for a, b in zip(few.systems, other.systems))


# ---- samples ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_samples_are_pure_and_follow_their_class(kind):
    spec = DatasetSpec.create(kind, 40, 4, size=96)
    a, b = render_sample(spec, 5), render_sample(spec, 5)
    assert (a.image == b.image).all() and a.meta == b.meta
    assert a.image.shape == (96, 96) and a.image.dtype == np.uint8 and a.cls == 1 and a.classes == [1]
    s9 = render_sample(spec, 9)  # same class, another instance
    assert s9.meta["class_params"] == a.meta["class_params"] and s9.meta["centre"] != a.meta["centre"]
    lines = int(a.meta["class_params"]["lines"])
    # background plus at most one gray per polygon
    assert len(np.unique(a.image)) <= lines + 1
    drawn = [(render_sample(spec, i).image != spec.options["background_gray"]).mean() for i in range(8)]
    assert max(drawn) > 0.01


def test_size_scales_the_published_frame():
    """--size 128 draws the 512-px frame at a quarter: the same shapes, 1-px lines."""
    big = render_sample(DatasetSpec.create("visualatom", 4, 2, size=512), 3).image
    small = render_sample(DatasetSpec.create("visualatom", 4, 2, size=128), 3).image
    ys, xs = np.nonzero(big)
    ys2, xs2 = np.nonzero(small)
    assert abs(xs.min() / 4 - xs2.min()) <= 1 and abs(ys.max() / 4 - ys2.max()) <= 1


# ---- shards, reruns, the card ----------------------------------------------------------------------

def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_shards_webdataset_workers_and_card(tmp_path, kind):
    args = ["render", "--kind", kind, "--n", "10", "--classes", "3", "--shard-size", "4", *SMALL]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    card = load_card(str(tmp_path / "a"))
    assert card["channels"] == 1 and card["num_classes"] == 3 and card["options"]["size"] == 64
    assert any("pnoise1" in note for note in card["notes"]) and any(kind in note for note in card["notes"])
    urls = [str(tmp_path / "a" / s["name"]) for s in card["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert [int(s["cls"]) for s in samples] == [i % 3 for i in range(10)]
    spec = DatasetSpec.from_card(card, str(tmp_path / "a"))  # what pretrain's render path does
    for i in (0, 7):
        assert samples[i]["png"].shape == (64, 64)
        assert (samples[i]["png"] == render_sample(spec, i).image).all()
    systems = json.loads((tmp_path / "a" / "systems.json").read_text())
    assert systems["fields"] == list(C.FIELDS[kind]) and len(systems["systems"]) == 3
    assert main(["info", str(tmp_path / "a"), "--verify"]) == 0


def test_parts_make_the_same_dataset(tmp_path):
    """--part i/k splits the shard list; the parts together equal one render (the writer's guarantee,
    checked for a contour kind). Bad options: tests/test_bad_inputs.py, "fractalgen contour kinds"."""
    args = ["render", "--kind", "visualatom", "--n", "8", "--classes", "4", "--shard-size", "2", "--workers", "1",
            "--size", "48", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--part", "1/2", "--out", str(tmp_path / "parts")]) == 0
    assert not (tmp_path / "parts" / "dataset.json").exists()
    assert main([*args, "--part", "0/2", "--out", str(tmp_path / "parts")]) == 0
    whole, parts = _files(tmp_path / "whole"), _files(tmp_path / "parts")
    shared = [k for k in whole if not k.startswith(".fractalgen")]
    assert shared and all(whole[k] == parts[k] for k in shared) and set(shared) <= set(parts)


# ---- pretrain ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["rcdb", "visualatom", "exfractal"])
def test_published_pretrain_configs_load(kind):
    from common.config import load_config
    from pretrain.config import PretrainConfig

    cfg = load_config(f"configs/pretrain/deit_s16_{kind}.yaml", schema=PretrainConfig)
    assert cfg["batch_size"] == 256 and cfg["optim"]["lr"] == 1e-3 and cfg["epochs"] == 300
    assert cfg["aug"]["hflip"] == 0.0 and cfg["aug"]["mixup"] == 0.8 and cfg["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("kind", ["rcdb", "visualatom"])
def test_render_source_in_pretrain(kind):
    """data.source=render draws contour samples on the fly (grayscale, given to the model as RGB)."""
    import torchvision.transforms as T

    from common.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import FractalSource

    cfg = load_config("configs/pretrain/tiny_cpu.yaml", schema=PretrainConfig, overrides=[
        "data.workers=0", "data.train_samples=16", f"data.render={{kind: {kind}, n: 8, classes: 4, size: 32}}"])
    tf = T.Compose([T.Resize(16), T.ToTensor()])
    source = FractalSource.from_config(cfg, (tf, tf), batch=8, rank=0, world=1)
    assert source.spec.kind == kind and source.num_classes == 4 and source.steps_per_epoch == 2
    images, targets, keys = next(iter(source.train_batches(0, 0)))
    assert images.shape == (8, 3, 16, 16) and sorted(keys) == [f"{i:09d}" for i in range(8)]
    assert (images[:, 0] == images[:, 1]).all()  # gray: the three channels agree
