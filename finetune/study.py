"""The transfer study: render fractal datasets, pretrain on each, fine-tune every checkpoint and a
from-scratch twin on a real dataset, and report.

    python -m finetune.study --config configs/study/cifar10_cpu.yaml --data PATH --out DIR [--quick]
        [--holdout 0.1] [key=value ...]

Every step is an ordinary `fractalgen` / `pretrain` / `finetune` command (all of them are written to
DIR/commands.sh, so any step can be re-run by hand); the study only chains them. A step whose output
is complete is skipped, so re-running the same command resumes where it stopped. The resolved study
config is DIR/study.yaml; resuming under a different one is refused (finished steps would otherwise be
reused silently). --holdout tunes the study without the test split: every fine-tuning run is then
evaluated on that fraction of the training images, held out.
"""

import os
import shlex
import subprocess
import sys
import time

import yaml

from common.config import apply_override, merge, save_config
from common.errors import ArgumentParser, UserError, run_main


def load_study(path: str, quick: bool, overrides: list[str] = (), holdout: float | None = None) -> dict:
    try:
        with open(path) as f:
            study = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read study config {path}: {e.strerror}") from None
    if quick:
        study = merge(study, study.get("quick", {}))
    study.pop("quick", None)
    for key in ("render", "pretrain", "finetune"):
        if key not in study:
            raise UserError(f"study config {path} has no {key!r} section")
    for text in overrides:
        apply_override(study, text)
    if holdout is not None:
        from finetune.datasets import check_holdout  # here: the chaining process otherwise never loads torch

        check_holdout(holdout, f"--holdout {holdout}")  # now, not after the renders and pretraining
        study["finetune"]["overrides"] = {**(study["finetune"].get("overrides") or {}), "data.holdout": holdout}
    return study


def claim_folder(study: dict, out: str) -> None:
    """Write the resolved config as OUT/study.yaml, or check it against the one a previous run left."""
    path = os.path.join(out, "study.yaml")
    if os.path.exists(path):
        with open(path) as f:
            if yaml.safe_load(f) != study:
                raise UserError(f"{out} holds a study run with another config ({path}); pass a new --out, "
                                f"or delete {out} to start over")
    else:
        save_config(study, out, name="study.yaml")


def _yaml_value(value) -> str:
    """A value in YAML flow style (one line), so lists, numbers and booleans survive the round trip."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _overrides(values: dict) -> list[str]:
    return [f"{k}={_yaml_value(v)}" for k, v in (values or {}).items()]


class Study:
    def __init__(self, study: dict, data: str, out: str, jobs: int = 1):
        self.study, self.data, self.out, self.jobs = study, data, out, max(1, jobs)
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "commands.sh"), "a")

    def run(self, cmd: list[str], done_marker: str) -> None:
        self.run_all([(cmd, done_marker, None)])

    def run_all(self, steps: list) -> None:
        """Run (cmd, done_marker, needs) steps, `jobs` at a time, skipping those whose output is complete.
        A step starts once the marker it needs exists (a fine-tune waits only for its own pretraining,
        so scratch twins fill the slots pretraining leaves idle); otherwise steps start in list order.
        Parallel steps split the cores between them (OMP_NUM_THREADS) and log to DIR/logs/."""
        todo = []
        for cmd, marker, needs in steps:
            if os.path.exists(marker):
                print(f"[study] done already: {shlex.join(cmd)}", flush=True)
            else:
                todo.append((cmd, marker, needs))
        running, failed = [], []
        while todo or running:
            while len(running) < self.jobs and not failed:
                ready = [step for step in todo if step[2] is None or os.path.exists(step[2])]
                if not ready:
                    break
                todo.remove(ready[0])
                running.append(self._start(*ready[0][:2]))
            if not running and not failed:  # nothing runs and nothing can start: a need no step makes
                raise UserError(f"study step waits for {todo[0][2]}, which no step produces")
            time.sleep(0.5)
            for job in [j for j in running if j["proc"].poll() is not None]:
                running.remove(job)
                if job["log"]:
                    job["log"].close()
                if job["proc"].returncode != 0:
                    failed.append(job)
                else:
                    print(f"[study] finished in {time.time() - job['start']:.0f} s: {job['name']}", flush=True)
            if failed and not running:
                job = failed[0]
                where = f"; its log: {job['log_path']}" if job["log_path"] else ""
                raise UserError(f"step failed (exit {job['proc'].returncode}): {shlex.join(job['cmd'])}{where}; "
                                f"fix it and re-run the study to resume")

    def _start(self, cmd: list[str], marker: str) -> dict:
        line = shlex.join(cmd)
        self.log.write(line + "\n")
        self.log.flush()
        print(f"[study] {line}", flush=True)
        name = os.path.relpath(os.path.dirname(marker), self.out).replace(os.sep, "_")
        log = log_path = None
        env = dict(os.environ)
        if self.jobs > 1:
            os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
            log_path = os.path.join(self.out, "logs", name + ".log")
            log = open(log_path, "w")
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.jobs))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None, env=env)
        return {"proc": proc, "cmd": cmd, "name": name, "log": log, "log_path": log_path, "start": time.time()}

    def render(self) -> dict:
        cfg = self.study["render"]
        folders = {}
        for kind, opts in cfg["kinds"].items():
            opts = {**cfg.get("common", {}), **(opts or {})}
            folder = os.path.join(self.out, "data", kind)
            cmd = ["fractalgen", "render", "--kind", kind, "--out", folder, "--no-progress"]
            for key in ("n", "classes", "size", "points", "seed", "shard_size", "workers"):
                if key in opts:
                    cmd += [f"--{key.replace('_', '-')}", str(opts[key])]
            for key, value in (opts.get("options") or {}).items():
                cmd += ["--option", f"{key}={_yaml_value(value)}"]
            self.run([_bin("fractalgen"), *cmd[1:]], os.path.join(folder, "dataset.json"))
            folders[kind] = folder
        return folders

    def pretrain_steps(self, folders: dict) -> tuple[list, dict]:
        """One run per (job, kind), plus the budget runs: the same pretraining at other numbers of
        images (data.train_samples). Returns the steps, and {(job, source): weights} with sources like
        `single` and `single-300k`. Budget runs larger than the render start first (so the longest run
        does not finish alone at the end); the rest keep config order."""
        steps, checkpoints = [], {}
        budget = self.study.get("budget") or {}
        default_n = int(self.study["render"].get("common", {}).get("n", 0))
        for job in self.study["pretrain"]:
            runs = [(kind, kind, {}) for kind in job["kinds"]]
            if budget.get("job") == job["name"]:
                runs += [(budget["kind"], f"{budget['kind']}-{_count(n)}", {"data.train_samples": n})
                         for n in budget["images"]]
            for kind, source, extra in runs:
                run_dir = os.path.join(self.out, "pretrain", f"{job['name']}-{source}")
                images = extra.get("data.train_samples", default_n)
                steps.append((images, [sys.executable, "-m", "pretrain.main", "--config", job["config"], "--data",
                                       folders[kind], "--out", run_dir,
                                       *_overrides({**job.get("overrides", {}), **extra})],
                              os.path.join(run_dir, "model.safetensors"), None))
                checkpoints[(job["name"], source)] = os.path.join(run_dir, "model.safetensors")
        steps.sort(key=lambda step: -step[0])  # stable: config order among equals
        return [step[1:] for step in steps], checkpoints

    def finetune_steps(self, checkpoints: dict) -> tuple[list, list[str]]:
        """Every regime, model, source (scratch first) and seed; regimes in config order, so a stopped
        study already holds complete tables for the first regimes. A regime's `only` list (e.g.
        [vit-scratch, vit-single]) limits it to those model-source pairs; budget runs are fine-tuned
        in the regimes the budget section names. Each step needs the weights it starts from."""
        cfg = self.study["finetune"]
        budget = self.study.get("budget") or {}
        steps, runs = [], []
        for regime, regime_over in cfg["regimes"].items():
            if regime_over is None:  # switched off (e.g. by the quick block)
                continue
            regime_over = dict(regime_over)
            only = regime_over.pop("only", None)
            for job in self.study["pretrain"]:
                sources = ["scratch", *job["kinds"]]
                if budget.get("job") == job["name"] and regime in budget.get("regimes", []):
                    sources += [f"{budget['kind']}-{_count(n)}" for n in budget["images"]]
                for source in sources:
                    if only is not None and f"{job['name']}-{source}" not in only:
                        continue
                    for seed in cfg["seeds"]:
                        run_dir = os.path.join(self.out, "finetune", regime, f"{job['name']}-{source}-s{seed}")
                        init = None if source == "scratch" else checkpoints[(job["name"], source)]
                        # the shared recipe, refined per model (e.g. its lr), then per regime
                        over = {**(cfg.get("overrides") or {}), **(job.get("finetune_overrides") or {}),
                                **regime_over, "seed": seed}
                        if source == "scratch":
                            over.update(job.get("scratch_overrides") or {})
                        steps.append(([sys.executable, "-m", "finetune.main", "--config", cfg["config"], "--data",
                                       self.data, "--init", init or "scratch", "--out", run_dir, *_overrides(over)],
                                      os.path.join(run_dir, "final.json"), init))
                        runs.append(run_dir)
        return steps, runs

    def report(self, runs: list[str]) -> str:
        report_dir = os.path.join(self.out, "report")
        cmd = [sys.executable, "-m", "finetune.report", *runs, "--out", report_dir]
        self.log.write(shlex.join(cmd) + "\n")
        subprocess.run(cmd, check=True)
        return report_dir


def _count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _bin(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def main(argv=None) -> None:
    ap = ArgumentParser(description="Fractal pretraining transfer study (render -> pretrain -> fine-tune -> report)")
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, help="the fine-tuning dataset (e.g. a cifar-10-batches-py folder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="the short smoke-check variant (the config's quick: block)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="steps run side by side, sharing the cores (default: the config's jobs, else 1)")
    ap.add_argument("--holdout", type=float, default=None,
                    help="evaluate every fine-tuning run on this fraction of the training images, held out "
                         "(to tune the study without the test split)")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="changes to the study config, e.g. render.common.classes=100")
    args = ap.parse_args(argv)
    if not os.path.exists(args.data):
        raise UserError(f"--data {args.data} does not exist; pass the folder of the fine-tuning dataset")
    study = load_study(args.config, args.quick, args.overrides, args.holdout)
    claim_folder(study, args.out)
    s = Study(study, args.data, args.out, jobs=args.jobs or int(study.get("jobs", 1)))
    start = time.time()
    folders = s.render()
    pretrain_steps, checkpoints = s.pretrain_steps(folders)
    finetune_steps, runs = s.finetune_steps(checkpoints)
    s.run_all(pretrain_steps + finetune_steps)
    report_dir = s.report(runs)
    print(f"[study] done in {(time.time() - start) / 60:.1f} min; report: {report_dir}/report.md, "
          f"commands: {os.path.join(args.out, 'commands.sh')}")


if __name__ == "__main__":
    run_main(main)
