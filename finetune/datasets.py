"""Fine-tuning datasets in their real on-disk formats.

- CIFAR-10 / CIFAR-100: the official python pickles, read directly (torchvision's md5 check
  rejects non-official copies); any number of images per batch; CIFAR-100 fine or coarse labels.
- Plant Pathology 2021 (FGVC8): train.csv (image,labels) + train_images/; 12-class (each distinct
  label string) or 6-label multi-label; a stratified, seeded train/validation split; full-size JPEGs
  resized once into a cache.
- ImageFolder: train/<class>/ and val/<class>/.

Each loader returns a Split(train, val, classes, multilabel) of map-style datasets over PIL images.
"""

import hashlib
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from common.errors import UserError

PLANT_LABELS = ["complex", "frog_eye_leaf_spot", "healthy", "powdery_mildew", "rust", "scab"]


@dataclass
class Split:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    classes: list
    multilabel: bool


class ArrayImages(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) images in memory with integer or multi-hot targets."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform=None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i])
        target = self.targets[i]
        target = torch.tensor(target, dtype=torch.float32) if np.ndim(target) else torch.tensor(int(target))
        return (self.transform(image) if self.transform else image), target

    def take(self, idx: list) -> "ArrayImages":
        return ArrayImages(self.images[idx], np.asarray(self.targets)[idx])


class FileImages(torch.utils.data.Dataset):
    def __init__(self, paths: list, targets: list, transform=None):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        target = self.targets[i]
        target = torch.tensor(target, dtype=torch.float32) if np.ndim(target) else torch.tensor(int(target))
        return (self.transform(image) if self.transform else image), target

    def take(self, idx: list) -> "FileImages":
        return FileImages([self.paths[i] for i in idx], [self.targets[i] for i in idx])


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _cifar_images(batch: dict, path: str) -> np.ndarray:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' should be (N, 3072) uint8 (R, G, B planes of 32x32), found {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _find(root: str, name: str) -> str:
    """root/name when it exists (the official archive's folder), else root itself."""
    inner = os.path.join(root, name)
    return inner if os.path.isdir(inner) else root


def load_cifar10(root: str) -> Split:
    folder = _find(root, "cifar-10-batches-py")
    expected = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [f for f in expected if not os.path.exists(os.path.join(folder, f))]
    if missing:
        found = sorted(os.listdir(folder))[:6] if os.path.isdir(folder) else "nothing (no such folder)"
        raise UserError(f"CIFAR-10 at {root}: expected cifar-10-batches-py/ with data_batch_1..5, test_batch, "
                        f"batches.meta; missing {missing[:3]}, found {found}")
    images, labels = [], []
    for name in expected[:5]:
        batch = _unpickle(os.path.join(folder, name))
        images.append(_cifar_images(batch, name))
        labels += list(batch["labels"])
    test = _unpickle(os.path.join(folder, "test_batch"))
    classes = list(_unpickle(os.path.join(folder, "batches.meta"))["label_names"])
    return Split(ArrayImages(np.concatenate(images), np.array(labels)),
                 ArrayImages(_cifar_images(test, "test_batch"), np.array(test["labels"])), classes, False)


def load_cifar100(root: str, labels: str = "fine") -> Split:
    if labels not in ("fine", "coarse"):
        raise UserError(f"CIFAR-100 labels must be fine or coarse, got {labels!r}")
    folder = _find(root, "cifar-100-python")
    missing = [f for f in ("train", "test", "meta") if not os.path.exists(os.path.join(folder, f))]
    if missing:
        found = sorted(os.listdir(folder))[:6] if os.path.isdir(folder) else "nothing (no such folder)"
        raise UserError(f"CIFAR-100 at {root}: expected cifar-100-python/ with train, test, meta; missing {missing}, "
                        f"found {found}")
    train, test = _unpickle(os.path.join(folder, "train")), _unpickle(os.path.join(folder, "test"))
    classes = list(_unpickle(os.path.join(folder, "meta"))[f"{labels}_label_names"])
    key = f"{labels}_labels"
    return Split(ArrayImages(_cifar_images(train, "train"), np.array(train[key])),
                 ArrayImages(_cifar_images(test, "test"), np.array(test[key])), classes, False)


def load_imagefolder(root: str) -> Split:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    parts = {}
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            found = sorted(os.listdir(root))[:6] if os.path.isdir(root) else "nothing (no such folder)"
            raise UserError(f"image folder {root}: expected train/<class>/ and val/<class>/, found {found}")
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
        paths, targets = [], []
        for i, c in enumerate(classes):
            for name in sorted(os.listdir(os.path.join(folder, c))):
                if name.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(folder, c, name))
                    targets.append(i)
        if not paths:
            raise UserError(f"image folder {folder} holds no images in class subfolders")
        parts[split] = (classes, paths, targets)
    if parts["train"][0] != parts["val"][0]:
        raise UserError(f"image folder {root}: train has classes {parts['train'][0][:5]}..., val {parts['val'][0][:5]}...; "
                        f"they must match")
    return Split(FileImages(*parts["train"][1:]), FileImages(*parts["val"][1:]), parts["train"][0], False)


def stratified_split(groups: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Indices of train and val: the same fraction of every group (label string), seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for g in sorted(set(groups)):
        idx = rng.permutation([i for i, x in enumerate(groups) if x == g])
        n_val = int(round(len(idx) * val_fraction))
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def _cached(src: str, cache_dir: str, size: int) -> str:
    """Resize a full-size JPEG once (shorter side -> size) into the cache; later epochs read that."""
    key = hashlib.sha1(f"{os.path.abspath(src)}:{os.path.getmtime(src)}:{size}".encode()).hexdigest()[:16]
    dst = os.path.join(cache_dir, f"{key}.jpg")
    if not os.path.exists(dst):
        with Image.open(src) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG decode at reduced scale: much faster for 4000 px images
            im = im.convert("RGB")
            scale = size / min(im.size)
            im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
            tmp = f"{dst}.tmp-{os.getpid()}"
            im.save(tmp, "JPEG", quality=95)
            os.replace(tmp, dst)
    return dst


def load_plant_pathology(root: str, mode: str, val_fraction: float = 0.2, seed: int = 0, cache_size: int = 384,
                         cache_dir: str | None = None) -> Split:
    import csv

    csv_path, images = os.path.join(root, "train.csv"), os.path.join(root, "train_images")
    if not os.path.exists(csv_path) or not os.path.isdir(images):
        found = sorted(os.listdir(root))[:6] if os.path.isdir(root) else "nothing (no such folder)"
        raise UserError(f"Plant Pathology 2021 at {root}: expected train.csv and train_images/, found {found}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "labels"} <= set(rows[0]):
        raise UserError(f"{csv_path}: expected columns image,labels")
    label_strings = [r["labels"].strip() for r in rows]
    if mode == "12class":
        classes = sorted(set(label_strings))
        targets = [classes.index(s) for s in label_strings]
    elif mode == "multilabel":
        classes = PLANT_LABELS
        unknown = sorted({t for s in label_strings for t in s.split()} - set(classes))
        if unknown:
            raise UserError(f"{csv_path}: unknown labels {unknown}; expected {classes}")
        targets = [np.array([float(c in s.split()) for c in classes], np.float32) for s in label_strings]
    else:
        raise UserError(f"Plant Pathology mode must be 12class or multilabel, got {mode!r}")
    cache_dir = cache_dir or os.path.join(root, f".cache_{cache_size}")
    os.makedirs(cache_dir, exist_ok=True)
    paths = []
    for r in rows:
        src = os.path.join(images, r["image"])
        if not os.path.exists(src):
            raise UserError(f"{csv_path} lists {r['image']} but {src} does not exist")
        paths.append(_cached(src, cache_dir, cache_size))
    train, val = stratified_split(label_strings, val_fraction, seed)
    every = FileImages(paths, targets)
    return Split(every.take(train), every.take(val), classes, mode == "multilabel")


def load(cfg: dict) -> Split:
    """The dataset named by cfg['data'] (format, path, and format options); with data.holdout, a
    fraction of the training images replaces the evaluation split (tuning never sees test images)."""
    holdout = cfg["data"].get("holdout")
    if holdout:
        check_holdout(holdout, f"data.holdout={holdout}")  # before any image is read
    split = _load_format(cfg["data"])
    return holdout_split(split, holdout, int(cfg["data"].get("split_seed", 0))) if holdout else split


def check_holdout(value, given: str) -> None:
    """A holdout must be a fraction strictly between 0 and 1; `given` is how the user wrote it."""
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise UserError(f"{given}: give the fraction of training images to hold out, between 0 and 1, e.g. 0.1")


def holdout_split(split: Split, fraction: float, seed: int) -> Split:
    """The training set cut in two, stratified by target: (rest, held out) become (train, val)."""
    groups = [str(np.asarray(t).tolist()) for t in split.train.targets]  # multi-hot targets group by label set
    keep, held = stratified_split(groups, fraction, seed)
    return Split(split.train.take(keep), split.train.take(held), split.classes, split.multilabel)


def _load_format(data: dict) -> Split:
    fmt, path = data["format"], data.get("path")
    if not path:
        raise UserError("no dataset path: pass --data PATH")
    if not os.path.exists(path):
        raise UserError(f"--data {path} does not exist")
    if fmt == "cifar10":
        return load_cifar10(path)
    if fmt == "cifar100":
        return load_cifar100(path, data.get("labels", "fine"))
    if fmt == "plant_pathology":
        return load_plant_pathology(path, data.get("mode", "12class"), float(data.get("val_fraction", 0.2)),
                                    int(data.get("split_seed", 0)), int(data.get("cache_size", 384)))
    if fmt == "imagefolder":
        return load_imagefolder(path)
    raise UserError(f"unknown data.format {fmt!r}; use cifar10, cifar100, plant_pathology or imagefolder")


def subsample_per_class(targets, per_class: int, seed: int) -> list:
    """Indices of `per_class` samples of every class (the low-data regime), seeded."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(targets):
        idx = np.nonzero(targets == c)[0]
        if len(idx) < per_class:
            raise UserError(f"class {c} has {len(idx)} training images, fewer than train_per_class={per_class}")
        out += rng.choice(idx, per_class, replace=False).tolist()
    return sorted(out)
