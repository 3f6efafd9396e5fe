"""benchmarks/fidelity.py on tiny fabricated inputs (no reference code needed): the two-sample CNN, the
statistics and their JSON, the sigma factor; and the fractalgen options it compares with."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import fidelity  # noqa: E402


def _noise(rng, n, mean, size=32):
    return np.clip(rng.normal(mean, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_two_sample_auc_near_half_for_one_distribution():
    rng = np.random.default_rng(0)
    a, b = _noise(rng, 150, 128), _noise(rng, 150, 128)
    test_auc, _ = fidelity.two_sample_auc(a, b, epochs=2, size=32, progress=False)
    assert 0.3 <= test_auc <= 0.7


def test_two_sample_auc_near_one_for_different_distributions():
    rng = np.random.default_rng(1)
    a, b = _noise(rng, 150, 100), _noise(rng, 150, 160)
    test_auc, train_auc = fidelity.two_sample_auc(a, b, epochs=2, size=32, progress=False)
    assert test_auc >= 0.95 and train_auc >= 0.95


def test_sigma_factor_matches_hand_computed_value():
    # map 1: diag(0.5, 0.25) -> 0.5 + 2 * 0.25 = 1.0; map 2: 0.6 * rotation -> 0.6 + 2 * 0.6 = 1.8
    c, s = np.cos(0.7), np.sin(0.7)
    system = np.array([[0.5, 0.0, 0.0, 0.25, 0.1, -0.3], [0.6 * c, -0.6 * s, 0.6 * s, 0.6 * c, 0.0, 0.0]])
    assert fidelity.sigma_factors([system])[0] == pytest.approx(2.8)


def test_rgb_to_hsv_on_primaries():
    hsv = fidelity.rgb_to_hsv(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [128, 128, 128]], np.uint8))
    assert hsv[:3, 0] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert hsv[:3, 1] == pytest.approx([1.0, 1.0, 1.0]) and hsv[3:, 1] == pytest.approx([0.0, 0.0])
    assert hsv[4, 2] == pytest.approx(128 / 255)


def _fake_side(rng, n=12, size=16, multi=False):
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), bool)
    masks[:, 4:8, 4:8] = True  # 16 of 256 pixels
    systems = np.empty(3, object)
    systems[:] = [np.array([[0.5, 0, 0, 0.25, 0, 0], [0.5, 0, 0, 0.5, 1, 1]])] * 3
    data = {"images": images, "masks": masks, "systems": systems}
    if multi:
        data.update(instance_counts=np.array([1, 2, 3] * (n // 3)), instance_sizes=rng.uniform(0.15, 0.6, 2 * n))
    return data


def test_stats_json_has_the_fields(tmp_path):
    rng = np.random.default_rng(2)
    ours, ref = fidelity.side_stats(_fake_side(rng, multi=True)), fidelity.side_stats(_fake_side(rng, multi=True))
    result = fidelity.compare(ours, ref)
    for key in ("sigma_factor", "maps", "coverage", "fg_intensity_hist", "fg_hue_hist", "fg_sat_hist", "fg_val_hist",
                "bg_hue_hist", "bg_val_hist", "bg_mean", "bg_std", "fg_hue_step", "instance_counts", "instance_sizes"):
        assert key in result["ours"] and key in result["reference"], key
    assert result["ours"]["coverage"]["mean"] == pytest.approx(16 / 256)
    assert result["ours"]["sigma_factor"]["mean"] == pytest.approx(1.0 + 0.5 + 1.0)  # (0.5 + 0.5) + (0.5 + 1.0)
    assert result["ours"]["maps"][2] == 3 and result["ours"]["instance_counts"][1:4] == [4, 4, 4]
    assert set(result["total_variation"]) >= {"fg_hue_hist", "bg_val_hist"}
    assert all(0 <= v <= 1 for v in result["total_variation"].values())
    json.dumps(result, default=float)  # JSON-able
    fidelity.plot_stats(result, str(tmp_path / "s.png"), "t")
    fidelity.contact_sheet(_fake_side(rng)["images"], _fake_side(rng)["images"], str(tmp_path / "c.png"), "t")
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0


def test_gray_stats_and_identical_histograms():
    rng = np.random.default_rng(3)
    side = _fake_side(rng)
    side["images"] = side["images"][..., :1]
    st = fidelity.side_stats(side)
    assert "fg_hue_hist" not in st and st["channels"] == 1
    assert fidelity.compare(st, st)["total_variation"]["fg_intensity_hist"] == 0.0


def test_bad_input_is_one_error_line(tmp_path, capsys):
    from common.errors import run_main

    with pytest.raises(SystemExit) as e:
        run_main(fidelity.main, ["--kind", "single", "--ref", str(tmp_path / "missing"), "--work", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --ref") and err.count("\n") == 1


def test_fractalgen_reference_options_render():
    """The comparison options draw (and leave the default images alone: they are off by default)."""
    from fractalgen.kinds import DatasetSpec, render_sample

    on = DatasetSpec.create("single", 4, 2, size=32, points=2000, reference_colour=True, reference_background=True)
    off = DatasetSpec.create("single", 4, 2, size=32, points=2000)
    a, b = render_sample(on, 1), render_sample(off, 1)
    assert a.image.shape == b.image.shape == (32, 32, 3) and not np.array_equal(a.image, b.image)
    assert a.meta["background"]["kind"] == "plasma-reference" and b.meta["background"]["kind"] == "plasma"
    m = render_sample(DatasetSpec.create("multi", 4, 2, size=32, points=2000, reference_colour=True), 0)
    assert m.image.shape == (32, 32, 3)
    system = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0, 0.5]])
    fdb = DatasetSpec.create("fractaldb", 4, 1, systems=[system], size=32, points=3000, official_draw=True)
    image = render_sample(fdb, 0).image
    assert set(np.unique(image)) == {0, 127} and not image[:2].any() and not image[:, -2:].any()  # margin
    assert not image[-7:].any() and not image[:, :7].any()  # the official paste offset: 2 px right and up
    # official_draw=auto, the default: the official drawing for gray images, fractalgen's for colour ones
    default = DatasetSpec.create("fractaldb", 4, 1, systems=[system], size=32, points=3000)
    assert default.options["official_draw"] is True and np.array_equal(render_sample(default, 0).image, image)
    colour = DatasetSpec.create("fractaldb", 4, 1, systems=[system], size=32, points=3000, color=True)
    assert colour.options["official_draw"] is False and render_sample(colour, 0).image.shape == (32, 32, 3)


def test_opencv_colouring_reads_hue_bytes_in_the_0_179_range():
    from fractalgen import kernels

    counts = np.array([[2, 1, 0]], np.int32)
    rgb, mask = np.zeros((1, 3, 3), np.uint8), np.zeros((1, 3), bool)
    assert kernels.colorize_opencv(counts, 0.0, 255.0, 255.0, rgb, mask) == 2
    # byte 255 -> 255 / 180 of the circle = 150 degrees; byte 127 (0.5 * 255, truncated) -> 254 degrees
    assert rgb[0, 0].tolist() == [0, 255, 128] and rgb[0, 1].tolist() == [60, 0, 255] and mask.tolist() == [[1, 1, 0]]


def test_resize_bilinear_identity_constant_and_midpoint():
    from fractalgen import kernels

    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert np.array_equal(kernels.resize_bilinear(a, 8), a)
    assert (kernels.resize_bilinear(np.full((8, 8, 3), 77, np.uint8), 13) == 77).all()
    two = np.array([[[0], [100]]], np.uint8).repeat(2, 0)  # 2x2, columns 0 and 100
    # 4 px wide: sample x = (i + 0.5) / 2 - 0.5 = -0.25 (clamped 0), 0.25, 0.75, 1.25 (clamped 1)
    assert kernels.resize_bilinear(two, 4)[0, :, 0].tolist() == [0, 25, 75, 100]


def test_report_prints_a_markdown_row_per_side(tmp_path, capsys):
    rng = np.random.default_rng(5)
    result = fidelity.compare(fidelity.side_stats(_fake_side(rng)), fidelity.side_stats(_fake_side(rng)))
    result["two_sample"] = {"test_auc": 0.61, "train_auc": 0.7}
    (tmp_path / "single.json").write_text(json.dumps(result, default=float))
    fidelity.report(str(tmp_path))
    out = capsys.readouterr().out
    assert "| single fractalgen | 0.610 (0.700) |" in out and "| single reference |" in out


def test_plasma_wrap_is_the_torus_diamond_square():
    """plasma(..., normalise=False, wrap=True) against a plain-Python diamond-square on a torus of
    period n - 1 (the public code's edge rule), fed the kernel's own random stream."""
    from fractalgen import kernels

    n, rough, seed = 9, 0.6, 12345
    u = iter(kernels.xorshift_uniforms(seed, n * n))
    g = np.zeros((n, n))
    for y in (0, n - 1):
        for x in (0, n - 1):
            g[y, x] = next(u)
    step, amp, m = n - 1, 1.0, n - 1
    while step > 1:
        half = step // 2
        for y in range(half, n, step):
            for x in range(half, n, step):
                avg = (g[y - half, x - half] + g[y - half, x + half] + g[y + half, x - half] + g[y + half, x + half]) / 4
                g[y, x] = avg + (next(u) - 0.5) * amp
        for y in range(0, n, half):
            for x in range((y + half) % step, n, step):
                avg = (g[(y - half) % m, x] + g[(y + half) % m, x] + g[y, (x - half) % m] + g[y, (x + half) % m]) / 4
                g[y, x] = avg + (next(u) - 0.5) * amp
        step, amp = half, amp * rough
    assert np.allclose(kernels.plasma(n, rough, seed, False, True), g)
    assert not np.allclose(kernels.plasma(n, rough, seed, False, False), g)


def test_a_card_without_the_new_options_still_renders(tmp_path):
    """Cards written before reference_colour / official_draw existed render as before (the defaults)."""
    from fractalgen.kinds import DatasetSpec, render_sample
    from fractalgen.systems import save_systems

    spec = DatasetSpec.create("single", 4, 2, size=32, points=2000)
    old = {k: v for k, v in spec.options.items() if k not in ("reference_colour", "reference_background")}
    save_systems(str(tmp_path / "systems.json"), spec.systems, spec.systems_info)
    again = DatasetSpec.from_card({"options": old}, str(tmp_path))
    assert np.array_equal(render_sample(again, 1).image, render_sample(spec, 1).image)
    # official_draw's default changed (false -> auto): a card without it was drawn fractalgen's way
    system = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0, 0.5]])
    drawn_before = DatasetSpec.create("fractaldb", 4, 1, systems=[system], size=32, points=3000, official_draw=False)
    save_systems(str(tmp_path / "systems.json"), drawn_before.systems, drawn_before.systems_info)
    card = {k: v for k, v in drawn_before.options.items() if k != "official_draw"}
    again = DatasetSpec.from_card({"options": card}, str(tmp_path))
    assert again.options["official_draw"] is False
    assert np.array_equal(render_sample(again, 0).image, render_sample(drawn_before, 0).image)


def test_reference_class_systems_become_a_fractalgen_systems_file(tmp_path):
    # single-classes saves the reference's systems zero-padded to 4 maps; fractalgen reads them unpadded
    import fidelity_ref
    from fractalgen.systems import load_systems

    a = np.arange(1, 13, dtype=np.float64).reshape(2, 6) / 20  # 2 maps
    b = -np.arange(1, 25, dtype=np.float64).reshape(4, 6) / 40  # 4 maps
    np.save(tmp_path / "systems.npy", np.stack([np.pad(a, ((0, 2), (0, 0))), b]))
    fidelity_ref.write_systems_json(str(tmp_path))
    systems, info = load_systems(str(tmp_path / "systems.json"))
    assert len(systems) == 2 and np.array_equal(systems[0], a) and np.array_equal(systems[1], b)
    assert "catalys1" in info["source"]


FAKE_IFS = '''
import numpy as np
import random
from PIL import Image


class ifs_function:  # the interface of the authors' renderer; draws each point as one pixel, random gray
    def __init__(self, prev_x, prev_y, save_root, fractal_name, fractal_weight_count):
        self.maps = []

    def set_param(self, a, b, c, d, e, f, proba, **w):
        self.maps.append((a * w["weight_a"], e))

    def calculate(self, iteration):
        self.n = iteration

    def draw_patch(self, image_x, image_y, pad_x, pad_y, set_color, count):
        image = np.zeros((image_y, image_x, 3), np.uint8)
        image[pad_y, pad_x:pad_x + len(self.maps)] = random.randrange(1, 256)
        image[pad_y + 1, pad_x] = int(self.maps[0][0] * 100) % 256
        image = Image.fromarray(image)
        for flip in range(4):
            (image.transpose(Image.FLIP_LEFT_RIGHT) if flip & 1 else image).save("/nonexistent/x.png")
'''


def _fake_fractaldb_checkout(root):
    (root / "fractal_renderer" / "weights").mkdir(parents=True)
    (root / "fractal_renderer" / "ifs_function.py").write_text(FAKE_IFS)
    (root / "fractal_renderer" / "weights" / "weights_0.1.csv").write_text("0.8,1,1,1,1,1\n1,1,1,1,1,1\n1.2,1,1,1,1,1")
    classes = root / "data" / "csv_rate0.2_category1000"
    classes.mkdir(parents=True)
    for c in range(3):
        rows = [[0.5 + c / 10, 0, 0, 0.5, m / 4, 0, 0.5] for m in range(2 + c)]
        np.savetxt(classes / f"{c:05d}.csv", np.array(rows), delimiter=",")


def test_fractaldb_classes_is_a_class_folder_of_4_flip_renders(tmp_path):
    """fractaldb-classes (driven here through a stand-in of the authors' renderer): the class-folder
    layout, 4 flips per render, classes then weight rows in turn, the same bytes for 1 or 2 workers, and
    the published systems as fractalgen's systems file."""
    import fidelity_ref
    from PIL import Image
    from fractalgen.systems import load_systems

    _fake_fractaldb_checkout(tmp_path / "ref")
    outs = []
    for workers in (1, 2):
        out = str(tmp_path / f"out{workers}")
        fidelity_ref.fractaldb_classes(str(tmp_path / "ref"), out, 22, 3, 16, 100, 0, 3, "0.1", workers)
        outs.append(out)
    train = sorted((tmp_path / "out1" / "train").rglob("*.png"))
    val = sorted((tmp_path / "out1" / "val").rglob("*.png"))
    assert len(train) == 22 and len(val) == 3 and not (tmp_path / "out1.partial").exists()
    # image i comes from render i // 4 of class (i // 4) % 3: images 0-3 class 0, 4-7 class 1, 12-15 class 0
    assert sorted(p.name for p in (tmp_path / "out1" / "train" / "0000").glob("*.png"))[:8] == \
        [f"{i:07d}.png" for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    first = [np.array(Image.open(tmp_path / "out1" / "train" / "0000" / f"{i:07d}.png")) for i in range(4)]
    assert first[0].shape == (16, 16) and np.array_equal(first[1], first[0][:, ::-1])  # the render's flips
    # render 3 (class 0 again) uses the next weight row (x1 after x0.8): the stand-in writes a * weight
    again = np.array(Image.open(tmp_path / "out1" / "train" / "0000" / "0000012.png"))
    assert first[0][7, 6] == int(0.5 * 0.8 * 100) and again[7, 6] == int(0.5 * 1.0 * 100)
    for a, b in zip(train + val, sorted((tmp_path / "out2" / "train").rglob("*.png"))
                    + sorted((tmp_path / "out2" / "val").rglob("*.png"))):
        assert a.relative_to(tmp_path / "out1") == b.relative_to(tmp_path / "out2") and a.read_bytes() == b.read_bytes()
    systems, info = load_systems(str(tmp_path / "out1" / "systems.json"))
    assert [len(s) for s in systems] == [2, 3, 4] and systems[1][0].tolist() == [0.6, 0, 0, 0.5, 0, 0]
    assert "FractalDB" in info["source"]


@pytest.mark.parametrize("broken, message", [
    ("classes", "has 3 class files, fewer than 4"),
    ("weights", "weights_0.1.csv does not exist"),
    ("renderer", "has no fractal_renderer/ifs_function.py"),
])
def test_fractaldb_classes_refuses_a_broken_checkout_before_starting_workers(tmp_path, broken, message):
    """Checked in the parent: a Pool whose workers fail to start starts new ones forever (a hang)."""
    import fidelity_ref

    _fake_fractaldb_checkout(tmp_path / "ref")
    classes = 4 if broken == "classes" else 3
    if broken == "weights":
        (tmp_path / "ref" / "fractal_renderer" / "weights" / "weights_0.1.csv").unlink()
    if broken == "renderer":
        (tmp_path / "ref" / "fractal_renderer" / "ifs_function.py").rename(tmp_path / "ref" / "moved.py")
    with pytest.raises(SystemExit) as e:
        fidelity_ref.fractaldb_classes(str(tmp_path / "ref"), str(tmp_path / "out"), 8, 0, 16, 100, 0, classes, "0.1", 2)
    assert str(e.value).startswith("error: ") and message in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
