"""STL-10 in its official binary layout (stl10_binary/), fabricated byte by byte as the release writes it."""

import json
import os

import numpy as np
import pytest

from common.config import load_config
from common.errors import UserError
from finetune import datasets
from finetune.config import FinetuneConfig
from finetune.main import main

CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root, n_train=20, n_test=10, seed=0, folds=True):
    """stl10_binary/ with random images whose bytes follow the release: per image 3 channel planes of
    96x96, each column-major (the row index varies fastest); labels as uint8 1..10."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    made = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)  # (row y, column x, channel)
        labels = np.arange(n, dtype=np.uint8) % 10 + 1
        with open(os.path.join(folder, f"{split}_X.bin"), "wb") as f:
            for image in images:
                for c in range(3):
                    f.write(image[:, :, c].ravel(order="F").tobytes())
        labels.tofile(os.path.join(folder, f"{split}_y.bin"))
        made[split] = (images, labels)
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(folder, "unlabeled_X.bin"), "wb") as f:
        f.write(b"\x00" * 1000)  # not a whole image: reading it would fail, and it must not be read
    if folds:  # fold k: training images 2k and 2k+1 (the release: 1,000 of the 5,000 per line)
        with open(os.path.join(folder, "fold_indices.txt"), "w") as f:
            f.write("\n".join(f"{2 * k + 1} {2 * k}" for k in range(10)) + "\n")
    return root, made


def test_stl10_reads_the_official_layout_pixel_exact(tmp_path):
    root, made = write_stl10(str(tmp_path))
    split = datasets.load_stl10(root)
    assert split.classes == CLASSES and not split.multilabel
    assert len(split.train) == 20 and len(split.val) == 10
    for part, (images, labels) in (("train", made["train"]), ("test", made["test"])):
        data = split.train if part == "train" else split.val
        for i in (0, 7, len(images) - 1):
            image, target = data[i]
            assert image.size == (96, 96) and np.array_equal(np.asarray(image), images[i])
            assert int(target) == labels[i] - 1  # 1..10 on disk, 0..9 here
    # a known picture: a bright left column and a dark top row stay where they are (no transposition)
    known = np.full((96, 96, 3), 128, np.uint8)
    known[:, 0] = 255
    known[0, :] = 0
    folder = os.path.join(root, "stl10_binary")
    with open(os.path.join(folder, "test_X.bin"), "r+b") as f:
        for c in range(3):
            f.write(known[:, :, c].ravel(order="F").tobytes())
    image = np.asarray(datasets.load_stl10(root).val[0][0])
    assert image[50, 0].tolist() == [255] * 3 and image[0, 50].tolist() == [0] * 3 and image[50, 50, 1] == 128


def test_stl10_official_fold_and_config(tmp_path):
    root, made = write_stl10(str(tmp_path))
    fold = datasets.load_stl10(root, fold=3)
    assert len(fold.train) == 2 and len(fold.val) == 10
    assert np.array_equal(np.asarray(fold.train[0][0]), made["train"][0][7])  # line 4 lists images 7 and 6
    assert np.array_equal(np.asarray(fold.train[1][0]), made["train"][0][6])
    cfg = load_config("configs/finetune/stl10.yaml", ["data.fold=9", f"data.path={root}"], FinetuneConfig)
    assert cfg["img_size"] == 96 and len(datasets.load(cfg).train) == 2


def test_stl10_layout_errors(tmp_path):
    root, _ = write_stl10(str(tmp_path / "a"), folds=False)
    with pytest.raises(UserError, match="needs .*fold_indices.txt"):
        datasets.load_stl10(root, fold=0)
    with pytest.raises(UserError, match=r"official folds 0\.\.9"):
        datasets.load_stl10(root, fold=10)
    os.remove(os.path.join(root, "stl10_binary", "test_y.bin"))
    with pytest.raises(UserError, match=r"expected stl10_binary/ with .*missing \['test_y.bin'\]"):
        datasets.load_stl10(root)
    root, _ = write_stl10(str(tmp_path / "b"))
    np.zeros(20, np.uint8).tofile(os.path.join(root, "stl10_binary", "train_y.bin"))  # 0 is no STL-10 label
    with pytest.raises(UserError, match=r"labels must be 1\.\.10"):
        datasets.load_stl10(root)
    np.ones(19, np.uint8).tofile(os.path.join(root, "stl10_binary", "train_y.bin"))
    with pytest.raises(UserError, match="holds 19 labels but .* holds 20 images"):
        datasets.load_stl10(root)
    with open(os.path.join(root, "stl10_binary", "train_X.bin"), "ab") as f:
        f.write(b"\x00" * 5)
    with pytest.raises(UserError, match="not a whole number of 96x96x3 images"):
        datasets.load_stl10(root)


def test_finetune_on_stl10(tmp_path):
    root, _ = write_stl10(str(tmp_path / "stl"))
    run = tmp_path / "run"
    main(["--config", "configs/finetune/stl10.yaml", "--data", root, "--out", str(run), "model=test_resnet",
          "img_size=32", "epochs=1", "batch_size=10", "data.workers=0", "eval_batch=10"])
    final = json.loads((run / "final.json").read_text())
    assert final["dataset"] == "stl10" and final["last_epoch"]["epoch"] == 1
    assert np.loadtxt(run / "confusion.csv", delimiter=",").sum() == 10  # every test image once
