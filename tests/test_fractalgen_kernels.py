"""Numba kernels against plain Python/NumPy references on small inputs."""

import colorsys

import numpy as np
import pytest

from fractalgen import kernels
from fractalgen.systems import thresholds

MASK64 = (1 << 64) - 1


def ref_stream(seed, n):
    """xorshift64* as 64-bit Python integers: the raw outputs."""
    s, out = seed, []
    for _ in range(n):
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        out.append((s * 0x2545F4914F6CDD1D) & MASK64)
    return out


def test_uniform_stream_matches_reference():
    got = kernels.xorshift_uniforms(12345, 50)
    want = np.array([(r >> 11) * 2.0**-53 for r in ref_stream(12345, 50)])
    assert np.array_equal(got, want)
    assert got.min() >= 0 and got.max() < 1


def ref_chaos(params, n, seed):
    """The chaos game written plainly: 4 interleaved chains, two 32-bit map choices per 64-bit draw."""
    cum = np.cumsum(np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2]))
    th = [int(np.floor(c / cum[-1] * 2.0**32)) for c in cum[:-1]]
    a, b, c, d, e, f = params[0]
    det = (1 - a) * (1 - d) - b * c
    x0, y0 = ((1 - d) * e + b * f) / det, (c * e + (1 - a) * f) / det
    chains = [[x0, y0] for _ in range(4)]
    draws = iter(ref_stream(seed, n))
    xs, ys = [], []
    for i in range(0, n, 4):
        for pair in (0, 2):
            r = next(draws)
            for j, u in ((pair, r >> 32), (pair + 1, r & 0xFFFFFFFF)):
                k = sum(u >= t for t in th)
                x, y = chains[j]
                p = params[k]
                chains[j] = [p[0] * x + p[1] * y + p[4], p[2] * x + p[3] * y + p[5]]
        for j in range(4):
            if i + j < n:
                xs.append(chains[j][0])
                ys.append(chains[j][1])
    return np.array(xs), np.array(ys)


@pytest.fixture
def system():
    return np.array([[0.5, 0.1, -0.2, 0.4, 0.3, -0.5], [-0.3, 0.4, 0.5, 0.2, -0.6, 0.2], [0.45, 0.0, 0.0, 0.45, 0.1, 0.9]])


def test_chaos_game_matches_reference(system):
    n = kernels.padded_points(1001)  # rounded up to the 4 chains
    assert n == 1004
    xs, ys = np.empty(n), np.empty(n)
    ok, *box = kernels.chaos_game(system, thresholds(system), n, 99, xs, ys)
    rx, ry = ref_chaos(system, n, 99)
    np.testing.assert_allclose(xs, rx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ys, ry, rtol=1e-12, atol=1e-12)
    fx, fy = kernels.fixed_point(system, 0)  # the chains' start counts towards the box
    assert ok and box == [min(rx.min(), fx), max(rx.max(), fx), min(ry.min(), fy), max(ry.max(), fy)]


def test_map_frequencies_follow_determinants(system):
    n = 200_000
    xs, ys = np.empty(n), np.empty(n)
    kernels.chaos_game(system, thresholds(system), n, 7, xs, ys)
    # recover the map of each step from the images of the previous points of its chain
    prev_x, prev_y, cur = xs[:-4], ys[:-4], np.stack([xs[4:], ys[4:]], 1)
    counts = np.zeros(3)
    for k, p in enumerate(system):
        img = np.stack([p[0] * prev_x + p[1] * prev_y + p[4], p[2] * prev_x + p[3] * prev_y + p[5]], 1)
        counts[k] = np.sum(np.all(np.isclose(img, cur), 1))
    det = np.abs(system[:, 0] * system[:, 3] - system[:, 1] * system[:, 2])
    np.testing.assert_allclose(counts / counts.sum(), det / det.sum(), atol=0.01)


def test_divergent_system_is_rejected():
    expanding = np.array([[2.0, 0, 0, 2.0, 1.0, 1.0], [2.1, 0, 0, 1.9, -1.0, 0.5]])
    ok, _ = kernels.render_counts(expanding, thresholds(expanding), 5000, 3, 32, 32, 1.0, 1.0, 0.0, 0.0,
                                  False, False, False, np.ones((3, 3), np.uint8))
    assert not ok


def ref_splat(xs, ys, window, h, w, flip_x=False, flip_y=False, transpose=False):
    x0, x1, y0, y1 = window
    if transpose:
        xs, ys, (x0, x1, y0, y1) = ys, xs, (y0, y1, x0, x1)
    px = np.floor((xs - x0) * (w - 1) / (x1 - x0) + 0.5)
    py = np.floor((ys - y0) * (h - 1) / (y1 - y0) + 0.5)
    keep = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    px, py = px[keep].astype(int), py[keep].astype(int)
    if flip_x:
        px = w - 1 - px
    if flip_y:
        py = h - 1 - py
    hist = np.zeros((h, w), np.int64)
    np.add.at(hist, (py, px), 1)
    return hist


@pytest.mark.parametrize("flips", [(False, False, False), (True, False, False), (False, True, True), (True, True, True)])
def test_splat_matches_reference(flips):
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(-1.2, 1.3, 3000), rng.uniform(-0.9, 1.1, 3000)  # some points outside the window
    window = (-1.0, 1.0, -0.8, 1.0)
    hist = np.zeros((22, 22), np.int32)
    kernels.splat(xs, ys, *window, *flips, hist)
    assert np.array_equal(hist[1:-1, 1:-1], ref_splat(xs, ys, window, 20, 20, *flips))
    assert hist[0].sum() == hist[-1].sum() == hist[:, 0].sum() == hist[:, -1].sum() == 0


def test_patch_matches_reference():
    rng = np.random.default_rng(1)
    hist = np.zeros((14, 17), np.int32)
    hist[1:-1, 1:-1] = rng.integers(0, 4, (12, 15))
    patch = rng.integers(0, 2, (3, 3)).astype(np.uint8)
    want = np.zeros((12, 15), np.int64)
    inner = hist[1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            if patch[dy, dx]:  # a point at q lights q + (dy - 1, dx - 1)
                shifted = np.zeros_like(want)
                ys, xs = np.nonzero(inner)
                ty, tx = ys + dy - 1, xs + dx - 1
                ok = (ty >= 0) & (ty < 12) & (tx >= 0) & (tx < 15)
                np.add.at(shifted, (ty[ok], tx[ok]), inner[ys[ok], xs[ok]])
                want += shifted
    assert np.array_equal(kernels.apply_patch(hist, patch), want)


def test_colorize_matches_colorsys():
    counts = np.array([[0, 1, 5], [100, 0, 4095], [5000, 2, 0]], np.int32)
    rgb = np.full((3, 3, 3), 7, np.uint8)
    mask = np.zeros((3, 3), np.bool_)
    filled = kernels.colorize(counts, 0.3, 0.8, 0.9, rgb, mask)
    assert filled == 6 and np.array_equal(mask, counts > 0)
    assert (rgb[counts == 0] == 7).all()  # background untouched
    for (y, x), c in np.ndenumerate(counts):
        if c:
            h = (0.3 + np.log1p(min(c, 4095)) / np.log1p(5000)) % 1.0
            want = np.floor(np.array(colorsys.hsv_to_rgb(h, 0.8, 0.9)) * 255 + 0.5)
            assert np.abs(rgb[y, x].astype(int) - want).max() <= 1


def test_blur3_matches_reference():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
    sigma = 0.8
    k = np.exp(-0.5 / sigma**2)
    weights = np.array([k, 1.0, k]) / (1 + 2 * k)
    pad = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    horiz = sum(weights[i] * pad[:, i:i + 11] for i in range(3))
    want = sum(weights[i] * horiz[i:i + 9] for i in range(3))
    got = kernels.blur3(img, sigma)
    assert np.abs(got.astype(int) - np.floor(want + 0.5)).max() <= 1


def test_plasma_is_normalised_and_seeded():
    a, b, c = kernels.plasma(33, 0.6, 5), kernels.plasma(33, 0.6, 5), kernels.plasma(33, 0.6, 6)
    assert a.shape == (33, 33) and a.min() == 0.0 and a.max() == 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_paste_clips_and_counts():
    canvas = np.zeros((8, 8, 3), np.uint8)
    owner = np.zeros((8, 8), np.int16)
    src = np.full((4, 4, 3), 200, np.uint8)
    mask = np.ones((4, 4), np.bool_)
    mask[0, 0] = False
    drawn = kernels.paste(canvas, owner, src, mask, -1, 6, 3)  # hangs over the top and right edges
    assert drawn == 3 * 2  # rows 1..3 of src, columns 0..1
    assert (owner == 3).sum() == 6 and (canvas[owner == 3] == 200).all()


@pytest.mark.parametrize("shape", [(7, 5), (6, 9, 3), (1, 1, 3)])
def test_png_encoder_roundtrips(shape):
    import io

    from PIL import Image

    from fractalgen.png import encode_png

    image = np.random.default_rng(3).integers(0, 256, shape).astype(np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.shape == image.shape and np.array_equal(decoded, image)
