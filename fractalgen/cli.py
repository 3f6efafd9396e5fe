"""The `fractalgen` command: render, search, info, preview."""

import argparse
import json
import os
import sys

from . import __version__
from .card import check_shard, load_card
from .errors import UserError
from .kinds import KIND_TABLE, KINDS, DatasetSpec, render_sample, resolve_options, takes_systems_file
from .preview import caption, contact_sheet, samples_from_shards, save_sheet
from .search import SEARCH_DEFAULTS, search, search_to_file
from .systems import load_systems
from .writer import FORMATS, parse_part, render_dataset


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _spec_args(p, n_required: bool):
    p.add_argument("--kind", required=n_required, choices=KINDS)
    p.add_argument("--n", type=int, required=n_required, default=None if n_required else 32,
                   help="number of samples")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default 1000, or fewer for small n)")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default 256; rcdb / visualatom / 1p-frac 512 and ofdb 362 as "
                        "published; FractalDB's own is 362)")
    p.add_argument("--points", type=int, default=None,
                   help="chaos-game points per fractal (default 100000; ofdb 200000 as published)")
    p.add_argument("--seed", type=int, default=None, help="dataset seed (default 0)")
    p.add_argument("--color", action="store_true", default=None, help="fractaldb: colour (fractalgen's drawing) instead of the official gray on black")
    p.add_argument("--systems", help="class systems file (`fractalgen search`'s JSON): fractaldb / ofdb default to a "
                   "search now; single / multi draw their classes from it instead of from the seed")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any other render option, e.g. blur_p=0 or objects=[1,3] (see dataset.json options)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fractalgen", description="Render formula-driven fractal datasets as webdataset shards.")
    parser.add_argument("--version", action="version", version=f"fractalgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("render", help="render a dataset into webdataset shards plus dataset.json")
    _spec_args(p, n_required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="image encoding; default png (lossless, fast encoder); webp is lossless, jpg lossy")
    p.add_argument("--part", default="0/1", help="render only the i-th of k disjoint parts of the shard list (i/k)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder rendered with other options")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("search", help="FractalDB class search: save systems whose filling rate passes the threshold")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=SEARCH_DEFAULTS["size"])
    p.add_argument("--points", type=int, default=SEARCH_DEFAULTS["points"])
    p.add_argument("--threshold", type=float, default=SEARCH_DEFAULTS["threshold"], help="minimum filling rate")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", required=True, help="systems file to write (JSON)")

    p = sub.add_parser("info", help="print a dataset card; --verify checks every shard")
    p.add_argument("dir")
    p.add_argument("--verify", action="store_true", help="re-hash and read every shard")

    p = sub.add_parser("preview", help="contact sheet of samples with their class ids")
    _spec_args(p, n_required=False)
    p.add_argument("--from", dest="from_dir", help="show the first samples of a rendered folder instead")
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--out", required=True, help="PNG to write")
    return parser


def spec_from_args(args) -> DatasetSpec:
    classes = args.classes if args.classes is not None else min(1000, args.n)
    overrides = dict(args.option)  # --option key=value first; the named flags win when given
    for key in ("size", "points", "seed", "color"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    kind = KIND_TABLE[args.kind]
    with_color = [name for name, k in KIND_TABLE.items() if "color" in k.defaults]
    if args.systems and not takes_systems_file(args.kind):
        takers = [name for name in KIND_TABLE if takes_systems_file(name)]
        raise UserError(f"--systems applies to --kind {' / '.join(takers)} only "
                        f"({args.kind} class parameters come from the seed)")
    if overrides.get("color") and "color" not in kind.defaults:
        raise UserError(f"--color applies to --kind {' / '.join(with_color)} only ({args.kind} sets its own colours)")
    resolve_options(args.kind, args.n, classes, overrides)  # bad options fail now, not after a long search
    systems = info = None
    if args.systems:
        systems, info = load_systems(args.systems)
    elif kind.searched and classes > 0 and args.n > 0:
        systems, info = search(classes, seed=overrides.get("seed", 0), workers=args.workers)
    return DatasetSpec.create(args.kind, args.n, classes, systems=systems, systems_info=info, **overrides)


def cmd_render(args) -> int:
    if args.n is not None and args.n <= 0:
        raise UserError(f"--n must be a positive number of samples, got {args.n}")
    part = parse_part(args.part)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    _check_writable(args.out)
    spec = spec_from_args(args)
    card = render_dataset(spec, args.out, shard_size=args.shard_size, workers=args.workers,
                          image_format=args.format, part=part, overwrite=args.overwrite,
                          progress=not args.no_progress)
    if card is None:
        print(f"part {args.part} complete; dataset.json is written when every part has finished")
    else:
        print(f"{args.out}: {card['n']} {card['kind']} samples, {card['num_classes']} classes, "
              f"{len(card['shards'])} shards ({card['image_ext']})")
    return 0


def _check_writable(out: str) -> None:
    parent = out
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    parent = parent or "."
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write to {out}: {parent} is not a writable folder; choose another --out")


def cmd_search(args) -> int:
    _check_writable(os.path.dirname(os.path.abspath(args.out)))
    search_to_file(args.out, args.classes, seed=args.seed, size=args.size, points=args.points,
                   threshold=args.threshold, workers=args.workers)
    print(f"{args.out}: {args.classes} FractalDB class systems")
    return 0


def cmd_info(args) -> int:
    card = load_card(args.dir)
    summary = {k: v for k, v in card.items() if k != "shards"}
    summary["shards"] = f"{len(card['shards'])} shards, {sum(s['count'] for s in card['shards'])} samples"
    print(json.dumps(summary, indent=1, sort_keys=True))
    if not args.verify:
        return 0
    expected = 0
    for entry in card["shards"]:
        problem = None if entry["first_index"] == expected else f"starts at index {entry['first_index']}, expected {expected}"
        problem = problem or check_shard(args.dir, card, entry, deep=True)
        if problem:
            print(f"error: bad shard {entry['name']}: {problem}", file=sys.stderr)
            return 1
        expected += entry["count"]
    if expected != card["n"]:
        print(f"error: shards hold {expected} samples, the card says n={card['n']}", file=sys.stderr)
        return 1
    print(f"verified: {len(card['shards'])} shards, {expected} samples, all sha256 and fields match")
    return 0


def cmd_preview(args) -> int:
    if args.from_dir:
        card = load_card(args.from_dir)
        pairs = samples_from_shards(args.from_dir, card, args.n)
        images, captions = [p[0] for p in pairs], [caption(p[1]) for p in pairs]
    else:
        if args.kind is None:
            raise UserError("preview needs --kind (or --from DIR to show a rendered folder)")
        if args.n <= 0:
            raise UserError(f"--n must be positive, got {args.n}")
        if args.classes is None:
            args.classes = min(args.n, 10)
        spec = spec_from_args(args)
        samples = [render_sample(spec, i) for i in range(args.n)]
        images, captions = [s.image for s in samples], [caption(s.meta) for s in samples]
    _check_writable(os.path.dirname(os.path.abspath(args.out)))
    save_sheet(contact_sheet(images, captions, columns=args.columns), args.out)
    print(f"{args.out}: {len(images)} samples")
    return 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"render": cmd_render, "search": cmd_search, "info": cmd_info, "preview": cmd_preview}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
