"""pretrain: learning, shards, 2 processes, kill-and-resume, export, ImageNet readers, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from common.models import create_model
from pretrain.main import main

TINY = "configs/pretrain/tiny_cpu.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["epochs=1", "batch_size=16", "data.val_samples=32", "data.workers=0",
        "data.render={kind: single, n: 64, classes: 4, size: 32, points: 500, seed: 0}"]


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def pretrain_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pretrain.main", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)


def test_loss_falls_and_weights_export(tmp_path):
    run = str(tmp_path / "run")
    main(["--config", TINY, "--out", run, "epochs=3", "data.workers=0", "data.val_samples=64",
          "data.render={kind: fractaldb, n: 384, classes: 4, size: 32, points: 1000, seed: 0, color: true}"])
    steps = [r for r in records(run) if "train_loss" in r and "val_loss" not in r]
    first, last = np.mean([r["train_loss"] for r in steps[:3]]), np.mean([r["train_loss"] for r in steps[-3:]])
    assert last < first - 0.2, (first, last)
    epochs = [r for r in records(run) if "val_acc" in r]
    assert epochs[-1]["val_acc"] > 0.4 and epochs[-1]["val_samples"] == 64
    for name in ("config.yaml", "model.safetensors", "model.json", "final.json"):
        assert os.path.exists(os.path.join(run, name)), name
    side = json.load(open(os.path.join(run, "model.json")))
    assert side["model"] == "resnet10t" and side["num_classes"] == 4 and side["img_size"] == 32
    # the hand-off: a fresh model for another task loads the backbone
    fresh = create_model("resnet10t", 10, img_size=32, init=os.path.join(run, "model.safetensors"))
    from safetensors.torch import load_file

    saved = load_file(os.path.join(run, "model.safetensors"))
    assert all(np.array_equal(saved[k].numpy(), v.numpy()) for k, v in fresh.state_dict().items() if not k.startswith("fc."))


def test_trains_from_shards_and_checks_the_card(tmp_path, fractal_shards):
    run = str(tmp_path / "run")
    main(["--config", TINY, "--data", fractal_shards, "--out", run, "epochs=1", "batch_size=16",
          "data.val_samples=16", "data.workers=0", "log_sample_keys=true"])
    keys = open(os.path.join(run, "sample_keys.rank0.txt")).read().split()[1::2]
    assert len(keys) == (96 // 16) * 16 and all(0 <= int(k) < 96 for k in keys)
    assert json.load(open(os.path.join(run, "model.json")))["source"]["mode"] == "shards"


@pytest.mark.slow
def test_two_processes_disjoint_and_equal_steps(tmp_path, fractal_shards):
    run = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
         "pretrain/main.py", "--config", TINY, "--data", fractal_shards, "--out", run,
         "epochs=2", "batch_size=16", "data.val_samples=16", "data.workers=1", "log_sample_keys=true", "device=cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = []
    for rank in (0, 1):
        lines = [line.split() for line in open(os.path.join(run, f"sample_keys.rank{rank}.txt"))]
        per_rank.append(lines)
    steps = [sorted({int(s) for s, _ in lines}) for lines in per_rank]
    assert steps[0] == steps[1] and len(steps[0]) == 2 * (96 // 16)  # same number of updates on both ranks
    keys = [{k for _, k in lines} for lines in per_rank]
    assert keys[0] and keys[1] and not keys[0] & keys[1]  # ranks read disjoint shards
    assert os.path.exists(os.path.join(run, "model.safetensors"))


def test_kill_and_resume_continues_the_run(tmp_path):
    args = ["--config", TINY, "epochs=3", "checkpoint_every=4", "log_every=1", "data.workers=0",
            "data.val_samples=16", "data.render={kind: fractaldb, n: 256, classes: 4, size: 32, points: 500, color: true}"]
    full = str(tmp_path / "full")
    main([*args, "--out", full])
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "pretrain.main", *args, "--out", killed], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    latest = os.path.join(killed, "checkpoints", "latest")
    while time.time() < deadline and not (os.path.exists(latest) and open(latest).read().strip() >= "step_00000012"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model.safetensors"))
    main([*args, "--out", killed, "--resume"])
    # the resumed run's losses continue the interrupted run and match the uninterrupted one
    a = {r["step"]: r["train_loss"] for r in records(full) if "train_loss" in r and "val_loss" not in r}
    b = {r["step"]: r["train_loss"] for r in records(killed) if "train_loss" in r and "val_loss" not in r}
    assert max(b) == max(a) == 3 * 256 // 32
    # randomness is keyed by (seed, epoch, update, rank), so the resumed updates are the same updates
    for step in range(1, max(a) + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    assert b[13] < b[1] - 0.2  # it continued from the checkpoint, not from a fresh model
    assert len([r for r in records(killed) if "val_loss" in r]) == 3  # no line written twice
    # --resume on the finished run (a trailing slash, an override after it) changes nothing
    before = open(os.path.join(killed, "metrics.jsonl")).read()
    main([*args[:1], TINY, "--resume", *args[2:], "--out", killed + "/"])
    assert open(os.path.join(killed, "metrics.jsonl")).read() == before


def make_imagenet_folder(root, classes=("n01", "n02"), per_class=8):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                arr = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f"{c}_{i}.JPEG"), "JPEG")
    return root


def test_imagenet_folder_source(tmp_path):
    root = make_imagenet_folder(str(tmp_path / "imagenet"))
    run = str(tmp_path / "run")
    main(["--config", TINY, "--data", root, "--out", run, "data.source=imagenet", "epochs=1", "batch_size=8",
          "data.workers=0"])
    final = [r for r in records(run) if "val_acc" in r][-1]
    assert final["val_samples"] == 4
    assert json.load(open(os.path.join(run, "model.json")))["num_classes"] == 2


def test_imagenet_shards_source(tmp_path):
    import io
    import tarfile

    root = tmp_path / "wds"
    rng = np.random.default_rng(0)
    for split, shards in (("train", 2), ("val", 1)):
        os.makedirs(root / split)
        for s in range(shards):
            with tarfile.open(root / split / f"imagenet-{split}-{s:06d}.tar", "w") as tar:
                for i in range(8):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (36, 36, 3)).astype(np.uint8)).save(buf, "JPEG")
                    for ext, data in (("jpg", buf.getvalue()), ("cls", str(i % 3).encode())):
                        info = tarfile.TarInfo(f"s{s}_{i:04d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    run = str(tmp_path / "run")
    main(["--config", TINY, "--data", str(root), "--out", run, "data.source=imagenet", "data.num_classes=3",
          "data.train_samples=16", "epochs=1", "batch_size=8", "data.workers=0"])
    final = [r for r in records(run) if "val_acc" in r][-1]
    assert final["val_samples"] == 8


@pytest.mark.parametrize("extra, words", [
    (["model=no_such_net"], "unknown model"),
    (["no_such_key=1"], "no key 'no_such_key'"),
    (["batch_size=15", "grad_accum=2"], "does not divide"),
    (["--data", "/nonexistent/folder"], "does not exist"),
])
def test_bad_input_one_line(tmp_path, extra, words):
    result = pretrain_cli("--config", TINY, "--out", str(tmp_path / "run"), *FAST, *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines and lines[-1].startswith("error:") and words in lines[-1], result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")


def test_mismatched_shards_and_classless_imagenet(tmp_path, fractal_shards):
    broken = tmp_path / "broken"
    shutil.copytree(fractal_shards, broken)
    os.remove(broken / "single-000002.tar")
    result = pretrain_cli("--config", TINY, "--data", str(broken), "--out", str(tmp_path / "r1"), *FAST)
    assert result.returncode == 2 and "single-000002.tar" in result.stderr and "missing" in result.stderr
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "val").mkdir()
    result = pretrain_cli("--config", TINY, "--data", str(tmp_path / "noclass"), "--out", str(tmp_path / "r2"),
                          *FAST, "data.source=imagenet")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error:"), result.stderr[-2000:]
    result = pretrain_cli("--config", TINY, "--data", str(tmp_path), "--out", str(tmp_path / "r3"), *FAST)
    assert result.returncode == 2 and "dataset.json" in result.stderr


def test_diverging_run_stops_with_one_line_and_keeps_good_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = pretrain_cli("--config", TINY, "--out", str(run), *FAST, "optim.lr=1e30", "checkpoint_every=1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("error:") and "lower optim.lr" in lines[-1], result.stderr[-1500:]
    from safetensors.torch import load_file

    for ckpt in (run / "checkpoints").glob("step_*"):
        for tensor in load_file(str(ckpt / "model.safetensors")).values():
            assert tensor.isfinite().all(), ckpt
    assert not (run / "model.safetensors").exists()
