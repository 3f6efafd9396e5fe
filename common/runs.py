"""Run folders, shared by both stages: one folder holds one run of one config.

A new run needs an unused folder; continuing one needs --resume and the same config (the folder
itself may have moved: run_dir is not compared). A finished run (final.json present) is never
trained again nor touched: --resume on it says so and exits 0. Nothing here deletes anything.

The check runs on every rank (they read the same files, so they agree): an error then stops every
process at once instead of leaving the others waiting in a collective.
"""

import os

import yaml

from .config import dump
from .errors import UserError

FRESH, RESUME, FINISHED = "fresh", "resume", "finished"
RESULTS = ("final.json", "metrics.jsonl", "model.safetensors", "checkpoints")  # what a run leaves behind


def add_resume_arguments(parser) -> None:
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest readable checkpoint (same config)")
    parser.add_argument("--resume-from", metavar="CHECKPOINT",
                        help="continue from this checkpoint folder (checkpoints/step_N) of the run in --out")


def start(cfg: dict, args, make_accelerator):
    """What every training entry point does first: --print-config, the accelerator, the run-folder
    check (every rank). Returns (accelerator, status), or None when there is nothing to train."""
    if args.print_config:
        print(dump(cfg), end="")
        return None
    accelerator = make_accelerator(cfg)
    status = prepare(cfg, args.resume or bool(args.resume_from), accelerator)
    if status == FINISHED:
        accelerator.print(f"{cfg['run_dir']} is a finished run (final.json); nothing to do")
        return None
    if args.resume_from and status == FRESH:
        raise UserError(f"--resume-from {args.resume_from}: {cfg['run_dir']} holds no run to continue")
    return accelerator, status


def prepare(cfg: dict, resume: bool, accelerator) -> str:
    """Check cfg["run_dir"] for this run (every rank): FRESH, RESUME or FINISHED. Normalises the
    folder name (a trailing slash is the same folder) and creates nothing."""
    run_dir = cfg["run_dir"] = os.path.normpath(cfg["run_dir"])
    status = _status(cfg, run_dir, resume)
    if resume and status == FRESH:
        accelerator.print(f"nothing to resume in {run_dir}: starting the run")
    accelerator.wait_for_everyone()  # every rank has read the folder before rank 0 writes into it
    return status


def _status(cfg: dict, run_dir: str, resume: bool) -> str:
    check_out_folder(run_dir)
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved):
        leftovers = [n for n in RESULTS if os.path.exists(os.path.join(run_dir, n))]
        if leftovers:
            raise UserError(f"{run_dir} holds {leftovers[0]} but no config.yaml (not a run of this tool, or a "
                            f"damaged one); choose another --out")
        return FRESH
    if not resume:
        raise UserError(f"{run_dir} already holds a run; add --resume to continue it, or choose another --out")
    try:
        with open(saved) as f:
            old = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {saved}: {str(e).splitlines()[0]}") from None
    differ = config_differences(old, cfg)
    if differ:
        raise UserError(f"--resume with a different config than {saved} (differs in: {', '.join(differ)}); "
                        f"resume with the same settings or choose another --out")
    return FINISHED if os.path.exists(os.path.join(run_dir, "final.json")) else RESUME


def config_differences(old, new: dict) -> list[str]:
    """Dotted keys whose values differ, run_dir aside (a moved folder is the same run)."""
    new = yaml.safe_load(dump(new))  # the form config.yaml has (tuples are lists, and so on)
    if not isinstance(old, dict):
        return ["<the whole file>"]
    return _differ({k: v for k, v in old.items() if k != "run_dir"}, {k: v for k, v in new.items() if k != "run_dir"})


def _differ(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differ(x, y, f"{prefix}{key}.")
        elif x != y or (key in a) != (key in b):
            out.append(f"{prefix}{key}")
    return out


def check_out_folder(run_dir: str) -> None:
    """--out of any entry point: a clear error now rather than a traceback when the first file is
    written (a file in the way, a folder that cannot be created or written)."""
    if os.path.exists(run_dir):
        if not os.path.isdir(run_dir):
            raise UserError(f"--out {run_dir} is a file, not a folder; choose another --out")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(f"--out {run_dir} is not writable; choose another --out")
        return
    parent = os.path.dirname(os.path.abspath(run_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--out {run_dir} cannot be created: {parent} is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {run_dir} cannot be created in {parent} (not writable); choose another --out")
