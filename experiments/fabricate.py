"""Fabricated datasets in their real on-disk formats, for --smoke (and the tests): random pixels, the
official file layouts, a few images per class. Nothing is downloaded."""

import csv
import os
import pickle

import numpy as np
from PIL import Image

PLANT_LABEL_STRINGS = ["healthy", "scab", "rust", "frog_eye_leaf_spot", "powdery_mildew", "complex",
                       "scab frog_eye_leaf_spot", "scab frog_eye_leaf_spot complex", "frog_eye_leaf_spot complex",
                       "rust frog_eye_leaf_spot", "rust complex", "powdery_mildew complex"]


def _pickle(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar10(root: str, per_class: int = 6, seed: int = 0) -> str:
    """cifar-10-batches-py/: data_batch_1..5 + test_batch (balanced labels) and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = 10 * per_class
        _pickle({"batch_label": name, "labels": [i % 10 for i in range(n)], "filenames": [f"{i}.png" for i in range(n)],
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}, os.path.join(folder, name))
    _pickle({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 10 * per_class, "num_vis": 3072},
            os.path.join(folder, "batches.meta"))
    return root


def cifar100(root: str, per_class: int = 4, seed: int = 0) -> str:
    """cifar-100-python/: train, test (fine and coarse labels) and meta."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, per in (("train", per_class), ("test", 2)):
        fine = [i % 100 for i in range(100 * per)]
        _pickle({"filenames": [f"{i}.png" for i in range(len(fine))], "fine_labels": fine,
                 "coarse_labels": [f // 5 for f in fine], "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)},
                os.path.join(folder, name))
    _pickle({"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]},
            os.path.join(folder, "meta"))
    return root


def stl10(root: str, per_class: int = 6, seed: int = 0) -> str:
    """stl10_binary/: {train,test}_X.bin (uint8, per image 3 column-major 96x96 planes), {train,test}_y.bin
    (labels 1..10), class_names.txt, fold_indices.txt (10 lines of training indices)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    for split, per in (("train", per_class), ("test", 2)):
        n = 10 * per
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(os.path.join(folder, f"{split}_X.bin"))
        np.array([1 + i % 10 for i in range(n)], np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    with open(os.path.join(folder, "fold_indices.txt"), "w") as f:
        for fold in range(10):
            f.write(" ".join(str(i) for i in range(fold % per_class, 10 * per_class, per_class)) + "\n")
    return root


def plant_pathology(root: str, per_class: int = 8, seed: int = 0, size: int = 64) -> str:
    """train.csv (image,labels) + train_images/*.jpg, every one of the 12 label strings."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "train_images"), exist_ok=True)
    rows = []
    for i in range(12 * per_class):
        name = f"{i:06x}.jpg"
        image = rng.integers(0, 256, (size, size * 3 // 2, 3), dtype=np.uint8)  # landscape, like the photos
        Image.fromarray(image).save(os.path.join(root, "train_images", name), quality=90)
        rows.append({"image": name, "labels": PLANT_LABEL_STRINGS[i % 12]})
    with open(os.path.join(root, "train.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def imagefolder(root: str, classes: int = 4, per_class: int = 6, seed: int = 0, size: int = 40,
                names=None, ext: str = "png") -> str:
    """train/<class>/ and val/<class>/ images."""
    rng = np.random.default_rng(seed)
    names = names or [f"class{i}" for i in range(classes)]
    for split, per in (("train", per_class), ("val", 2)):
        for c in names:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(per):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(os.path.join(root, split, c, f"{c}_{i}.{ext}"))
    return root


def imagenet(root: str, seed: int = 0) -> str:
    """ILSVRC-2012 folder layout: train/nXXXXXXXX/*.JPEG, val/ in the same class layout."""
    return imagefolder(root, per_class=8, seed=seed, names=[f"n0{1440764 + i:07d}" for i in range(4)], ext="JPEG")


def systems(root: str, classes: int = 8, seed: int = 0) -> str:
    """root/systems.json: a fractalgen systems file (sigma-factor systems), e.g. beside a class folder."""
    from fractalgen.systems import save_systems, sigma_class_system

    os.makedirs(root, exist_ok=True)
    if not os.path.exists(os.path.join(root, "systems.json")):
        save_systems(os.path.join(root, "systems.json"), [sigma_class_system(seed, c) for c in range(classes)],
                     {"source": "fabricated for --smoke"})
    return root


BY_FORMAT = {"systems": systems, "cifar10": cifar10, "cifar100": cifar100, "stl10": stl10, "plant_pathology": plant_pathology,
             "imagefolder": imagefolder, "imagenet": imagenet}
