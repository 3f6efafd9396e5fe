"""Fidelity of fractalgen's single / multi / fractaldb images to the reference generators.

For one kind: render N images with the reference generator (its own venv, through
benchmarks/fidelity_ref.py; the reference code is passed by path and never imported here) and N with
fractalgen at the same settings, compare statistics side by side (sigma factor of the systems, pixels
covered, foreground intensity, HSV histograms, background, instances for multi; JSON + pictures), and
train a small CNN to tell the two apart on held-out images (ROC AUC; 0.5 = indistinguishable).

    python benchmarks/fidelity.py --kind single --ref /tmp/ref_catalys --ref-python /tmp/refvenv_catalys/bin/python \
        --work /tmp/fid/work --out docs/fidelity
    python benchmarks/fidelity.py --kind fractaldb --ref /tmp/ref_fdb ... --option official_draw=true --tag official
    python benchmarks/fidelity.py --kind search --ref /tmp/ref_fdb ...       # FractalDB category search only
    python benchmarks/fidelity.py --kind report --out docs/fidelity          # markdown tables of the JSONs

Steps (--steps, default render,stats,test): render skips an existing .npz in --work. Heavy loops are
single-threaded (torch.set_num_threads(1)); run under `nice -n 10` on a shared machine. See docs/fidelity.md.
"""

import json
import os
import subprocess
import sys

import numpy as np

from common.errors import ArgumentParser, UserError, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("single", "multi", "fractaldb", "background", "search", "report")
FDB_CLASSES = 10  # reference FractalDB classes rendered (its renderer is ~0.1 ms per point)


# ---------------------------------------------------------------- rendering

def render_reference(kind, args, path):
    """Run fidelity_ref.py in the reference venv; returns the loaded .npz as a dict."""
    cmd = [args.ref_python, os.path.join(HERE, "fidelity_ref.py"), kind, args.ref, path, "--n", str(args.n),
           "--size", str(args.size), "--points", str(args.points), "--seed", str(args.seed)]
    if kind == "fractaldb":
        cmd += ["--classes", str(FDB_CLASSES), "--weights", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise UserError(f"the reference run failed: {' '.join(cmd)}")


def fractaldb_reference_systems(ref):
    """The first FDB_CLASSES published FractalDB-1k class systems (a, b, c, d, e, f)."""
    root = os.path.join(ref, "data", "csv_rate0.2_category1000")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".csv"))
    if not files:
        raise UserError(f"{root} has no class files; --ref must be the FractalDB-Pretrained-ResNet-PyTorch checkout")
    return [np.loadtxt(f, delimiter=",")[:, :6] for f in files]


def ours_spec(kind, args):
    """fractalgen's spec at the reference run's settings; --reference-systems: with the reference run's
    sampled systems instead of fractalgen's (to separate the system sampling from the rendering)."""
    from fractalgen.kinds import DatasetSpec

    options = {"size": args.size, "points": args.points, "seed": args.seed, **args.options}
    if kind in ("single", "multi"):  # single: one fresh system per image, as the reference run
        spec = DatasetSpec.create(kind, args.n, args.n if kind == "single" else 1000, **options)
        if args.reference_systems:
            systems = load(os.path.join(args.work, f"{kind}_ref.npz"))["systems"]
            spec = DatasetSpec(spec.options, [np.asarray(s, np.float64) for s in systems][: spec.num_classes])
        return spec
    systems = fractaldb_reference_systems(args.ref)[:FDB_CLASSES]  # the same class systems on both sides
    return DatasetSpec.create("fractaldb", args.n, FDB_CLASSES, systems=systems, **options)


def fractal_mask(spec, meta):
    """Pixels the fractal(s) of a fractalgen sample cover (before blur), re-drawn from its json."""
    from fractalgen import kernels
    from fractalgen.systems import thresholds

    size = spec.size
    if spec.kind == "single":
        p = np.asarray(meta["params"])
        f = meta["flip"]
        ok, counts = kernels.render_counts(p, thresholds(p), spec.options["points"], meta["chaos_seed"], size, size,
                                           *meta["window"], *meta["shift"], f["horizontal"], f["vertical"],
                                           f["transpose"], np.asarray(meta["patch"], np.uint8).reshape(3, 3))
        return counts > 0
    mask = np.zeros((size, size), bool)
    for inst in meta["instances"]:
        left, top, right, _ = inst["paste_box"]
        side, c, f = right - left, inst["class"], inst["flip"]
        drawn = max(4, size // 2) if spec.options.get("reference_resize") else side
        ok, counts = kernels.render_counts(spec.systems[c], spec._thresholds[c], inst["points"], inst["chaos_seed"],
                                           drawn, drawn, 1.0, 1.0, 0.0, 0.0, f["horizontal"], f["vertical"],
                                           f["transpose"], np.asarray(inst["patch"], np.uint8).reshape(3, 3))
        if drawn != side:  # drawn at half size, then resized (fractalgen's reference_resize)
            proxy = np.repeat(np.where(counts > 0, np.uint8(255), np.uint8(0))[..., None], 3, 2)
            counts = kernels.resize_bilinear(proxy, side)[..., 0]
        ys, xs = np.nonzero(counts > 0)
        ys, xs = ys + top, xs + left
        keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        mask[ys[keep], xs[keep]] = True
    return mask


def render_backgrounds(args, path):
    """fractalgen's single-kind backgrounds alone (kinds._background with the run's options)."""
    from tqdm import tqdm

    from fractalgen.kinds import DatasetSpec, _background
    from fractalgen.rng import generator

    o = DatasetSpec.create("single", args.n, 1, size=args.size, seed=args.seed, **args.options).options
    images = np.stack([_background(o, generator(args.seed, "fidelity-background", i), args.size)[0]
                       for i in tqdm(range(args.n), desc="fractalgen background", file=sys.stderr)])
    np.savez(path, images=images, masks=np.zeros(images.shape[:3], bool), systems=np.empty(0, object))


def render_ours(kind, args, path):
    from tqdm import tqdm

    from fractalgen.kinds import render_sample

    if kind == "background":
        return render_backgrounds(args, path)
    spec = ours_spec(kind, args)
    images, masks, counts, sizes = [], [], [], []
    for i in tqdm(range(args.n), desc=f"fractalgen {kind}", file=sys.stderr):
        s = render_sample(spec, i)
        image = s.image if s.image.ndim == 3 else s.image[..., None]
        images.append(image)
        masks.append(image.any(-1) if kind == "fractaldb" else fractal_mask(spec, s.meta))
        if kind == "multi":
            counts.append(len(s.meta["instances"]))
            sizes += [(b["paste_box"][2] - b["paste_box"][0]) / spec.size for b in s.meta["instances"]]
    systems = np.empty(len(spec.systems), object)
    systems[:] = list(spec.systems)
    extra = {"instance_counts": np.array(counts), "instance_sizes": np.array(sizes)} if kind == "multi" else {}
    np.savez(path, images=np.stack(images), masks=np.stack(masks), systems=systems, **extra)


def load(path):
    with np.load(path, allow_pickle=True) as d:
        return {k: d[k] for k in d.files}


# ---------------------------------------------------------------- statistics

def sigma_factors(systems):
    """sum over maps of (s1 + 2 s2) for each system, the same function for both sides."""
    from fractalgen.systems import sigma_factor

    return np.array([sigma_factor(np.asarray(s, np.float64)) for s in systems])


def rgb_to_hsv(rgb):
    """(..., 3) uint8 RGB -> (..., 3) float HSV in [0, 1] (hue as a fraction of the full circle)."""
    from matplotlib.colors import rgb_to_hsv as hsv

    return hsv(rgb.astype(np.float64) / 255.0)


def hue_steps(images, masks, limit=400):
    """Hue change between horizontally adjacent fractal pixels (fraction of the circle, 0-0.5), over the
    first `limit` images: how speckled the colouring is."""
    hue = rgb_to_hsv(images[:limit])[..., 0]
    both = masks[:limit, :, 1:] & masks[:limit, :, :-1]
    d = np.abs(hue[:, :, 1:] - hue[:, :, :-1])
    return np.minimum(d, 1.0 - d)[both]


def histogram(values, bins, lo, hi):
    """Normalised histogram (sums to 1; zeros when there are no values)."""
    h, _ = np.histogram(values, bins=bins, range=(lo, hi))
    return (h / max(h.sum(), 1)).tolist()


def summary(x):
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return {"n": 0}
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "q05": q[0], "q25": q[1],
            "median": q[2], "q75": q[3], "q95": q[4]}


def side_stats(data):
    """Statistics of one generator's images, masks (fractal pixels) and systems."""
    images, masks = data["images"], data["masks"].astype(bool)
    gray = images.mean(-1)
    fg = images[masks]
    bg = images[~masks]
    out = {"images": int(len(images)), "size": int(images.shape[1]), "channels": int(images.shape[-1]),
           "sigma_factor": summary(sigma_factors(data["systems"])),
           "maps": np.bincount(np.array([len(s) for s in data["systems"]], int), minlength=9).tolist(),
           "coverage": summary(masks.reshape(len(masks), -1).mean(1)),
           "fg_intensity_hist": histogram(gray[masks], 32, 0, 256),
           "fg_intensity": summary(gray[masks]),
           "bg_mean": summary([g[~m].mean() for g, m in zip(gray, masks) if (~m).any()]),
           "bg_std": summary([g[~m].std() for g, m in zip(gray, masks) if (~m).any()])}
    if images.shape[-1] == 3:
        out["fg_hue_step"] = summary(hue_steps(images, masks))
        for name, px in (("fg", fg), ("bg", bg)):
            hsv = rgb_to_hsv(px)
            out[f"{name}_hue_hist"] = histogram(hsv[:, 0], 36, 0, 1)
            out[f"{name}_sat_hist"] = histogram(hsv[:, 1], 20, 0, 1)
            out[f"{name}_val_hist"] = histogram(hsv[:, 2], 20, 0, 1)
    if "instance_counts" in data:
        out["instance_counts"] = np.bincount(data["instance_counts"], minlength=6).tolist()
        out["instance_sizes"] = summary(data["instance_sizes"])
    return out


def total_variation(p, q):
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def compare(ours, ref):
    """Both sides' statistics and the total variation distance of every histogram."""
    tv = {k: total_variation(ours[k], ref[k]) for k in ours if k.endswith("_hist") and k in ref}
    return {"ours": ours, "reference": ref, "total_variation": tv}


# ---------------------------------------------------------------- two-sample CNN

def to_tensor(images, size=64):
    """uint8 (n, S, S, C) -> float (n, C, size, size) in [-0.5, 0.5] (area-averaged when S > size)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
    if x.shape[-1] != size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    return x


def small_cnn(channels):
    from torch import nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    # the first layer's stride-2 3x3 windows still see every pixel; ~3.5 M multiply-adds per 64 px image
    return nn.Sequential(*block(channels, 16, 2), *block(16, 32, 2), *block(32, 64, 2), *block(64, 64, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def two_sample_auc(a, b, test_frac=0.2, epochs=6, batch=64, seed=0, size=64, progress=True):
    """Train a small CNN to tell images `a` (label 0) from `b` (label 1) on a random (1 - test_frac)
    of each and return (held-out ROC AUC, train AUC) at the last epoch."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine; put back after, so a caller's own runs keep their threads
    try:
        return _train_two_sample(a, b, test_frac, epochs, batch, seed, size, progress)
    finally:
        torch.set_num_threads(threads)


def _train_two_sample(a, b, test_frac, epochs, batch, seed, size, progress):
    import torch
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if a.shape[1:] != b.shape[1:]:
        raise UserError(f"the two samples differ in shape: {a.shape[1:]} vs {b.shape[1:]}")
    x = to_tensor(np.concatenate([a, b]), size)
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    test = np.concatenate([rng.permutation(len(a))[: int(len(a) * test_frac)],
                           len(a) + rng.permutation(len(b))[: int(len(b) * test_frac)]])
    train = np.setdiff1d(np.arange(len(x)), test)
    net = small_cnn(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in tqdm(range(epochs), desc="two-sample CNN", disable=not progress, file=sys.stderr):
        net.train()
        for idx in np.array_split(rng.permutation(train), max(1, len(train) // batch)):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def auc(idx):
        net.eval()
        with torch.no_grad():
            scores = torch.cat([net(x[i]).squeeze(1) for i in np.array_split(idx, max(1, len(idx) // 256))])
        return float(roc_auc_score(y[idx].numpy(), scores.numpy()))

    return auc(test), auc(train)


# ---------------------------------------------------------------- pictures

def plot_stats(result, path, title):
    from common.plots import plt, save

    ours, ref = result["ours"], result["reference"]
    panels = [k for k in ("fg_intensity_hist", "fg_hue_hist", "fg_sat_hist", "fg_val_hist", "bg_hue_hist",
                          "bg_val_hist") if k in ours]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    axes = axes.ravel()
    for ax, key in zip(axes, panels):
        for side, st, c in (("fractalgen", ours, "C0"), ("reference", ref, "C1")):
            h = np.asarray(st[key])
            ax.step(np.arange(len(h)) / len(h), h, where="post", color=c, label=side)
        ax.set_title(f"{key} (TV {result['total_variation'][key]:.2f})", fontsize=9)
    extra = axes[len(panels):]
    bars = [("coverage", "pixels covered"), ("sigma_factor", "sigma factor"), ("bg_mean", "background mean")]
    if "instance_sizes" in ours:
        bars.insert(0, ("instance_sizes", "instance size / side"))
    for ax, (key, label) in zip(extra, bars):
        for i, (st, c) in enumerate(((ours, "C0"), (ref, "C1"))):
            s = st[key]
            if s.get("n"):
                ax.boxplot([[s["q05"], s["q25"], s["median"], s["q75"], s["q95"]]], positions=[i], widths=0.5,
                           whis=(0, 100), patch_artist=True, boxprops={"facecolor": c})
        ax.set_xticks([0, 1], ["fractalgen", "reference"])
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def contact_sheet(ours, ref, path, title, rows=4, cols=8):
    from common.plots import plt, save

    fig, axes = plt.subplots(1, 2, figsize=(16, 4.6))
    for ax, images, name in ((axes[0], ours, "fractalgen"), (axes[1], ref, "reference")):
        s = images.shape[1]
        sheet = np.full((rows * (s + 2), cols * (s + 2), 3), 255, np.uint8)
        for k in range(min(rows * cols, len(images))):
            im = images[k] if images.shape[-1] == 3 else np.repeat(images[k], 3, -1)
            r, c = divmod(k, cols)
            sheet[r * (s + 2):r * (s + 2) + s, c * (s + 2):c * (s + 2) + s] = im
        ax.imshow(sheet, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


# ---------------------------------------------------------------- FractalDB category search

def reference_candidates(n, seed=1):
    """The first n candidates of Kataoka et al.'s seeded search (param_search/ifs_search.py, seed 1) as
    (a, b, c, d, e, f) arrays: 2-7 maps, 6 parameters U(-1, 1) each; each candidate's render then draws
    100,000 numbers from the same np.random stream, which is advanced here without rendering."""
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        m = rs.randint(2, 8)
        out.append(np.array([rs.uniform(-1.0, 1.0, 6) for _ in range(m)]))
        rs.random_sample(100_000)
    return out


def search_stats(args):
    """Acceptance rate and filling-rate distributions of the two FractalDB searches, every candidate
    measured the same way (fractalgen's filling rate: 512 px, 100k points)."""
    from tqdm import tqdm

    from fractalgen.search import search
    from fractalgen.systems import filling_rate, fractaldb_candidate

    n = args.search_candidates
    ref_systems = reference_candidates(n)
    ref_rates = np.array([filling_rate(s, 512, 100_000, 1) for s in tqdm(ref_systems, desc="reference candidates",
                                                                         file=sys.stderr)])
    ours_rates = np.array([fractaldb_candidate(args.seed, k, 512, 100_000)[1]
                           for k in tqdm(range(n), desc="fractalgen candidates", file=sys.stderr)])
    published = fractaldb_reference_systems(args.ref)
    # which candidates the original search accepted (with its own renderer): those among the published files
    key = lambda a: tuple(np.round(np.asarray(a).ravel(), 12))  # noqa: E731
    published_keys = {key(p) for p in published}
    theirs = np.array([key(c) in published_keys for c in ref_systems])
    ours_measure = ref_rates >= 0.2
    ours_systems, info = search(args.search_classes, seed=args.seed, progress=False)
    ours_fill = [filling_rate(s, 512, 100_000, 1) for s in ours_systems]
    pub_fill = [filling_rate(s, 512, 100_000, 1) for s in published[: args.search_classes]]

    def side(rates, systems, fill):
        return {"candidates": len(rates), "acceptance": float((rates >= 0.2).mean()), "candidate_fill": summary(rates),
                "candidate_fill_hist": histogram(rates, 25, 0, 0.5), "accepted_sigma_factor": summary(sigma_factors(systems)),
                "accepted_maps": np.bincount([len(s) for s in systems], minlength=9).tolist(),
                "accepted_fill": summary(fill), "accepted_fill_hist": histogram(fill, 20, 0.2, 0.6)}

    return {"reference": {**side(ref_rates, published[: args.search_classes], pub_fill),
                          "acceptance_original_renderer": float(theirs.mean()),
                          "accepted_by_both": int((theirs & ours_measure).sum()),
                          "accepted_only_by_original": int((theirs & ~ours_measure).sum()),
                          "accepted_only_by_fractalgen_measure": int((~theirs & ours_measure).sum())},
            "ours": {**side(ours_rates, ours_systems, ours_fill),
                     "search_acceptance": args.search_classes / info["search"]["candidates_tried"]}}


def plot_search(result, path):
    from common.plots import plt, save

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, (("candidate_fill_hist", "filling rate, all candidates (0-0.5)"),
                                       ("accepted_fill_hist", "filling rate, accepted classes (0.2-0.6)"),
                                       ("accepted_maps", "maps per accepted class"))):
        for side, c, name in (("ours", "C0", "fractalgen"), ("reference", "C1", "reference (published)")):
            h = np.asarray(result[side][key], float)
            h = h / max(h.sum(), 1)
            ax.step(np.arange(len(h)), h, where="mid", color=c, label=name)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    save(fig, path)


# ---------------------------------------------------------------- report

def _fmt(st, key, field="mean", scale=1.0, digits=3):
    v = st.get(key, {}).get(field)
    return "-" if v is None else f"{v * scale:.{digits}f}"


def _tv(tv, key, side):
    return "" if side == "reference" else ("-" if key not in tv else f"{tv[key]:.2f}")


def report(out):
    """Markdown tables of every {kind}[_{tag}].json in `out` (the numbers docs/fidelity.md quotes)."""
    if not os.path.isdir(out):
        raise UserError(f"--out {out} is not a folder of fidelity results; run a kind into it first")
    rows = ["| run | held-out AUC (train) | sigma factor mean | pixels covered mean | fg intensity mean | "
            "bg mean / std | fg hue step median | TV fg hue | TV bg value |", "|" + "---|" * 9]
    for name in sorted(f[:-5] for f in os.listdir(out) if f.endswith(".json") and f != "search.json"):
        r = json.load(open(os.path.join(out, name + ".json")))
        if "ours" not in r:
            continue
        ts = r.get("two_sample", {})
        auc = f"{ts['test_auc']:.3f} ({ts['train_auc']:.3f})" if ts else "-"
        tv = r["total_variation"]
        for side in ("ours", "reference"):
            st = r[side]
            label = f"{name} {'fractalgen' if side == 'ours' else 'reference'}"
            rows.append(f"| {label} | {auc if side == 'ours' else ''} | {_fmt(st, 'sigma_factor', digits=2)} | "
                        f"{_fmt(st, 'coverage')} | {_fmt(st, 'fg_intensity', digits=1)} | "
                        f"{_fmt(st, 'bg_mean', digits=1)} / {_fmt(st, 'bg_std', digits=1)} | "
                        f"{_fmt(st, 'fg_hue_step', 'median')} | "
                        f"{_tv(tv, 'fg_hue_hist', side)} | {_tv(tv, 'bg_val_hist', side)} |")
        if "instance_counts" in r["ours"]:
            for side in ("ours", "reference"):
                c = np.asarray(r[side]["instance_counts"][1:6], float)
                rows.append(f"| {name} {side} instances 1-5 | {' / '.join(f'{x / c.sum():.2f}' for x in c)} | size "
                            f"{_fmt(r[side], 'instance_sizes', 'median', digits=2)} (median) |||||||")
    print("\n".join(rows))


# ---------------------------------------------------------------- main

def parse_options(pairs):
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--option {pair!r} should be key=value")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def run(args):
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    if args.kind == "search":
        result = search_stats(args)
        with open(os.path.join(args.out, "search.json"), "w") as f:
            json.dump(result, f, indent=1)
        plot_search(result, os.path.join(args.out, "search.png"))
        print(json.dumps({k: {kk: v[kk] for kk in v if "acceptance" in kk or kk.startswith("accepted_")
                                if not kk.endswith(("_hist", "_fill", "_factor", "_maps"))} for k, v in result.items()}))
        return
    tag = f"_{args.tag}" if args.tag else ""
    ref_path = os.path.join(args.work, f"{args.kind}_ref.npz")
    ours_path = os.path.join(args.work, f"{args.kind}_ours{tag}.npz")
    steps = set(args.steps.split(","))
    if "render" in steps:
        if not os.path.exists(ref_path):
            render_reference(args.kind, args, ref_path)
        if not os.path.exists(ours_path):
            render_ours(args.kind, args, ours_path)
    for p in (ref_path, ours_path):
        if not os.path.exists(p):
            raise UserError(f"{p} does not exist; run with --steps render first")
    ours, ref = load(ours_path), load(ref_path)
    json_path = os.path.join(args.out, f"{args.kind}{tag}.json")
    result = json.load(open(json_path)) if os.path.exists(json_path) else {}
    result.update({"kind": args.kind, "tag": args.tag, "n": args.n, "size": args.size, "points": args.points,
                   "options": args.options})
    if "stats" in steps:
        result.update(compare(side_stats(ours), side_stats(ref)))
        plot_stats(result, os.path.join(args.out, f"{args.kind}{tag}_stats.png"), f"{args.kind}{tag}: fractalgen vs reference")
        contact_sheet(ours["images"], ref["images"], os.path.join(args.out, f"{args.kind}{tag}_sheet.png"),
                      f"{args.kind}{tag}: first 32 images, {args.size} px")
    if "test" in steps:
        test_auc, train_auc = two_sample_auc(ours["images"], ref["images"], epochs=args.epochs, seed=args.seed)
        result["two_sample"] = {"test_auc": test_auc, "train_auc": train_auc, "epochs": args.epochs,
                                "train_images": int(0.8 * len(ours["images"])) * 2, "cnn_input": 64}
        print(f"{args.kind}{tag}: held-out AUC {test_auc:.3f} (train {train_auc:.3f})")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=float)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--ref", default="", help="reference checkout (fractal-pretraining, or FractalDB's for fractaldb/search)")
    p.add_argument("--ref-python", default="/tmp/refvenv_catalys/bin/python", help="python of the reference venv")
    p.add_argument("--work", default="", help="folder for the rendered .npz arrays")
    p.add_argument("--out", default="docs/fidelity", help="folder for the JSON and pictures")
    p.add_argument("--n", type=int, default=5000, help="images per side")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", help="fractalgen render option key=value (repeatable)")
    p.add_argument("--tag", default="", help="name of this fractalgen variant (file suffix)")
    p.add_argument("--steps", default="render,stats,test")
    p.add_argument("--reference-systems", action="store_true",
                   help="single/multi: fractalgen renders the reference run's systems (render it first)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--search-candidates", type=int, default=3000, help="candidates per side (search)")
    p.add_argument("--search-classes", type=int, default=100)
    args = p.parse_args(argv)
    if args.kind == "report":
        return report(args.out)
    args.options = parse_options(args.option)
    if args.n < 10 or args.size < 16:
        raise UserError("--n must be >= 10 and --size >= 16")
    if not os.path.isdir(args.ref):
        raise UserError(f"--ref {args.ref!r} is not a folder (the reference checkout)")
    if not args.work:
        raise UserError("--work FOLDER is needed (where the rendered arrays go)")
    unknown = set(args.steps.split(",")) - {"render", "stats", "test"}
    if unknown:
        raise UserError(f"--steps: unknown {', '.join(sorted(unknown))}; use render,stats,test")
    run(args)


if __name__ == "__main__":
    run_main(main)  # bad input, here or in fractalgen: one `error:` line, exit 2
