"""The transfer study: render fractal datasets, pretrain on each, fine-tune every checkpoint and a
from-scratch twin on a real dataset, and report.

    python -m finetune.study --config configs/study/cifar10_cpu.yaml --data PATH --out DIR [--quick]

Every step is an ordinary `fractalgen` / `pretrain` / `finetune` command (all of them are written to
DIR/commands.sh, so any step can be re-run by hand); the study only chains them. A step whose output
is complete is skipped, so re-running the same command resumes where it stopped.
"""

import os
import shlex
import subprocess
import sys
import time

import yaml

from common.config import merge
from common.errors import ArgumentParser, UserError, run_main


def load_study(path: str, quick: bool) -> dict:
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
    return study


def _yaml_value(value) -> str:
    """A value in YAML flow style (one line), so lists, numbers and booleans survive the round trip."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _overrides(values: dict) -> list[str]:
    return [f"{k}={_yaml_value(v)}" for k, v in (values or {}).items()]


class Study:
    def __init__(self, study: dict, data: str, out: str):
        self.study, self.data, self.out = study, data, out
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "commands.sh"), "a")

    def run(self, cmd: list[str], done_marker: str) -> None:
        """Run one pipeline command unless its output is already complete."""
        line = shlex.join(cmd)
        if os.path.exists(done_marker):
            print(f"[study] done already: {line}", flush=True)
            return
        self.log.write(line + "\n")
        self.log.flush()
        print(f"[study] {line}", flush=True)
        start = time.time()
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise UserError(f"step failed (exit {result.returncode}): {line}; fix it and re-run the study to resume")
        print(f"[study] finished in {time.time() - start:.0f} s", flush=True)

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

    def pretrain(self, folders: dict) -> dict:
        checkpoints = {}
        for job in self.study["pretrain"]:
            for kind in job["kinds"]:
                run_dir = os.path.join(self.out, "pretrain", f"{job['name']}-{kind}")
                cmd = [sys.executable, "-m", "pretrain.main", "--config", job["config"], "--data", folders[kind],
                       "--out", run_dir, *_overrides(job.get("overrides"))]
                self.run(cmd, os.path.join(run_dir, "model.safetensors"))
                checkpoints[(job["name"], kind)] = os.path.join(run_dir, "model.safetensors")
        return checkpoints

    def finetune(self, checkpoints: dict) -> list[str]:
        """Every regime, model, source (scratch first) and seed; regimes in config order, so a stopped
        study already holds complete tables for the first regimes."""
        cfg = self.study["finetune"]
        runs = []
        for regime, regime_over in cfg["regimes"].items():
            if regime_over is None:  # switched off (e.g. by the quick block)
                continue
            for job in self.study["pretrain"]:
                for source in ["scratch", *job["kinds"]]:
                    for seed in cfg["seeds"]:
                        run_dir = os.path.join(self.out, "finetune", regime, f"{job['name']}-{source}-s{seed}")
                        init = "scratch" if source == "scratch" else checkpoints[(job["name"], source)]
                        over = {**(job.get("finetune_overrides") or {}), **(cfg.get("overrides") or {}),
                                **(regime_over or {}), "seed": seed}
                        if source == "scratch":
                            over.update(job.get("scratch_overrides") or {})
                        cmd = [sys.executable, "-m", "finetune.main", "--config", cfg["config"], "--data", self.data,
                               "--init", init, "--out", run_dir, *_overrides(over)]
                        self.run(cmd, os.path.join(run_dir, "final.json"))
                        runs.append(run_dir)
        return runs

    def report(self, runs: list[str]) -> str:
        report_dir = os.path.join(self.out, "report")
        cmd = [sys.executable, "-m", "finetune.report", *runs, "--out", report_dir]
        self.log.write(shlex.join(cmd) + "\n")
        subprocess.run(cmd, check=True)
        return report_dir


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
    args = ap.parse_args(argv)
    if not os.path.exists(args.data):
        raise UserError(f"--data {args.data} does not exist; pass the folder of the fine-tuning dataset")
    study = load_study(args.config, args.quick)
    s = Study(study, args.data, args.out)
    start = time.time()
    folders = s.render()
    checkpoints = s.pretrain(folders)
    runs = s.finetune(checkpoints)
    report_dir = s.report(runs)
    print(f"[study] done in {(time.time() - start) / 60:.1f} min; report: {report_dir}/report.md, "
          f"commands: {os.path.join(args.out, 'commands.sh')}")


if __name__ == "__main__":
    run_main(main)
