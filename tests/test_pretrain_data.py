"""The pretraining data path's parts: the fast tar reader against webdataset's own, the uint8 train
transform + per-batch finishing against timm's float transform, and the samples-per-epoch budget."""

import io
import json
import os
import random
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from common.transforms import BatchFinish, make_transforms
from pretrain.main import main
from pretrain.shards import tar_samples

TINY = "configs/pretrain/tiny_cpu.yaml"


def _write_tar(path, members, fmt):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_matches_webdataset(tmp_path, fmt):
    rng = np.random.default_rng(0)
    long_dir = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "some/dir"  # long names: GNU L / pax path records
    members = []
    for i in range(7):
        key = f"{long_dir}/sample{i:03d}" if i % 2 else f"sample{i:03d}"
        for ext in ("png", "cls", "json"):
            members.append((f"{key}.{ext}", rng.integers(0, 256, int(rng.integers(0, 1500))).astype(np.uint8).tobytes()))
    members.append(("deeper/x.y.seg.png", b"multi-dot extension"))
    path = str(tmp_path / "shard.tar")
    _write_tar(path, members, fmt)
    with tarfile.open(path, "a", format=fmt) as tar:  # a directory entry is skipped by both readers
        info = tarfile.TarInfo("emptydir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    with open(path, "rb") as f:
        ours = list(tar_samples(f, path))
    theirs = list(wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples()))
    assert len(ours) == len(theirs) == 8
    for a, b in zip(ours, theirs):
        assert a["__key__"] == b["__key__"]
        assert {k: v for k, v in a.items() if not k.startswith("__")} == \
               {k: v for k, v in b.items() if not k.startswith("__")}


def test_truncated_shard_is_an_error(tmp_path):
    path = str(tmp_path / "shard.tar")
    _write_tar(path, [("a.png", b"x" * 3000)], tarfile.USTAR_FORMAT)
    data = open(path, "rb").read()[:2000]
    with pytest.raises(EOFError, match="truncated"):
        list(tar_samples(io.BytesIO(data)))


def test_uint8_transform_then_batch_finish_equals_the_float_transform():
    aug = {"scale": [0.3, 1.0], "hflip": 0.5, "re_prob": 0.0, "interpolation": "bicubic"}
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    float_tf, _ = make_transforms(aug, 24, mean, std)
    uint8_tf, _ = make_transforms(aug, 24, mean, std, uint8_train=True)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3)).astype(np.uint8)) for i in range(6)]
    outs = []
    for tf in (float_tf, uint8_tf):
        random.seed(0)
        torch.manual_seed(0)
        outs.append(torch.stack([tf(im) for im in images]))
    assert outs[1].dtype == torch.uint8 and outs[1].shape == (6, 3, 24, 24)
    finished = BatchFinish(aug, mean, std, torch.device("cpu"))(outs[1])
    assert torch.allclose(finished, outs[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_to_zero_bits_is_black_not_a_crash(mode):
    # RandAugment's 'inc' posterize at magnitude 10 keeps 0 bits, which Pillow 13 refuses outright
    from timm.data.auto_augment import AugmentOp, rand_augment_transform
    image = Image.fromarray(np.random.default_rng(0).integers(1, 256, (20, 20, 3)).astype(np.uint8)).convert(mode)
    out = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)(image)
    assert out.mode == mode and out.size == image.size and not np.asarray(out).any()
    kept = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(image)  # 2 bits: the top 2 only
    assert np.array_equal(np.asarray(kept), np.asarray(image) & 0xC0)
    # the pretraining recipe of 1p-frac / OFDB / DeiT, many draws: never raises
    random.seed(0)
    policy = rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": (124, 116, 104)})
    for _ in range(400):
        policy(image.convert("RGB"))


def test_batch_finish_random_erasing_is_per_image():
    finish = BatchFinish({"re_prob": 1.0}, [0.5] * 3, [0.5] * 3, torch.device("cpu"))
    torch.manual_seed(0)
    out = finish(torch.full((4, 3, 16, 16), 255, dtype=torch.uint8))
    erased = (out != 1.0).flatten(1).any(1)
    assert erased.all() and not torch.equal((out[0] != 1.0), (out[1] != 1.0))


def test_train_samples_sets_the_pretraining_budget(tmp_path):
    run = str(tmp_path / "run")
    main(["--config", TINY, "--out", run, "epochs=1", "batch_size=16", "data.val_samples=32", "data.workers=0",
          "data.render={kind: single, n: 64, classes: 4, size: 32, points: 500, seed: 0}", "data.train_samples=160"])
    sidecar = json.load(open(os.path.join(run, "model.json")))
    assert sidecar["updates"] == 10 and sidecar["images_seen"] == 160


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_imagenet_validation_pairs_each_image_with_its_own_label(tmp_path, layout):
    """Validation must see every held-out image once, with its own label and the eval transform:
    counting samples would not catch shuffled labels or a train-time transform."""
    from common.config import load_config
    from pretrain.config import PretrainConfig
    from pretrain.data import make_source

    rng = np.random.default_rng(0)
    images = {f"v{i:03d}": rng.integers(0, 256, (40, 40, 3)).astype(np.uint8) for i in range(9)}
    labels = {key: i % 3 for i, key in enumerate(images)}
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        if layout == "folder":
            for key, image in images.items():  # train reuses the val images: only val is checked
                os.makedirs(root / split / f"n{labels[key]:02d}", exist_ok=True)
                Image.fromarray(image).save(root / split / f"n{labels[key]:02d}" / f"{key}.png")
        else:
            os.makedirs(root / split)
            members = []
            for key, image in images.items():
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, "PNG")
                members += [(f"{key}.png", buf.getvalue()), (f"{key}.cls", str(labels[key]).encode())]
            _write_tar(str(root / split / f"imagenet-{split}-000000.tar"), members, tarfile.USTAR_FORMAT)
    cfg = load_config(TINY, ["data.source=imagenet", f"data.path={root}", "data.num_classes=3", "img_size=40",
                             "aug.crop_pct=1.0", "data.workers=0"], PretrainConfig)
    train_tf, eval_tf = make_transforms(cfg["aug"], 40, cfg["mean"], cfg["std"], uint8_train=True)
    val = make_source(cfg, (train_tf, eval_tf), 3, 0, 1).val_loader()
    assert len(val) == len(images)
    seen = []
    for i in range(len(val)):
        tensor, label = val[i]
        # which image is it? the one whose eval transform this is (all differ), and its label must be its own
        key = next(k for k, img in images.items() if torch.allclose(tensor, eval_tf(Image.fromarray(img)), atol=1e-6))
        assert int(label) == labels[key], key
        seen.append(key)
    assert sorted(seen) == sorted(images)
