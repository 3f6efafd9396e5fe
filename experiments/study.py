"""Running an experiment's steps on this machine: `jobs` at a time, each as soon as the files it
needs exist, skipping those whose output is already complete (so re-running resumes).

Every command is appended to DIR/commands.sh before it starts, so any step can be re-run by hand.
The resolved experiment is DIR/experiment.yaml; resuming under a different one is refused
(finished steps would otherwise be reused silently).
"""

import importlib
import os
import shlex
import subprocess
import sys
import time

import yaml

from common.config import save_config
from common.errors import UserError
from common.runs import check_out_folder

CLAIM = "experiment.yaml"


def claim_folder(exp: dict, out: str) -> None:
    """Write the resolved experiment as OUT/experiment.yaml, or check it against the one a previous
    run left."""
    path = os.path.join(out, CLAIM)
    if os.path.exists(path):
        with open(path) as f:
            if _set_keys(yaml.safe_load(f)) != _set_keys(exp):
                raise UserError(f"{out} holds an experiment run with another config ({path}); pass a new --out, "
                                f"or delete {out} to start over")
    else:
        check_out_folder(out)
        save_config(exp, out, name=CLAIM)


def _set_keys(value):
    """The config without its unset keys (null, or an empty list): a key added to the schema later,
    unset, leaves a folder begun before it the same experiment."""
    if isinstance(value, dict):
        return {k: _set_keys(v) for k, v in value.items() if v is not None and v != []}
    if isinstance(value, list):
        return [_set_keys(v) for v in value]
    return value


class Study:
    """Runs (command, done marker, needed markers) steps. With jobs > 1 the steps split the cores
    between them (OMP_NUM_THREADS) and log to DIR/logs/. `in_process` (--smoke) calls each command's
    main(argv) in this process, one after the other: the same code, without a 5 s interpreter start
    (torch, timm) per step."""

    def __init__(self, out: str, jobs: int = 1, in_process: bool = False):
        self.out, self.jobs, self.in_process = out, max(1, jobs), in_process
        os.makedirs(out, exist_ok=True)
        self.log = open(os.path.join(out, "commands.sh"), "a")

    def run_all(self, steps: list) -> None:
        """Run (cmd, done_marker, needs) steps, `needs` a list of markers. A step starts once they all
        exist (a fine-tune waits only for its own pretraining, so scratch twins fill the slots
        pretraining leaves idle); otherwise steps start in list order."""
        todo = []
        for cmd, marker, needs in steps:
            if os.path.exists(marker):
                print(f"[experiment] done already: {shlex.join(cmd)}", flush=True)
            else:
                todo.append((cmd, marker, needs))
        if self.in_process:
            return self._run_here(todo)
        running, failed = [], []
        try:
            self._run_jobs(todo, running, failed)
        except BaseException:
            _stop(running)  # Ctrl-C / SIGTERM / an error here: no step outlives the experiment
            raise

    def _run_jobs(self, todo: list, running: list, failed: list) -> None:
        while todo or running:
            while len(running) < self.jobs and not failed:
                ready = [step for step in todo if all(os.path.exists(n) for n in step[2])]
                if not ready:
                    break
                todo.remove(ready[0])
                running.append(self._start(*ready[0][:2]))
            if not running and not failed:  # nothing runs and nothing can start: a need no step makes
                missing = next(n for n in todo[0][2] if not os.path.exists(n))
                raise UserError(f"experiment step waits for {missing}, which no step produces")
            time.sleep(0.5)
            for job in [j for j in running if j["proc"].poll() is not None]:
                running.remove(job)
                if job["log"]:
                    job["log"].close()
                if job["proc"].returncode != 0:
                    failed.append(job)
                else:
                    print(f"[experiment] finished in {time.time() - job['start']:.0f} s: {job['name']}", flush=True)
            if failed and not running:
                job = failed[0]
                where = f"; its log: {job['log_path']}" if job["log_path"] else ""
                raise UserError(f"step failed (exit {job['proc'].returncode}): {shlex.join(job['cmd'])}{where}; "
                                f"fix it and re-run the experiment to resume")

    def _run_here(self, todo: list) -> None:
        while todo:
            ready = next((step for step in todo if all(os.path.exists(n) for n in step[2])), None)
            if ready is None:
                missing = next(n for n in todo[0][2] if not os.path.exists(n))
                raise UserError(f"experiment step waits for {missing}, which no step produces")
            todo.remove(ready)
            cmd = ready[0]
            self.log.write(shlex.join(cmd) + "\n")
            self.log.flush()
            print(f"[experiment] {shlex.join(cmd)}", flush=True)
            start = time.time()
            call(cmd)
            print(f"[experiment] finished in {time.time() - start:.0f} s: {cmd[2] if cmd[1:2] == ['-m'] else cmd[0]}",
                  flush=True)

    def _start(self, cmd: list[str], marker: str) -> dict:
        line = shlex.join(cmd)
        self.log.write(line + "\n")
        self.log.flush()
        print(f"[experiment] {line}", flush=True)
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


def _stop(running: list, grace: float = 20.0) -> None:
    """End the running steps: SIGTERM (a step resumes from its last checkpoint), SIGKILL after `grace` s."""
    for job in running:
        if job["proc"].poll() is None:
            job["proc"].terminate()
    deadline = time.time() + grace
    for job in running:
        try:
            job["proc"].wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            job["proc"].kill()
            job["proc"].wait()
        print(f"[experiment] stopped: {job['name']} (re-run the experiment to resume it)", file=sys.stderr, flush=True)


def call(cmd: list[str]) -> None:
    """Run `python -m module args` or a console script (fractalgen) as module.main(args) here."""
    module, argv = (cmd[2], cmd[3:]) if cmd[1:2] == ["-m"] else (f"{os.path.basename(cmd[0])}.cli", cmd[1:])
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as e:
        code = e.code
    except UserError as e:
        raise UserError(f"step failed: {shlex.join(cmd)}: {e}") from None
    if code not in (None, 0):
        raise UserError(f"step failed (exit {code}): {shlex.join(cmd)}")
    sys.stdout.flush()
