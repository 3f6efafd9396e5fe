"""The CPU study (configs/experiments/cifar10_cpu.yaml) through the experiment runner: its --quick path end
to end on fabricated CIFAR-10 (real format, random pixels), its overrides, refusals and step scheduling."""

import os
import subprocess
import sys

import pytest

from tests.conftest import write_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_study_chains_the_stages_and_resumes(tmp_path):
    data = write_cifar10(str(tmp_path / "cifar"), per_batch=50)  # 25 training images per class
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "experiments", "configs/experiments/cifar10_cpu.yaml", "--data", data,
           "--out", str(out), "--quick"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    vit = "ViT p4 w128 d4 h4"  # vit_tiny_patch16_224 built with model_kwargs, named by what it is
    for row in (f"| {vit} | scratch |", f"| {vit} | single (2.05k img) |",
                f"| {vit} | single (1.02k img) |",  # the budget run
                "| resnet10t | scratch |", "| resnet10t | multi (2.05k img) |"):
        assert row in report, report
    assert "cifar10 (200 img): acc" in report and (out / "report" / "bars.png").exists()
    assert (out / "report" / "budget.png").exists()
    runs = [out / "pretrain" / d for d in os.listdir(out / "pretrain")]
    runs += [out / "finetune" / "low" / d for d in os.listdir(out / "finetune" / "low")]
    assert len(runs) == 3 + 5
    assert len(os.listdir(out / "logs")) == 3 + 3 + 5  # two steps at a time: each logs to its own file
    for run in runs:
        for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "model.json"):
            assert (run / name).exists(), f"{run}/{name}"
    for kind in ("fractaldb", "single", "multi"):
        assert (out / "data" / kind / "dataset.json").exists()
    commands = (out / "commands.sh").read_text().splitlines()
    assert any("fractalgen render" in c for c in commands) and any("pretrain.main" in c for c in commands)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)  # resumes: nothing to redo
    assert again.returncode == 0 and again.stdout.count("done already") == 3 + 3 + 5


def test_study_overrides_holdout_and_resolved_config(tmp_path):
    from experiments.schema import load_experiment
    from experiments.study import claim_folder

    study = load_experiment(os.path.join(ROOT, "configs/experiments/cifar10_cpu.yaml"), quick=True,
                            overrides=["render.common.classes=7", "finetune.overrides.optim.lr=0.001"], holdout=0.1)
    assert study["render"]["common"]["classes"] == 7
    assert study["finetune"]["overrides"]["optim.lr"] == 0.001  # a dotted key inside a section
    assert study["finetune"]["overrides"]["data.holdout"] == 0.1
    claim_folder(study, str(tmp_path))
    claim_folder(study, str(tmp_path))  # the same config resumes
    import yaml
    assert yaml.safe_load((tmp_path / "experiment.yaml").read_text()) == study


def test_study_refuses_to_resume_under_another_config(tmp_path):
    from experiments.schema import load_experiment
    from experiments.study import claim_folder

    data = write_cifar10(str(tmp_path / "cifar"))
    out = tmp_path / "study"
    claim_folder(load_experiment(os.path.join(ROOT, "configs/experiments/cifar10_cpu.yaml"), quick=True), str(out))
    for extra in (["render.common.classes=7"], ["--holdout", "0.1"]):
        result = subprocess.run([sys.executable, "-m", "experiments", "configs/experiments/cifar10_cpu.yaml",
                                 "--data", data, "--out", str(out), "--quick", *extra],
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
        assert "another config" in result.stderr and not (out / "data").exists()
    bad = subprocess.run([sys.executable, "-m", "experiments", "configs/experiments/cifar10_cpu.yaml",
                          "--data", data, "--out", str(tmp_path / "other"), "--holdout", "1.5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--holdout 1.5" in bad.stderr and not (tmp_path / "other").exists()


def test_steps_wait_for_what_they_need_and_others_fill_the_slots(tmp_path):
    """Two slots: a long step, a step that needs its output, and free steps. The needing step starts
    only once the output exists; the free steps run meanwhile instead of waiting behind it."""
    from common.errors import UserError
    from experiments.study import Study

    def step(name, seconds, needs=None):
        marker = tmp_path / name / "done"
        code = (f"import os, time; t = time.time(); time.sleep({seconds}); os.makedirs({str(marker.parent)!r}, "
                f"exist_ok=True); open({str(marker)!r}, 'w').write(f'{{t}} {{time.time()}}')")
        return [sys.executable, "-c", code], str(marker), [str(tmp_path / needs / "done")] if needs else []

    s = Study(out=str(tmp_path), jobs=2)
    s.run_all([step("pretrain", 3), step("finetune", 0, needs="pretrain"), step("scratch1", 0.5),
               step("scratch2", 0.5)])
    span = {n: [float(x) for x in (tmp_path / n / "done").read_text().split()]
            for n in ("pretrain", "finetune", "scratch1", "scratch2")}
    assert span["finetune"][0] >= span["pretrain"][1]  # started after its weights appeared
    assert span["scratch2"][1] <= span["pretrain"][1]  # both free steps ran beside the long one
    with pytest.raises(UserError, match="no step produces"):
        s.run_all([step("orphan", 0, needs="nothing")])


def test_sigterm_stops_the_running_steps_with_the_experiment(tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C) to the runner ends its running steps too, instead of leaving
    them training as orphans; one line, exit 130, and a re-run resumes."""
    import signal
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    step = (f"import os, time; open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close(); "
            f"time.sleep(300)")
    script = (f"import signal, sys\n"
              f"from common.errors import run_main\n"
              f"from experiments.runner import _interrupt\n"
              f"from experiments.study import Study\n"
              f"signal.signal(signal.SIGTERM, _interrupt)\n"
              f"steps = [([sys.executable, '-c', {step!r}], {str(tmp_path)!r} + f'/never{{i}}', []) for i in range(3)]\n"
              f"run_main(Study(out={str(tmp_path / 'out')!r}, jobs=2).run_all, steps)\n")
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(os.listdir(pids)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    children = [int(p) for p in os.listdir(pids)]
    assert len(children) == 2, "both slots should be running"
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err
    assert err.count("stopped:") == 2 and "Traceback" not in err
    for pid in children:  # reaped by the runner: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_finetune_recipe_shared_then_per_model_then_per_regime(tmp_path):
    from experiments.plan import Plan
    from experiments.schema import check_experiment

    exp = check_experiment({
        "pretrain": [{"name": "vit", "kinds": ["single"], "config": "configs/pretrain/deit_s16_single.yaml"},
                     {"name": "resnet", "kinds": ["single"], "config": "configs/pretrain/resnet50_single.yaml",
                      "finetune_overrides": {"optim.lr": 0.002}}],
        "render": {"common": {"n": 100}, "kinds": {"single": {}}},
        "finetune": {"config": "configs/finetune/cifar10.yaml", "seeds": [0], "overrides": {"optim.lr": 0.0005, "epochs": 9},
                     "regimes": {"low": {"epochs": 20}, "full": {"epochs": 3, "only": ["resnet-single"]}}}}, "test")
    plan = Plan(exp, {"data": "d"}, str(tmp_path))
    steps = [s for s in plan.steps if s.stage == "finetune"]
    by_run = {s.name: s.command() for s in steps}
    assert sorted(by_run) == sorted(["finetune/low/vit-scratch-s0", "finetune/low/vit-single-s0",
                                     "finetune/low/resnet-scratch-s0", "finetune/low/resnet-single-s0",
                                     "finetune/full/resnet-single-s0"])
    assert "optim.lr=0.0005" in by_run["finetune/low/vit-single-s0"]
    for run in ("finetune/low/resnet-scratch-s0", "finetune/full/resnet-single-s0"):  # the model's lr, both twins
        assert "optim.lr=0.002" in by_run[run] and "optim.lr=0.0005" not in by_run[run]
    assert "epochs=3" in by_run["finetune/full/resnet-single-s0"]
    needs = {s.name: s.needs for s in steps}
    assert needs["finetune/low/vit-scratch-s0"] == []
    assert needs["finetune/low/vit-single-s0"] == [str(tmp_path / "pretrain" / "vit-single" / "model.safetensors")]
