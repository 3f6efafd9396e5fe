"""Numba kernels: the chaos game, rasterisation, patch texture, colour, backgrounds, blur.

Every kernel that draws random numbers takes an explicit 64-bit seed and runs its own xorshift64*
stream in registers, so results are a pure function of the inputs (no global RNG state, identical in
any process). Kernels are single-threaded on purpose: the writer parallelises over shards with
processes, which scales better and keeps forked DataLoader workers safe.
"""

import ctypes
import sys

import numpy as np
from numba import njit


def _keep_freed_memory():
    """Keep freed scratch arrays in the heap instead of returning them to the OS.

    Each render allocates ~2 MB of short-lived arrays; glibc serves blocks above 128 KB with fresh
    mmap pages and unmaps them on free, so every render paid ~500 page faults (as much time as the
    chaos game itself, measured: 560 -> 1,500 kernel images/s). Memory stays flat: the same blocks
    are reused render after render.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: heap-allocate blocks up to 64 MB
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MB of free heap
    except (OSError, AttributeError):  # not glibc: correct, just slower
        pass


_keep_freed_memory()

_MUL = np.uint64(0x2545F4914F6CDD1D)
_S12 = np.uint64(12)
_S25 = np.uint64(25)
_S27 = np.uint64(27)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, inline="always")
def _step(s):
    s ^= s >> _S12
    s ^= s << _S25
    s ^= s >> _S27
    return s


@njit(cache=True, inline="always")
def _uniform(s):
    """Next state and a float in [0, 1) from its top 53 bits."""
    s = _step(s)
    return s, float((s * _MUL) >> _S11) * _INV53


@njit(cache=True)
def xorshift_uniforms(seed, n):
    """The kernel stream as an array (used by tests and small Python-side draws)."""
    out = np.empty(n)
    s = np.uint64(seed)
    for i in range(n):
        s, out[i] = _uniform(s)
    return out


@njit(cache=True)
def fixed_point(params, k):
    """Fixed point of map k (a point of the attractor); origin if I - A is singular."""
    a, b, c, d, e, f = params[k, 0], params[k, 1], params[k, 2], params[k, 3], params[k, 4], params[k, 5]
    det = (1.0 - a) * (1.0 - d) - b * c
    if abs(det) < 1e-12:
        return 0.0, 0.0
    return ((1.0 - d) * e + b * f) / det, (c * e + (1.0 - a) * f) / det


_S32 = np.uint64(32)
_LO32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _pick(u, thresholds, last):
    """Map index for a 32-bit uniform u: branch-free count of thresholds passed."""
    k = 0
    for m in range(last):
        k += u >= thresholds[m]
    return k


@njit(cache=True, inline="always")
def _apply(P, k, x, y):
    return P[k, 0] * x + P[k, 1] * y + P[k, 4], P[k, 2] * x + P[k, 3] * y + P[k, 5]


@njit(cache=True)
def chaos_game(params, thresholds, n_points, seed, xs, ys):
    """Run the chaos game, writing points into xs/ys; returns (ok, xmin, xmax, ymin, ymax).

    params: (N, 6) rows (a, b, c, d, e, f) meaning x' = a x + b y + e, y' = c x + d y + f.
    thresholds: (N - 1,) uint64 cumulative map probabilities scaled to 2**32.
    n_points is rounded up to a multiple of 4 (xs/ys must hold that many): four independent chains
    are interleaved (point i belongs to chain i % 4) so the CPU overlaps their serial dependencies,
    and each 64-bit random number picks the maps of two steps. All chains start at the fixed point
    of map 0, which lies on the attractor, so no warm-up is needed. The bounding box is tracked in
    the same loop; ok is False when coordinates explode (a divergent system).
    """
    last = params.shape[0] - 1
    x0, y0 = fixed_point(params, 0)
    xa = xb = xc = xd = xmin = xmax = x0
    ya = yb = yc = yd = ymin = ymax = y0
    s = np.uint64(seed)
    for i in range(0, n_points, 4):
        s = _step(s)
        r = s * _MUL
        xa, ya = _apply(params, _pick(r >> _S32, thresholds, last), xa, ya)
        xb, yb = _apply(params, _pick(r & _LO32, thresholds, last), xb, yb)
        s = _step(s)
        r = s * _MUL
        xc, yc = _apply(params, _pick(r >> _S32, thresholds, last), xc, yc)
        xd, yd = _apply(params, _pick(r & _LO32, thresholds, last), xd, yd)
        xs[i] = xa
        ys[i] = ya
        xs[i + 1] = xb
        ys[i + 1] = yb
        xs[i + 2] = xc
        ys[i + 2] = yc
        xs[i + 3] = xd
        ys[i + 3] = yd
        xmin = min(xmin, min(min(xa, xb), min(xc, xd)))
        xmax = max(xmax, max(max(xa, xb), max(xc, xd)))
        ymin = min(ymin, min(min(ya, yb), min(yc, yd)))
        ymax = max(ymax, max(max(ya, yb), max(yc, yd)))
    # a divergent chain reaches inf (then NaN); inf shows in the extremes, NaN in the sums
    ok = max(abs(xmin), abs(xmax), abs(ymin), abs(ymax)) < 1e30 and np.isfinite(xmin + xmax + ymin + ymax)
    return ok, xmin, xmax, ymin, ymax


def padded_points(n_points):
    """The number of points chaos_game writes for n_points (a multiple of its 4 chains)."""
    return (n_points + 3) // 4 * 4


@njit(cache=True)
def splat(xs, ys, x0, x1, y0, y1, flip_x, flip_y, transpose, hist):
    """Count points per pixel into the interior of a 1-pixel-padded hist (H + 2, W + 2).

    The window [x0, x1] x [y0, y1] maps its edges to the centres of the first and last pixels, so a
    bounding-box window fills the canvas; points outside it are dropped. Flips and the transpose
    are folded into one affine map per axis. Two passes (index, then count) run ~1.5x faster than one.
    """
    h = hist.shape[0] - 2
    w = hist.shape[1] - 2
    if transpose:
        xs, ys = ys, xs
        x0, x1, y0, y1 = y0, y1, x0, x1
    ax = (w - 1) / max(x1 - x0, 1e-300)
    ay = (h - 1) / max(y1 - y0, 1e-300)
    bx = 0.5 - x0 * ax
    by = 0.5 - y0 * ay
    if flip_x:  # pixel w - 1 - px
        ax, bx = -ax, w - bx
    if flip_y:
        ay, by = -ay, h - by
    stride = w + 2
    n = xs.shape[0]
    # pass 1 (vectorises): flat pixel index per point; points outside the window go to padding pixel 0
    idx = np.empty(n, np.int32)
    for i in range(n):
        fx = xs[i] * ax + bx
        fy = ys[i] * ay + by
        inside = (fx >= 0.0) & (fx < w) & (fy >= 0.0) & (fy < h)
        fx = min(max(fx, 0.0), w - 1.0)
        fy = min(max(fy, 0.0), h - 1.0)
        idx[i] = ((np.int32(fy) + 1) * stride + np.int32(fx) + 1) * inside
    # pass 2: plain increments
    flat = hist.ravel()
    for i in range(n):
        flat[idx[i]] += 1
    flat[0] = 0


@njit(cache=True)
def apply_patch(hist, patch):
    """Draw every point as the 3x3 on/off patch: a 3x3 correlation of the padded hist.

    Gathering per output pixel (instead of stamping per point) vectorises: ~0.02 ms at 256 px.
    """
    h = hist.shape[0] - 2
    w = hist.shape[1] - 2
    out = np.empty((h, w), np.int32)
    p0, p1, p2 = np.int32(patch[0, 0]), np.int32(patch[0, 1]), np.int32(patch[0, 2])
    p3, p4, p5 = np.int32(patch[1, 0]), np.int32(patch[1, 1]), np.int32(patch[1, 2])
    p6, p7, p8 = np.int32(patch[2, 0]), np.int32(patch[2, 1]), np.int32(patch[2, 2])
    for y in range(h):
        # a point at pixel q with patch cell (dy, dx) lights q + (dy - 1, dx - 1)
        r0 = hist[y + 2]
        r1 = hist[y + 1]
        r2 = hist[y]
        o = out[y]
        for x in range(w):
            o[x] = (p0 * r0[x + 2] + p1 * r0[x + 1] + p2 * r0[x]
                    + p3 * r1[x + 2] + p4 * r1[x + 1] + p5 * r1[x]
                    + p6 * r2[x + 2] + p7 * r2[x + 1] + p8 * r2[x])
    return out


@njit(cache=True)
def render_counts(params, thresholds, n_points, seed, h, w, window_x, window_y, shift_x, shift_y,
                  flip_x, flip_y, transpose, patch):
    """Points per pixel of one fractal drawn with a 3x3 patch: (ok, counts (h, w) int32).

    The drawing window is the points' bounding box scaled about its centre by (window_x, window_y)
    (> 1 shows the fractal smaller) and shifted by (shift_x, shift_y) box widths. ok is False for a
    divergent system (nothing is drawn).
    """
    n = (n_points + 3) // 4 * 4
    xs = np.empty(n)
    ys = np.empty(n)
    ok, xmin, xmax, ymin, ymax = chaos_game(params, thresholds, n, seed, xs, ys)
    if not ok:
        return False, np.zeros((h, w), np.int32)
    hx = 0.5 * (xmax - xmin) * window_x
    hy = 0.5 * (ymax - ymin) * window_y
    cx = 0.5 * (xmin + xmax) + shift_x * (xmax - xmin)
    cy = 0.5 * (ymin + ymax) + shift_y * (ymax - ymin)
    hist = np.zeros((h + 2, w + 2), np.int32)
    splat(xs, ys, cx - hx, cx + hx, cy - hy, cy + hy, flip_x, flip_y, transpose, hist)
    return True, apply_patch(hist, patch)


@njit(cache=True, inline="always")
def _hsv_to_rgb(h, s, v):
    h = (h % 1.0) * 6.0
    i = int(h)
    f = h - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    if i == 0:
        return v, t, p
    if i == 1:
        return q, v, p
    if i == 2:
        return p, v, t
    if i == 3:
        return p, q, v
    if i == 4:
        return t, p, v
    return v, p, q


@njit(cache=True)
def _palette(hue_shift, sat, val, cmax):
    """RGB for every count 0..min(cmax, 4095); hue follows log-normalised density plus a shift."""
    n = min(cmax, 4095) + 1
    lut = np.zeros((n, 3), np.uint8)
    inv = 1.0 / np.log1p(max(cmax, 1))
    for c in range(1, n):
        r, g, b = _hsv_to_rgb(hue_shift + np.log1p(c) * inv, sat, val)
        lut[c, 0] = np.uint8(r * 255.0 + 0.5)
        lut[c, 1] = np.uint8(g * 255.0 + 0.5)
        lut[c, 2] = np.uint8(b * 255.0 + 0.5)
    return lut


@njit(cache=True)
def paint(counts, lut, rgb, mask):
    """Colour the fractal pixels (counts > 0) of rgb (H, W, 3 uint8) in place from lut (count -> RGB;
    counts past its end take its last colour) and mark them in mask. Returns their number."""
    top = lut.shape[0] - 1
    h, w = counts.shape
    filled = 0
    for y in range(h):
        for x in range(w):
            c = counts[y, x]
            if c > 0:
                c = min(c, top)
                rgb[y, x, 0] = lut[c, 0]
                rgb[y, x, 1] = lut[c, 1]
                rgb[y, x, 2] = lut[c, 2]
                mask[y, x] = True
                filled += 1
    return filled


@njit(cache=True)
def colorize(counts, hue_shift, sat, val, rgb, mask):
    """Colour the fractal pixels (counts > 0) of rgb (H, W, 3 uint8) in place and mark them in mask.

    Uses a full 0-1 hue circle (the public code's OpenCV 0-179 range makes some hues twice as
    likely). Counts above 4095 share the top colour. Returns the number of fractal pixels.
    """
    cmax = counts.max()
    if cmax <= 0:
        return 0
    return paint(counts, _palette(hue_shift, sat, val, cmax), rgb, mask)


@njit(cache=True)
def plasma(n, roughness, seed, normalise=True, wrap=False):
    """Diamond-square plasma noise on an (n, n) grid, n = 2**k + 1, values in [0, 1] (normalise=False:
    the raw field, corners in [0, 1] plus noise of amplitude 1, roughness, roughness**2 ... per level;
    wrap=True: the square step's edge points average 4 neighbours on a torus of period n - 1, as the
    public code's diamond_square, instead of the 3 inside the grid)."""
    g = np.zeros((n, n))
    s = np.uint64(seed)
    for yy in (0, n - 1):
        for xx in (0, n - 1):
            s, g[yy, xx] = _uniform(s)
    step = n - 1
    amp = 1.0
    while step > 1:
        half = step // 2
        for y in range(half, n, step):  # diamond step: centres of squares
            for x in range(half, n, step):
                s, u = _uniform(s)
                avg = 0.25 * (g[y - half, x - half] + g[y - half, x + half] + g[y + half, x - half] + g[y + half, x + half])
                g[y, x] = avg + (u - 0.5) * amp
        for y in range(0, n, half):  # square step: edge midpoints
            for x in range((y + half) % step, n, step):
                if wrap:
                    m = n - 1
                    s, u = _uniform(s)
                    g[y, x] = 0.25 * (g[(y - half) % m, x] + g[(y + half) % m, x] + g[y, (x - half) % m]
                                      + g[y, (x + half) % m]) + (u - 0.5) * amp
                    continue
                acc = 0.0
                cnt = 0
                if y >= half:
                    acc += g[y - half, x]
                    cnt += 1
                if y + half < n:
                    acc += g[y + half, x]
                    cnt += 1
                if x >= half:
                    acc += g[y, x - half]
                    cnt += 1
                if x + half < n:
                    acc += g[y, x + half]
                    cnt += 1
                s, u = _uniform(s)
                g[y, x] = acc / cnt + (u - 0.5) * amp
        step = half
        amp *= roughness
    if not normalise:
        return g
    lo = g.min()
    hi = g.max()
    return (g - lo) / max(hi - lo, 1e-12)


@njit(cache=True, inline="always")
def _byte(x):
    """A float cast to uint8 as the public code's Numba np.uint8(x) does on x86: truncate, then mod 256."""
    return int(x) % 256


@njit(cache=True)
def colorize_opencv(counts, hue_shift, sat, val, rgb, mask):
    """The public Single/Multi-Instance colouring (Anderson & Farrell's ifs.colorize), for comparisons:
    8-bit hue (count / max count) * 255 + hue_shift (0-255, wrapped mod 256), saturation and value bytes
    sat, val (0-255), read as OpenCV's 0-179 hue range (so hue bytes 180-255 repeat the reds to greens).
    Colours the fractal pixels (counts > 0) of rgb in place, marks them in mask; returns their number."""
    cmax = counts.max()
    if cmax <= 0:
        return 0
    lut = np.zeros((cmax + 1, 3), np.uint8)  # one colour per count, as the public code computes per pixel
    for c in range(1, cmax + 1):
        hue = _byte(c / cmax * 255.0 + hue_shift)
        r, g, b = _hsv_to_rgb(hue / 180.0, sat / 255.0, val / 255.0)
        lut[c, 0] = np.uint8(r * 255.0 + 0.5)
        lut[c, 1] = np.uint8(g * 255.0 + 0.5)
        lut[c, 2] = np.uint8(b * 255.0 + 0.5)
    return paint(counts, lut, rgb, mask)


@njit(cache=True)
def colorize_background_opencv(noise, hue_scale, hue_shift, sat_scale, sat_shift, val_scale, val_shift, rgb):
    """The public code's background colouring (diamondsquare._colorize + OpenCV HSV -> RGB), for
    comparisons: bytes hue = x * hue_scale + hue_shift (mod 256), sat / val = min(x * scale + shift, 255)
    of the raw noise x, hue read in OpenCV's 0-179 range."""
    h, w, _ = rgb.shape
    for y in range(h):
        for x in range(w):
            n = noise[y, x]
            hue = _byte(n * hue_scale + hue_shift)
            s = _byte(min(n * sat_scale + sat_shift, 255.0))
            v = _byte(min(n * val_scale + val_shift, 255.0))
            r, g, b = _hsv_to_rgb(hue / 180.0, s / 255.0, v / 255.0)
            rgb[y, x, 0] = np.uint8(r * 255.0 + 0.5)
            rgb[y, x, 1] = np.uint8(g * 255.0 + 0.5)
            rgb[y, x, 2] = np.uint8(b * 255.0 + 0.5)


@njit(cache=True)
def colorize_background(noise, hue, hue_range, sat, val_lo, val_hi, rgb):
    """Colour a [0, 1] noise field into rgb (H, W, 3): hue and value follow the noise (256 levels)."""
    lut = np.empty((256, 3), np.uint8)
    for i in range(256):
        t = i / 255.0
        r, g, b = _hsv_to_rgb(hue + hue_range * t, sat, val_lo + (val_hi - val_lo) * t)
        lut[i, 0] = np.uint8(r * 255.0 + 0.5)
        lut[i, 1] = np.uint8(g * 255.0 + 0.5)
        lut[i, 2] = np.uint8(b * 255.0 + 0.5)
    h, w, _ = rgb.shape
    for y in range(h):
        for x in range(w):
            q = int(noise[y, x] * 255.0 + 0.5)
            rgb[y, x, 0] = lut[q, 0]
            rgb[y, x, 1] = lut[q, 1]
            rgb[y, x, 2] = lut[q, 2]


@njit(cache=True)
def resize_bilinear(src, side):
    """(side, side, C) uint8 bilinear resize of an (H, W, C) uint8 image, sampled as OpenCV's INTER_LINEAR
    (pixel centres aligned, edges clamped, no anti-aliasing when shrinking)."""
    h, w, c = src.shape
    out = np.empty((side, side, c), np.uint8)
    sy, sx = h / side, w / side
    for y in range(side):
        fy = min(max((y + 0.5) * sy - 0.5, 0.0), h - 1.0)
        y0 = min(int(fy), h - 2) if h > 1 else 0
        ty = fy - y0
        y1 = min(y0 + 1, h - 1)
        for x in range(side):
            fx = min(max((x + 0.5) * sx - 0.5, 0.0), w - 1.0)
            x0 = min(int(fx), w - 2) if w > 1 else 0
            tx = fx - x0
            x1 = min(x0 + 1, w - 1)
            for k in range(c):
                v = ((1.0 - ty) * ((1.0 - tx) * src[y0, x0, k] + tx * src[y0, x1, k])
                     + ty * ((1.0 - tx) * src[y1, x0, k] + tx * src[y1, x1, k]))
                out[y, x, k] = np.uint8(v + 0.5)
    return out


@njit(cache=True)
def paste(canvas, owner, src_rgb, src_mask, top, left, instance):
    """Paste the masked pixels of src onto canvas at (top, left), clipped to the canvas; later pastes
    cover earlier ones. Records the instance id in owner; returns the number of pixels pasted."""
    h, w, _ = canvas.shape
    sh, sw = src_mask.shape
    drawn = 0
    for y in range(sh):
        cy = top + y
        if cy < 0 or cy >= h:
            continue
        for x in range(sw):
            cx = left + x
            if 0 <= cx < w and src_mask[y, x]:
                canvas[cy, cx, 0] = src_rgb[y, x, 0]
                canvas[cy, cx, 1] = src_rgb[y, x, 1]
                canvas[cy, cx, 2] = src_rgb[y, x, 2]
                owner[cy, cx] = instance
                drawn += 1
    return drawn


@njit(cache=True)
def blur3(img, sigma):
    """3x3 separable Gaussian blur (as the public code's cv2.GaussianBlur(img, (3, 3), sigma)) of an
    (H, W, C) uint8 image, edges replicated. Rows are treated as flat (W * C) vectors so the inner
    loops vectorise."""
    side = np.exp(-0.5 / (sigma * sigma))
    k0 = np.float32(side / (1.0 + 2.0 * side))
    k1 = np.float32(1.0 / (1.0 + 2.0 * side))
    h, w, c = img.shape
    n = w * c
    src = img.reshape(h, n)
    tmp = np.empty((h, n), np.float32)
    for y in range(h):
        r = src[y]
        t = tmp[y]
        for i in range(c):  # first and last pixel: the missing neighbour is the pixel itself
            t[i] = (k0 + k1) * r[i] + k0 * r[i + c]
            t[n - c + i] = k0 * r[n - 2 * c + i] + (k0 + k1) * r[n - c + i]
        for i in range(c, n - c):
            t[i] = k0 * r[i - c] + k1 * r[i] + k0 * r[i + c]
    out = np.empty((h, n), np.uint8)
    for y in range(h):
        a = tmp[max(y - 1, 0)]
        b = tmp[y]
        d = tmp[min(y + 1, h - 1)]
        o = out[y]
        for i in range(n):
            o[i] = np.uint8(k0 * a[i] + k1 * b[i] + k0 * d[i] + np.float32(0.5))
    return out.reshape(h, w, c)



_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True, inline="always")
def _hash32(x):
    """A well-mixed 32-bit hash of x < 2**32 (Chris Wellons' lowbias32: two multiplies). Numba widens
    integer products, so the arithmetic is uint64 masked back to 32 bits."""
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


@njit(cache=True, inline="always")
def _seed32(seed):
    s = np.uint64(seed)
    return (s >> np.uint64(32)) ^ (s & _M32)


@njit(cache=True, inline="always")
def _mask(seed32, i):
    """In 1..511: the top 16 bits of the hash scaled to 0..510, plus 1."""
    return np.uint64(1) + (((_hash32(np.uint64(i) ^ seed32) >> np.uint64(16)) * np.uint64(511)) >> np.uint64(16))


@njit(cache=True)
def patch_mask(seed, i):
    """Point i's 3x3 on/off mask (bit 3 dy + dx is cell (dy, dx)) in 1..511, never empty: a hash of
    (seed, i), so the pixel pass can find it from the point's index alone."""
    return np.int64(_mask(_seed32(seed), i))


MAX_PATCH_POINTS = 1 << 26  # point indices times 16 must fit the int32 keys below


@njit(cache=True)
def stamp_random_patches(xs, ys, xmin, xmax, ymin, ymax, pad, seed, value, image):
    """Draw the points as if pasting, in order, a random 3x3 on/off patch centred on each point's pixel.

    A paste writes all nine cells (on = value, off = 0), so a pixel shows the cell of the LAST point
    whose patch covers it, as the 1p-frac / OFDB generators' in-order pasting of whole patches does.
    Instead of 9 scattered writes per point, this keeps the last point per pixel, then takes per pixel
    the latest of its 3x3 neighbours (a separable max of keys 16 * point + cell, which vectorises).
    Point i's mask is patch_mask(seed, i). The box [xmin, xmax] x [ymin, ymax] maps onto pixels
    [pad, W - 1 - pad] x [pad, H - 1 - pad] (pad >= 1), y up. At most MAX_PATCH_POINTS points.
    """
    h, w = image.shape
    ax = (w - 1 - 2 * pad) / max(xmax - xmin, 1e-300)
    ay = (h - 1 - 2 * pad) / max(ymax - ymin, 1e-300)
    n = xs.shape[0]
    # pass 1 (vectorises): each point's pixel in an image with a 1-pixel border (so every neighbour exists)
    idx = np.empty(n, np.int32)
    for i in range(n):
        idx[i] = (h - pad - np.int32((ys[i] - ymin) * ay)) * (w + 2) + pad + 1 + np.int32((xs[i] - xmin) * ax)
    # pass 2: 16 * (last point at each pixel), -16 for none
    last = np.full((h + 2) * (w + 2), -16, np.int32)
    for i in range(n):
        last[idx[i]] = i * 16
    last = last.reshape(h + 2, w + 2)
    across = np.empty((h + 2, w), np.int32)  # latest of the row neighbours; low bits: cell column dx
    for y in range(h + 2):
        r = last[y]
        o = across[y]
        for x in range(w):  # the point at column x + 1 - dx covers x with its cell column dx
            o[x] = max(r[x + 2], max(r[x + 1] + 1, r[x] + 2))
    seed32 = _seed32(seed)
    key = np.empty(w, np.int32)
    for y in range(h):
        below, here, above = across[y + 2], across[y + 1], across[y]
        for x in range(w):  # ... and the point at row y + 1 - dy with its cell row dy
            key[x] = max(below[x], max(here[x] + 3, above[x] + 6))
        out = image[y]
        for x in range(w):
            k = key[x]
            if k >= 0:
                out[x] = value * np.uint8((_mask(seed32, k >> 4) >> np.uint64(k & 15)) & np.uint64(1))


@njit(cache=True)
def render_random_patches(params, thresholds, n_points, chaos_seed, patch_seed, size, pad, value):
    """(ok, image): one fractal as a (size, size) uint8 image of random 3x3 patches (see
    stamp_random_patches); ok is False, and the image black, for a divergent system."""
    n = (n_points + 3) // 4 * 4
    xs = np.empty(n)
    ys = np.empty(n)
    ok, xmin, xmax, ymin, ymax = chaos_game(params, thresholds, n, chaos_seed, xs, ys)
    image = np.zeros((size, size), np.uint8)
    if ok:
        stamp_random_patches(xs, ys, xmin, xmax, ymin, ymax, pad, patch_seed, value, image)
    return ok, image
