"""The three dataset kinds: a DatasetSpec holds the resolved options and class systems, and
render_sample(spec, index) draws sample `index` as a pure function of (spec, index).

- fractaldb (Kataoka et al., ACCV 2020): class = a searched IFS; instance = weight variant x flip x
  patch render, white on black.
- single (Anderson & Farrell, WACV 2022): class = a sigma-factor IFS; one coloured fractal on a
  plasma background, random window scale/shift, flips, optional blur.
- multi (same paper): 1-5 fractals of random classes pasted on a background; multi-label target.
- 1p-frac, ofdb: few-image IFS kinds (fewimage.py); rcdb, visualatom: contour kinds (contours.py).
"""

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import contours, fewimage, ifs3d, kernels
from .errors import UserError
from .rng import generator, kernel_seed
from .systems import (N_WEIGHT_VARIANTS, WEIGHT_FACTORS, load_systems, sigma_class_system, thresholds,
                      weight_variant)

# Published defaults (see ../shared/FRACTALS.md); every key can be overridden and lands in the card.
COMMON = {"size": 256, "points": 100_000, "seed": 0}
MIN_SIZE = 16
_MAX_ATTEMPTS = 8


@dataclass
class Sample:
    key: str
    image: np.ndarray  # uint8 (H, W) grayscale or (H, W, 3) RGB
    cls: int
    classes: list
    meta: dict = field(default_factory=dict)


class DatasetSpec:
    """Resolved options (a JSON-able dict) plus the class systems they refer to."""

    def __init__(self, options: dict, systems: list, systems_info: dict | None = None):
        self.options = options
        self.systems = systems
        self.systems_info = systems_info or {"kind": options["kind"], "classes": len(systems)}
        # map probabilities of 2-D IFS systems (N, 6); contour parameter vectors and 3-D IFS have none
        self._thresholds = [thresholds(s) if np.ndim(s) == 2 and np.shape(s)[1] == 6 else None for s in systems]

    kind = property(lambda self: self.options["kind"])
    n = property(lambda self: self.options["n"])
    num_classes = property(lambda self: self.options["classes"])
    size = property(lambda self: self.options["size"])
    seed = property(lambda self: self.options["seed"])
    multilabel = property(lambda self: KIND_TABLE[self.kind].multilabel)
    channels = property(lambda self: KIND_TABLE[self.kind].channels(self.options))

    @classmethod
    def create(cls, kind: str, n: int, classes: int, systems: list | None = None, systems_info: dict | None = None,
               **overrides) -> "DatasetSpec":
        """Resolve defaults, validate, and derive the class systems (the kind's `make_systems`).

        Searched kinds (fractaldb) need `systems` (from `fractalgen search`, see search.py) with at
        least `classes` entries; the others derive theirs from (seed, class).
        """
        options = resolve_options(kind, n, classes, overrides)
        systems, systems_info = KIND_TABLE[kind].make_systems(options, systems, systems_info)
        return cls(options, systems, {**(systems_info or {}), "kind": kind, "classes": classes})

    @classmethod
    def from_card(cls, card: dict, root: str) -> "DatasetSpec":
        """The spec a dataset folder was rendered with (systems from its systems.json)."""
        loader = KIND_TABLE[card["options"]["kind"]].load_systems
        systems, info = loader(os.path.join(root, card.get("systems", "systems.json")))
        return cls(copy.deepcopy(with_new_defaults(card["options"])), systems, info)


def with_new_defaults(options: dict) -> dict:
    """Options written before some of their kind's options existed, with those at what the renderer
    that wrote them did (the kind's `legacy` value where the default has changed since, else the
    default): an older card or render folder reads as the same job."""
    entry = KIND_TABLE.get(options.get("kind"))
    return options if entry is None else {**entry.defaults, **entry.legacy, **options}


def resolve_options(kind: str, n: int, classes: int, overrides: dict) -> dict:
    if kind not in KIND_TABLE:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(KIND_TABLE)}")
    entry = KIND_TABLE[kind]
    options = {"kind": kind, "n": n, "classes": classes, **copy.deepcopy(COMMON), **copy.deepcopy(entry.defaults)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in options:
            raise UserError(f"option {key!r} does not apply to kind {kind}; valid: {', '.join(sorted(options))}")
        options[key] = _checked(key, value, options[key])
    if not isinstance(n, int) or n <= 0:
        raise UserError(f"--n must be a positive number of samples, got {n}")
    if not isinstance(classes, int) or classes <= 0:
        raise UserError(f"--classes must be positive, got {classes}")
    if classes > n:
        raise UserError(f"--classes ({classes}) is larger than --n ({n}); every class needs at least one sample")
    if options["size"] < MIN_SIZE:
        raise UserError(f"--size {options['size']} is too small; use at least {MIN_SIZE} pixels")
    if options["points"] < 100:
        raise UserError(f"--points {options['points']} is too few to draw a fractal; use at least 100")
    if entry.check is not None:
        entry.check(options)
    return options


def _checked(key: str, value, default):
    """The value, if it has the default's type (ints pass for floats; lists keep their length)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = int(value) if ok and isinstance(default, int) and float(value).is_integer() else value
        ok = ok and (isinstance(default, float) or isinstance(value, int))
    elif isinstance(default, list):
        ok = isinstance(value, list) and len(value) == len(default) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    else:
        ok = True
    if not ok:
        raise UserError(f"option {key}={value!r} should be like {default!r}")
    return value


def render_sample(spec: DatasetSpec, index: int) -> Sample:
    """Sample `index` of the dataset: a pure function of (spec, index); any index >= 0 is valid
    (indices >= n form a held-out range with the same distribution)."""
    if index < 0:
        raise ValueError("index must be >= 0")
    return KIND_TABLE[spec.kind].render(spec, int(index))


def _searched_systems(options: dict, systems: list | None, info: dict | None) -> tuple[list, dict | None]:
    """The first `classes` systems of a FractalDB search (given by the caller)."""
    classes = options["classes"]
    if systems is None:
        raise UserError(f"{options['kind']} needs class systems: run `fractalgen search` or pass --systems FILE")
    if len(systems) < classes:
        raise UserError(f"the systems file has {len(systems)} systems but --classes is {classes}; "
                        f"use a file with more systems or lower --classes")
    return [np.asarray(s, np.float64) for s in systems[:classes]], info


def _sigma_systems(options: dict, systems, info) -> tuple[list, dict]:
    """One sigma-factor system per class, from (seed, class); or, when given (--systems), the first
    `classes` systems of a file (e.g. another generator's classes, to compare renderers on the same ones)."""
    if systems is not None:
        return _searched_systems(options, systems, info)
    systems = [sigma_class_system(options["seed"], c) for c in range(options["classes"])]
    return systems, {"sampling": "sigma-factor SVD (Anderson & Farrell), 2-4 maps, from (seed, class)"}


def _random_patch(rng) -> np.ndarray:
    """A 3x3 patch of random on/off cells with at least one cell on."""
    while True:
        patch = rng.integers(0, 2, (3, 3)).astype(np.uint8)
        if patch.any():
            return patch


def _render_fractaldb(spec: DatasetSpec, index: int) -> Sample:
    o = spec.options
    cls = index % o["classes"]
    instance = index // o["classes"]
    variant = instance % N_WEIGHT_VARIANTS
    flip = (instance // N_WEIGHT_VARIANTS) % 4 if o["flips"] else 0
    rng = generator(o["seed"], "fractaldb-sample", index)
    patch = _random_patch(rng)
    seed = kernel_seed(rng)
    size = o["size"]
    fallback = False
    for v in (variant, 0):  # a perturbed variant that diverges or empties falls back to the class system
        params = weight_variant(spec.systems[cls], v)
        th = spec._thresholds[cls] if v == 0 else thresholds(params)
        if o["official_draw"]:
            ok, counts = _official_draw(o, params, spec._thresholds[cls], seed, kernel_seed(rng), flip)
        else:
            ok, counts = kernels.render_counts(params, th, o["points"], seed, size, size, 1.0, 1.0, 0.0, 0.0,
                                               bool(flip & 1), bool(flip & 2), False, patch)
        if ok and np.count_nonzero(counts) >= o["min_fill"] * counts.size:
            break
        fallback = True
    if o["color"]:
        rng_c = generator(o["seed"], "fractaldb-colour", index)
        image = np.zeros((size, size, 3), np.uint8)
        kernels.colorize(counts, rng_c.random(), 1.0, 1.0, image, np.zeros((size, size), np.bool_))
    else:
        image = np.where(counts > 0, np.uint8(fewimage.GRAY if o["official_draw"] else 255), np.uint8(0))
    factor = None if v == 0 else WEIGHT_FACTORS[(v - 1) % len(WEIGHT_FACTORS)]
    meta = {"index": index, "cls": cls, "classes": [cls], "system": cls,
            "variant": {"id": v, "parameter": None if v == 0 else "abcdef"[(v - 1) // len(WEIGHT_FACTORS)],
                        "factor": factor, "fallback_from": variant if fallback else None},
            "flip": {"horizontal": bool(flip & 1), "vertical": bool(flip & 2)},
            "patch": patch.ravel().tolist(), "chaos_seed": seed, "params": params.tolist()}
    return Sample(f"{index:09d}", image, cls, [cls], meta)


def _official_draw(o: dict, params: np.ndarray, th: np.ndarray, seed: int, patch_seed: int, flip: int):
    """(ok, image) drawn as the official FractalDB renderer's draw_patch: a random 3x3 patch per point
    pasted in order, gray 127, probabilities of the unweighted class system, and its geometry: the box
    maps onto pixels [6, S - 6] (one more than fewimage's [6, S - 7]) and PIL pastes a patch's corner 1 px
    right of / below the point's pixel before the image is flipped to y up, so the drawing sits 2 px right
    of and 3 px above a centred drawing at S + 1 px; then flipped."""
    size = o["size"]
    ok, drawn = kernels.render_random_patches(params, th, o["points"], seed, patch_seed, size + 1, fewimage.PAD,
                                              np.uint8(fewimage.GRAY))
    image = np.zeros((size, size), np.uint8)
    image[:size - 2, 2:] = drawn[3:, :size - 2]
    image = image[:, ::-1] if flip & 1 else image
    return ok, np.ascontiguousarray(image[::-1] if flip & 2 else image)


def _check_fractaldb(options: dict) -> None:
    """official_draw=auto (the default) resolves to the official drawing for gray images; colour
    images (--color) have no official drawing and keep fractalgen's."""
    draw = options["official_draw"]
    if draw not in ("auto", True, False):
        raise UserError(f"option official_draw={draw!r} should be auto, true or false")
    if draw is True and options["color"]:
        raise UserError("official_draw draws the official gray images; it cannot be combined with --color")
    if draw == "auto":
        options["official_draw"] = not options["color"]


def _jitter(params: np.ndarray, amount: float, rng) -> np.ndarray:
    """Scale each linear part by up to +-amount, then shrink any map whose largest singular value
    passed 1, so the system stays contractive."""
    out = params.copy()
    out[:, :4] *= 1.0 + rng.uniform(-amount, amount, (len(params), 4))
    for row in out:
        top = np.linalg.svd(row[:4].reshape(2, 2), compute_uv=False)[0]
        if top > 1.0:
            row[:4] /= top
    return out


def _background(o: dict, rng, size: int) -> tuple[np.ndarray, dict]:
    """A colourised diamond-square plasma field (or black when backgrounds are off)."""
    image = np.zeros((size, size, 3), np.uint8)
    if not o["background"]:
        return image, {"kind": "none"}
    grid = 1 << int(np.ceil(np.log2(size - 1))) if size > 2 else 2
    if o["reference_background"]:
        return _reference_background(rng, grid, size, image)
    roughness = rng.uniform(0.45, 0.75)
    noise = kernels.plasma(grid + 1, roughness, kernel_seed(rng))[:size, :size]
    hue, hue_range = rng.random(), rng.uniform(0.25, 1.0)
    sat = rng.uniform(0.4, 0.9)
    val_lo = rng.uniform(0.2, 0.5)
    val_hi = min(1.0, val_lo + rng.uniform(0.3, 0.6))
    kernels.colorize_background(np.ascontiguousarray(noise), hue, hue_range, sat, val_lo, val_hi, image)
    return image, {"kind": "plasma", "roughness": roughness, "hue": hue, "hue_range": hue_range,
                   "saturation": sat, "value": [val_lo, val_hi]}


def _reference_background(rng, grid: int, size: int, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """The public code's background (diamondsquare.colorized_ds): the raw (unnormalised), edge-wrapped
    plasma field with decay U(0.4, 0.8), coloured by bytes hue x * U(0.25, 1) * 255 + U(0, 255), saturation
    x * U(0.1, 0.3) * 255 + U(0.4, 0.6) * 255, value x * U(0.3, 0.6) * 255 + U(0.4, 0.6) * 255, read in
    OpenCV's 0-179 hue range (kernels.colorize_background_opencv)."""
    decay = rng.uniform(0.4, 0.8)
    noise = kernels.plasma(grid + 1, float(np.exp(-decay)), kernel_seed(rng), False, True)[:size, :size]
    scales = [rng.uniform(0.25, 1.0) * 255, rng.random() * 255, rng.uniform(0.1, 0.3) * 255,
              rng.uniform(0.4, 0.6) * 255, rng.uniform(0.3, 0.6) * 255, rng.uniform(0.4, 0.6) * 255]
    kernels.colorize_background_opencv(np.ascontiguousarray(noise), *scales, image)
    return image, {"kind": "plasma-reference", "decay": decay, "hue_scale_shift": scales[:2],
                   "sat_scale_shift": scales[2:4], "val_scale_shift": scales[4:]}


def _colorize(o: dict, rng, counts: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> dict:
    """Colour a fractal's pixels: hue from its log point density plus a random shift on the full hue
    circle, or (reference_colour) as the public code (kernels.colorize_opencv)."""
    hue, sat, val = rng.random(), rng.uniform(*o["saturation"]), rng.uniform(*o["value"])
    if o["reference_colour"]:
        hue, sat, val = hue * 255.0, float(int(sat * 255)), float(int(val * 255))
        kernels.colorize_opencv(counts, hue, sat, val, rgb, mask)
    else:
        kernels.colorize(counts, hue, sat, val, rgb, mask)
    return {"hue": hue, "saturation": sat, "value": val}


def _blur(o: dict, rng, image: np.ndarray):
    """3x3 Gaussian blur with probability blur_p."""
    if rng.random() >= o["blur_p"]:
        return image, None
    sigma = rng.uniform(*o["blur_sigma"])
    return kernels.blur3(image, sigma), sigma


def _flips(o: dict, rng) -> tuple[bool, bool, bool]:
    if not o["flips"]:
        return False, False, False
    fx, fy, tr = rng.integers(0, 2, 3)
    return bool(fx), bool(fy), bool(tr)


def _render_single(spec: DatasetSpec, index: int) -> Sample:
    o = spec.options
    size = o["size"]
    cls = index % o["classes"]
    rng = generator(o["seed"], "single-sample", index)
    for attempt in range(_MAX_ATTEMPTS):
        params = spec.systems[cls]
        th = spec._thresholds[cls]
        if o["jitter"] > 0:
            params = _jitter(params, o["jitter"], rng)
            th = thresholds(params)
        patch = _random_patch(rng)
        # the last attempt draws the plain bounding box, which a class system always fills
        wx, wy = rng.uniform(*o["window"], 2) if attempt < _MAX_ATTEMPTS - 1 else (1.0, 1.0)
        sx, sy = rng.uniform(-o["shift"], o["shift"], 2) if attempt < _MAX_ATTEMPTS - 1 else (0.0, 0.0)
        fx, fy, tr = _flips(o, rng)
        seed = kernel_seed(rng)
        ok, counts = kernels.render_counts(params, th, o["points"], seed, size, size, wx, wy, sx, sy, fx, fy, tr, patch)
        if ok and np.count_nonzero(counts) >= o["min_fill"] * counts.size:
            break
    image, background = _background(o, rng, size)
    colour = _colorize(o, rng, counts, image, np.zeros((size, size), np.bool_))
    image, sigma = _blur(o, rng, image)
    meta = {"index": index, "cls": cls, "classes": [cls], "system": cls, "attempt": attempt,
            "params": params.tolist(), "patch": patch.ravel().tolist(), "chaos_seed": seed,
            "window": [float(wx), float(wy)], "shift": [float(sx), float(sy)],
            "flip": {"horizontal": fx, "vertical": fy, "transpose": tr},
            "colour": colour, "background": background, "blur": sigma}
    return Sample(f"{index:09d}", image, cls, [cls], meta)


def _half_resolution_instance(o: dict, rng, spec: DatasetSpec, c: int, seed: int, flips, patch, side: int):
    """An instance as the public code makes it (reference_resize): drawn at half the image size with all
    the points, coloured, then resized bilinearly to `side` (its edges blend with black); (rgb, mask)."""
    half = max(4, o["size"] // 2)
    ok, counts = kernels.render_counts(spec.systems[c], spec._thresholds[c], o["points"], seed, half, half,
                                       1.0, 1.0, 0.0, 0.0, *flips, patch)
    rgb = np.zeros((half, half, 3), np.uint8)
    _colorize(o, rng, counts, rgb, np.zeros((half, half), np.bool_))
    rgb = kernels.resize_bilinear(rgb, side)
    return rgb, rgb.any(axis=2)


def _render_multi(spec: DatasetSpec, index: int) -> Sample:
    o = spec.options
    size = o["size"]
    rng = generator(o["seed"], "multi-sample", index)
    for attempt in range(_MAX_ATTEMPTS):
        image, background = _background(o, rng, size)
        owner = np.zeros((size, size), np.int16)  # which instance (1-based) shows at each pixel
        instances = []
        for j in range(int(rng.integers(o["objects"][0], o["objects"][1] + 1))):
            c = int(rng.integers(o["classes"]))
            side = max(4, int(round(rng.uniform(*o["object_size"]) * size)))
            # the fractal is drawn directly at its pasted size (no resize), with the point density of a
            # full-size render
            points = max(o["min_object_points"], int(o["points"] * (side / size) ** 2))
            patch = _random_patch(rng)
            fx, fy, tr = _flips(o, rng)
            seed = kernel_seed(rng)
            if o["reference_resize"]:
                points = o["points"]
                rgb, mask = _half_resolution_instance(o, rng, spec, c, seed, (fx, fy, tr), patch, side)
            else:
                ok, counts = kernels.render_counts(spec.systems[c], spec._thresholds[c], points, seed,
                                                   side, side, 1.0, 1.0, 0.0, 0.0, fx, fy, tr, patch)
                rgb = np.zeros((side, side, 3), np.uint8)
                mask = np.zeros((side, side), np.bool_)
                _colorize(o, rng, counts, rgb, mask)
            # centre anywhere in the frame: the instance may hang partly outside it
            top = int(rng.integers(size)) - side // 2
            left = int(rng.integers(size)) - side // 2
            drawn = kernels.paste(image, owner, rgb, mask, top, left, j + 1)
            instances.append({"class": c, "paste_box": [left, top, left + side, top + side], "drawn_pixels": int(drawn),
                              "flip": {"horizontal": fx, "vertical": fy, "transpose": tr},
                              "patch": patch.ravel().tolist(), "points": points, "chaos_seed": seed})
        visible = np.bincount(owner.ravel(), minlength=len(instances) + 1)
        for j, inst in enumerate(instances):
            inst["visible_pixels"] = int(visible[j + 1])
            inst["present"] = bool(visible[j + 1] > 0 and visible[j + 1] >= o["min_visible"] * inst["drawn_pixels"])
            if visible[j + 1]:
                ys, xs = np.nonzero(owner == j + 1)
                inst["box"] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            else:
                inst["box"] = None
        present = [inst for inst in instances if inst["present"]]
        if present:
            break
    classes = sorted({inst["class"] for inst in present})
    primary = max(present, key=lambda inst: inst["visible_pixels"])["class"]
    image, sigma = _blur(o, rng, image)
    meta = {"index": index, "cls": primary, "classes": classes, "attempt": attempt, "instances": instances,
            "background": background, "blur": sigma}
    return Sample(f"{index:09d}", image, primary, classes, meta)


@dataclass(frozen=True)
class Kind:
    """One dataset kind: its default options, how its class parameters are made, how a sample is drawn.
    A new kind is one entry in KIND_TABLE below (the CLI, the writer and pretrain read it from there)."""

    defaults: dict
    make_systems: Callable  # (options, systems given or None, their info) -> (class parameters, info)
    render: Callable  # (spec, index) -> Sample
    searched: bool = False  # class systems come from `fractalgen search` (the CLI / pretrain run it)
    systems_file: bool = False  # may draw its classes from a systems file (--systems) instead of its seed
    multilabel: bool = False
    channels: Callable = lambda options: 3  # image channels for these options
    check: Callable | None = None  # kind-specific validation of the resolved options (raise UserError)
    load_systems: Callable = load_systems  # path of a folder's systems.json -> (class parameters, info)
    notes: tuple = ()  # card notes for this kind (where it follows / deviates from the official code)
    legacy: dict = field(default_factory=dict)  # option -> what a card written before it existed did


# reference_colour / reference_background: colour as the public code does, OpenCV hue range included
# (for comparisons with it, benchmarks/fidelity.py; off by default, see the card notes)
_COLOUR_DEFAULTS = {"blur_p": 0.5, "blur_sigma": [0.5, 1.0], "saturation": [0.3, 1.0], "value": [0.5, 1.0],
                    "reference_colour": False, "reference_background": False}
KIND_TABLE = {
    # official_draw: draw as the official renderer (per-point random patches, gray 127, 6-px margin); auto:
    # for gray images. false (and every card written before the option existed): one random patch per
    # image, white, no margin, far from the released data (docs/fidelity.md)
    "fractaldb": Kind({"color": False, "flips": True, "min_fill": 0.02, "official_draw": "auto"}, _searched_systems,
                      _render_fractaldb, searched=True, channels=lambda o: 3 if o["color"] else 1,
                      check=_check_fractaldb, legacy={"official_draw": False}),
    "single": Kind({"window": [0.5, 2.0], "shift": 0.2, "flips": True, "jitter": 0.0, "background": True,
                    **_COLOUR_DEFAULTS, "min_fill": 0.002}, _sigma_systems, _render_single, systems_file=True),
    # reference_resize: instances drawn at half size and resized bilinearly, as the public code (off by default)
    "multi": Kind({"objects": [1, 5], "object_size": [0.15, 0.6], "flips": True, "background": True,
                   "reference_resize": False, **_COLOUR_DEFAULTS, "min_visible": 0.1, "min_object_points": 5_000}, _sigma_systems, _render_multi,
                  multilabel=True, systems_file=True),
    "rcdb": Kind(contours.RCDB_DEFAULTS, contours.make_class_params, contours.render_contour_sample,
                 channels=lambda o: 1, check=contours.check_options, load_systems=contours.load_class_params,
                 notes=tuple(contours.NOTES["rcdb"])),
    "visualatom": Kind(contours.VISUALATOM_DEFAULTS, contours.make_class_params, contours.render_contour_sample,
                       channels=lambda o: 1, check=contours.check_options, load_systems=contours.load_class_params,
                       notes=tuple(contours.NOTES["visualatom"])),
    "1p-frac": Kind(fewimage.ONE_P_FRAC_DEFAULTS, fewimage.onepfrac_systems, fewimage.render_onepfrac,
                    channels=lambda o: 1, check=fewimage.check_onepfrac, notes=tuple(fewimage.NOTES["1p-frac"])),
    "ofdb": Kind(fewimage.OFDB_DEFAULTS, _searched_systems, fewimage.render_ofdb, searched=True,
                 channels=lambda o: 1, check=fewimage.check_ofdb, notes=tuple(fewimage.NOTES["ofdb"])),
    "exfractal": Kind(ifs3d.DEFAULTS, ifs3d.make_class_systems, ifs3d.render_exfractal_sample, channels=lambda o: 1,
                      check=ifs3d.check_options, load_systems=ifs3d.load_class_systems, notes=tuple(ifs3d.NOTES)),
}
KINDS = tuple(KIND_TABLE)
DEFAULTS = {name: entry.defaults for name, entry in KIND_TABLE.items()}


def takes_systems_file(kind: str) -> bool:
    """Whether `kind` can render the class systems of a systems file (--systems)."""
    return kind in KIND_TABLE and (KIND_TABLE[kind].searched or KIND_TABLE[kind].systems_file)


def uses_searched_systems(kind: str) -> bool:
    """Whether `kind` renders FractalDB-searched class systems (the caller runs the search)."""
    return kind in KIND_TABLE and KIND_TABLE[kind].searched
