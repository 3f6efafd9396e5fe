"""The few-image IFS kinds (fractalgen/fewimage.py): 1p-frac and OFDB."""

import json

import numpy as np
import pytest
import webdataset as wds

from fractalgen import DatasetSpec, load_card, render_sample
from fractalgen import kernels
from fractalgen.cli import main
from fractalgen.fewimage import GRAY, PAD
from fractalgen.search import search
from fractalgen.systems import save_systems, sigma_factor, thresholds
from tests.test_fractalgen_writer import cli, files

M32 = (1 << 32) - 1
FAST = ["--size", "40", "--points", "3000", "--no-progress"]




@pytest.fixture(scope="module")
def ofdb_systems(tmp_path_factory):
    """A small FractalDB search (64 px) saved as a systems file, so tests need not search at 512 px."""
    systems, info = search(8, seed=0, size=64, points=3000, workers=1, progress=False)
    path = str(tmp_path_factory.mktemp("systems") / "systems.json")
    save_systems(path, systems, info)
    return path, systems


# --- the patch kernel against a plain reference


def reference_mask(seed: int, i: int) -> int:
    """lowbias32 of i ^ (the two halves of seed xor-ed), mapped to 1..511, in plain Python integers."""
    x = (i ^ (seed >> 32) ^ seed) & M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return 1 + (((x >> 16) * 511) >> 16)


def reference_stamp(xs, ys, size, pad, seed, value):
    """Paste the points' 3x3 patches one after another, all nine cells each (the official drawing)."""
    image = np.zeros((size, size), np.uint8)
    xmin, xmax, ymin, ymax = xs.min(), xs.max(), ys.min(), ys.max()
    ax = (size - 1 - 2 * pad) / (xmax - xmin)
    ay = (size - 1 - 2 * pad) / (ymax - ymin)
    for i, (x, y) in enumerate(zip(xs, ys)):
        px = pad + int((x - xmin) * ax)
        py = size - 1 - pad - int((y - ymin) * ay)
        mask = reference_mask(seed, i)
        for dy in range(3):
            for dx in range(3):
                image[py - 1 + dy, px - 1 + dx] = value if mask >> (3 * dy + dx) & 1 else 0
    return image


@pytest.mark.parametrize("n_points, size, pad", [(1, 16, 1), (40, 16, 1), (600, 24, 2), (3000, 37, 6)])
def test_stamp_random_patches_matches_in_order_pasting(n_points, size, pad):
    rng = np.random.default_rng(n_points)
    xs, ys = rng.normal(size=n_points), rng.uniform(-3, 1, n_points)
    if n_points == 1:
        xs, ys = np.array([0.0, 1.0]), np.array([0.0, 1.0])
    seed = 123456789
    image = np.zeros((size, size), np.uint8)
    kernels.stamp_random_patches(xs, ys, xs.min(), xs.max(), ys.min(), ys.max(), pad, seed, np.uint8(GRAY), image)
    expected = reference_stamp(xs, ys, size, pad, seed, GRAY)
    assert np.array_equal(image, expected)
    assert set(np.unique(image)) <= {0, GRAY}


def test_render_random_patches_is_the_chaos_game_stamped():
    params = np.array([[0.5, 0.1, -0.2, 0.45, 0.3, -0.1], [-0.4, 0.3, 0.25, 0.5, -0.6, 0.4]])
    th = thresholds(params)
    ok, image = kernels.render_random_patches(params, th, 1001, 77, 99, 32, 3, np.uint8(GRAY))
    n = kernels.padded_points(1001)
    xs, ys = np.empty(n), np.empty(n)
    kernels.chaos_game(params, th, n, 77, xs, ys)
    assert ok and np.array_equal(image, reference_stamp(xs, ys, 32, 3, 99, GRAY))
    diverging = params.copy()
    diverging[:, :4] *= 3.0
    ok, image = kernels.render_random_patches(diverging, thresholds(diverging), 1000, 1, 2, 32, 3, np.uint8(GRAY))
    assert not ok and not image.any()


def test_patch_masks_are_uniform_and_never_empty():
    masks = np.array([kernels.patch_mask(5, i) for i in range(51_100)])
    assert masks.min() == 1 and masks.max() == 511
    counts = np.bincount(masks, minlength=512)[1:]
    assert counts.min() > 50 and counts.max() < 150  # ~100 each
    assert [reference_mask(5, i) for i in range(200)] == masks[:200].tolist()


# --- 1p-frac


@pytest.fixture(scope="module")
def onepfrac_spec():
    return DatasetSpec.create("1p-frac", 300, 300, size=48, points=3000, delta=0.25)


def test_onepfrac_classes_are_the_base_times_delta_draws(onepfrac_spec):
    spec = onepfrac_spec
    info, delta = spec.systems_info, 0.25
    base = np.asarray(info["base"])
    assert base.shape == (2, 6) and info["delta"] == delta and info["kind"] == "1p-frac"
    assert 3.9 <= sigma_factor(base) <= 4.1 and info["sigma_range"] == [3.9, 4.1]
    factors = np.array([np.asarray(s) / base for s in spec.systems])  # (classes, 2, 6)
    assert np.allclose(factors, np.asarray(info["factors"]))
    assert factors.min() >= 1 - delta and factors.max() <= 1 + delta
    flat = factors.reshape(len(factors), 12)
    # every coefficient is multiplied, the draws cover the range evenly and are independent
    assert (flat.min(axis=0) < 1 - 0.9 * delta).all() and (flat.max(axis=0) > 1 + 0.9 * delta).all()
    quarters = np.histogram(flat, bins=4, range=(1 - delta, 1 + delta))[0] / flat.size
    assert np.abs(quarters - 0.25).max() < 0.03
    corr = np.corrcoef(flat.T)
    assert np.abs(corr[~np.eye(12, dtype=bool)]).max() < 0.25
    assert len({s.tobytes() for s in spec.systems}) == len(spec.systems)


def test_onepfrac_depends_on_seed_only_and_records_its_systems(onepfrac_spec):
    again = DatasetSpec.create("1p-frac", 300, 300, size=48, points=3000, delta=0.25)
    assert all(np.array_equal(a, b) for a, b in zip(again.systems, onepfrac_spec.systems))
    other = DatasetSpec.create("1p-frac", 10, 10, size=48, points=3000, delta=0.25, seed=1)
    assert not np.array_equal(other.systems_info["base"], onepfrac_spec.systems_info["base"])
    small = DatasetSpec.create("1p-frac", 10, 10, size=48, points=3000, delta=0.05)
    base = np.asarray(small.systems_info["base"])
    assert np.abs(np.array([s / base for s in small.systems]) - 1).max() <= 0.05
    assert np.array_equal(base, onepfrac_spec.systems_info["base"])  # delta does not change the base


def test_onepfrac_samples(onepfrac_spec):
    spec = onepfrac_spec
    s, again = render_sample(spec, 7), render_sample(spec, 7)
    assert np.array_equal(s.image, again.image) and s.meta == again.meta
    assert s.cls == 7 and s.meta["instance"] == 0 and s.image.shape == (48, 48)
    assert set(np.unique(s.image)) == {0, GRAY}
    second = render_sample(spec, 307)  # instance 1 of class 7: a new chaos game and patches, same system
    assert second.cls == 7 and second.meta["instance"] == 1 and second.meta["params"] == s.meta["params"]
    assert not np.array_equal(second.image, s.image)
    # the class's image is the kernel's render of its system with the base probabilities
    base_th = thresholds(np.asarray(spec.systems_info["base"]))
    ok, image = kernels.render_random_patches(spec.systems[7], base_th, 3000, s.meta["chaos_seed"],
                                              s.meta["patch_seed"], 48, PAD, np.uint8(GRAY))
    assert ok and np.array_equal(image, s.image)
    fills = [np.count_nonzero(render_sample(spec, c).image) / 48**2 for c in range(20)]
    assert min(fills) > 0.02  # classes were kept only when they fill >= min_fill (0.05) of the image


# --- OFDB


def test_ofdb_one_image_per_class(tmp_path, ofdb_systems):
    path, systems = ofdb_systems
    out = tmp_path / "ofdb"
    assert main(["render", "--kind", "ofdb", "--n", "8", "--systems", path, "--shard-size", "3", "--workers", "1",
                 "--out", str(out), *FAST]) == 0
    card = load_card(str(out))
    assert card["n"] == card["num_classes"] == 8 and card["channels"] == 1
    assert card["options"]["weights"] == [0.2, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert any("OFDB" in note for note in card["notes"])
    urls = [str(out / s["name"]) for s in card["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("l8"))
    assert sorted(int(s["cls"]) for s in samples) == list(range(8))  # every class exactly once
    for s in samples:
        cls, meta = int(s["cls"]), s["json"]
        assert s["png"].shape == (40, 40) and set(np.unique(s["png"])) <= {0, GRAY}
        assert meta["instance"] == 0 and not meta["fallback"]
        # the class system weighted a x 0.2 (official release script), drawn with the unweighted probabilities
        weighted = systems[cls] * np.array([0.2, 1, 1, 1, 1, 1])
        assert np.allclose(meta["params"], weighted)
        ok, image = kernels.render_random_patches(weighted, thresholds(systems[cls]), 3000, meta["chaos_seed"],
                                                  meta["patch_seed"], 40, PAD, np.uint8(GRAY))
        assert ok and np.array_equal(image, s["png"])
    unweighted = DatasetSpec.create("ofdb", 8, 8, systems=systems, size=40, points=3000, weights=[1, 1, 1, 1, 1, 1])
    assert np.allclose(render_sample(unweighted, 2).meta["params"], systems[2])


def test_ofdb_falls_back_to_the_class_system_when_weights_diverge(ofdb_systems):
    _, systems = ofdb_systems
    spec = DatasetSpec.create("ofdb", 8, 8, systems=systems, size=40, points=3000, weights=[2, 2, 2, 2, 1, 1])
    samples = [render_sample(spec, i) for i in range(8)]
    fell_back = [s for s in samples if s.meta["fallback"]]
    assert fell_back  # doubling every linear part diverges for some class
    for s in fell_back:
        assert np.allclose(s.meta["params"], systems[s.cls]) and s.image.any()


# --- the writer's guarantees


@pytest.mark.parametrize("kind", ["1p-frac", "ofdb"])
def test_byte_identical_with_1_and_2_workers_and_verified(tmp_path, kind, ofdb_systems):
    extra = ["--systems", ofdb_systems[0]] if kind == "ofdb" else []
    args = ["render", "--kind", kind, "--n", "14", "--classes", "7", "--shard-size", "4", *extra, *FAST]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "b")]) == 0
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".tar")]) == 4
    assert main(["info", str(tmp_path / "a"), "--verify"]) == 0
    saved = json.loads(a["systems.json"])
    assert saved["kind"] == kind and len(saved["systems"]) == 7
    if kind == "1p-frac":
        assert saved["delta"] == 0.1 and np.asarray(saved["base"]).shape == (2, 6)
    # the folder's own spec (systems.json) renders the same samples
    from_card = DatasetSpec.from_card(load_card(str(tmp_path / "a")), str(tmp_path / "a"))
    keys = list(wds.WebDataset(str(tmp_path / "a" / f"{kind}-000001.tar"), shardshuffle=False).decode("l8"))
    assert np.array_equal(render_sample(from_card, 4).image, keys[0]["png"])


def test_parts_resume_and_refusal(tmp_path, capsys):
    args = ["render", "--kind", "1p-frac", "--n", "12", "--classes", "6", "--shard-size", "3", "--workers", "1", *FAST]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    split = tmp_path / "split"
    assert main([*args, "--part", "1/2", "--out", str(split)]) == 0
    assert not (split / "dataset.json").exists()
    assert main([*args, "--part", "0/2", "--out", str(split)]) == 0
    assert files(split) == files(tmp_path / "whole")
    # an interrupted render (a shard and its receipt lost) resumes to the same bytes
    (split / "dataset.json").unlink()
    (split / "1p-frac-000002.tar").unlink()
    for receipt in (split / ".fractalgen" / "receipts").iterdir():
        if "000002" in receipt.name:
            receipt.unlink()
    assert main([*args, "--out", str(split)]) == 0
    assert files(split) == files(tmp_path / "whole")
    capsys.readouterr()
    assert main([*args, "--option", "delta=0.2", "--out", str(split)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "delta" in err and "\n" not in err


@pytest.mark.parametrize("kind", ["1p-frac", "ofdb"])
def test_preview(tmp_path, kind, ofdb_systems):
    extra = ["--systems", ofdb_systems[0]] if kind == "ofdb" else []
    out = tmp_path / "sheet.png"
    assert main(["preview", "--kind", kind, "--n", "6", "--size", "40", "--points", "2000", *extra,
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0


# delta / sigma / --systems / weights 0 / --color are rows of tests/test_bad_inputs.py
@pytest.mark.parametrize("args, words", [
    (["--kind", "1p-frac", "--option", "delta=-0.1"], "delta=-0.1 is outside [0, 1)"),
    (["--kind", "1p-frac", "--option", "weights=[1,1,1,1,1,1]"], "does not apply to kind 1p-frac"),
    (["--kind", "ofdb", "--option", "weights=[1,1]"], "should be like"),
    (["--kind", "ofdb", "--points", "100000000"], "--points"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, words):
    result = cli("render", "--n", "4", *args, "--out", str(tmp_path / "o"), "--size", "32", "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr
    assert not (tmp_path / "o" / "dataset.json").exists()


# --- pretraining


@pytest.mark.parametrize("kind", ["1p-frac", "ofdb"])
def test_published_pretrain_configs_load(kind):
    from common.config import load_config
    from pretrain.config import PretrainConfig

    cfg = load_config(f"configs/pretrain/deit_s16_{kind}.yaml", schema=PretrainConfig)
    assert cfg["data"]["source"] == "render" and cfg["data"]["render"]["kind"] == kind
    assert cfg["data"]["train_samples"] * cfg["epochs"] == 80_000 * cfg["data"]["render"]["n"]  # 80k passes
    assert cfg["batch_size"] == 256 and cfg["optim"]["lr"] == 1e-3
    assert cfg["aug"]["vflip"] == 0.5 and cfg["aug"]["re_prob"] == 0.5


@pytest.mark.parametrize("kind", ["1p-frac", "ofdb"])
def test_render_source_in_pretrain(kind):
    """data.source=render builds the spec (with a FractalDB search for ofdb) and cycles over n images."""
    import torchvision.transforms as T

    from common.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import FractalSource

    search = ", search_size: 64, search_points: 2000" if kind == "ofdb" else ""
    cfg = load_config("configs/pretrain/tiny_cpu.yaml", schema=PretrainConfig, overrides=[
        "data.workers=0", "data.train_samples=16",
        f"data.render={{kind: {kind}, n: 4, classes: 4, size: 32, points: 1000{search}}}"])
    tf = T.Compose([T.Resize(16), T.ToTensor()])
    source = FractalSource.from_config(cfg, (tf, tf), batch=8, rank=0, world=1)
    assert source.spec.kind == kind and source.num_classes == 4 and source.steps_per_epoch == 2
    images, targets, keys = next(iter(source.train_batches(0, 0)))
    assert images.shape == (8, 3, 16, 16) and sorted(set(keys)) == [f"{i:09d}" for i in range(4)]
