"""Shared fixtures: tiny data in the real formats, made on the fly (nothing is downloaded)."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from fractalgen import DatasetSpec, render_dataset

CIFAR_SUBSET = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "cifar10-subset")


@pytest.fixture(scope="session")
def fractal_shards(tmp_path_factory):
    """A 96-sample single-instance dataset at 32 px in 4 shards."""
    out = tmp_path_factory.mktemp("shards")
    spec = DatasetSpec.create("single", 96, 4, size=32, points=1000, window=[1.0, 1.0], shift=0.0)
    render_dataset(spec, str(out), shard_size=24, workers=1, progress=False)
    return str(out)


def write_imagefolder(root, classes=("a", "b", "c"), per_class=8, size=32, seed=0):
    """train/<class>/ and val/<class>/ PNGs; class c is a distinct colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for k, c in enumerate(classes):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3))
                base[..., k % 3] = 200
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, c, f"{i}.png"))
    return root


@pytest.fixture
def imagefolder(tmp_path):
    return write_imagefolder(str(tmp_path / "folder"))


def write_cifar10(root, per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]  # balanced, like the real batches
        batch = {"batch_label": name, "labels": labels, "filenames": [f"{i}.png" for i in range(per_batch)],
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return root
