"""How a step is launched: one process, or `accelerate launch` over the GPUs its stage asks for
(resources.<stage> in the experiment file), on this machine or as a SLURM job."""

import os
import shlex

from common.errors import UserError
from experiments.plan import Step, _bin


def processes(res: dict) -> int:
    return max(1, res["gpus"]) * res["nodes"]


def local_command(step: Step, res: dict, one_process: bool = False) -> list[str]:
    """The step's command on this machine: `accelerate launch --multi_gpu` when its stage asks for
    several GPUs (one_process: --smoke, always plain)."""
    if one_process or step.module is None or step.stage not in ("pretrain", "finetune") or processes(res) == 1:
        return step.command()
    if res["nodes"] > 1:
        raise UserError(f"step {step.name} asks for {res['nodes']} nodes; run the experiment on a cluster "
                        f"(--emit slurm DIR) or set resources.{step.stage}.nodes=1")
    return [_bin("accelerate"), "launch", "--multi_gpu", "--num_processes", str(res["gpus"]),
            "-m", step.module, *step.args]


def slurm_script(step: Step, res: dict, name: str, logs: str) -> str:
    """One sbatch script: the resources as #SBATCH lines, then the step's command (accelerate launch
    across every GPU of every node when there are several; one launcher per node through srun)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={res['nodes']}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={res['cpus']}",
             f"#SBATCH --time={_hours(res['hours'])}", f"#SBATCH --output={os.path.join(logs, name)}-%j.log"]
    if res["gpus"]:
        lines.append(f"#SBATCH --gres=gpu:{res['gpus']}")
    if res["partition"]:
        lines.append(f"#SBATCH --partition={res['partition']}")
    lines += ["set -euo pipefail", f"cd {shlex.quote(os.getcwd())}",
              f"# step {step.name}: done when {step.marker} exists", f"if [ -e {shlex.quote(step.marker)} ]; then exit 0; fi"]
    if step.module is None or step.stage not in ("pretrain", "finetune") or processes(res) == 1:
        lines.append(shlex.join(step.command()))
    elif res["nodes"] == 1:
        lines.append(shlex.join([_bin("accelerate"), "launch", "--multi_gpu", "--num_processes", str(res["gpus"]),
                                 "-m", step.module, *step.args]))
    else:  # one launcher per node; rank 0's host is the rendezvous
        lines += ['MAIN_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "srun " + shlex.join([_bin("accelerate"), "launch", "--multi_gpu", "--num_processes",
                                        str(processes(res)), "--num_machines", str(res["nodes"])])
                  + ' --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_HOST" --main_process_port 29500 '
                  + shlex.join(["-m", step.module, *step.args])]
    return "\n".join(lines) + "\n"


def _hours(hours: float) -> str:
    minutes = max(1, round(hours * 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def emit_slurm(steps: list[Step], resources: dict, folder: str) -> str:
    """One sbatch script per step (NNN-<name>.sbatch, in the runner's order) and submit.sh, which
    submits them in that order with `sbatch --parsable`, each with --dependency=afterok on the jobs
    that make what it needs. Returns submit.sh's path."""
    os.makedirs(folder, exist_ok=True)
    logs = os.path.join(os.path.abspath(folder), "logs")
    made = {}  # marker -> shell variable holding the job id of the step that makes it
    submit = ["#!/bin/bash", "# Submits every step in the runner's order; each waits (afterok) for the jobs "
              "that make its inputs.", "set -euo pipefail", f"mkdir -p {shlex.quote(logs)}"]
    for i, step in enumerate(steps):
        name = f"{i:03d}-{step.name.replace('/', '-')}"
        script = os.path.join(folder, name + ".sbatch")
        with open(script, "w") as f:
            f.write(slurm_script(step, resources[step.stage], name, logs))
        var = f"JOB{i:03d}"
        after = sorted({made[n] for n in step.needs if n in made})
        dependency = f"--dependency=afterok:{':'.join('$' + v for v in after)} " if after else ""
        submit.append(f"{var}=$(sbatch --parsable {dependency}{shlex.quote(os.path.abspath(script))})")
        made[step.marker] = var
    submit.append('echo "submitted ' + str(len(steps)) + ' jobs; the last is $' + f'JOB{len(steps) - 1:03d}"')
    path = os.path.join(folder, "submit.sh")
    with open(path, "w") as f:
        f.write("\n".join(submit) + "\n")
    os.chmod(path, 0o755)
    return path


