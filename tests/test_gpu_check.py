"""The GPU check (benchmarks/gpu_check.py): its CPU smoke mode end to end through the wrapper, and the
pieces that turn run folders into figures."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402

PRETRAIN_RUNS = {"deit_s16_shards": 6, "deit_s16_render": 4, "render_one_worker": 4, "resnet50": 3, "vit_s32": 3}


def _write_metrics(run_dir, lines):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


def test_train_figures_read_steady_rate_memory_loss_and_wait(tmp_path):
    run = str(tmp_path / "run")
    _write_metrics(run, [
        {"step": 10, "epoch": 0, "train_loss": 5.0, "img_per_s": 50.0, "time": 100.0, "data_wait": 0.9, "max_mem_gib": 3.0},
        {"step": 20, "epoch": 0, "train_loss": 4.0, "img_per_s": 80.0, "time": 110.0, "data_wait": 0.2, "max_mem_gib": 4.5},
        {"step": 30, "epoch": 0, "train_loss": 3.0, "img_per_s": 90.0, "time": 120.0, "data_wait": 0.4, "max_mem_gib": 4.5},
        {"step": 30, "epoch": 1, "train_loss_avg": 3.5, "val_loss": 3.2},  # epoch line: no rate
    ])
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"step": 40, "trunc\n')  # a line cut off by a timeout is ignored
    fig = gpu_check.train_figures(run, batch=64)
    assert fig["img_per_s"] == 20 * 64 / 20.0  # between the first and last lines: start-up left out
    assert fig["peak_gpu_mem_gib"] == 4.5
    assert fig["updates"] == 30  # the epoch line counts too (an update count not a multiple of log_every)
    assert fig["loss_first"] == 5.0 and fig["loss_last"] == 3.0 and fig["loss_fell"] is True
    assert fig["data_wait_share"] == pytest.approx(0.3)  # the first window (workers starting) is left out


def test_train_figures_of_a_run_that_wrote_nothing(tmp_path):
    fig = gpu_check.train_figures(str(tmp_path / "missing"), batch=8)
    assert fig["updates"] == 0 and fig["img_per_s"] is None and fig["data_wait_share"] is None


def test_workers_needed_from_wait_share_and_one_worker_rate():
    # 1,000 img/s while waiting half the time: the step alone runs at 2,000; 250 per worker -> 8
    out = gpu_check.workers_needed({"img_per_s": 1000.0, "data_wait_share": 0.5}, 250.0, workers=4)
    assert out == {"workers": 4, "per_worker_img_per_s": 250.0, "step_img_per_s": 2000.0, "workers_needed": 8}
    assert gpu_check.workers_needed({"img_per_s": None, "data_wait_share": None}, 250.0, 4)["workers_needed"] is None


def test_a_step_past_its_budget_is_killed_recorded_and_the_check_goes_on(tmp_path):
    scale = dataclasses.replace(gpu_check.cpu_smoke_scale(), budgets={"slow": 1, "quick": 30})
    check = gpu_check.Check(scale, str(tmp_path / "out"), str(tmp_path / "work"), None)
    # the child sleeps in a grandchild: the whole process group must go
    slow = check.run("slow", 1, [sys.executable, "-c", "import subprocess; print('started', flush=True); "
                                 "subprocess.run(['sleep', '60'])"])
    quick = check.run("quick", 2, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert slow.status == "timeout" and slow.wall_s < 20 and "started" in slow.error
    assert quick.status == "failed" and "exit status 3" in quick.error and "boom" in quick.error
    assert sorted(os.listdir(tmp_path / "out" / "logs")) == ["quick.log", "slow.log"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "2,7"], "--steps takes step numbers 1-5"),
    (["--cifar", "/nonexistent"], "has no cifar-10-batches-py/ folder"),
])
def test_bad_command_line_is_one_error_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--cpu-smoke",
                           "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")  # nothing written


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_sane_figures(tmp_path):
    """The five steps at a tiny scale through the same wrapper the GPU machine runs."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--cpu-smoke", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, env=env, timeout=900)
    figures = json.loads((out / "figures.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    steps = figures["steps"]
    assert figures["mode"] == "cpu-smoke" and figures["failed"] == []
    assert set(steps) == {"render", *PRETRAIN_RUNS, "finetune_cifar10"}
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in steps.values())
    assert [s["step"] for s in steps.values()] == [1, 2, 3, 3, 4, 4, 5]
    assert steps["render"]["images"] == 192 and steps["render"]["img_per_s"] > 0
    for name, updates in PRETRAIN_RUNS.items():
        s = steps[name]
        assert s["updates"] == updates, name
        assert s["img_per_s"] > 0 and 0 <= s["data_wait_share"] <= 1, name
        assert math.isfinite(s["loss_first"]) and math.isfinite(s["loss_last"]), name
        assert s["peak_gpu_mem_gib"] is None  # no CUDA here
    r = steps["deit_s16_render"]
    assert r["workers"] == 1 and r["per_worker_img_per_s"] == steps["render_one_worker"]["img_per_s"]
    assert r["step_img_per_s"] >= r["img_per_s"] and r["workers_needed"] >= 1
    f = steps["finetune_cifar10"]
    assert f["eval_ran"] and f["val_samples"] == 16 and 0 <= f["val_acc"] <= 1 and f["img_per_s"] > 0
    assert f["updates"] == 5  # 80 fabricated training images, batch 16
    assert f["init"] == "step 2 weights" and f["data"].startswith("fabricated")
    # what comes back from the GPU machine: at most 8 files, none deeper than OUT/a/b
    files = [os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(out) for n in names]
    assert len(files) <= 8 and all(p.count(os.sep) <= 1 for p in files)
    assert sorted(files) == sorted(["figures.json"] + [f"logs/{n}.log" for n in steps])
    assert "| 5 finetune_cifar10 | ok |" in proc.stdout


def test_gpu_mode_commands_pass_each_stage_config_check(tmp_path, monkeypatch, capsys):
    """The full-scale commands are never run here: check that each one's config, with the check's
    overrides, passes the stage's own typed config check (--print-config) with the intended values."""
    import yaml

    ran = []

    def fake_run(self, name, step, argv):
        ran.append((name, argv))
        if name == "render":  # steps 2 and 4 need the shards' card
            out = argv[argv.index("--out") + 1]
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "dataset.json"), "w").close()
        result = gpu_check.Result(name, step, status="ok", wall_s=1.0)
        self.results.append(result)
        return result

    monkeypatch.setattr(gpu_check.Check, "run", fake_run)
    check = gpu_check.Check(gpu_check.gpu_scale(), str(tmp_path / "out"), str(tmp_path / "work"), None)
    check.all({1, 2, 3, 4, 5})
    assert [name for name, _ in ran] == ["render", *PRETRAIN_RUNS, "finetune_cifar10"]
    render = ran[0][1]
    assert render[1:4] == ["-m", "fractalgen", "render"] and render[render.index("--size") + 1] == "224"
    assert render[render.index("--n") + 1] == "20000"

    from finetune.main import main as finetune_main
    from pretrain.main import main as pretrain_main

    resolved = {}
    for name, argv in ran[1:]:
        assert argv[1:3] == ["-m", "accelerate.commands.launch"] and "--mixed_precision" in argv
        script = next(a for a in argv if a.endswith("/main.py"))
        capsys.readouterr()
        (pretrain_main if script.startswith("pretrain") else finetune_main)(argv[argv.index(script) + 1:] +
                                                                            ["--print-config"])
        resolved[name] = yaml.safe_load(capsys.readouterr().out)
    gpu_updates = {"deit_s16_shards": 300, "deit_s16_render": 100, "render_one_worker": 12, "resnet50": 100,
                   "vit_s32": 100}
    for name, updates in gpu_updates.items():
        cfg = resolved[name]
        assert cfg["precision"] == "bf16" and cfg["img_size"] == 224 and cfg["epochs"] == 1, name
        assert cfg["data"]["train_samples"] == updates * cfg["batch_size"], name
    assert resolved["deit_s16_shards"]["batch_size"] == 1024 and resolved["deit_s16_shards"]["model"] == \
        "deit_small_patch16_224"
    assert resolved["deit_s16_render"]["data"]["source"] == "render"
    assert resolved["deit_s16_render"]["data"]["render"]["kind"] == "multi"
    assert resolved["deit_s16_render"]["aug"]["mixup"] == 0  # multi-label
    assert resolved["render_one_worker"]["data"]["workers"] == 1 and resolved["render_one_worker"]["batch_size"] == 64
    assert resolved["resnet50"]["model"] == "resnet50" and resolved["resnet50"]["channels_last"] is True
    assert resolved["vit_s32"]["model"] == "vit_small_patch32_224"
    ft = resolved["finetune_cifar10"]
    assert ft["img_size"] == 224 and ft["epochs"] == 1 and ft["precision"] == "bf16"
