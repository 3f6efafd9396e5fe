"""IFS sampling and the three kinds: constraints hold, variants/flips/labels/boxes are what they claim."""

import json

import numpy as np
import pytest

from fractalgen import DatasetSpec, UserError, render_sample
from fractalgen import kernels
from fractalgen.rng import generator
from fractalgen.search import search
from fractalgen.systems import (N_WEIGHT_VARIANTS, WEIGHT_FACTORS, filling_rate, load_systems, probabilities,
                                sample_sigma_system, save_systems, sigma_factor, thresholds, weight_variant)


def test_sigma_systems_respect_constraint_and_contract():
    for i in range(200):
        p = sample_sigma_system(generator(0, "test", i))
        n = len(p)
        assert 2 <= n <= 4
        assert (5 + n) / 2 - 1e-9 <= sigma_factor(p) <= (6 + n) / 2 + 1e-9
        for row in p:
            s = np.linalg.svd(row[:4].reshape(2, 2), compute_uv=False)
            assert s[0] <= 1 + 1e-9  # every map contracts
        assert np.all(np.abs(p[:, 4:]) <= 1)


def test_probabilities_proportional_to_det():
    p = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.2, 0, 0, 0.1, 0, 0]])
    np.testing.assert_allclose(probabilities(p), [0.25 / 0.27, 0.02 / 0.27])
    assert thresholds(p)[0] == int(0.25 / 0.27 * 2**32)


def test_weight_variants_scale_one_parameter():
    base = np.arange(1, 13, dtype=float).reshape(2, 6)
    assert np.array_equal(weight_variant(base, 0), base)
    seen = set()
    for v in range(1, N_WEIGHT_VARIANTS):
        ratio = weight_variant(base, v) / base
        changed = np.nonzero(~np.isclose(ratio, 1.0).all(0))[0]
        assert len(changed) == 1  # one of the 6 parameters, in every map
        factor = ratio[0, changed[0]]
        assert np.allclose(ratio[:, changed[0]], factor) and any(np.isclose(factor, f) for f in WEIGHT_FACTORS)
        seen.add((int(changed[0]), round(float(factor), 3)))
    assert len(seen) == 24


def test_search_respects_threshold_and_is_worker_independent():
    one, info = search(6, seed=3, size=128, points=20_000, threshold=0.2, workers=1, progress=False)
    two, _ = search(6, seed=3, size=128, points=20_000, threshold=0.2, workers=2, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(one, two)) and len(one) == 6
    for params, k in zip(one, info["search"]["candidate_ids"]):
        assert 2 <= len(params) <= 7 and np.all(np.abs(params) <= 1)
        assert min(info["search"]["filling_rates"]) >= 0.2
    # a rejected candidate really is below the threshold
    rejected = min(set(range(max(info["search"]["candidate_ids"]))) - set(info["search"]["candidate_ids"]))
    from fractalgen.systems import fractaldb_candidate
    assert fractaldb_candidate(3, rejected, 128, 20_000)[1] < 0.2


def test_systems_file_roundtrip_and_errors(tmp_path):
    path = str(tmp_path / "s.json")
    systems = [np.ones((2, 6)) * 0.1, np.ones((3, 6)) * 0.2]
    save_systems(path, systems, {"kind": "fractaldb"})
    back, info = load_systems(path)
    assert info["kind"] == "fractaldb" and all(np.array_equal(a, b) for a, b in zip(systems, back))
    bad = tmp_path / "bad.json"
    for text, words in [("{not json", "not readable JSON"), ('{"format": "x"}', "expected format"),
                        ('{"format": "fractalgen-systems/1", "systems": [[[1, 2, 3]]]}', "system 0"),
                        ('{"format": "fractalgen-systems/1", "systems": []}', "no systems")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=words):
            load_systems(str(bad))


def small(kind, **kw):
    systems = None
    if kind == "fractaldb":
        systems, _ = search(4, seed=0, size=64, points=5_000, workers=1, progress=False)
    return DatasetSpec.create(kind, kw.pop("n", 64), kw.pop("classes", 4), systems=systems,
                              **{"size": 48, "points": 4_000, **kw})


@pytest.mark.parametrize("kind", ["fractaldb", "single", "multi"])
def test_samples_are_pure_functions_of_index(kind):
    spec = small(kind)
    a, b = render_sample(spec, 5), render_sample(spec, 5)
    assert np.array_equal(a.image, b.image) and a.meta == b.meta
    assert not np.array_equal(a.image, render_sample(spec, 6).image)
    assert a.image.dtype == np.uint8 and a.image.shape[:2] == (48, 48)
    assert a.image.ndim == (2 if kind == "fractaldb" else 3)
    json.dumps(a.meta)  # the metadata is JSON


def test_fractaldb_instance_layout_and_flips():
    spec = small("fractaldb", n=4 * 100, classes=4, min_fill=0.0, official_draw=False)  # fractalgen's drawing
    for index in (0, 1, 4 * 7, 4 * 30 + 2, 4 * 77 + 3):
        s = render_sample(spec, index)
        instance = index // 4
        assert s.cls == index % 4 and s.classes == [s.cls]
        assert s.meta["variant"]["id"] == instance % 25
        assert s.meta["flip"] == {"horizontal": bool((instance // 25) % 4 & 1), "vertical": bool((instance // 25) % 4 & 2)}
        np.testing.assert_allclose(s.meta["params"], weight_variant(spec.systems[s.cls], instance % 25))
        assert set(np.unique(s.image)) <= {0, 255}
        # the image is exactly the kernel's render from the recorded parameters
        p = np.array(s.meta["params"])
        ok, counts = kernels.render_counts(p, thresholds(p), 4_000, s.meta["chaos_seed"], 48, 48, 1.0, 1.0, 0.0, 0.0,
                                           s.meta["flip"]["horizontal"], s.meta["flip"]["vertical"], False,
                                           np.array(s.meta["patch"], np.uint8).reshape(3, 3))
        assert np.array_equal(s.image, np.where(counts > 0, 255, 0))


def test_flip_is_a_mirror_image():
    p = sample_sigma_system(generator(0, "flip", 0))
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # symmetric: patch and flip commute
    args = (p, thresholds(p), 3_000, 11, 40, 40, 1.0, 1.0, 0.0, 0.0)
    base = kernels.render_counts(*args, False, False, False, plus)[1]
    assert np.array_equal(kernels.render_counts(*args, True, False, False, plus)[1], base[:, ::-1])
    assert np.array_equal(kernels.render_counts(*args, False, True, False, plus)[1], base[::-1])
    assert np.array_equal(kernels.render_counts(*args, True, True, False, plus)[1], base[::-1, ::-1])


def test_single_class_systems_and_labels():
    spec = small("single", n=40, classes=4)
    for c, system in enumerate(spec.systems):
        n = len(system)
        assert (5 + n) / 2 - 1e-9 <= sigma_factor(system) <= (6 + n) / 2 + 1e-9
        assert filling_rate(system, 64, 20_000, 1) > 0.01
    for index in range(8):
        s = render_sample(spec, index)
        assert s.cls == index % 4 and s.classes == [s.cls]
        assert np.count_nonzero(s.image.sum(-1)) > 0


def test_multi_labels_and_boxes_match_what_is_drawn():
    spec = small("multi", n=50, classes=6, background=False, blur_p=0.0, size=64)
    for index in range(30):
        s = render_sample(spec, index)
        drawn = s.image.sum(-1) > 0
        instances = s.meta["instances"]
        present = [i for i in instances if i["present"]]
        assert s.classes == sorted({i["class"] for i in present}) and s.cls in s.classes
        covered = np.zeros_like(drawn)
        for inst in instances:
            if inst["box"] is None:
                assert inst["visible_pixels"] == 0 and not inst["present"]
                continue
            x0, y0, x1, y1 = inst["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            box = drawn[y0:y1, x0:x1]
            # tight: every edge of the box touches a drawn pixel
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
            assert inst["visible_pixels"] <= box.sum()
            covered[y0:y1, x0:x1] = True
        assert not (drawn & ~covered).any()  # every drawn pixel belongs to some instance's box
        assert sum(i["visible_pixels"] for i in instances) == drawn.sum()


def test_multi_single_object_box_is_the_drawn_bbox():
    spec = small("multi", n=20, classes=3, background=False, blur_p=0.0, objects=[1, 1], size=64)
    for index in range(10):
        s = render_sample(spec, index)
        ys, xs = np.nonzero(s.image.sum(-1))
        (inst,) = s.meta["instances"]
        assert inst["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert s.classes == [inst["class"]] == [s.cls]


@pytest.mark.parametrize("kw, words", [
    (dict(kind="nope"), "unknown kind"), (dict(n=0), "positive"), (dict(n=5, classes=10), "larger than --n"),
    (dict(size=8), "too small"), (dict(bogus=1), "does not apply"),
])
def test_bad_options(kw, words):
    args = {"kind": "single", "n": 20, "classes": 2, **kw}
    with pytest.raises(UserError, match=words):
        DatasetSpec.create(args.pop("kind"), args.pop("n"), args.pop("classes"), **args)
