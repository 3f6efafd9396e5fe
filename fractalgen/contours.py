"""The contour kinds: RCDB (Kataoka et al., CVPR 2022) and VisualAtom (Takashima et al., CVPR 2023).

Both draw `lines` closed polygons of `vertices` points around a centre. Polygon 0 is an ellipse;
every next polygon pushes each vertex outward along its own angle by a random amount, so the image
is a set of nested, wobbling rings, each stroked as a 1-px line in a random gray:

    step_v = perlin + line_width - gain * perlin * P(u_v) + wave * (sin(n1 t_v) + sin(n2 t_v))

with t_v = 2 pi v / vertices, P the 1-D improved Perlin noise (as the `noise` package's pnoise1) at a
uniform random position u_v in [0, 10000), drawn anew per vertex, per axis and per polygon.
- rcdb: gain 2, wave 0. Class = (vertices, lines, perlin, line_width); each instance draws its own
  radius, oval rates and centre (the official script redraws them for every image). White background.
- visualatom: gain 1, wave 0.5 (the two circular harmonics n1, n2 in 0..20; the vertex count is the
  contour's quantisation). Class = (vertices, lines, perlin, line_width, radius, n1, n2, oval rates);
  each instance draws its centre. Black background.
Defaults are the official scripts' published settings (rcdb_render/RCDB_render.sh and
visual_atomic_renderer/make_VisualAtom.sh), in their 512-px coordinate frame; another --size scales
the frame, so the shapes stay the same and the lines stay 1 px.
"""

import json
import math

import numpy as np
from numba import njit

from .errors import UserError
from .kernels import _INV53, _MUL, _S11, _step
from .rng import _tag, generator

# Ken Perlin's reference permutation (Improved Noise, 2002), as the `noise` package uses it.
_PERM = np.array([
    151, 160, 137, 91, 90, 15, 131, 13, 201, 95, 96, 53, 194, 233, 7, 225, 140, 36, 103, 30, 69, 142, 8, 99, 37,
    240, 21, 10, 23, 190, 6, 148, 247, 120, 234, 75, 0, 26, 197, 62, 94, 252, 219, 203, 117, 35, 11, 32, 57, 177,
    33, 88, 237, 149, 56, 87, 174, 20, 125, 136, 171, 168, 68, 175, 74, 165, 71, 134, 139, 48, 27, 166, 77, 146,
    158, 231, 83, 111, 229, 122, 60, 211, 133, 230, 220, 105, 92, 41, 55, 46, 245, 40, 244, 102, 143, 54, 65, 25,
    63, 161, 1, 216, 80, 73, 209, 76, 132, 187, 208, 89, 18, 169, 200, 196, 135, 130, 116, 188, 159, 86, 164, 100,
    109, 198, 173, 186, 3, 64, 52, 217, 226, 250, 124, 123, 5, 202, 38, 147, 118, 126, 255, 82, 85, 212, 207, 206,
    59, 227, 47, 16, 58, 17, 182, 189, 28, 42, 223, 183, 170, 213, 119, 248, 152, 2, 44, 154, 163, 70, 221, 153,
    101, 155, 167, 43, 172, 9, 129, 22, 39, 253, 19, 98, 108, 110, 79, 113, 224, 232, 178, 185, 112, 104, 218, 246,
    97, 228, 251, 34, 242, 193, 238, 210, 144, 12, 191, 179, 162, 241, 81, 51, 145, 235, 249, 14, 239, 107, 49, 192,
    214, 31, 181, 199, 106, 157, 184, 84, 204, 176, 115, 121, 50, 45, 127, 4, 150, 254, 138, 236, 205, 93, 222, 114,
    67, 29, 24, 72, 243, 141, 128, 195, 78, 66, 215, 61, 156, 180], np.int64)
_NOISE_SPAN = 10000.0  # the official scripts evaluate pnoise1 at uniform positions in [0, 10000)


@njit(cache=True, inline="always")
def _grad1(h, x):
    # pnoise1's gradient: (h & 7) + 1 in 1..8, and -1 (not its negative) when bit 3 is set, as in the
    # `noise` package (checked against noise 1.2.2 by benchmarks/bench_contours.py --check-noise).
    # Branch-free: the positions are random, so a branch would mispredict half the time.
    neg = (h >> 3) & 1
    return float(((h & 7) + 1) * (1 - neg) - neg) * x


@njit(cache=True, inline="always")
def _perlin_cell(i, f):
    """Noise at offset f in lattice cell i. pnoise1 wraps its lattice at 1024 and then masks to 256:
    together just i & 255."""
    fade = f * f * f * (f * (f * 6.0 - 15.0) + 10.0)
    a = _grad1(_PERM[i & 255], f)
    b = _grad1(_PERM[(i + 1) & 255], f - 1.0)
    return (a + fade * (b - a)) * 0.4


@njit(cache=True, inline="always")
def _perlin1(x):
    fl = math.floor(x)
    return _perlin_cell(int(fl), x - fl)


@njit(cache=True, inline="always")
def _perlin1_positive(x):
    """_perlin1 for x >= 0, where truncation is the floor (no floor call)."""
    i = int(x)
    return _perlin_cell(i, x - i)


@njit(cache=True, inline="always")
def _uniform(s):
    """kernels._uniform's stream, converted through int64 (the 53-bit value fits; x86 has no direct
    uint64 -> double instruction)."""
    s = _step(s)
    return s, float(np.int64((s * _MUL) >> _S11)) * _INV53


@njit(cache=True)
def perlin1(x):
    """1-D improved Perlin noise, one octave (the `noise` package's pnoise1(x))."""
    return _perlin1(x)


@njit(cache=True)
def perlin1_array(xs):
    out = np.empty(len(xs))
    for i in range(len(xs)):
        out[i] = perlin1(xs[i])
    return out


_Y_STREAM = np.uint64(0x9E3779B97F4A7C15)  # xor-ed into the seed for the y stream (top bit set: never 0)


@njit(cache=True)
def contour_points(vertices, lines, perlin, gain, line_width, wave, n1, n2, cx, cy, rx, ry, gray_lo, gray_hi, seed):
    """The polygons of one image: xs, ys (lines, vertices) in frame pixels, and one gray per polygon.

    Two random streams (two independent serial chains run faster than one): the x stream (from
    `seed`) gives each polygon its gray, then one noise position per vertex; the y stream (from
    seed ^ _Y_STREAM) one noise position per vertex.
    """
    xs = np.empty((lines, vertices))
    ys = np.empty((lines, vertices))
    grays = np.empty(lines, np.uint8)
    cosv = np.empty(vertices)
    sinv = np.empty(vertices)
    bias = np.empty(vertices)  # the part of the step every polygon shares
    angle = 2.0 * math.pi / vertices
    for v in range(vertices):
        cosv[v] = math.cos(angle * v)
        sinv[v] = math.sin(angle * v)
        bias[v] = perlin + line_width + wave * (math.sin(angle * v * n1) + math.sin(angle * v * n2))
    x = cx + cosv * rx
    y = cy + sinv * ry
    amp = gain * perlin
    sx = np.uint64(seed)
    sy = np.uint64(seed) ^ _Y_STREAM
    span = gray_hi - gray_lo + 1
    for line in range(lines):
        sx, u = _uniform(sx)
        grays[line] = gray_lo + min(int(u * span), span - 1)
        for v in range(vertices):
            sx, ux = _uniform(sx)
            sy, uy = _uniform(sy)
            xv = x[v] + cosv[v] * (bias[v] - amp * _perlin1_positive(ux * _NOISE_SPAN))
            yv = y[v] + sinv[v] * (bias[v] - amp * _perlin1_positive(uy * _NOISE_SPAN))
            x[v] = xv
            y[v] = yv
            xs[line, v] = xv
            ys[line, v] = yv
    return xs, ys, grays


@njit(cache=True)
def draw_line(canvas, x0, y0, x1, y1, value):
    """A 1-px line from (x0, y0) up to, not including, (x1, y1); see draw_polygons."""
    _stroke(canvas.ravel(), canvas.shape[0], canvas.shape[1], x0, y0, x1, y1, value)


@njit(cache=True, inline="always")
def _stroke(flat, h, w, x0, y0, x1, y1, value):
    """Bresenham from (x0, y0) up to, not including, (x1, y1) (a lone point when they coincide) on a
    flat (h, w) canvas; pixels outside it are skipped. Same pixels as Pillow's ImageDraw.line(width=1),
    the official renderers' rasteriser (tested against it)."""
    if (x0 < 0 and x1 < 0) or (y0 < 0 and y1 < 0) or (x0 >= w and x1 >= w) or (y0 >= h and y1 >= h):
        return  # wholly on one side of the canvas
    inside = 0 <= x0 < w and 0 <= x1 < w and 0 <= y0 < h and 0 <= y1 < h
    dx = abs(x1 - x0)
    dy = abs(y1 - y0)
    sx = 1 if x1 >= x0 else -1
    sy = 1 if y1 >= y0 else -1
    if dx >= dy:  # walk the major axis; the minor one steps when the error term is >= 0
        major, minor, mx, my, nx, ny = dx, dy, sx, 0, 0, sy
    else:
        major, minor, mx, my, nx, ny = dy, dx, 0, sy, sx, 0
    if major == 0:
        if inside:
            flat[y0 * w + x0] = value
        return
    e = 2 * minor - major
    if inside:  # the common case: no per-pixel checks, one flat offset
        p = y0 * w + x0
        major_step = my * w + mx
        minor_step = ny * w + nx
        for _ in range(major):
            flat[p] = value
            step = 1 if e >= 0 else 0  # arithmetic, not a branch: the pattern would mispredict
            p += major_step + minor_step * step
            e += 2 * minor - 2 * major * step
    else:
        for _ in range(major):
            if 0 <= x0 < w and 0 <= y0 < h:
                flat[y0 * w + x0] = value
            step = 1 if e >= 0 else 0
            x0 += mx + nx * step
            y0 += my + ny * step
            e += 2 * minor - 2 * major * step


@njit(cache=True)
def draw_polygons(canvas, xs, ys, grays, scale):
    """Stroke each row of (xs, ys) as a closed polygon of 1-px lines in its gray, in order (later ones
    on top); frame coordinates are multiplied by `scale` and floored to pixels (Pillow truncates
    toward zero: the same pixels except in the column / row left of and above the canvas)."""
    h, w = canvas.shape
    flat = canvas.ravel()
    px = np.floor(xs * scale).astype(np.int64)  # one vectorised pass, not a conversion per segment
    py = np.floor(ys * scale).astype(np.int64)
    lines, vertices = xs.shape
    for line in range(lines):
        g = grays[line]
        x0, y0 = px[line, vertices - 1], py[line, vertices - 1]  # the closing edge first: one gray per polygon
        for v in range(vertices):
            x1, y1 = px[line, v], py[line, v]
            _stroke(flat, h, w, x0, y0, x1, y1, g)
            x0, y0 = x1, y1


@njit(cache=True)
def render_contours(size, frame, background, vertices, lines, perlin, gain, line_width, wave, n1, n2, cx, cy, rx, ry,
                    gray_lo, gray_hi, seed):
    """One image: contour_points, then draw_polygons on a fresh (size, size) canvas (one call from Python)."""
    xs, ys, grays = contour_points(vertices, lines, perlin, gain, line_width, wave, n1, n2, cx, cy, rx, ry,
                                   gray_lo, gray_hi, seed)
    canvas = np.full((size, size), np.uint8(background))
    draw_polygons(canvas, xs, ys, grays, size / frame)
    return canvas


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27b, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@njit(cache=True, inline="always")
def _splitmix(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27b)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def sample_stream(seed, tag, index, n):
    """A sample's random stream keyed by (dataset seed, kind tag, index): n uniforms for its instance
    draws, and the seed of its kernel stream. splitmix64 chaining instead of a NumPy Generator per
    sample: building one costs more than drawing a whole RCDB image."""
    z = _splitmix(np.uint64(seed) + _GOLDEN)
    z = _splitmix(z ^ np.uint64(tag))
    z = _splitmix(z ^ np.uint64(index))
    s = z | np.uint64(1)  # xorshift needs a non-zero state
    out = np.empty(n)
    for i in range(n):
        s, out[i] = _uniform(s)
    return out, (_splitmix(s) >> np.uint64(1)) | np.uint64(1)  # < 2**63: passes as a Python int


# ---- class parameters and samples ------------------------------------------------------------------

RCDB_FIELDS = ("vertices", "lines", "perlin", "line_width")
VISUALATOM_FIELDS = ("vertices", "lines", "perlin", "line_width", "radius", "n1", "n2", "oval_x", "oval_y")
FIELDS = {"rcdb": RCDB_FIELDS, "visualatom": VISUALATOM_FIELDS}
# Published defaults: rcdb_render/RCDB_render.sh and make_VisualAtom.sh ("best practice" VisualAtom-1k).
RCDB_DEFAULTS = {"size": 512, "frame": 512, "vertices_max": 200, "vertices_mean": 100.0, "lines": [1, 200],
                 "perlin": [0.0, 4.0], "line_width": 0.1, "radius": [0, 100], "oval_rate": 2.0, "start_pos": 400,
                 "gray": [0, 255], "background_gray": 255}
VISUALATOM_DEFAULTS = {"size": 512, "frame": 512, "vertices": [200, 1000], "lines": [1, 200], "perlin": [0.0, 4.0],
                       "line_width": 0.1, "radius": [10, 60], "oval_rate": 2.0, "start_pos": 512,
                       "frequencies": [0, 20], "gray": [0, 255], "background_gray": 0}
_COMMON_NOTES = [
    "class parameters come from (seed, class) and each sample's randomness from (seed, kind, index) "
    "(official: one Python random stream per thread), so images differ from the official files but follow the "
    "same distributions",
    "coordinates are in the official 512-px frame; another --size scales the frame (lines stay 1 px); pixel "
    "coordinates are floored (Pillow truncates toward zero: same pixels except just outside the top/left edge)",
    "lines: the same pixels as Pillow's ImageDraw.line(width=1); Perlin noise: the `noise` package's pnoise1 "
    "(1 octave) in float64 (it computes in float32; values agree to 2e-6), at uniform positions in [0, 10000)",
    "stored as 1-channel grayscale PNG (official: RGB PNG with R = G = B)",
]
NOTES = {
    "rcdb": [
        "rcdb class = (vertices ~ int(Exp(mean vertices_mean)) kept in (2, vertices_max], lines, perlin, "
        "line_width); radius, oval rates and centre are drawn per image (the official script redraws them for "
        "every image after the first); published settings from RCDB_render.sh",
        "rcdb gray per polygon uniform in gray = 0..255 (official randint(0, image_size / 2) = 0..256 at 512 px, "
        "with 256 clipped to 255 by Pillow)",
        *_COMMON_NOTES],
    "visualatom": [
        "visualatom class = (vertices, lines, perlin, line_width, radius, n1, n2 != n1 unless n1 == 0, oval "
        "rates); the centre is drawn per image; the vertex count is the contour's quantisation; defaults from "
        "make_VisualAtom.sh, the published best setting (its argparse defaults differ: perlin_min 2, "
        "line_width 0.01, radius_min 0)",
        *_COMMON_NOTES],
}


def _int_range(options: dict, key: str, low: int, high: int | None = None) -> None:
    lo, hi = options[key]
    whole = float(lo).is_integer() and float(hi).is_integer()
    if not whole or not low <= lo <= hi or (high is not None and hi > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise UserError(f"option {key}={options[key]!r} must be two whole numbers lo <= hi, both {bound}")
    options[key] = [int(lo), int(hi)]


def check_options(options: dict) -> None:
    """Validate (and normalise int ranges of) rcdb / visualatom options; raises UserError."""
    kind = options["kind"]
    _int_range(options, "lines", 1, 10_000)
    _int_range(options, "radius", 0)
    _int_range(options, "gray", 0, 255)
    if kind == "rcdb":
        if not 3 <= options["vertices_max"] <= 100_000:
            raise UserError(f"option vertices_max={options['vertices_max']} must be in 3..100000")
        if not options["vertices_mean"] > 0:
            raise UserError(f"option vertices_mean={options['vertices_mean']} must be above 0")
    else:
        _int_range(options, "vertices", 3, 100_000)
        _int_range(options, "frequencies", 0, 1000)
        if options["frequencies"][0] == options["frequencies"][1] != 0:
            raise UserError("option frequencies needs two values when n1 is not 0 (n2 must differ from n1); "
                            "widen the range")
    lo, hi = options["perlin"]
    if not 0 <= lo <= hi:
        raise UserError(f"option perlin={options['perlin']!r} must be 0 <= lo <= hi")
    for key, ok in (("line_width", options["line_width"] >= 0), ("oval_rate", options["oval_rate"] >= 1),
                    ("start_pos", options["start_pos"] >= 0), ("frame", options["frame"] >= 16),
                    ("background_gray", 0 <= options["background_gray"] <= 255)):
        if not ok:
            rule = {"line_width": ">= 0", "oval_rate": ">= 1", "start_pos": ">= 0", "frame": ">= 16",
                    "background_gray": "in 0..255"}[key]
            raise UserError(f"option {key}={options[key]!r} must be {rule}")


def rcdb_class(options: dict, cls: int) -> np.ndarray:
    rng = generator(options["seed"], "rcdb-class", cls)
    while True:  # the official rejection loop: int(expovariate(1 / 100)) kept when in (2, vertex_num]
        vertices = int(rng.exponential(options["vertices_mean"]))
        if 2 < vertices <= options["vertices_max"]:
            break
    lines = int(rng.integers(options["lines"][0], options["lines"][1] + 1))
    perlin = rng.uniform(*options["perlin"])
    line_width = rng.uniform(0.0, options["line_width"])
    return np.array([vertices, lines, perlin, line_width], np.float64)


def visualatom_class(options: dict, cls: int) -> np.ndarray:
    rng = generator(options["seed"], "visualatom-class", cls)
    vertices = int(rng.integers(options["vertices"][0], options["vertices"][1] + 1))
    lines = int(rng.integers(options["lines"][0], options["lines"][1] + 1))
    perlin = rng.uniform(*options["perlin"])
    line_width = rng.uniform(0.0, options["line_width"])
    radius = int(rng.integers(options["radius"][0], options["radius"][1] + 1))
    f_lo, f_hi = options["frequencies"]
    n1 = int(rng.integers(f_lo, f_hi + 1))
    while True:  # the official rule: n2 differs from n1, unless n1 is 0
        n2 = int(rng.integers(f_lo, f_hi + 1))
        if n2 != n1 or n1 == 0:
            break
    oval_x, oval_y = rng.uniform(1.0, options["oval_rate"], 2)
    return np.array([vertices, lines, perlin, line_width, radius, n1, n2, oval_x, oval_y], np.float64)


def make_class_params(options: dict, systems, info) -> tuple[list, dict]:
    """One parameter vector per class, from (seed, class); `systems` given by a caller are ignored."""
    kind = options["kind"]
    make = rcdb_class if kind == "rcdb" else visualatom_class
    params = [make(options, c) for c in range(options["classes"])]
    return params, {"sampling": f"{kind} class parameters from (seed, class)", "fields": list(FIELDS[kind])}


def load_class_params(path: str) -> tuple[list, dict]:
    """Read the systems.json of a contour dataset: (list of parameter vectors, the file's other fields)."""
    try:
        with open(path) as f:
            doc = json.load(f)
        fields = doc["fields"]
        params = [np.asarray(p, np.float64) for p in doc["systems"]]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; re-run the fractalgen render command") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a contour class-parameter file ({e}); "
                        f"re-run the fractalgen render command") from None
    if not params or any(p.shape != (len(fields),) or not np.isfinite(p).all() for p in params):
        raise UserError(f"{path}: every class needs {len(fields)} finite numbers ({', '.join(fields)})")
    return params, {k: v for k, v in doc.items() if k != "systems"}


def _pick(u: float, lo: int, hi: int) -> int:
    """A whole number uniform in lo..hi from a uniform u in [0, 1)."""
    return lo + min(int(u * (hi - lo + 1)), hi - lo)


def render_contour_sample(spec, index: int):
    """Sample `index` of an rcdb / visualatom dataset (a pure function of the spec and index)."""
    from .kinds import Sample  # kinds imports this module

    o = spec.options
    kind = o["kind"]
    cls = index % o["classes"]
    p = spec.systems[cls]
    u, seed = sample_stream(o["seed"], _tag(kind), index, 5)
    if kind == "rcdb":  # radius and oval rates per instance, as the official script redraws them
        vertices, lines, perlin, line_width = p
        radius = _pick(u[2], *o["radius"])
        oval_x, oval_y = 1.0 + u[3] * (o["oval_rate"] - 1.0), 1.0 + u[4] * (o["oval_rate"] - 1.0)
        n1 = n2 = 0
        gain, wave = 2.0, 0.0
    else:
        vertices, lines, perlin, line_width, radius, n1, n2, oval_x, oval_y = p
        gain, wave = 1.0, 0.5
    # centre: official (image_size + randint(-start_pos, start_pos)) / 2 per axis
    cx = (o["frame"] + _pick(u[0], -o["start_pos"], o["start_pos"])) / 2.0
    cy = (o["frame"] + _pick(u[1], -o["start_pos"], o["start_pos"])) / 2.0
    image = render_contours(o["size"], o["frame"], o["background_gray"], int(vertices), int(lines), float(perlin),
                            gain, float(line_width), wave, float(n1), float(n2), cx, cy, float(radius * oval_x),
                            float(radius * oval_y), o["gray"][0], o["gray"][1], seed)
    meta = {"index": index, "cls": cls, "classes": [cls],
            "class_params": dict(zip(FIELDS[kind], (float(v) for v in p))),
            "centre": [cx, cy], "radius": int(radius), "oval": [float(oval_x), float(oval_y)], "kernel_seed": int(seed)}
    return Sample(f"{index:09d}", image, cls, [cls], meta)
