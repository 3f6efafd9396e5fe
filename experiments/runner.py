"""Run an experiment: a matrix of pretraining sources x models x downstream datasets x regimes x
seeds, declared in one file, as ordinary fractalgen / pretrain / finetune / report commands.

    python -m experiments configs/experiments/<name>.yaml --out DIR [--data NAME=PATH ...] [--smoke]
        [--dry-run] [--jobs N] [--emit slurm DIR] [--quick] [--holdout F] [key=value ...]

Every command is written to DIR/commands.sh as it starts; a step whose output is complete is
skipped, so re-running the same command resumes; a folder left by another config is refused.
--dry-run prints the commands (and the images each processes) and runs nothing. --emit slurm DIR
writes one sbatch script per step and DIR/submit.sh, which chains them with afterok dependencies.
--smoke runs every step at a tiny scale on the CPU, on fabricated data for each dataset not given.
"""

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time

from common.config import load_config
from common.errors import ArgumentParser, UserError
from experiments import fabricate, smoke
from experiments.launch import emit_slurm, local_command
from experiments.plan import Plan
from experiments.schema import dataset_names, load_experiment
from experiments.study import Study, call, claim_folder


def parse_args(argv=None):
    ap = ArgumentParser(description="Run an experiment (render -> pretrain -> fine-tune -> report) from one file")
    ap.add_argument("experiment", help="an experiment file, e.g. configs/experiments/fdsl_paper.yaml")
    ap.add_argument("--out", required=True, help="the experiment folder")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                    help="where a dataset the file names lives (e.g. cifar10=../cifar10, imagenet=/data/ILSVRC2012); "
                         "a bare PATH when the file needs exactly one")
    ap.add_argument("--smoke", action="store_true",
                    help="every step at a tiny scale on the CPU (fabricated data for each dataset not given)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and images per step; run nothing")
    ap.add_argument("--jobs", type=int, default=None,
                    help="steps run side by side, sharing the cores (default: the file's jobs)")
    ap.add_argument("--emit", nargs=2, metavar=("slurm", "DIR"),
                    help="write one sbatch script per step and DIR/submit.sh instead of running")
    ap.add_argument("--quick", action="store_true", help="the file's quick: variant (a short smoke-check)")
    ap.add_argument("--holdout", type=float, default=None,
                    help="evaluate every fine-tuning run on this fraction of the training images, held out "
                         "(to tune without the test split)")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="changes to the experiment file, e.g. render.common.classes=100")
    args = ap.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be 1 or more, got {args.jobs}")
    if args.emit and args.emit[0] != "slurm":
        raise UserError(f"--emit knows only slurm, got {args.emit[0]!r}")
    return args


def needed_data(exp: dict) -> dict:
    """name -> format of every dataset the experiment reads from outside (downstream datasets and
    pretraining data that is not rendered)."""
    ft = exp["finetune"]
    configs = ft["datasets"] or {"data": ft["config"]}
    needed = {name: load_config(configs[name])["data"]["format"] for name in dataset_names(exp)}
    rendered = set((exp["render"] or {}).get("kinds") or {})
    for name in systems_sources(exp):
        needed.setdefault(name, "systems")  # a class folder that holds systems.json stays one
    for job in exp["pretrain"]:
        for kind in job["kinds"]:
            if kind not in rendered:
                needed[kind] = load_config(job["config"].replace("{kind}", kind))["data"]["source"]
    return needed


def systems_sources(exp: dict) -> set[str]:
    """The datasets render entries draw their class systems from (their `systems`)."""
    render = exp["render"] or {}
    entries = [render.get("common") or {}, *(render.get("kinds") or {}).values()]
    return {opts["systems"] for opts in entries if opts.get("systems")}


def resolve_data(given: list[str], needed: dict) -> dict:
    data = {}
    for text in given:
        name, sep, path = text.partition("=")
        if not sep or name not in needed:  # a bare path: the one dataset the file needs
            if len(needed) != 1:
                raise UserError(f"--data {text}: say which dataset, as NAME=PATH with NAME one of "
                                f"{', '.join(needed)}")
            name, path = next(iter(needed)), text
        if not os.path.exists(path):
            raise UserError(f"--data {text}: {path} does not exist; pass the folder of the {name} dataset")
        data[name] = path
    return data


def smoke_data(needed: dict, data: dict, out: str, systems: set = frozenset()) -> dict:
    """Fabricated data (real formats, random pixels) for every needed dataset not given; those in
    `systems` also hold a systems.json (fractalgen's own sigma-factor systems)."""
    data = dict(data)
    for name, fmt in needed.items():
        if name in data:
            continue
        if fmt not in fabricate.BY_FORMAT:
            raise UserError(f"--smoke cannot fabricate a {fmt} dataset ({name}); pass --data {name}=PATH")
        path = os.path.join(out, "smoke-data", name)
        if not os.path.exists(os.path.join(path, ".complete")):
            fabricate.BY_FORMAT[fmt](path)
            if name in systems:
                fabricate.systems(path)
            open(os.path.join(path, ".complete"), "w").close()
        data[name] = path
    return data


def smoke_published(exp: dict, out: str) -> list[str]:
    """Fabricated published weights in DIR/smoke-data/hf, which this process (and the steps it runs
    in-process) then reads offline instead of the user's cache."""
    if not any(job["published"] for job in exp["pretrain"]):
        return []
    hf_home = os.path.abspath(os.path.join(out, "smoke-data", "hf"))
    os.environ.update(HF_HOME=hf_home, HF_HUB_CACHE=os.path.join(hf_home, "hub"), HF_HUB_OFFLINE="1")
    import huggingface_hub.constants as hub  # read once at import: point it at this cache even if imported

    hub.HF_HUB_CACHE = os.path.join(hf_home, "hub")
    hub.HF_HUB_OFFLINE = True
    return smoke.fabricate_published(exp, hf_home)


@contextlib.contextmanager
def restored_process_state():
    """--smoke sets process-wide state (torch threads, the Hugging Face cache and offline flag); a
    caller that runs it in-process, as the tests do, gets its own back afterwards."""
    import huggingface_hub.constants as hub
    import torch

    threads, env, hub_state = torch.get_num_threads(), dict(os.environ), (hub.HF_HUB_CACHE, hub.HF_HUB_OFFLINE)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
        hub.HF_HUB_CACHE, hub.HF_HUB_OFFLINE = hub_state


def main(argv=None) -> None:
    args = parse_args(argv)
    # a scheduler's or `kill`'s SIGTERM ends the experiment as Ctrl-C does: its running steps are stopped
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        with restored_process_state() if args.smoke else contextlib.nullcontext():
            _main(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _main(args) -> None:
    exp = load_experiment(args.experiment, args.quick, args.overrides, args.holdout)
    needed = needed_data(exp)
    data = resolve_data(args.data, needed)
    out = args.out.rstrip("/") or "/"
    if args.smoke:
        if not args.dry_run and not args.emit:
            # one thread: tiny steps gain nothing from more, and spinning threads crawl on a shared CPU
            import torch

            torch.set_num_threads(1)
            claim_folder({**exp, "smoke": True}, out)
            data = smoke_data(needed, data, out, systems_sources(exp))
            published = smoke_published(exp, out)
            if published:
                print(f"[experiment] smoke: published weights fabricated (random, shrunk) in an offline Hugging Face "
                      f"cache: {', '.join(published)}", flush=True)
        else:
            data = {**{name: os.path.join(out, "smoke-data", name) for name in needed}, **data}
    if args.dry_run:  # the commands can be shown before the data is at hand
        data = {**{name: f"<{name}>" for name in needed}, **data}
    plan = Plan(exp, data, out, smoke=args.smoke)
    resources = exp["resources"]
    if args.dry_run:
        total = 0
        for step in plan.steps:
            images = f"~{step.images:,} images" if step.images else "images: not estimated"
            print(f"# {step.name} ({step.stage}; {images})")
            print(shlex.join(local_command(step, resources[step.stage], one_process=args.smoke)))
            total += step.images or 0
        print(f"# {len(plan.steps)} steps; ~{total:,} images processed in all (an estimate: epochs x "
              f"training images, validation not counted)")
        return
    if args.emit:
        claim_folder(exp, out)
        submit = emit_slurm(plan.steps, resources, args.emit[1])
        print(f"[experiment] {len(plan.steps)} sbatch scripts in {args.emit[1]}; submit them with: bash {submit}")
        return
    if not args.smoke:
        claim_folder(exp, out)
    run(plan, out, args.jobs or exp["jobs"], resources, one_process=args.smoke)


def run(plan: Plan, out: str, jobs: int, resources: dict, one_process: bool) -> None:
    study = Study(out, jobs=jobs, in_process=one_process)
    start = time.time()

    def steps(stage):
        return [(local_command(s, resources[s.stage], one_process), s.marker, s.needs)
                for s in plan.steps if s.stage in stage]

    for step in steps(("render",)):  # one at a time: a render uses every core
        study.run_all([step])
    study.run_all(steps(("pretrain", "finetune", "analysis")))
    report = next(s for s in plan.steps if s.stage == "report")  # always redone: it is cheap
    cmd = report.command()
    study.log.write(shlex.join(cmd) + "\n")
    study.log.flush()
    if one_process:
        call(cmd)
    elif subprocess.run(cmd).returncode != 0:
        raise UserError(f"the report failed: {shlex.join(cmd)}")
    print(f"[experiment] done in {(time.time() - start) / 60:.1f} min; report: "
          f"{os.path.dirname(report.marker)}/report.md, commands: {os.path.join(out, 'commands.sh')}", flush=True)
