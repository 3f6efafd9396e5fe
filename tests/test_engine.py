"""The engine: metrics from scikit-learn, streaming training metrics, parameter groups, run folders,
checkpoints that resume exactly without unpickling, Ctrl-C, a full disk at export, weight EMA, and
errors on one rank of a 2-process run."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from common import metrics, runs
from common.engine import Interrupted, Trainer, param_groups
from common.errors import UserError
from common.models import build
from finetune import main as finetune_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = "configs/finetune/imagefolder.yaml"
QUICK = ["model=test_vit", "epochs=2", "batch_size=8", "data.workers=0", "eval_batch=16", "log_every=1"]


def finetune(*args):
    finetune_main.main(["--config", CFG, *QUICK, *args])


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def comparable(rows):
    """Records without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "img_per_s", "data_wait", "max_mem_gib")} for r in rows]


# --- metrics ------------------------------------------------------------------------------------


def old_single_label(logits, y_true, num_classes):
    """The hand-written metrics this project had before scikit-learn (reference values)."""
    pred = logits.argmax(1)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, pred), 1)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros(num_classes), where=denom > 0)
    present = cm.sum(1) > 0
    return {"acc": float((pred == y_true).mean()), "macro_f1": float(f1[present].mean()), "confusion": cm}


def old_average_precision(scores, relevant):
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def test_metrics_keep_their_values():
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(50, 5)), rng.integers(0, 4, 50)  # class 4 never occurs: left out of the macro
    new, old = metrics.single_label(logits, y, 5), old_single_label(logits, y, 5)
    assert new["acc"] == pytest.approx(old["acc"]) and new["macro_f1"] == pytest.approx(old["macro_f1"])
    assert np.array_equal(new["confusion"], old["confusion"]) and new["confusion"][1, 2] == ((y == 1) & (logits.argmax(1) == 2)).sum()
    scores, labels = rng.normal(size=(40, 3)), rng.random((40, 3)) < 0.4  # continuous scores: no ties
    labels[:, 2] = False  # a label with no positive is left out of the mAP
    result = metrics.multi_label(scores, labels)
    assert result["map"] == pytest.approx(np.mean([old_average_precision(scores[:, k], labels[:, k]) for k in (0, 1)]))
    pred = scores >= 0
    tp = (pred & labels).sum(0)
    f1 = np.divide(2 * tp, 2 * tp + (pred & ~labels).sum(0) + (~pred & labels).sum(0),
                   out=np.zeros(3), where=(2 * tp + (pred & ~labels).sum(0) + (~pred & labels).sum(0)) > 0)
    assert result["per_label_f1"] == np.round(f1, 4).tolist() and result["macro_f1"] == pytest.approx(f1.mean())
    assert result["acc"] == pytest.approx((pred == labels).all(1).mean())


@pytest.mark.parametrize("multilabel", [False, True])
def test_streaming_metrics_equal_the_whole_epoch(multilabel):
    acc = Accelerator(cpu=True)
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(30, 4)), dtype=torch.float32)
    targets = torch.tensor(rng.random((30, 4)) < 0.5).float() if multilabel else torch.tensor(rng.integers(0, 4, 30))
    stream = metrics.StreamingMetrics(4, multilabel, acc.device)
    for i in range(0, 30, 7):  # uneven batches
        stream.update(logits[i:i + 7], targets[i:i + 7])
    state = stream.state_dict()  # a checkpoint inside the epoch keeps the accumulators
    stream = metrics.StreamingMetrics(4, multilabel, acc.device)
    stream.load_state_dict(state)
    got = stream.result(acc)
    whole = metrics.compute(logits.numpy(), targets.numpy(), 4, multilabel)
    loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, targets) if multilabel
            else torch.nn.functional.cross_entropy(logits, targets))
    assert got["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert got["acc"] == pytest.approx(whole["acc"]) and got["macro_f1"] == pytest.approx(whole["macro_f1"])
    if multilabel:
        assert got["map"] == pytest.approx(whole["map"])
    else:  # memory independent of the epoch: a confusion matrix, no logits
        assert not stream.scores and stream.confusion.numel() == 16


def test_head_lr_scale_multiplies_the_head_lr_only():
    model = build("test_vit", 3, img_size=32)
    opt_cfg = {"layer_decay": None, "weight_decay": 0.05, "head_lr_scale": 10.0}
    groups = param_groups(model, opt_cfg)
    head = {id(p) for p in model.get_classifier().parameters()}
    scaled = [g for g in groups if g.get("lr_scale") == 10.0]
    assert {id(p) for g in scaled for p in g["params"]} == head  # weight and bias (bias without decay)
    assert sorted(g["weight_decay"] for g in scaled) == [0.0, 0.05]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    model.requires_grad_(False)  # a linear probe: only the trainable head is optimised
    model.get_classifier().requires_grad_(True)
    assert {id(p) for g in param_groups(model, opt_cfg) for p in g["params"]} == head


# --- run folders ----------------------------------------------------------------------------------


def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(tmp_path, monkeypatch, capsys):
    from common import engine

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert engine.cpu_has_native_bf16(str(cpuinfo)) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n")
    assert engine.cpu_has_native_bf16(str(cpuinfo)) is True
    assert engine.cpu_has_native_bf16(str(tmp_path / "missing")) is None
    from accelerate.state import AcceleratorState

    cfg = {"precision": "bf16", "device": "cpu", "grad_accum": 1}
    for native, precision, warned in ((False, "bf16", True), (True, "bf16", False), (None, "bf16", False),
                                      (False, "no", False)):
        monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda native=native: native)
        AcceleratorState._reset_state(reset_partial_state=True)  # one mixed-precision setting per process
        engine.make_accelerator({**cfg, "precision": precision})
        assert ("precision=bf16 on a CPU without native bf16" in capsys.readouterr().out) == warned
    AcceleratorState._reset_state(reset_partial_state=True)


def test_run_folder_rules(tmp_path):
    acc = Accelerator(cpu=True)
    run = tmp_path / "run"
    cfg = {"run_dir": str(run) + "/", "seed": 0, "optim": {"lr": 0.1}}
    assert runs.prepare(dict(cfg), False, acc) == runs.FRESH
    assert runs.prepare(dict(cfg), True, acc) == runs.FRESH  # nothing to resume: it starts
    run.mkdir()
    (run / "config.yaml").write_text("run_dir: /elsewhere/run\nseed: 0\noptim: {lr: 0.1}\n")
    with pytest.raises(UserError, match="already holds a run; add --resume"):
        runs.prepare(dict(cfg), False, acc)
    moved = dict(cfg)
    assert runs.prepare(moved, True, acc) == runs.RESUME and moved["run_dir"] == str(run)  # trailing slash, moved
    with pytest.raises(UserError, match=r"differs in: optim\.lr"):
        runs.prepare({**cfg, "optim": {"lr": 0.2}}, True, acc)
    (run / "final.json").write_text("{}")
    assert runs.prepare(dict(cfg), True, acc) == runs.FINISHED
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no config.yaml"):
        runs.prepare({**cfg, "run_dir": str(tmp_path / "other")}, False, acc)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        runs.prepare({**cfg, "run_dir": str(tmp_path / "file")}, False, acc)
    with pytest.raises(UserError, match="cannot be created"):
        runs.prepare({**cfg, "run_dir": str(tmp_path / "file" / "run")}, False, acc)


def test_finetune_rerun_refused_and_finished_run_untouched(tmp_path, imagefolder, capsys):
    run = str(tmp_path / "run")
    finetune("--data", imagefolder, "--out", run)
    before = {name: open(os.path.join(run, name), "rb").read() for name in ("final.json", "metrics.jsonl",
                                                                             "model.safetensors", "config.yaml")}
    with pytest.raises(UserError, match="already holds a run"):
        finetune("--data", imagefolder, "--out", run, "optim.lr=1e-2")
    # --resume before an override, a trailing slash: a finished run is reported, not trained again
    finetune_main.main(["--config", CFG, "--resume", *QUICK, "--data", imagefolder, "--out", run + "/"])
    assert "is a finished run" in capsys.readouterr().out
    moved = str(tmp_path / "moved")
    shutil.move(run, moved)
    finetune("--data", imagefolder, "--out", moved, "--resume")
    for name, content in before.items():
        assert open(os.path.join(moved, name), "rb").read() == content, name


# --- checkpoints and exact resume ---------------------------------------------------------------


def test_interrupted_finetune_resumes_exactly(tmp_path, imagefolder, monkeypatch):
    """Ctrl-C at update 5 (checkpoints every 2 updates and at epoch ends), then --resume: the same
    records as the uninterrupted run, none twice; training metrics accumulated across the resume."""
    args = ["--data", imagefolder, "epochs=3", "checkpoint_every=2", "keep_checkpoints=3", "augment=basic"]
    full = str(tmp_path / "full")
    finetune(*args, "--out", full)
    steps = [d for d in os.listdir(os.path.join(full, "checkpoints")) if d.startswith("step_")]
    assert sorted(steps) == ["step_00000006", "step_00000008", "step_00000009"]  # every epoch end, kept 3

    cut = str(tmp_path / "cut")
    original = Trainer.update

    def update(self, *a):
        if self.progress.step == 5:
            raise KeyboardInterrupt
        return original(self, *a)

    monkeypatch.setattr(Trainer, "update", update)
    with pytest.raises(Interrupted, match="interrupted at update 5; the last checkpoint is .*step_00000004"):
        finetune(*args, "--out", cut)
    monkeypatch.setattr(Trainer, "update", original)
    assert not os.path.exists(os.path.join(cut, "final.json"))
    finetune(*args, "--out", cut, "--resume")
    assert comparable(records(cut)) == comparable(records(full))
    a, b = json.load(open(os.path.join(full, "final.json"))), json.load(open(os.path.join(cut, "final.json")))
    assert a["last_epoch"] == b["last_epoch"] and a["last_epoch"]["train_acc"] is not None
    wa, wb = load_file(os.path.join(full, "model.safetensors")), load_file(os.path.join(cut, "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finetune_results_do_not_depend_on_loader_workers(tmp_path, imagefolder):
    """Augmentation is keyed by (seed, epoch, index): the same run with 0 or 2 loader workers."""
    for workers in (0, 2):
        finetune("--data", imagefolder, "--out", str(tmp_path / f"w{workers}"), "epochs=1", "augment=basic",
                 f"data.workers={workers}")
    assert comparable(records(tmp_path / "w0")) == comparable(records(tmp_path / "w2"))


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/fractal-engine-test-payload-ran"


def test_resume_skips_an_unreadable_newest_checkpoint_and_never_unpickles(tmp_path, imagefolder, capfd):
    run = str(tmp_path / "run")
    finetune("--data", imagefolder, "--out", run, "epochs=1", "keep_checkpoints=3", "checkpoint_every=1")
    os.remove(os.path.join(run, "final.json"))  # pretend it stopped after its last checkpoint
    ckpts = sorted(os.listdir(os.path.join(run, "checkpoints")))
    ckpts = [c for c in ckpts if c.startswith("step_")]
    assert ckpts == ["step_00000001", "step_00000002", "step_00000003"]
    newest, middle = (os.path.join(run, "checkpoints", c) for c in ckpts[:0:-1])
    with open(os.path.join(newest, "model.safetensors"), "r+b") as f:  # truncated by a full disk
        f.truncate(100)
    if os.path.exists(MARKER):
        os.remove(MARKER)
    with open(os.path.join(middle, "optimizer.pt"), "wb") as f:  # a pickle payload in place of the state
        pickle.dump({"state": Payload()}, f)
    state = json.load(open(os.path.join(middle, "state.json")))
    state["files"]["optimizer.pt"] = os.path.getsize(os.path.join(middle, "optimizer.pt"))
    json.dump(state, open(os.path.join(middle, "state.json"), "w"))
    finetune("--data", imagefolder, "--out", run, "epochs=1", "keep_checkpoints=3", "checkpoint_every=1", "--resume")
    err = capfd.readouterr()
    assert not os.path.exists(MARKER)
    assert f"warning: checkpoint {newest} cannot be read" in err.err and f"warning: checkpoint {middle}" in err.err
    assert "resumed from" in err.out + err.err and "step_00000001 at update 1" in err.out + err.err
    assert os.path.exists(os.path.join(run, "final.json"))
    assert [r["step"] for r in records(run) if "lr" in r] == [1, 2, 3]  # redone after the oldest, once each


def test_full_disk_at_export_keeps_the_weights(tmp_path, imagefolder, monkeypatch):
    run = str(tmp_path / "run")

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finetune_main, "export_model", full_disk)
    with pytest.raises(UserError, match=r"No space left on device.*kept in .*step_00000006.*--resume"):
        finetune("--data", imagefolder, "--out", run)
    assert not os.path.exists(os.path.join(run, "final.json"))
    monkeypatch.undo()
    finetune("--data", imagefolder, "--out", run, "--resume")
    final = json.load(open(os.path.join(run, "final.json")))
    assert final["last_epoch"]["epoch"] == 2 and os.path.exists(os.path.join(run, "model.safetensors"))
    assert len([r for r in records(run) if "val_acc" in r]) == 2  # nothing trained or logged twice


def test_full_disk_at_a_checkpoint_is_one_line_and_resumes(tmp_path, imagefolder, monkeypatch):
    run = str(tmp_path / "run")
    real_save, calls = torch.save, []

    def full_disk_on_second(obj, path, *a, **k):  # what torch.save raises when the disk fills mid-write
        calls.append(path)
        if len(calls) == 2:
            open(path, "wb").close()
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk_on_second)
    with pytest.raises(UserError, match=r"could not write a checkpoint into .*checkpoints \(\[enforce fail.*MiB free "
                                        r"there\); the last complete checkpoint is .*step_00000001; free space and run "
                                        r"the same command again with --resume"):
        finetune("--data", imagefolder, "--out", run, "checkpoint_every=1")
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["latest", "step_00000001"]  # no partial folder
    assert not os.path.exists(os.path.join(run, "final.json"))
    monkeypatch.undo()
    finetune("--data", imagefolder, "--out", run, "checkpoint_every=1", "--resume")
    assert json.load(open(os.path.join(run, "final.json")))["last_epoch"]["epoch"] == 2
    assert [r["step"] for r in records(run) if "lr" in r] == [1, 2, 3, 4, 5, 6]  # update 2 redone, logged once


def test_ema_weights_are_evaluated_and_exported(tmp_path, imagefolder):
    run = str(tmp_path / "run")
    finetune("--data", imagefolder, "--out", run, "ema.enabled=true", "ema.decay=0.5", "optim.head_lr_scale=10")
    final = json.load(open(os.path.join(run, "final.json")))
    side = json.load(open(os.path.join(run, "model.json")))
    assert final["weights"] == side["weights"] == "ema (decay 0.5)"
    last = os.path.join(run, "checkpoints", "step_00000006")
    exported, ema, raw = (load_file(p) for p in (os.path.join(run, "model.safetensors"),
                                                 os.path.join(last, "ema.safetensors"),
                                                 os.path.join(last, "model.safetensors")))
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert not all(torch.equal(exported[k], raw[k]) for k in exported)


# --- processes ------------------------------------------------------------------------------------


def test_ctrl_c_one_line_exit_130_checkpoint_intact(tmp_path, imagefolder):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "finetune.main", "--config", CFG, *QUICK, "epochs=200",
                             "checkpoint_every=1", "--data", imagefolder, "--out", str(run)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (nohup, `&`) ignores SIGINT, and a child
                            # inherits that: give it the terminal's default, as Ctrl-C finds it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and lines[-1].startswith("error: interrupted at update"), err[-2000:]
    assert "Traceback" not in err and "--resume" in lines[-1]
    for ckpt in (run / "checkpoints").glob("step_*"):
        if "." not in ckpt.name:
            json.load(open(ckpt / "state.json"))
            load_file(str(ckpt / "model.safetensors"))


@pytest.mark.slow
def test_run_folder_error_on_two_processes_ends_both(tmp_path, imagefolder):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")  # a used folder: every rank refuses it
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29561", "finetune/main.py", "--config", CFG, *QUICK, "device=cpu",
                        "--data", imagefolder, "--out", str(run)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and time.time() - start < 300
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("already holds a run" in line for line in errors), r.stderr[-3000:]
    assert (run / "config.yaml").read_text() == "seed: 0\n"


@pytest.mark.slow
def test_two_process_finetune_streams_train_metrics_and_checkpoints(tmp_path, imagefolder):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29563", "finetune/main.py", "--config", CFG, *QUICK, "device=cpu",
                        "epochs=1", "checkpoint_every=1", "--data", imagefolder, "--out", str(run)],
                       capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    last = json.load(open(run / "final.json"))["last_epoch"]
    assert last["val_samples"] == 12 and 0 <= last["train_acc"] <= 1 and last["step"] == 3  # 24 images, 4 per rank
    ckpt = run / "checkpoints" / "step_00000003"
    state = json.load(open(ckpt / "state.json"))
    assert state["world_size"] == 2 and {"rank0.safetensors", "rank1.safetensors"} <= set(state["files"])
    counts = [int(load_file(str(ckpt / f"rank{k}.safetensors"))["metrics.count"]) for k in (0, 1)]
    assert counts == [0, 0]  # saved after the epoch's metrics were reported and reset


@pytest.mark.slow
def test_error_on_one_rank_only_ends_both_processes(tmp_path):
    """The safety net: an error only rank 0 sees (the other rank waits in a barrier) still ends the run."""
    script = tmp_path / "one_rank.py"
    script.write_text(
        "from accelerate import Accelerator\n"
        "from common.errors import UserError, run_main\n"
        "def main():\n"
        "    acc = Accelerator(cpu=True)\n"
        "    if acc.is_main_process:\n"
        "        raise UserError('only rank 0 sees this')\n"
        "    acc.wait_for_everyone()\n"
        "run_main(main)\n")
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29562", str(script)],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert r.returncode != 0 and "error: only rank 0 sees this" in r.stderr, r.stderr[-3000:]
