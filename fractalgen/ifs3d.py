"""3D-IFS projections (`--kind exfractal`), in the spirit of ExFractalDB (Kataoka et al., CVPR 2022):
3-D IFS point clouds seen from random viewpoints, drawn by Numba (the official renderer needs OpenGL/EGL).

Following the official scripts (exfractaldb_render/ in masora1030/CVPR2022-Pretrained-ViT-PyTorch):
- class = a 3-D IFS of 2-7 maps x' = A x + t (12 numbers each, uniform in [-1, 1]), map probability
  proportional to |det A|, accepted when its 10,000-point cloud, min-max scaled to [-1, 1] (one range
  for all axes) and centred on its centroid, has a variance above `min_variance` (0.05, their script)
  on every axis (category_search.py);
- instance = the class system with one of its 12 coefficients scaled by one of 0.4 ... 1.6 (144
  variants plus the original, their weights_ins145.csv), index // classes picking the variant;
- image = the point cloud (10,000 points, from the origin, as instance.py) seen by a 45-degree
  perspective camera at distance 4 looking at the centre, each point a 1-px white dot on black,
  224 px (render.py). The official multi-view script turns the camera about the y axis in 12 fixed
  steps; ExFractalDB picks views at random: here a uniformly random rotation per image.
"""

import math

import numpy as np
from numba import njit

from .errors import UserError
from .contours import _uniform, sample_stream
from .rng import _tag

WEIGHT_FACTORS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6)
N_VARIANTS = 1 + 12 * len(WEIGHT_FACTORS)  # the original + each coefficient x each factor = 145
DEFAULTS = {"size": 224, "points": 10_000, "maps": [2, 7], "min_variance": 0.05, "fov": 45.0, "distance": 4.0,
            "variants": True}
NOTES = [
    "exfractal: 3-D IFS class search as ExFractalDB's category_search.py (2-7 maps, coefficients U(-1, 1), "
    "probabilities ~ |det A|, every axis variance > min_variance after min-max scaling to [-1, 1] and centring), "
    "from (seed, class)",
    "exfractal: instance = index // classes -> coefficient variant (instance % 145: the original, or one of the 12 "
    "coefficients x 0.4 ... 1.6 as weights_ins145.csv); a variant that diverges falls back to the class system",
    "exfractal: view = a uniformly random rotation per image (camera direction on the sphere, and roll); "
    "ExFractalDB picks views at random, the official multi-view script turns about the y axis in 12 steps; "
    "45-degree perspective at distance 4, 1-px white points on black, drawn by Numba instead of OpenGL",
]


@njit(cache=True)
def chaos_game_3d(params, cumulative, n_points, seed):
    """n_points of the chaos game from the origin (as the official code): params (N, 12) rows
    (a b c d e f g h i j k l): x' = a x + b y + c z + j, y' = d x + e y + f z + k, z' = g x + h y + i z + l;
    a map is picked by the first cumulative probability >= u. Returns (n_points, 3)."""
    out = np.empty((n_points, 3))
    s = np.uint64(seed)
    x = y = z = 0.0
    n = params.shape[0]
    for p in range(n_points):
        s ^= s >> np.uint64(12)
        s ^= s << np.uint64(25)
        s ^= s >> np.uint64(27)
        u = float(np.int64((s * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11))) * (1.0 / 9007199254740992.0)
        k = n - 1
        for m in range(n):
            if u <= cumulative[m]:
                k = m
                break
        P = params[k]
        x, y, z = (P[0] * x + P[1] * y + P[2] * z + P[9], P[3] * x + P[4] * y + P[5] * z + P[10],
                   P[6] * x + P[7] * y + P[8] * z + P[11])
        out[p, 0] = x
        out[p, 1] = y
        out[p, 2] = z
    return out


@njit(cache=True)
def cumulative_kernel(params):
    """Cumulative map probabilities proportional to |det A| (uniform when every map is singular)."""
    n = params.shape[0]
    cum = np.empty(n)
    total = 0.0
    for m in range(n):
        a, b, c, d, e, f, g, h, i = params[m, 0], params[m, 1], params[m, 2], params[m, 3], params[m, 4], \
            params[m, 5], params[m, 6], params[m, 7], params[m, 8]
        total += abs(a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g))
        cum[m] = total
    if total > 1e-12:
        return cum / total
    return (np.arange(n) + 1.0) / n


@njit(cache=True)
def axis_variances(points):
    """Per-axis variance after the official normalisation (one min-max range for all axes to [-1, 1], then
    centring); -1 for every axis when the cloud is not finite or has no extent."""
    out = np.full(3, -1.0)
    lo, hi = np.inf, -np.inf
    for v in points.ravel():
        if not np.isfinite(v):
            return out
        lo = min(lo, v)
        hi = max(hi, v)
    if not hi - lo > 1e-12:
        return out
    scale = 2.0 / (hi - lo)
    for k in range(3):
        col = (points[:, k] - lo) * scale - 1.0
        out[k] = col.var()
    return out


@njit(cache=True)
def search_system(lo, hi, min_variance, n_points, max_candidates, seed):
    """The first candidate of the stream `seed` whose cloud passes the variance test: (params, candidates
    tried, the seed of its cloud's chain); params has 0 rows when none passed."""
    s = np.uint64(seed)
    for tried in range(1, max_candidates + 1):
        s, u = _uniform(s)
        n = lo + min(int(u * (hi - lo + 1)), hi - lo)
        params = np.empty((n, 12))
        for m in range(n):
            for k in range(12):
                s, u = _uniform(s)
                params[m, k] = 2.0 * u - 1.0
        s, u = _uniform(s)
        chain = (s >> np.uint64(1)) | np.uint64(1)
        var = axis_variances(chaos_game_3d(params, cumulative_kernel(params), n_points, chain))
        if var[0] > min_variance and var[1] > min_variance and var[2] > min_variance:
            return params, tried, chain
    return np.empty((0, 12)), max_candidates, np.uint64(0)


def cumulative_probabilities(params: np.ndarray) -> np.ndarray:
    det = np.abs(np.linalg.det(params[:, :9].reshape(-1, 3, 3)))
    total = det.sum()
    prob = det / total if total > 1e-12 else np.full(len(params), 1.0 / len(params))
    return np.cumsum(prob)


def normalised(points: np.ndarray) -> np.ndarray | None:
    """Min-max scale to [-1, 1] with one range for all axes, then centre on the centroid (the official
    min_max(axis=None) and centoroid); None when the cloud is not finite or has no extent."""
    if not np.isfinite(points).all():
        return None
    lo, hi = points.min(), points.max()
    if not hi - lo > 1e-12:
        return None
    scaled = (points - lo) / (hi - lo) * 2.0 - 1.0
    return scaled - scaled.mean(axis=0)


@njit(cache=True)
def project_points(points, rotation, distance, focal, size, image):
    """Draw each point as a 1-px white dot: camera at `distance` along the rotated +z axis looking at the
    origin; pixel = (f x / depth + 1) / 2 * size, image rows top-down. Points behind the camera are skipped."""
    for p in range(points.shape[0]):
        x = rotation[0, 0] * points[p, 0] + rotation[0, 1] * points[p, 1] + rotation[0, 2] * points[p, 2]
        y = rotation[1, 0] * points[p, 0] + rotation[1, 1] * points[p, 1] + rotation[1, 2] * points[p, 2]
        z = rotation[2, 0] * points[p, 0] + rotation[2, 1] * points[p, 1] + rotation[2, 2] * points[p, 2]
        depth = distance - z
        if depth <= 1e-9:
            continue
        col = int(math.floor((focal * x / depth + 1.0) * 0.5 * size))
        row = int(math.floor((1.0 - focal * y / depth) * 0.5 * size))
        if 0 <= col < size and 0 <= row < size:
            image[row, col] = 255


def view_rotation(u1: float, u2: float, u3: float) -> np.ndarray:
    """A rotation taking a direction uniform on the sphere (from u1, u2) to the camera axis +z, with a
    roll u3 about it: world -> camera coordinates."""
    z = 2.0 * u1 - 1.0
    phi = 2.0 * math.pi * u2
    r = math.sqrt(max(0.0, 1.0 - z * z))
    forward = np.array([r * math.cos(phi), r * math.sin(phi), z])  # unit vector from the origin to the camera
    helper = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    right = np.cross(helper, forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    roll = 2.0 * math.pi * u3
    right, up = math.cos(roll) * right + math.sin(roll) * up, -math.sin(roll) * right + math.cos(roll) * up
    return np.stack([right, up, forward])


def check_options(options: dict) -> None:
    lo, hi = options["maps"]
    if not (float(lo).is_integer() and float(hi).is_integer()) or not 1 <= lo <= hi <= 16:
        raise UserError(f"option maps={options['maps']!r} must be two whole numbers 1 <= lo <= hi <= 16")
    options["maps"] = [int(lo), int(hi)]
    if not 0 <= options["min_variance"] < 1:
        raise UserError(f"option min_variance={options['min_variance']!r} must be in [0, 1) (the scaled cloud "
                        f"spans [-1, 1])")
    if not 0 < options["fov"] < 180:
        raise UserError(f"option fov={options['fov']!r} must be an angle in (0, 180) degrees")
    if not options["distance"] > 1.8:
        raise UserError(f"option distance={options['distance']!r} must be above 1.8 (the cloud lies within "
                        f"[-1, 1] of the centre plus its centroid shift)")


_MAX_CANDIDATES = 10_000


def class_system(options: dict, cls: int) -> np.ndarray:
    """The class-search result for class `cls`: the first accepted candidate of its own keyed stream
    (about 1 candidate in 100 passes min_variance 0.05, as in the official search)."""
    _, seed = sample_stream(options["seed"], _tag("exfractal-class"), cls, 0)
    lo, hi = options["maps"]
    with np.errstate(all="ignore"):
        params, _, _ = search_system(lo, hi, options["min_variance"], 10_000, _MAX_CANDIDATES, seed)
    if not len(params):
        raise UserError(f"no 3-D IFS passed min_variance={options['min_variance']} in {_MAX_CANDIDATES} tries "
                        f"for class {cls}; lower min_variance")
    return params


def make_class_systems(options: dict, systems, info) -> tuple[list, dict]:
    systems = [class_system(options, c) for c in range(options["classes"])]
    return systems, {"sampling": "ExFractalDB-style 3-D IFS search from (seed, class)",
                     "fields": "per map: a b c d e f g h i j k l (x' = A x + t, A row-major, t = j k l)"}


def load_class_systems(path: str) -> tuple[list, dict]:
    import json

    try:
        with open(path) as f:
            doc = json.load(f)
        systems = [np.asarray(s, np.float64) for s in doc["systems"]]
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; re-run the fractalgen render command") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a 3-D IFS systems file ({e}); re-run the fractalgen render command") from None
    if not systems or any(s.ndim != 2 or s.shape[1] != 12 or not np.isfinite(s).all() for s in systems):
        raise UserError(f"{path}: every class needs a list of maps of 12 finite numbers")
    return systems, {k: v for k, v in doc.items() if k != "systems"}


def variant(params: np.ndarray, v: int) -> np.ndarray:
    """Variant v of a system: 0 = itself; else coefficient (v - 1) // 12 of every map times factor (v - 1) % 12
    (weights_ins145.csv scales one coefficient in all maps)."""
    if v == 0:
        return params
    out = params.copy()
    out[:, (v - 1) // len(WEIGHT_FACTORS)] *= WEIGHT_FACTORS[(v - 1) % len(WEIGHT_FACTORS)]
    return out


def render_exfractal_sample(spec, index: int):
    from .kinds import Sample

    o = spec.options
    cls = index % o["classes"]
    instance = index // o["classes"]
    v = instance % N_VARIANTS if o["variants"] else 0
    u, seed = sample_stream(o["seed"], _tag("exfractal"), index, 3)
    fallback = None
    for attempt in (v, 0):
        params = variant(spec.systems[cls], attempt)
        with np.errstate(all="ignore"):
            cloud = normalised(chaos_game_3d(params, cumulative_probabilities(params), o["points"], seed))
        if cloud is not None:
            break
        fallback = v
    size = o["size"]
    image = np.zeros((size, size), np.uint8)
    rotation = view_rotation(*u)
    project_points(cloud, rotation, o["distance"], 1.0 / math.tan(math.radians(o["fov"]) / 2.0), size, image)
    meta = {"index": index, "cls": cls, "classes": [cls], "system": cls,
            "variant": {"id": attempt, "fallback_from": fallback}, "view": rotation[2].tolist(),
            "kernel_seed": int(seed)}
    return Sample(f"{index:09d}", image, cls, [cls], meta)
