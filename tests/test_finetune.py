"""finetune: readers in the real formats, every mode, resampling, probes, few-shot, report, 2-process eval."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from PIL import Image

from common.errors import UserError
from common.models import create_model, export_model
from finetune import datasets
from finetune.fewshot import few_shot, ridge_fit, ridge_predict
from finetune.main import main
from finetune.report import _count, dataset_name, main as report_main
from tests.conftest import CIFAR_SUBSET, write_cifar10, write_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = "configs/finetune/imagefolder.yaml"
QUICK = ["model=test_vit", "epochs=2", "batch_size=8", "data.workers=0", "eval_batch=16"]


def test_cifar10_reader(tmp_path):
    root = write_cifar10(str(tmp_path), per_batch=7)
    split = datasets.load_cifar10(root)
    assert len(split.train) == 35 and len(split.val) == 7 and split.classes[3] == "class3"
    image, label = split.train[0]
    assert image.size == (32, 32) and 0 <= int(label) < 10
    # planes R, G, B of the pickle become the channels of the image
    raw = pickle.load(open(os.path.join(root, "cifar-10-batches-py", "data_batch_1"), "rb"), encoding="latin1")
    assert np.array_equal(np.asarray(image)[..., 1].ravel(), raw["data"][0][1024:2048])


def test_holdout_replaces_the_test_split_with_training_images(tmp_path):
    root = write_cifar10(str(tmp_path), per_batch=20)  # 100 training images, 10 per class
    full = datasets.load_cifar10(root)
    data = {"format": "cifar10", "path": root, "holdout": 0.2, "split_seed": 3}
    split = datasets.load({"data": data})
    assert len(split.train) == 80 and len(split.val) == 20
    assert np.bincount(split.val.targets, minlength=10).tolist() == [2] * 10  # stratified
    # the two parts are the training images, disjoint, and none of them is a test image
    rows = lambda ds: {ds.images[i].tobytes() for i in range(len(ds))}  # noqa: E731
    assert rows(split.train) | rows(split.val) == rows(full.train) and not rows(split.train) & rows(split.val)
    assert not rows(split.val) & rows(full.val)
    again = datasets.load({"data": dict(data)})
    assert np.array_equal(again.val.images, split.val.images)  # seeded
    with pytest.raises(UserError, match="holdout"):
        datasets.load({"data": {**data, "holdout": 1.5}})
    assert dataset_name({"dataset": "cifar10", "train_images": 1000, "holdout": 0.1}) == "cifar10 (1000 img, holdout 0.1)"


@pytest.mark.skipif(not os.path.isdir(CIFAR_SUBSET), reason="../shared/datasets/cifar10-subset is not on this machine")
def test_cifar10_reader_on_real_subset():
    split = datasets.load_cifar10(CIFAR_SUBSET)
    assert len(split.train) == 10_000 and len(split.val) == 2_000 and split.classes[0] == "airplane"


def test_cifar100_reader_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 12), ("test", 5)):
        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                     "coarse_labels": [i % 3 for i in range(n)], "filenames": [""] * n}, open(folder / name, "wb"))
    pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
                open(folder / "meta", "wb"))
    fine, coarse = datasets.load_cifar100(str(tmp_path)), datasets.load_cifar100(str(tmp_path), "coarse")
    assert len(fine.classes) == 100 and len(coarse.classes) == 20
    assert int(fine.train[5][1]) == 5 and int(coarse.train[5][1]) == 2 and len(fine.val) == 5


def write_plant(root, n_per=6):
    os.makedirs(os.path.join(root, "train_images"))
    labels = ["healthy", "scab", "rust", "scab frog_eye_leaf_spot", "complex", "powdery_mildew"]
    rows = []
    rng = np.random.default_rng(0)
    for k, lab in enumerate(labels):
        for i in range(n_per):
            name = f"{k}_{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (120, 180, 3)).astype(np.uint8)).save(os.path.join(root, "train_images", name))
            rows.append(f"{name},{lab}")
    open(os.path.join(root, "train.csv"), "w").write("image,labels\n" + "\n".join(rows) + "\n")
    return root


def test_plant_pathology_modes_split_and_cache(tmp_path):
    root = write_plant(str(tmp_path / "pp"))
    twelve = datasets.load_plant_pathology(root, "12class", val_fraction=0.34, seed=1, cache_size=48)
    assert len(twelve.classes) == 6 and not twelve.multilabel
    assert len(twelve.train) + len(twelve.val) == 36 and len(twelve.val) == 12  # 2 of every label string
    assert sorted(int(t) for t in twelve.val.targets) == sorted(list(range(6)) * 2)
    assert min(twelve.train[0][0].size) == 48  # read from the resized cache
    multi = datasets.load_plant_pathology(root, "multilabel", val_fraction=0.34, seed=1, cache_size=48)
    assert multi.multilabel and multi.classes == datasets.PLANT_LABELS
    both = [t for t in multi.train.targets if t.sum() == 2]
    assert both and all(t[datasets.PLANT_LABELS.index("scab")] == 1 for t in both)


def test_imagefolder_reader_and_layout_errors(tmp_path):
    root = write_imagefolder(str(tmp_path / "f"), classes=("cat", "dog"), per_class=3)
    split = datasets.load_imagefolder(root)
    assert split.classes == ["cat", "dog"] and len(split.train) == 6 and len(split.val) == 4
    with pytest.raises(UserError, match="expected train/<class>/ and val/<class>/, found"):
        datasets.load_imagefolder(str(tmp_path))
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        datasets.load_cifar10(str(tmp_path))


@pytest.mark.parametrize("mode", ["finetune", "linear_probe", "few_shot"])
def test_every_mode_runs(tmp_path, imagefolder, mode):
    run = str(tmp_path / "run")
    extra = ["few_shot.shots=[1, 2]", "few_shot.trials=2"] if mode == "few_shot" else []
    main(["--config", CFG, "--data", imagefolder, "--out", run, f"mode={mode}", *QUICK, *extra])
    final = json.load(open(os.path.join(run, "final.json")))
    assert final["mode"] == mode and os.path.exists(os.path.join(run, "config.yaml"))
    if mode == "few_shot":
        assert set(final["few_shot"]) >= {"1shot_acc", "2shot_acc"}
        return
    assert final["last_epoch"]["epoch"] == 2 and "val_acc" in final["best_epoch"]
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    epochs = [r for r in lines if "val_acc" in r]
    assert len(epochs) == 2 and all({"train_loss", "train_acc", "train_macro_f1", "val_loss", "val_macro_f1"} <= set(r) for r in epochs)
    for name in ("curves.png", "confusion.png", "confusion.csv", "model.safetensors"):
        assert os.path.exists(os.path.join(run, name)), name
    assert np.loadtxt(os.path.join(run, "confusion.csv"), delimiter=",").sum() == 12  # 3 classes x 4 val images


def test_eval_every_half_epoch_evaluates_inside_epochs(tmp_path, imagefolder):
    run = str(tmp_path / "run")
    main(["--config", CFG, "--data", imagefolder, "--out", run, *QUICK, "batch_size=2", "eval_every=0.5"])
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    evaluated = [r for r in lines if "val_acc" in r]
    assert [r["epoch"] for r in evaluated] == [0.5, 1, 1.5, 2]
    assert [r["step"] for r in evaluated] == sorted({r["step"] for r in evaluated})  # in order, once each
    final = json.load(open(os.path.join(run, "final.json")))
    assert final["epochs"] == 2 and final["last_epoch"]["epoch"] == 2 and "train_acc" in final["last_epoch"]
    for bad in ("eval_every=0", "eval_every=abc"):
        with pytest.raises(UserError, match="eval_every must be a number > 0"):
            main(["--config", CFG, "--data", imagefolder, "--out", str(tmp_path / "bad"), *QUICK, bad])
        assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_linear_probe_leaves_backbone_bit_identical(tmp_path, imagefolder):
    pre = tmp_path / "pre"
    base = create_model("test_resnet", 5, img_size=32)  # a CNN: BatchNorm statistics must not move either
    export_model(base, str(pre), {"model": "test_resnet", "num_classes": 5, "img_size": 32, "mean": [0.5] * 3,
                                  "std": [0.5] * 3})
    run = str(tmp_path / "run")
    main(["--config", CFG, "--data", imagefolder, "--init", str(pre / "model.safetensors"), "--out", run,
          "mode=linear_probe", "epochs=2", "batch_size=8", "data.workers=0", "optim.lr=0.05"])

    after = load_file(os.path.join(run, "model.safetensors"))
    before = base.state_dict()
    head = base.default_cfg["classifier"]
    for key, value in before.items():
        if not key.startswith(head + "."):
            assert torch.equal(value, after[key]), key
    assert after[head + ".weight"].shape[0] == 3


def test_vit_position_embeddings_resampled_from_224(tmp_path, imagefolder, capsys):
    pre = tmp_path / "pre"
    vit = create_model("test_vit", 10, img_size=224)
    export_model(vit, str(pre), {"model": "test_vit", "num_classes": 10, "img_size": 224, "mean": [0.5] * 3,
                                 "std": [0.5] * 3})
    # loading resamples the 14x14 grid to 3x3 (48 px) exactly as timm's resampler does
    from timm.layers import resample_abs_pos_embed

    small = create_model("test_vit", 3, img_size=48, init=str(pre / "model.safetensors"))
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=(3, 3), num_prefix_tokens=1)
    assert small.pos_embed.shape == (1, 10, 64) and torch.allclose(small.pos_embed, expected)
    assert torch.equal(small.pos_embed[:, :1], vit.pos_embed[:, :1])  # the class token's embedding is kept
    # and a fine-tune at 48 px trains and exports that 3x3 grid
    run = str(tmp_path / "run")
    main(["--config", CFG, "--data", imagefolder, "--init", str(pre / "model.safetensors"), "--out", run,
          "epochs=1", "batch_size=8", "data.workers=0", "img_size=48"])
    assert json.load(open(os.path.join(run, "model.json")))["img_size"] == 48
    # the base recipe's 1-epoch warm-up is the whole of this 1-epoch run: trained, with a warning
    assert "warning: optim.warmup_epochs (1) is not less than epochs (1)" in capsys.readouterr().err
    assert load_file(os.path.join(run, "model.safetensors"))["pos_embed"].shape == (1, 10, 64)


def test_few_shot_ridge_is_exact_on_separable_features():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 10
    labels = np.repeat(np.arange(4), 30)
    feats = centres[labels] + rng.normal(0, 0.1, (120, 16))
    w = ridge_fit(feats, labels, 4, l2=1e-3)
    assert (ridge_predict(w, feats) == labels).all()
    train, val = np.arange(120) % 3 != 0, np.arange(120) % 3 == 0  # every class on both sides
    result = few_shot(feats[train], labels[train], feats[val], labels[val], 4, shots=(1, 5), trials=3)
    assert result["1shot_acc"] == 1.0 and result["5shot_acc"] == 1.0
    # the closed form is the least-squares solution: zero gradient of the ridge objective
    x = np.hstack([feats, np.ones((120, 1))])
    y = -np.ones((120, 4))
    y[np.arange(120), labels] = 1
    assert np.allclose(x.T @ (x @ w - y) + 1e-3 * w, 0, atol=1e-6)


def fake_run(root, name, source, acc, seed, dataset="cifar10", model="vit_tiny", images=None):
    run = os.path.join(root, name)
    os.makedirs(run)
    src = None if source is None else {"kind": source, **({"images_seen": images} if images else {})}
    final = {"mode": "finetune", "model": model, "init": "scratch" if source is None else "x/model.safetensors",
             "dataset": dataset, "pretrain_source": src, "seed": seed,
             "train_images": None, "last_epoch": {"epoch": 3, "val_acc": acc, "val_macro_f1": acc - 0.05},
             "best_epoch": {"epoch": 2, "val_acc": acc + 0.01}}
    json.dump(final, open(os.path.join(run, "final.json"), "w"))
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for e in range(1, 4):
            f.write(json.dumps({"epoch": e, "val_acc": acc * e / 3}) + "\n")
    return run


def test_report_from_fabricated_runs(tmp_path, capsys):
    runs = [fake_run(tmp_path, f"s{s}", None, 0.40 + 0.02 * s, s) for s in range(3)]
    runs += [fake_run(tmp_path, f"m{s}", "multi", 0.50 + 0.02 * s, s) for s in range(3)]
    out = tmp_path / "report"
    report_main([*runs, "--out", str(out)])
    text = (out / "report.md").read_text()
    assert "| vit_tiny | scratch | 42.0 ± 1.6 (n=3)" in text and "| vit_tiny | multi | 52.0 ± 1.6 (n=3)" in text
    assert "best acc (extra)" in text
    assert "| vit_tiny | multi | cifar10 | +10.0 | 3 of 3 |" in text  # curves acc*e/3 reach 0.42 at epoch 3
    assert (out / "bars.png").stat().st_size > 1000 and (out / "curves.png").stat().st_size > 1000
    report_main([str(tmp_path), "--out", str(tmp_path / "r2")])  # parent folders are searched
    assert "(n=3)" in (tmp_path / "r2" / "report.md").read_text()


def test_report_draws_accuracy_against_pretraining_budget(tmp_path):
    runs = [fake_run(tmp_path, f"s{s}", None, 0.40, s) for s in range(2)]
    for n, acc in ((25_000, 0.38), (100_000, 0.42), (400_000, 0.47)):
        runs += [fake_run(tmp_path, f"b{n}-{s}", "single", acc + 0.01 * s, s, images=n) for s in range(2)]
    out = tmp_path / "report"
    report_main([*runs, "--out", str(out)])
    text = (out / "report.md").read_text()
    assert "| vit_tiny | single (25k img) | 38.5 ± 0.5 (n=2)" in text and "| vit_tiny | single (400k img) |" in text
    assert "budget.png" in text and (out / "budget.png").stat().st_size > 1000
    report_main([*runs[:4], "--out", str(tmp_path / "r2")])  # one budget per kind: no budget picture
    assert not (tmp_path / "r2" / "budget.png").exists()
    assert [_count(n) for n in (99_968, 149_888, 2_048, 1_200_000, 512)] == ["100k", "150k", "2.05k", "1.2M", "512"]


def test_bad_inputs(tmp_path, imagefolder):
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "finetune.main", "--config", CFG, "--data", imagefolder,
                            "--out", str(tmp_path / "o"), *QUICK, *args], capture_output=True, text=True, cwd=ROOT)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines[-1].startswith("error:"), r.stderr[-2000:]
        return lines[-1]

    assert "augment must be one of" in run("augment=fancy")
    pre = tmp_path / "pre"
    export_model(create_model("test_vit", 3, img_size=32), str(pre),
                 {"model": "test_vit", "num_classes": 3, "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert "test_vit" in run("--init", str(pre / "model.safetensors"), "model=test_resnet")
    plant = write_plant(str(tmp_path / "pp"), n_per=2)
    r = subprocess.run([sys.executable, "-m", "finetune.main", "--config", "configs/finetune/plant_pathology_12class.yaml",
                        "--data", plant, "--out", str(tmp_path / "o2"), *QUICK, "data.mode=multilabel", "img_size=32"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "multi-label" in r.stderr.strip().splitlines()[-1]


def test_head_size_difference_is_logged_not_fatal(tmp_path, imagefolder, caplog):
    pre = tmp_path / "pre"
    export_model(create_model("test_vit", 7, img_size=32), str(pre),
                 {"model": "test_vit", "num_classes": 7, "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    import logging

    with caplog.at_level(logging.WARNING):
        main(["--config", CFG, "--data", imagefolder, "--init", str(pre / "model.safetensors"),
              "--out", str(tmp_path / "run"), *QUICK[1:], "epochs=1"])
    assert any("re-initialised classifier" in r.message for r in caplog.records)


@pytest.mark.slow
def test_two_process_evaluation_counts_every_sample_once(tmp_path):
    script = tmp_path / "eval.py"
    script.write_text(
        "import json, sys, torch\n"
        "from accelerate import Accelerator\n"
        "from common.engine import predict\n"
        "acc = Accelerator(cpu=True)\n"
        "data = torch.utils.data.TensorDataset(torch.arange(13.).reshape(13, 1), torch.arange(13))\n"
        "logits, targets = predict(torch.nn.Identity(), data, acc, batch=4)\n"
        "if acc.is_main_process:\n"
        "    json.dump({'world': acc.num_processes, 'targets': targets.tolist()}, open(sys.argv[1], 'w'))\n"
        "acc.wait_for_everyone()\n"
        "acc.end_training()  # a clean exit of the process group (an abrupt one can abort under load)\n")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", "29544", str(script), str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    result = json.load(open(out))
    assert result["world"] == 2 and sorted(result["targets"]) == list(range(13))
