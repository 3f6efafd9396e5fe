"""GPU readiness check (issue 17): the project's own commands on one GPU, timed, with one figures.json.

    benchmarks/gpu_check.sh [--out DIR]                      # on the GPU machine (installs carried wheels first)
    python benchmarks/gpu_check.py --cpu-smoke --out DIR    # the same five steps at a tiny scale on the CPU

1. `fractalgen render --kind single`, 224 px, 20,000 images, every core -> shards: img/s.
2. `accelerate launch pretrain/main.py` with deit_s16_single.yaml on those shards, bf16, 300 updates at
   the config's batch: img/s, peak GPU memory, loss first/last, data-loader wait share.
3. The same with data.source=render (multi-instance rendered on the fly in the workers), 100 updates,
   plus a one-worker run of that source: img/s per worker -> workers needed to keep the GPU fed.
4. ResNet-50 (channels-last) and ViT-S/32 on the shards, 100 updates each: img/s, memory.
5. `finetune/main.py` on CIFAR-10 at 224 px from step 2's weights, one epoch: img/s, evaluation.

Every step is an ordinary command run as a subprocess with a time budget (all of them fit in
8 minutes on an H200); its log goes to OUT/logs/<step>.log. Figures are read from what the runs
write (metrics.jsonl lines carry img_per_s, train_loss, data_wait and, on CUDA, max_mem_gib). A
step that fails or outruns its budget is recorded with its log tail and the check goes on; the exit
status is 1 if any step failed. Shards and run folders go to --work (a temporary folder by default),
never under OUT, which holds only figures.json and the logs (at most 8 files come back from the GPU
machine).
"""

import json
import math
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata

from common.errors import ArgumentParser, UserError, run_main
from common.io import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_BUDGET_S = 480  # the 8 minutes; each step gets min(its budget, what is left of this)
CONFIGS = {"deit_s16": "configs/pretrain/deit_s16_single.yaml", "resnet50": "configs/pretrain/resnet50_single.yaml",
           "vit_s32": "configs/pretrain/deit_s32_single.yaml", "finetune": "configs/finetune/cifar10.yaml"}
# the multi-label recipe of deit_s16_multi.yaml: mixup/cutmix one-hot integer labels, so they are off
MULTI_LABEL_AUG = ["aug.mixup=0", "aug.cutmix=0", "aug.label_smoothing=0"]


@dataclass(frozen=True)
class Scale:
    """How big each step is. `model` holds per-model overrides (tiny architectures for the smoke)."""

    name: str
    size: int                  # image side, rendering and training
    images: int                # step 1
    classes: int
    points: int | None         # chaos-game points per fractal (None: fractalgen's default, 100k)
    batch: int | None          # global batch (None: each config's own)
    updates: int               # step 2
    render_updates: int        # step 3
    other_updates: int         # step 4
    one_worker_batch: int      # step 3, the one-worker run
    one_worker_updates: int
    workers: int               # DataLoader workers of every training run
    render_workers: int        # step 1
    precision: str
    log_every: int
    val_samples: int           # held-out fractal images evaluated at the end of each pretraining run
    launch: tuple              # accelerate launch flags
    budgets: dict              # step -> seconds
    model: dict = field(default_factory=dict)
    finetune: tuple = ()       # extra finetune overrides
    finetune_batch: int | None = None  # None: the config's
    fabricate_per_batch: int = 1000  # CIFAR-format images per batch file when no real CIFAR folder is given


def gpu_scale() -> Scale:
    cores = len(os.sched_getaffinity(0))
    return Scale(
        name="gpu", size=224, images=20_000, classes=100, points=None, batch=None, updates=300, render_updates=100,
        other_updates=100, one_worker_batch=64, one_worker_updates=12, workers=max(1, cores - 1), render_workers=cores,
        precision="bf16", log_every=10, val_samples=512,
        launch=("--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no"),
        # expected on an H200 with 16 cores about 25 + 105 + 45 + 25 + 65 + 45 + 35 s (start-up ~20 s each)
        budgets={"render": 60, "deit_s16_shards": 170, "deit_s16_render": 90, "render_one_worker": 50,
                 "resnet50": 90, "vit_s32": 60, "finetune_cifar10": 60},
        finetune=("img_size=224", "precision=bf16", "log_every=10"))


def cpu_smoke_scale() -> Scale:
    vit = 'model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}'
    resnet = 'model_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}'
    return Scale(
        name="cpu-smoke", size=32, images=192, classes=4, points=1000, batch=16, updates=6, render_updates=4,
        other_updates=3, one_worker_batch=8, one_worker_updates=4, workers=1, render_workers=1, precision="no",
        log_every=2, val_samples=16,
        launch=("--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"),
        budgets=dict.fromkeys(["render", "deit_s16_shards", "deit_s16_render", "render_one_worker", "resnet50",
                               "vit_s32", "finetune_cifar10"], 300),  # only against hangs: a shared CPU is slow
        model={"deit_s16": (vit,), "vit_s32": (vit,), "resnet50": (resnet,)},
        finetune=("img_size=32", "eval_batch=64", "log_every=2"), finetune_batch=16, fabricate_per_batch=16)


# --- running one step


@dataclass
class Result:
    name: str
    step: int
    status: str = "not run"    # ok | failed | timeout | skipped
    wall_s: float | None = None
    figures: dict = field(default_factory=dict)
    command: str = ""
    error: str | None = None

    def as_dict(self) -> dict:
        out = {"step": self.step, "status": self.status, "wall_s": self.wall_s, **self.figures,
               "command": self.command}
        if self.error:
            out["error"] = self.error
        return out


class Check:
    def __init__(self, scale: Scale, out: str, work: str, cifar: tuple[str, str] | None):
        self.scale, self.out, self.work = scale, out, work
        self.cifar = cifar  # (folder, what it is) for step 5; None: fabricated images in the work folder
        self.logs = os.path.join(out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.deadline = time.monotonic() + (TOTAL_BUDGET_S if scale.name == "gpu" else 10 * TOTAL_BUDGET_S)
        self.results: list[Result] = []
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                        PYTHONUNBUFFERED="1")

    def run(self, name: str, step: int, argv: list) -> Result:
        """Run argv from the repository root with its output in OUT/logs/<name>.log, killed (with
        every process it started) past min(its budget, what is left of the whole check)."""
        result = Result(name, step, command=" ".join(argv).replace(sys.executable, "python"))
        self.results.append(result)
        left = self.deadline - time.monotonic()
        if left < 5:
            result.status, result.error = "skipped", "the check's total time budget is spent"
            return result
        limit = min(self.scale.budgets[name], left)
        log = os.path.join(self.logs, f"{name}.log")
        print(f"[{step}/5] {name}: {result.command}", flush=True)
        start = time.monotonic()
        with open(log, "w") as f:
            f.write(f"$ {result.command}\n\n")
            f.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: a timeout kills the workers too
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
        result.wall_s = round(time.monotonic() - start, 1)
        if rc == 0:
            result.status = "ok"
        else:
            result.status = "timeout" if rc is None else "failed"
            what = f"ran past its {limit:.0f} s budget" if rc is None else f"exit status {rc}"
            result.error = f"{what}; log tail:\n" + _tail(log)
        return result

    def skip(self, name: str, step: int, why: str) -> Result:
        result = Result(name, step, status="skipped", error=why)
        self.results.append(result)
        return result

    # --- the commands

    def launch(self, script: str, *args: str) -> list:
        return [sys.executable, "-m", "accelerate.commands.launch", *self.scale.launch, script, *args]

    def pretrain(self, name: str, step: int, model: str, updates: int, data: str | None, extra=(),
                 batch: int | None = None) -> Result:
        """accelerate launch pretrain/main.py for `updates` updates (one epoch of updates x batch)."""
        s = self.scale
        config = CONFIGS[model]
        batch = batch or s.batch or _config_batch(config)
        run_dir = os.path.join(self.work, name)
        shutil.rmtree(run_dir, ignore_errors=True)
        # precision quoted: YAML reads a bare `no` as false
        overrides = [f"img_size={s.size}", f"batch_size={batch}", "epochs=1", f"data.train_samples={updates * batch}",
                     f"data.workers={s.workers}", f"data.val_samples={s.val_samples}", f'precision="{s.precision}"',
                     f"log_every={s.log_every}", *s.model.get(model, ()), *extra]
        argv = self.launch("pretrain/main.py", "--config", config, "--out", run_dir,
                           *(["--data", data] if data else []), *overrides)
        result = self.run(name, step, argv)
        result.figures = {"batch": batch, **train_figures(run_dir, batch)}
        return result

    def render(self) -> Result:
        s = self.scale
        shards = os.path.join(self.work, "shards")
        shutil.rmtree(shards, ignore_errors=True)
        argv = [sys.executable, "-m", "fractalgen", "render", "--kind", "single", "--n", str(s.images),
                "--classes", str(s.classes), "--size", str(s.size), "--workers", str(s.render_workers),
                "--out", shards, "--no-progress", *(["--points", str(s.points)] if s.points else [])]
        result = self.run("render", 1, argv)
        if result.status == "ok":
            result.figures = {"images": s.images, "img_per_s": round(s.images / result.wall_s, 1),
                              "note": "wall time of the whole command (start-up and Numba compile included)"}
        return result

    def finetune(self, weights: str | None) -> Result:
        s = self.scale
        if self.cifar is None:
            path = os.path.join(self.work, "cifar-fabricated")
            write_cifar10(path, s.fabricate_per_batch)
            self.cifar = path, f"fabricated (random pixels, {s.fabricate_per_batch * 5} train images)"
        data, source = self.cifar
        run_dir = os.path.join(self.work, "finetune_cifar10")
        shutil.rmtree(run_dir, ignore_errors=True)
        init = ["--init", weights] if weights else ["--init", "scratch", f"model={_model_name(CONFIGS['deit_s16'])}",
                                                     *s.model.get("deit_s16", ())]
        batch = s.finetune_batch or _config_batch(CONFIGS["finetune"])
        overrides = ["epochs=1", f"batch_size={batch}", f"data.workers={s.workers}", f'precision="{s.precision}"',
                     *s.finetune]
        argv = self.launch("finetune/main.py", "--config", CONFIGS["finetune"], "--data", data, "--out", run_dir,
                           *init, *overrides)
        result = self.run("finetune_cifar10", 5, argv)
        figures = {"data": source, "init": "step 2 weights" if weights else "scratch (no step 2 weights)",
                   "batch": batch, **train_figures(run_dir, batch)}
        final = _read_json(os.path.join(run_dir, "final.json"))
        last = (final or {}).get("last_epoch", {})
        figures.update({"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"),
                        "val_samples": last.get("val_samples"), "eval_ran": "val_acc" in last})
        result.figures = figures
        return result

    # --- the whole check

    def all(self, steps: set) -> None:
        s = self.scale
        shards = os.path.join(self.work, "shards")
        if 1 in steps or ({2, 4} & steps and not os.path.exists(os.path.join(shards, "dataset.json"))):
            self.render()
        have_shards = os.path.exists(os.path.join(shards, "dataset.json"))
        if 2 in steps:
            if have_shards:
                self.pretrain("deit_s16_shards", 2, "deit_s16", s.updates, shards, ["optim.warmup_epochs=1"])
            else:
                self.skip("deit_s16_shards", 2, "no shards: step 1 failed")
        if 3 in steps:
            self.render_source()
        if 4 in steps:
            for model, extra in (("resnet50", ["channels_last=true"]), ("vit_s32", ["optim.warmup_epochs=1"])):
                if have_shards:
                    self.pretrain(model, 4, model, s.other_updates, shards, extra)
                else:
                    self.skip(model, 4, "no shards: step 1 failed")
        if 5 in steps:  # step 2's weights: made now, or by an earlier check with the same --work
            weights = os.path.join(self.work, "deit_s16_shards", "model.safetensors")
            self.finetune(weights if os.path.exists(weights) else None)

    def render_source(self) -> None:
        """Step 3: on-the-fly multi-instance rendering in the workers, then one worker alone (a small
        batch, data-bound by design) for the rate one worker delivers."""
        s = self.scale
        batch = s.batch or _config_batch(CONFIGS["deit_s16"])

        def spec(n):
            points = f", points: {s.points}" if s.points else ""
            return f"data.render={{kind: multi, n: {n}, classes: {s.classes}, size: {s.size}, seed: 0{points}}}"

        main = self.pretrain("deit_s16_render", 3, "deit_s16", s.render_updates, None,
                             ["data.source=render", spec(s.render_updates * batch), *MULTI_LABEL_AUG,
                              "optim.warmup_epochs=1"])
        one = self.pretrain("render_one_worker", 3, "deit_s16", s.one_worker_updates, None,
                            ["data.source=render", spec(s.one_worker_updates * s.one_worker_batch), *MULTI_LABEL_AUG,
                             "data.workers=1", "log_every=2", "data.val_samples=8"], batch=s.one_worker_batch)
        main.figures.update(workers_needed(main.figures, one.figures.get("img_per_s"), s.workers))

    def summary(self, started: float) -> dict:
        failed = [r.name for r in self.results if r.status != "ok"]
        return {"mode": self.scale.name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "env": environment(), "budget_s": TOTAL_BUDGET_S if self.scale.name == "gpu" else None,
                "total_s": round(time.monotonic() - started, 1),
                "steps": {r.name: r.as_dict() for r in self.results}, "failed": failed}


def find_cifar(given: str | None, gpu: bool) -> tuple[str, str] | None:
    """(folder, what it is) for step 5: --cifar; on the GPU the carried copy, else the shared subset;
    None: fabricated images (always in the CPU smoke, which needs only the format)."""
    if given:
        if not os.path.isdir(os.path.join(given, "cifar-10-batches-py")):
            raise UserError(f"--cifar {given} has no cifar-10-batches-py/ folder; point it at a CIFAR-10 folder "
                            f"(official python layout) or leave it out to use fabricated images")
        return given, given
    if gpu:
        for path, what in ((os.path.join(ROOT, "gpu_carry", "cifar10-subset"), "cifar10-subset (carried)"),
                           (os.path.join(ROOT, "..", "shared", "datasets", "cifar10-subset"), "cifar10-subset")):
            if os.path.isdir(os.path.join(path, "cifar-10-batches-py")):
                return path, what
    return None


# --- figures read from what the runs wrote


def train_figures(run_dir: str, batch: int) -> dict:
    """Steady img/s (between the first and last metrics lines, so start-up is left out), peak device
    memory, loss at the start and the end (mean of up to 3 lines each), data-loader wait share
    (windows after the first, which holds the workers' start), updates done."""
    lines = _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    steps = [r for r in lines if "img_per_s" in r]
    out = {"updates": max((r["step"] for r in lines if "step" in r), default=0), "img_per_s": None, "peak_gpu_mem_gib": None,
           "loss_first": None, "loss_last": None, "loss_fell": None, "data_wait_share": None}
    if not steps:
        return out
    first, last = steps[0], steps[-1]
    if last["time"] > first["time"]:
        out["img_per_s"] = round((last["step"] - first["step"]) * batch / (last["time"] - first["time"]), 1)
    else:
        out["img_per_s"] = round(last["img_per_s"], 1)
    mem = [r["max_mem_gib"] for r in steps if r.get("max_mem_gib") is not None]
    out["peak_gpu_mem_gib"] = max(mem) if mem else None
    k = max(1, min(3, len(steps) // 2))
    out["loss_first"] = round(sum(r["train_loss"] for r in steps[:k]) / k, 4)
    out["loss_last"] = round(sum(r["train_loss"] for r in steps[-k:]) / k, 4)
    out["loss_fell"] = out["loss_last"] < out["loss_first"]
    waits = [r["data_wait"] for r in (steps[1:] or steps) if "data_wait" in r]
    out["data_wait_share"] = round(sum(waits) / len(waits), 4) if waits else None
    return out


def workers_needed(main: dict, per_worker: float | None, workers: int) -> dict:
    """The step alone runs at img/s / (1 - wait share) (the time it is not waiting for data); that
    divided by one worker's rate is the workers needed to keep it fed."""
    rate, wait = main.get("img_per_s"), main.get("data_wait_share")
    out = {"workers": workers, "per_worker_img_per_s": per_worker, "step_img_per_s": None, "workers_needed": None}
    if rate and wait is not None and wait < 0.99:
        out["step_img_per_s"] = round(rate / (1 - wait), 1)
        if per_worker:
            out["workers_needed"] = math.ceil(out["step_img_per_s"] / per_worker)
    return out


def environment() -> dict:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0)),
           **{name: version(name) for name in ("torch", "torchvision", "timm", "accelerate", "numba", "numpy",
                                               "webdataset", "isal")}}
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        env["gpu"] = gpu or None
    except (OSError, subprocess.TimeoutExpired):
        env["gpu"] = None
    try:
        st = os.statvfs("/dev/shm")  # DataLoader workers hand batches over through it
        env["dev_shm_gib"] = round(st.f_blocks * st.f_frsize / 2**30, 1)
    except OSError:
        env["dev_shm_gib"] = None
    return env


# --- helpers


def _config_batch(config: str) -> int:
    from common.config import load_config

    return int(load_config(os.path.join(ROOT, config))["batch_size"])


def _model_name(config: str) -> str:
    from common.config import load_config

    return load_config(os.path.join(ROOT, config))["model"]


def _read_jsonl(path: str) -> list:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut off by a timeout
                pass
    return out


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tail(path: str, lines: int = 25) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _kill_group(proc) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_cifar10(root: str, per_batch: int, seed: int = 0) -> None:
    """CIFAR-10 in the official python layout, random pixels, balanced labels (the fine-tune step
    needs the format, not the pictures, when no real copy travelled)."""
    import numpy as np

    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "labels": [i % 10 for i in range(per_batch)],
                 "filenames": [f"{i}.png" for i in range(per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)


def table(summary: dict) -> str:
    """The figures as a Markdown table (for docs/benchmarks.md)."""
    rows = ["| step | status | s | img/s | peak GPU GiB | loss first → last | data wait | other |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in summary["steps"].items():
        loss = (f"{r['loss_first']} → {r['loss_last']}" if r.get("loss_first") is not None else "")
        other = []
        if r.get("workers_needed") is not None or "per_worker_img_per_s" in r:
            other.append(f"{r.get('workers')} workers; 1 worker {r.get('per_worker_img_per_s')} img/s; step alone "
                         f"{r.get('step_img_per_s')} img/s → {r.get('workers_needed')} workers needed")
        if "val_acc" in r:
            other.append(f"val_acc {r.get('val_acc')} on {r.get('val_samples')} ({r.get('data')}; init {r.get('init')})")
        if r.get("updates") is not None and name != "render":
            other.append(f"{r['updates']} updates x {r.get('batch')}")
        rows.append(f"| {r['step']} {name} | {r['status']} | {r['wall_s']} | {r.get('img_per_s', '')} | "
                    f"{r.get('peak_gpu_mem_gib') or ''} | {loss} | {r.get('data_wait_share', '')} | {'; '.join(other)} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="figures.json and logs/ (default $OUT)")
    ap.add_argument("--work", help="shards and run folders (default: a temporary folder, removed at the end)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps at a tiny scale on the CPU")
    ap.add_argument("--steps", default="1,2,3,4,5", help="which steps to run, e.g. 2,5 (steps 2 and 4 render "
                                                          "the shards first when --work holds none)")
    ap.add_argument("--cifar", help="CIFAR-10 folder for step 5 (default: gpu_carry/cifar10-subset, then "
                                    "../shared/datasets/cifar10-subset on the GPU; fabricated images otherwise)")
    args = ap.parse_args(argv)
    if not args.out:
        raise UserError("give --out DIR (or set $OUT): figures.json and the logs are written there")
    try:
        steps = {int(s) for s in args.steps.split(",") if s.strip()}
    except ValueError:
        steps = set()
    if not steps or not steps <= {1, 2, 3, 4, 5}:
        raise UserError(f"--steps takes step numbers 1-5 separated by commas, got {args.steps!r}")
    cifar = find_cifar(args.cifar, gpu=not args.cpu_smoke)
    os.makedirs(args.out, exist_ok=True)
    if not os.access(args.out, os.W_OK):
        raise UserError(f"cannot write to --out {args.out}; choose a writable folder")
    work = args.work or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(work, exist_ok=True)
    check = Check(cpu_smoke_scale() if args.cpu_smoke else gpu_scale(), args.out, work, cifar)
    started = time.monotonic()
    try:
        check.all(steps)
    finally:
        summary = check.summary(started)
        path = os.path.join(args.out, "figures.json")
        write_json(path, summary, indent=1)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(table(summary))
    for name in summary["failed"]:
        print(f"\n{name}: {summary['steps'][name]['status']}: {summary['steps'][name].get('error')}", file=sys.stderr)
    print(f"\n{path}: {len(summary['steps'])} runs, {len(summary['failed'])} not ok, {summary['total_s']} s in all")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
