"""Iterated function systems: sampling, FractalDB class search, variants, and the systems file.

A system is a float64 array (N, 6) of affine maps (a, b, c, d, e, f): x' = a x + b y + e,
y' = c x + d y + f. Map probabilities are proportional to |det A| (the papers' rule).
"""

import json
import math
import os

import numpy as np

from . import kernels
from .errors import UserError
from .rng import generator, kernel_seed

SYSTEMS_FORMAT = "fractalgen-systems/1"
WEIGHT_FACTORS = (0.8, 0.9, 1.1, 1.2)
N_WEIGHT_VARIANTS = 1 + 6 * len(WEIGHT_FACTORS)  # the original + each parameter x each factor = 25
_PLAIN_DOT = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.uint8)


def probabilities(params: np.ndarray) -> np.ndarray:
    """Map probabilities proportional to |det A|; uniform when every map is singular."""
    det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
    total = det.sum()
    return det / total if total > 1e-12 else np.full(len(params), 1.0 / len(params))


def thresholds(params: np.ndarray) -> np.ndarray:
    """The kernel's form of the probabilities: cumulative sums scaled to 2**32 (N - 1 entries)."""
    cum = np.cumsum(probabilities(params))[:-1]
    return np.minimum(np.floor(cum * 2.0**32), 2.0**32).astype(np.uint64)


def sample_sigma_system(rng: np.random.Generator, min_maps: int = 2, max_maps: int = 4,
                        sigma_range: tuple[float, float] | None = None) -> np.ndarray:
    """Anderson & Farrell's SVD sampling under the sigma-factor constraint.

    A_i = R(theta) diag(s1, s2) R(phi) D with random rotations, a random reflection D, and
    1 >= s1 >= s2 >= 0, so every map contracts. The total sigma = sum_i (s1 + 2 s2) is drawn in
    [(5 + N) / 2, (6 + N) / 2] (or in `sigma_range`, within (0, 3 N]) and split among the maps
    uniformly at random (a share must be <= 3, the largest s1 + 2 s2 allowed); within a map s2 is
    uniform over the values the share admits. Translations are uniform in [-1, 1].
    """
    n = int(rng.integers(min_maps, max_maps + 1))
    sigma = rng.uniform(*(sigma_range or ((5 + n) / 2, (6 + n) / 2)))
    while True:  # uniform split of sigma into n shares, each in [0, 3]
        cuts = np.sort(rng.uniform(0.0, sigma, n - 1))
        shares = np.diff(np.concatenate([[0.0], cuts, [sigma]]))
        if shares.max() <= 3.0:
            break
    params = np.empty((n, 6))
    for i, share in enumerate(shares):
        # s1 = share - 2 s2 with s2 <= s1 <= 1  =>  s2 in [max(0, (share - 1) / 2), share / 3]
        s2 = rng.uniform(max(0.0, (share - 1.0) / 2.0), share / 3.0)
        s1 = share - 2.0 * s2
        theta, phi = rng.uniform(0.0, 2.0 * np.pi, 2)
        d = np.diag(rng.choice([-1.0, 1.0], 2))
        a = _rotation(theta) @ np.diag([s1, s2]) @ _rotation(phi) @ d
        params[i, :4] = a.ravel()
        params[i, 4:] = rng.uniform(-1.0, 1.0, 2)
    return params


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def sigma_factor(params: np.ndarray) -> float:
    """sum over maps of (s1 + 2 s2), the quantity the sigma-factor constraint bounds."""
    total = 0.0
    for row in params:
        s = np.linalg.svd(row[:4].reshape(2, 2), compute_uv=False)
        total += s[0] + 2.0 * s[1]
    return float(total)


def sample_fractaldb_candidate(rng: np.random.Generator, min_maps: int = 2, max_maps: int = 7) -> np.ndarray:
    """Kataoka et al.'s candidate: N maps with all 6N parameters uniform in [-1, 1], no contraction check."""
    n = int(rng.integers(min_maps, max_maps + 1))
    return rng.uniform(-1.0, 1.0, (n, 6))


def weight_variant(params: np.ndarray, variant: int) -> np.ndarray:
    """FractalDB weight perturbation: variant 0 is the system; variant 1 + 4 k + j scales parameter k
    (a..f) of every map by WEIGHT_FACTORS[j]."""
    if not 0 <= variant < N_WEIGHT_VARIANTS:
        raise ValueError(f"variant must be in [0, {N_WEIGHT_VARIANTS})")
    out = params.copy()
    if variant:
        k, j = divmod(variant - 1, len(WEIGHT_FACTORS))
        out[:, k] *= WEIGHT_FACTORS[j]
    return out


def render_plain(params: np.ndarray, size: int, points: int, seed: int):
    """(ok, counts) of a system drawn one pixel per point over its bounding box."""
    return kernels.render_counts(params, thresholds(params), points, seed, size, size, 1.0, 1.0, 0.0, 0.0,
                                 False, False, False, _PLAIN_DOT)


def filling_rate(params: np.ndarray, size: int, points: int, seed: int) -> float:
    """Fraction of non-empty pixels (0 for a divergent system): FractalDB's acceptance measure."""
    ok, counts = render_plain(params, size, points, seed)
    return float(np.count_nonzero(counts)) / counts.size if ok else 0.0


def fractaldb_candidate(seed: int, k: int, size: int, points: int):
    """Candidate k of a seeded search and its filling rate (a pure function of seed and k)."""
    rng = generator(seed, "fractaldb-search", k)
    params = sample_fractaldb_candidate(rng)
    return params, filling_rate(params, size, points, kernel_seed(rng))


def sigma_class_system(seed: int, cls: int, min_fill: float = 0.01, max_tries: int = 1000) -> np.ndarray:
    """The system of class `cls` for the single/multi kinds: sampled under the sigma-factor
    constraint from (seed, cls), re-drawn while its 64 px render is near-empty or degenerate."""
    for attempt in range(max_tries):
        rng = generator(seed, "sigma-class", cls, attempt)
        params = sample_sigma_system(rng)
        if filling_rate(params, 64, 20_000, kernel_seed(rng)) >= min_fill:
            return params
    raise RuntimeError(f"class {cls}: no usable system in {max_tries} draws")


def save_systems(path: str, systems: list, info: dict) -> None:
    """Write a systems file atomically (temporary name, then rename)."""
    doc = {"format": SYSTEMS_FORMAT, **info, "systems": [np.asarray(s).tolist() for s in systems]}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


def load_systems(path: str) -> tuple[list, dict]:
    """Read and validate a systems file: (list of (N, 6) arrays, the file's other fields)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UserError(f"systems file {path} does not exist; create one with `fractalgen search`") from None
    except (OSError, ValueError) as e:
        raise UserError(f"systems file {path} is not readable JSON ({e}); re-run `fractalgen search`") from None
    if not isinstance(doc, dict) or doc.get("format") != SYSTEMS_FORMAT:
        raise UserError(f"systems file {path}: expected format {SYSTEMS_FORMAT!r}; re-run `fractalgen search`")
    systems = []
    for i, s in enumerate(doc.get("systems") or []):
        a = np.asarray(s, dtype=object)
        try:
            a = np.asarray(s, dtype=np.float64)
        except (TypeError, ValueError):
            pass
        if a.dtype != np.float64 or a.ndim != 2 or a.shape[1] != 6 or not 1 <= a.shape[0] <= 16 or not np.isfinite(a).all():
            raise UserError(f"systems file {path}: system {i} must be a list of 1-16 maps of 6 finite numbers")
        systems.append(a)
    if not systems:
        raise UserError(f"systems file {path} holds no systems")
    info = {k: v for k, v in doc.items() if k != "systems"}
    return systems, info
