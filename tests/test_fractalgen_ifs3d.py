"""3D-IFS projections (`--kind exfractal`): kernels against plain NumPy, the class search criterion,
variants, views, shards and reruns."""

import numpy as np
import pytest
import webdataset as wds

from fractalgen import DatasetSpec, UserError, load_card, render_sample
from fractalgen import ifs3d as X
from fractalgen.cli import main
from fractalgen.kernels import xorshift_uniforms


def normalise_reference(points):
    lo, hi = points.min(), points.max()
    scaled = (points - lo) / (hi - lo) * 2 - 1
    return scaled - scaled.mean(axis=0)


def test_chaos_game_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    params = rng.uniform(-0.6, 0.6, (3, 12))
    cum = X.cumulative_kernel(params)
    det = np.abs(np.linalg.det(params[:, :9].reshape(3, 3, 3)))
    np.testing.assert_allclose(cum, np.cumsum(det) / det.sum(), rtol=1e-12)
    pts = X.chaos_game_3d(params, cum, 500, 987)
    u = xorshift_uniforms(987, 500)
    x = np.zeros(3)
    for p in range(500):
        k = int(np.argmax(u[p] <= cum)) if (u[p] <= cum).any() else 2
        A, t = params[k, :9].reshape(3, 3), params[k, 9:]
        x = A @ x + t
        np.testing.assert_allclose(pts[p], x, rtol=1e-9, atol=1e-12)


def test_axis_variances_match_the_official_normalisation():
    pts = np.random.default_rng(1).normal(size=(1000, 3)) * [1.0, 0.3, 2.0]
    np.testing.assert_allclose(X.axis_variances(pts), normalise_reference(pts).var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(X.normalised(pts), normalise_reference(pts))
    bad = pts.copy()
    bad[3, 1] = np.inf
    assert (X.axis_variances(bad) == -1).all() and X.normalised(bad) is None


def test_class_search_follows_the_published_criterion():
    for seed in (11, 12, 13):
        params, tried, chain = X.search_system(2, 7, 0.05, 10_000, 10_000, seed)
        assert 2 <= len(params) <= 7 and params.shape[1] == 12 and np.abs(params).max() <= 1 and tried >= 1
        # the accepted cloud, re-made with NumPy: every axis variance above 0.05 after the official normalisation
        det = np.abs(np.linalg.det(params[:, :9].reshape(-1, 3, 3)))
        cloud = X.chaos_game_3d(params, np.cumsum(det) / det.sum(), 10_000, chain)
        assert (normalise_reference(cloud).var(axis=0) > 0.05).all()
    spec = DatasetSpec.create("exfractal", 30, 30)
    assert len({p.tobytes() for p in spec.systems}) == 30
    again = DatasetSpec.create("exfractal", 30, 10)
    assert all((a == b).all() for a, b in zip(again.systems, spec.systems))


def test_variants_scale_one_coefficient():
    params = np.random.default_rng(2).uniform(-1, 1, (3, 12))
    assert X.variant(params, 0) is params
    seen = set()
    for v in range(1, X.N_VARIANTS):
        out = X.variant(params, v)
        changed = np.nonzero((out != params).any(axis=0))[0]
        assert list(changed) == [(v - 1) // 12]
        ratio = out[:, changed[0]] / params[:, changed[0]]
        np.testing.assert_allclose(ratio, X.WEIGHT_FACTORS[(v - 1) % 12])
        seen.add(out.tobytes())
    assert len(seen) == 144 and min(X.WEIGHT_FACTORS) == 0.4 and max(X.WEIGHT_FACTORS) == 1.6


def test_projection_matches_numpy():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-1, 1, (2000, 3))
    R = X.view_rotation(0.3, 0.7, 0.1)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)
    image = np.zeros((64, 64), np.uint8)
    focal = 1 / np.tan(np.radians(45) / 2)
    X.project_points(pts, R, 4.0, focal, 64, image)
    cam = pts @ R.T
    depth = 4.0 - cam[:, 2]
    col = np.floor((focal * cam[:, 0] / depth + 1) / 2 * 64).astype(int)
    row = np.floor((1 - focal * cam[:, 1] / depth) / 2 * 64).astype(int)
    keep = (col >= 0) & (col < 64) & (row >= 0) & (row < 64)
    expected = np.zeros((64, 64), np.uint8)
    expected[row[keep], col[keep]] = 255
    assert (image == expected).all() and image.any()
    centre = np.zeros((8, 8), np.uint8)
    X.project_points(np.zeros((1, 3)), R, 4.0, focal, 8, centre)
    assert centre[4, 4] == 255  # the origin is at the image centre


def test_samples_pure_and_views_differ():
    spec = DatasetSpec.create("exfractal", 20, 4, size=64)
    a, b = render_sample(spec, 6), render_sample(spec, 6)
    assert (a.image == b.image).all() and a.meta == b.meta and a.image.shape == (64, 64) and a.cls == 2
    assert set(np.unique(a.image)) <= {0, 255} and a.image.any()
    c = render_sample(spec, 10)  # same class, another instance: another view
    assert c.cls == 2 and c.meta["view"] != a.meta["view"]


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_shards_workers_and_card(tmp_path):
    args = ["render", "--kind", "exfractal", "--n", "9", "--classes", "3", "--shard-size", "4", "--size", "48",
            "--no-progress"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "b")]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    card = load_card(str(tmp_path / "a"))
    assert card["channels"] == 1 and any("exfractal" in note for note in card["notes"])
    samples = list(wds.WebDataset([str(tmp_path / "a" / s["name"]) for s in card["shards"]],
                                  shardshuffle=False).decode("l8"))
    spec = DatasetSpec.from_card(card, str(tmp_path / "a"))
    assert [int(s["cls"]) for s in samples] == [i % 3 for i in range(9)]
    assert (samples[5]["png"] == render_sample(spec, 5).image).all()
    assert main(["info", str(tmp_path / "a"), "--verify"]) == 0


@pytest.mark.parametrize("key, value", [("maps", [0, 3]), ("min_variance", 1.5), ("distance", 1.0), ("fov", 200.0)])
def test_bad_options_refused(key, value):
    with pytest.raises(UserError, match=key):
        DatasetSpec.create("exfractal", 4, 2, **{key: value})


def test_render_source_in_pretrain():
    """data.source=render draws exfractal batches on the fly (the class search runs at start)."""
    import torchvision.transforms as T

    from common.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import FractalSource

    cfg = load_config("configs/pretrain/tiny_cpu.yaml", schema=PretrainConfig, overrides=[
        "data.workers=0", "data.train_samples=8", "data.render={kind: exfractal, n: 8, classes: 4, size: 32}"])
    tf = T.Compose([T.Resize(16), T.ToTensor()])
    source = FractalSource.from_config(cfg, (tf, tf), batch=8, rank=0, world=1)
    images, targets, keys = next(iter(source.train_batches(0, 0)))
    assert source.spec.kind == "exfractal" and images.shape == (8, 3, 16, 16) and images.amax() > 0
