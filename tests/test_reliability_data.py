"""Data safety: nothing executes from a data file, bad labels and damaged images are named in one
line, damaged or empty shards never hang, resume is exact on shards, concurrent renders agree."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.errors import UserError
from finetune import datasets
from tests.conftest import CIFAR_SUBSET, write_cifar10, write_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT)


def one_error_line(result, *words):
    """The command failed with exit 2 and a single `error:` line holding every word."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- CIFAR pickles: a restricted unpickler


class WritesAFile:
    """A pickle payload: unpickling it with plain pickle creates `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def cifar_batch_path(root, name="data_batch_1"):
    return os.path.join(root, "cifar-10-batches-py", name)


def test_cifar_payload_never_runs_in_finetune_or_analyze(tmp_path):
    root = write_cifar10(str(tmp_path / "cifar"))
    marker = tmp_path / "payload-ran"
    batch = pickle.load(open(cifar_batch_path(root), "rb"))
    batch["labels"] = WritesAFile(str(marker))
    with open(cifar_batch_path(root), "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match="refused to load posix.system"):
        datasets.load_cifar10(root)
    # the analyze entry point reads CIFAR through the same reader (a ViT: it reads --images)
    from common.models import create_model, export_model

    small = {"depth": 1, "embed_dim": 48, "num_heads": 2, "patch_size": 8}
    model = create_model("vit_tiny_patch16_224", 10, img_size=32, model_kwargs=small)
    weights = export_model(model, str(tmp_path / "run"), {"model": "vit_tiny_patch16_224", "num_classes": 10,
                                                           "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                                           "model_kwargs": small})
    result = run_module("finetune.analyze", "--weights", weights, "--images", root, "--out", str(tmp_path / "an"))
    one_error_line(result, "data_batch_1", "refused")
    assert not marker.exists()


@pytest.mark.skipif(not os.path.isdir(CIFAR_SUBSET), reason="../shared/datasets/cifar10-subset is not on this machine")
def test_real_cifar_batches_load_with_str_and_bytes_keys(tmp_path):
    real = datasets.load_cifar10(CIFAR_SUBSET)
    # the same files re-pickled with bytes keys and bytes class names (how Python 3 keeps them)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(os.path.join(CIFAR_SUBSET, "cifar-10-batches-py", name), "rb") as f:
            raw = pickle.load(f, encoding="bytes")  # the real file, trusted here
        assert all(isinstance(k, bytes) for k in raw)
        with open(folder / name, "wb") as f:
            pickle.dump(raw, f, protocol=2)
    again = datasets.load_cifar10(str(tmp_path))
    assert again.classes == real.classes and real.classes[0] == "airplane" and len(real.classes) == 10
    assert np.array_equal(again.train.images, real.train.images) and len(real.train) == 10_000
    assert np.array_equal(again.val.targets, real.val.targets) and np.bincount(real.val.targets).tolist() == [200] * 10


@pytest.mark.parametrize("label", [10, -1])
def test_cifar_label_outside_the_classes_is_named(tmp_path, label):
    root = write_cifar10(str(tmp_path))
    batch = pickle.load(open(cifar_batch_path(root, "test_batch"), "rb"))
    batch["labels"][3] = label
    with open(cifar_batch_path(root, "test_batch"), "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match=r"test_batch: 'labels'\[3\] is " + str(label) + r", outside the 10 classes"):
        datasets.load_cifar10(root)


def test_cifar100_coarse_label_range_checked(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "fine_labels": [0, 50, 99, 99],
                         "coarse_labels": [0, 5, 19, 20]}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"c{i}" for i in range(20)]}, f, protocol=2)
    assert datasets.load_cifar100(str(tmp_path)).train.targets.tolist() == [0, 50, 99, 99]
    with pytest.raises(UserError, match=r"train: 'coarse_labels'\[3\] is 20, outside the 20 classes"):
        datasets.load_cifar100(str(tmp_path), "coarse")


# --- image folders: empty classes and damaged files are found at load time


def test_imagefolder_empty_class_is_named(tmp_path):
    root = write_imagefolder(str(tmp_path / "f"))
    os.makedirs(os.path.join(root, "train", "d"))
    os.makedirs(os.path.join(root, "val", "d"))
    Image.new("RGB", (8, 8)).save(os.path.join(root, "val", "d", "0.png"))
    with pytest.raises(UserError, match=r"class .*train/d holds no images"):
        datasets.load_imagefolder(root)


@pytest.mark.parametrize("damage", ["truncated_jpeg", "garbage_jpeg", "truncated_png", "empty_png"])
def test_imagefolder_damaged_image_found_at_load(tmp_path, damage):
    root = write_imagefolder(str(tmp_path / "f"))
    rng = np.random.default_rng(0)
    ext = "jpg" if "jpeg" in damage else "png"
    path = os.path.join(root, "val", "b", f"bad.{ext}")  # val: read only at the first evaluation
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    data = open(path, "rb").read()
    data = {"truncated_jpeg": data[: len(data) // 2], "garbage_jpeg": b"\xff\xd8 not really a jpeg",
            "truncated_png": data[:-30], "empty_png": b""}[damage]
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(UserError, match=r"val/b/bad\.(jpg|png) is not a readable image"):
        datasets.load_imagefolder(root)
    os.remove(path)
    assert len(datasets.load_imagefolder(root).val) == 3 * 4  # the intact folder still loads


# --- fractalgen: two identical renders into one folder at once


def test_render_leaves_a_temp_in_use_and_removes_stale_ones(tmp_path):
    import fcntl

    from fractalgen import DatasetSpec, render_dataset

    out = tmp_path / "data"
    out.mkdir()
    live, stale = out / "single-000000.tar.tmp-otherhost-4242", out / "single-000001.tar.tmp-otherhost-4343"
    stale.write_bytes(b"left by a killed render")
    with open(live, "wb") as held:  # another render writing shard 0 right now holds its lock
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(b"half a shard")
        held.flush()
        spec = DatasetSpec.create("single", 8, 2, size=16, points=300)
        card = render_dataset(spec, str(out), shard_size=4, workers=1, progress=False)
        assert live.read_bytes() == b"half a shard"  # not removed under the other render's feet
    assert not stale.exists()
    assert [s["count"] for s in card["shards"]] == [4, 4]
    assert card["shards"][0]["bytes"] == os.path.getsize(out / "single-000000.tar")


@pytest.mark.slow
def test_two_identical_renders_at_once_both_finish(tmp_path):
    args = [sys.executable, "-m", "fractalgen", "render", "--kind", "single", "--n", "48", "--shard-size", "4",
            "--workers", "1", "--size", "64", "--points", "20000", "--classes", "3", "--no-progress"]
    alone = subprocess.run([*args, "--out", str(tmp_path / "alone")], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    both = [subprocess.Popen([*args, "--out", str(tmp_path / "shared")], stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for proc in both:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    names = sorted(os.listdir(tmp_path / "shared"))
    assert not [n for n in names if ".tmp-" in n]
    for name in names:
        if name.endswith((".tar", ".json")):
            assert (tmp_path / "shared" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    assert "dataset.json" in names


# --- pretraining shards: checked at start, damaged samples named and counted, never a hang

TINY = "configs/pretrain/tiny_cpu.yaml"


def make_source_for(path, *overrides, source="shards", batch=8):
    from common.config import load_config
    from common.transforms import make_transforms
    from pretrain.config import PretrainConfig
    from pretrain.data import make_source

    cfg = load_config(TINY, [f"data.source={source}", "data.workers=0", f"batch_size={batch}", *overrides],
                      PretrainConfig)
    cfg["data"]["path"] = str(path)
    transforms = make_transforms(cfg["aug"], cfg["img_size"], cfg["mean"], cfg["std"], uint8_train=True)
    return make_source(cfg, transforms, batch, 0, 1)


@pytest.fixture
def shards(tmp_path, fractal_shards):
    """A private copy of the 96-sample, 4-shard fractal dataset (single, 4 classes, 32 px)."""
    import shutil

    return shutil.copytree(fractal_shards, tmp_path / "shards")


def member_offset(tar_path, name):
    import tarfile

    with tarfile.open(tar_path) as tar:
        member = tar.getmember(name)
        return member.offset_data, member.size


def overwrite(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def all_batches(source, epoch=0, skip=0):
    return list(source.train_batches(epoch, skip))


@pytest.fixture
def no_hang():
    """Fail instead of hanging forever (the bug this file guards against)."""
    import signal

    def stop(*_):
        raise TimeoutError("the loader hung")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_shards_checked_against_the_card_at_start(shards):
    import tarfile

    shard = shards / "single-000001.tar"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=rf"single-000001.tar has {len(good) // 2} bytes, the card says {len(good)}"):
        make_source_for(shards)
    with tarfile.open(shard, "w"):  # an empty tar
        pass
    with pytest.raises(UserError, match="single-000001.tar has 10240 bytes, the card says"):
        make_source_for(shards)
    shard.write_bytes(good)
    offset, _ = member_offset(shard, "000000030.png")
    overwrite(shard, offset + 100, b"\x00\x01\x02")  # same size, other bytes
    make_source_for(shards)  # data.verify=size (the default) does not read the shards
    with pytest.raises(UserError, match="single-000001.tar: sha256 differs from the card"):
        make_source_for(shards, "data.verify=sha256")


@pytest.mark.parametrize("workers", [0, 1])
def test_damaged_png_is_skipped_and_counted_up_to_max_corrupt(shards, workers, no_hang):
    shard = shards / "single-000000.tar"
    offset, size = member_offset(shard, "000000003.png")
    overwrite(shard, offset + size // 2, b"\x00" * 40)
    source = make_source_for(shards, f"data.workers={workers}", "data.max_corrupt=5")
    batches = all_batches(source)
    assert len(batches) == 96 // 8 and source.corrupt == 1
    keys = {k for _, _, ks in batches for k in ks}
    assert "000000003" not in keys and len(keys) > 40
    strict = make_source_for(shards, f"data.workers={workers}", "data.max_corrupt=0")
    with pytest.raises(UserError, match=r"more than data.max_corrupt=0; the last: .*single-000000.tar 000000003: "
                                        r"image does not decode"):
        all_batches(strict)


def test_label_outside_the_classes_stops_with_shard_and_key(shards, no_hang):
    shard = shards / "single-000002.tar"
    offset, size = member_offset(shard, "000000050.cls")
    assert size == 1
    overwrite(shard, offset, b"7")  # 4 classes: 0..3
    with pytest.raises(UserError, match=r"single-000002.tar 000000050: class 7 is outside the 4 classes"):
        all_batches(make_source_for(shards, "data.max_corrupt=100"))


def write_imagenet_shards(root, train_shards=2, per_shard=8, classes=3):
    import io
    import tarfile

    rng = np.random.default_rng(0)
    for split, count in (("train", train_shards), ("val", 1)):
        os.makedirs(root / split)
        for s in range(count):
            with tarfile.open(root / split / f"imagenet-{split}-{s:06d}.tar", "w") as tar:
                for i in range(per_shard):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (36, 36, 3)).astype(np.uint8)).save(buf, "JPEG")
                    for ext, data in (("jpg", buf.getvalue()), ("cls", str(i % classes).encode())):
                        info = tarfile.TarInfo(f"s{s}_{i:04d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_empty_shards_end_in_one_line_not_a_hang(tmp_path, workers, no_hang):
    import tarfile

    root = write_imagenet_shards(tmp_path / "wds")
    for s in range(2):
        with tarfile.open(root / "train" / f"imagenet-train-{s:06d}.tar", "w"):
            pass
    source = make_source_for(root, "data.num_classes=3", "data.train_samples=16", f"data.workers={workers}",
                             source="imagenet")
    with pytest.raises(UserError, match="none of the 2 shards holds a sample"):
        all_batches(source)


def test_truncated_imagenet_shard_is_skipped_and_named(tmp_path, no_hang, capsys):
    root = write_imagenet_shards(tmp_path / "wds")
    shard = root / "train" / "imagenet-train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    source = make_source_for(root, "data.num_classes=3", "data.train_samples=16", source="imagenet")
    assert len(all_batches(source)) == 2 and source.corrupt == 1
    import re

    assert re.search(r"warning: skipped damaged sample \S*imagenet-train-000001.tar after sample s1_000\d: damaged tar",
                     capsys.readouterr().err)
    # a class number past data.num_classes is named with its shard and key
    small = make_source_for(root, "data.num_classes=2", "data.train_samples=16", source="imagenet")
    with pytest.raises(UserError, match=r"imagenet-train-00000[01].tar s[01]_000[25]: class 2 is outside the 2"):
        all_batches(small)


@pytest.mark.parametrize("workers", [0, 1])
def test_shard_batches_are_a_function_of_the_position(shards, workers):
    """What --resume relies on: skipping k batches gives exactly the batches k.. of a full epoch, the
    same pixels whatever the global random state was (workers augment under per-sample seeds)."""
    import torch

    source = make_source_for(shards, f"data.workers={workers}")
    torch.manual_seed(1)
    full = all_batches(source, epoch=1)
    torch.manual_seed(2)
    np.random.seed(2)
    resumed = all_batches(source, epoch=1, skip=5)
    assert len(full) == 12 and len(resumed) == 7
    for (a, ta, ka), (b, tb, kb) in zip(full[5:], resumed):
        assert ka == kb and torch.equal(ta, tb) and torch.equal(a, b)
    other_epoch = all_batches(source, epoch=2)
    assert not torch.equal(other_epoch[0][0], full[0][0])  # crops do vary


@pytest.mark.slow
def test_kill_and_resume_on_shards_equals_the_uninterrupted_run(tmp_path, fractal_shards):
    """kill -9 after a checkpoint, then --resume: every update's loss equals the uninterrupted run's
    (a DataLoader worker augments, so worker randomness must be keyed by position)."""
    import json
    import signal
    import time

    from pretrain.main import main

    args = ["--config", TINY, "--data", fractal_shards, "epochs=4", "batch_size=16", "checkpoint_every=4",
            "log_every=1", "data.workers=1", "data.val_samples=16"]
    full = str(tmp_path / "full")
    main([*args, "--out", full])
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "pretrain.main", *args, "--out", killed], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = os.path.join(killed, "checkpoints", "latest")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(latest) and open(latest).read().strip() >= "step_00000008"):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "model.safetensors"))  # it was stopped mid-run
    main([*args, "--out", killed, "--resume"])

    def losses(run):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        return {r["step"]: r["train_loss"] for r in records if "train_loss" in r and "val_loss" not in r}

    a, b = losses(full), losses(killed)
    assert max(a) == max(b) == 4 * 96 // 16
    for step in range(1, max(a) + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step


@pytest.mark.parametrize("workers", [0, 1])
def test_imagenet_folder_batches_are_a_function_of_the_position(tmp_path, workers):
    import torch

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 2)):
        for c in ("n01", "n02"):
            os.makedirs(tmp_path / "in" / split / c)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "in" / split / c / f"{i}.JPEG")
    Image.open(tmp_path / "in" / "train" / "n01" / "0.JPEG")  # readable
    (tmp_path / "in" / "train" / "n02" / "5.JPEG").write_bytes(b"not a jpeg")
    source = make_source_for(tmp_path / "in", f"data.workers={workers}", source="imagenet", batch=4)
    torch.manual_seed(1)
    full = all_batches(source, epoch=1)
    torch.manual_seed(2)
    resumed = all_batches(source, epoch=1, skip=2)
    assert len(full) == 6 and len(resumed) == 4
    for (a, _, ka), (b, _, kb) in zip(full[2:], resumed):
        assert ka == kb and torch.equal(a, b)
    assert source.corrupt == 1 and sum(len(k) for _, _, k in full) == 23  # the damaged file is skipped and counted


def test_imagenet_folder_of_damaged_files_is_an_error_not_an_empty_epoch(tmp_path):
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            os.makedirs(tmp_path / "in" / split / c)
            for i in range(4):
                (tmp_path / "in" / split / c / f"{i}.JPEG").write_bytes(b"not a jpeg")
    source = make_source_for(tmp_path / "in", source="imagenet", batch=4)
    with pytest.raises(UserError, match=r"a pass over the data gave no sample: all were damaged \(8 skipped"):
        all_batches(source)


def test_plant_pathology_damaged_image_is_named(tmp_path):
    images = tmp_path / "pp" / "train_images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 48), (0, 128, 0)).save(images / "good.jpg")
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (tmp_path / "pp" / "train.csv").write_text("image,labels\ngood.jpg,healthy\nbad.jpg,scab\n")
    with pytest.raises(UserError, match=r"train_images/bad.jpg is not a readable image"):
        datasets.load_plant_pathology(str(tmp_path / "pp"), "12class", cache_size=32)


def test_skipped_samples_are_counted_in_metrics_jsonl(shards, tmp_path, no_hang):
    """The count a run skipped reaches its validation records (summed over ranks)."""
    import json

    from pretrain.main import main

    shard = shards / "single-000000.tar"
    offset, size = member_offset(shard, "000000003.png")
    overwrite(shard, offset + size // 2, b"\x00" * 40)
    run = tmp_path / "run"
    main(["--config", TINY, "--data", str(shards), "--out", str(run), "epochs=1", "batch_size=8",
          "data.workers=0", "data.val_samples=8", "data.train_samples=96"])
    with open(run / "metrics.jsonl") as f:
        val = [r for r in map(json.loads, f) if "val_loss" in r]
    assert val and val[-1]["corrupt_samples"] >= 1
