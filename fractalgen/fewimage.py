"""The few-image IFS kinds, trained with many epochs of heavy augmentation over ~1,000 images:

- 1p-frac (Nakamura et al., ECCV 2024, "Scaling Backwards"; SUPER-TADORY/1p-frac): ONE base IFS of 2
  maps sampled under the sigma-factor constraint (sigma in [s - 0.1, s + 0.1], s = 4.0 as the official
  generate.sh); class c is the base with each of the 6 coefficients of every map multiplied by an
  independent U(1 - delta, 1 + delta) draw keyed by (seed, c), re-drawn while the class's render fills
  less than min_fill (0.05) of the image, as the official generator does. Map probabilities are the
  base system's (the official code computes them once, before perturbing). 512 px, 100k points.
- ofdb (Nakamura et al., ICCV 2023; ryoo-nakamura/OFDB): one image per FractalDB class system (the
  same `fractalgen search` the fractaldb kind uses: 512 px, 100k points, filling rate 0.2), drawn with
  the coefficient weights of the official release script (exe_parallel.sh reads row 0 of
  weights_0.4.csv: a x 0.2, b..f x 1) and the probabilities of the unweighted system. 362 px, 200k points.

Both draw like the official renderer: the points' bounding box mapped onto the image inside a 6-px
margin, y up, each point pasted in order as its own random 3x3 on/off patch (gray 127 on black; see
kernels.stamp_random_patches). Sample i is instance i // classes of class i % classes: instance 0 is
the published image; later instances re-render the class with new chaos-game and patch draws, which
is what re-running the official generator changes (its patch masks are unseeded).
"""

import numpy as np

from . import kernels
from .errors import UserError
from .rng import generator, kernel_seed
from .systems import sample_sigma_system, sigma_factor, thresholds

GRAY = 127  # the official renderers' pixel value
PAD = 6  # the official renderers' margin (pixels)
SIGMA_MARGIN = 0.1  # the official code draws the base sigma-factor in [sigma - 0.1, sigma + 0.1]
BASE_MAPS = 2
_MAX_TRIES = 1000
_MAX_ATTEMPTS = 8

ONE_P_FRAC_DEFAULTS = {"size": 512, "points": 100_000, "delta": 0.1, "sigma": 4.0, "min_fill": 0.05}
OFDB_DEFAULTS = {"size": 362, "points": 200_000, "weights": [0.2, 1.0, 1.0, 1.0, 1.0, 1.0]}

NOTES = {
    "1p-frac": [
        "Follows SUPER-TADORY/1p-frac (render_from_oneparam_mp.py, generate.sh): 2 maps, sigma 4.0 +- 0.1, "
        "delta 0.1, 1,000 classes of one image, 512 px, 100k points, random 3x3 patch per point, gray 127, "
        "6-px margin, filling rate >= 0.05 (else the class perturbation is re-drawn; checked at the dataset's "
        "size and points, so they are part of the class definition).",
        "Deviations: the chaos game starts at a fixed point of map 0 (on the attractor) instead of (0, 0) with "
        "its transient; the bounding box always maps to the margin (the official rescale skips the shift when "
        "all coordinates are positive, which can push points off the canvas); patches are centred on the "
        "point (official: offset by 1-3 px); grayscale PNG instead of RGB with equal channels; the base system "
        "is re-drawn if it fills less than min_fill itself (the official generator would loop forever); "
        "every draw is keyed by (seed, class / index) instead of unseeded Python random and np.random.seed(100).",
    ],
    "ofdb": [
        "Follows ryoo-nakamura/OFDB 2d-ofdb-generator (exe_parallel.sh, make_2dofdb.py): FractalDB class search "
        "(rate 0.2, 100k points, 512 px), one image per class at 362 px with 200k points, coefficient weights "
        "row 0 of weights_0.4.csv (a x 0.2), probabilities of the unweighted system, random 3x3 patch per "
        "point, gray 127, 6-px margin. weights=[1,1,1,1,1,1] (the repository's one_ins.csv) draws the "
        "class systems unweighted.",
        "Deviations: as for 1p-frac (fixed-point start, margin mapping, centred patches, grayscale PNG, seeded "
        "draws); a weighted system whose points diverge falls back to the unweighted class system (recorded "
        "in the sample's json).",
    ],
}


def check_onepfrac(options: dict) -> None:
    delta, sigma = options["delta"], options["sigma"]
    if not 0.0 <= delta < 1.0:
        raise UserError(f"delta={delta} is outside [0, 1): each coefficient is scaled by U(1 - delta, 1 + delta); "
                        f"use e.g. delta=0.1")
    if not SIGMA_MARGIN < sigma <= 3 * BASE_MAPS - SIGMA_MARGIN:
        raise UserError(f"sigma={sigma} is outside ({SIGMA_MARGIN}, {3 * BASE_MAPS - SIGMA_MARGIN}] for a "
                        f"{BASE_MAPS}-map system; the published values are 3.5-4")
    if not 0.0 <= options["min_fill"] < 1.0:
        raise UserError(f"min_fill={options['min_fill']} is outside [0, 1); the official value is 0.05")
    _check_points(options)


def check_ofdb(options: dict) -> None:
    if not all(0.0 < w <= 2.0 for w in options["weights"]):
        raise UserError(f"weights={options['weights']} must be 6 factors in (0, 2] for a..f "
                        f"(official: [0.2, 1, 1, 1, 1, 1]; unweighted: [1, 1, 1, 1, 1, 1])")
    _check_points(options)


def _check_points(options: dict) -> None:
    if options["points"] > kernels.MAX_PATCH_POINTS:
        raise UserError(f"--points {options['points']} is above {kernels.MAX_PATCH_POINTS:,}; use fewer points")


def _fill(params: np.ndarray, th: np.ndarray, options: dict, seed: int, patch_seed: int) -> float:
    ok, image = kernels.render_random_patches(params, th, options["points"], seed, patch_seed,
                                              options["size"], PAD, np.uint8(GRAY))
    return float(np.count_nonzero(image)) / image.size if ok else 0.0


def onepfrac_systems(options: dict, systems, info) -> tuple[list, dict]:
    """The base system and the perturbed class systems, all from the dataset seed."""
    seed, delta, sigma = options["seed"], options["delta"], options["sigma"]
    sigma_range = (sigma - SIGMA_MARGIN, sigma + SIGMA_MARGIN)
    for base_attempt in range(_MAX_TRIES):
        rng = generator(seed, "1p-frac-base", base_attempt)
        base = sample_sigma_system(rng, BASE_MAPS, BASE_MAPS, sigma_range)
        base_th = thresholds(base)
        if _fill(base, base_th, options, kernel_seed(rng), kernel_seed(rng)) >= options["min_fill"]:
            break
    else:
        raise UserError(f"no base system fills {options['min_fill']} of the image in {_MAX_TRIES} draws; "
                        f"lower min_fill or change sigma")
    classes, factors, attempts = [], [], []
    for c in range(options["classes"]):
        for attempt in range(_MAX_TRIES):
            rng = generator(seed, "1p-frac-class", c, attempt)
            f = rng.uniform(1.0 - delta, 1.0 + delta, base.shape)
            if _fill(base * f, base_th, options, kernel_seed(rng), kernel_seed(rng)) >= options["min_fill"]:
                break
        else:
            raise UserError(f"1p-frac class {c}: no perturbation fills {options['min_fill']} of the image in "
                            f"{_MAX_TRIES} draws; lower delta or min_fill")
        classes.append(base * f)
        factors.append(f.tolist())
        attempts.append(attempt)
    info = {"sampling": "1p-frac: one sigma-factor base system (2 maps); class = base x independent "
                        "U(1 - delta, 1 + delta) per coefficient, from (seed, class); probabilities of the base",
            "base": base.tolist(), "base_sigma_factor": sigma_factor(base), "sigma_range": list(sigma_range),
            "base_attempt": base_attempt, "delta": delta, "factors": factors, "attempts": attempts}
    return classes, info


def _render(spec, index: int, kind: str, params: np.ndarray, th: np.ndarray, fallback: np.ndarray | None):
    from .kinds import Sample  # kinds imports this module

    o = spec.options
    cls = index % o["classes"]
    rng = generator(o["seed"], f"{kind}-sample", index)
    for attempt in range(_MAX_ATTEMPTS):
        if attempt and fallback is not None:
            params = fallback  # a weighted system that diverges: the class system itself
        chaos_seed, patch_seed = kernel_seed(rng), kernel_seed(rng)
        ok, image = kernels.render_random_patches(params, th, o["points"], chaos_seed, patch_seed, o["size"], PAD,
                                                  np.uint8(GRAY))
        if ok:
            break
    meta = {"index": index, "cls": cls, "classes": [cls], "system": cls, "instance": index // o["classes"],
            "attempt": attempt, "fallback": bool(attempt and fallback is not None), "chaos_seed": chaos_seed, "patch_seed": patch_seed, "params": params.tolist()}
    return Sample(f"{index:09d}", image, cls, [cls], meta)


def render_onepfrac(spec, index: int):
    cls = index % spec.options["classes"]
    base_th = thresholds(np.asarray(spec.systems_info["base"], np.float64))
    return _render(spec, index, "1p-frac", spec.systems[cls], base_th, None)


def render_ofdb(spec, index: int):
    cls = index % spec.options["classes"]
    system = spec.systems[cls]
    weighted = system * np.asarray(spec.options["weights"], np.float64)
    return _render(spec, index, "ofdb", weighted, spec._thresholds[cls], system)
