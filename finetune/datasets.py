"""Fine-tuning datasets in their real on-disk formats.

- CIFAR-10 / CIFAR-100: the official python pickles, read directly (torchvision's md5 check
  rejects non-official copies); any number of images per batch; CIFAR-100 fine or coarse labels.
- Plant Pathology 2021 (FGVC8): train.csv (image,labels) + train_images/; 12-class (each distinct
  label string) or 6-label multi-label; a stratified, seeded train/validation split; full-size JPEGs
  resized once into a cache.
- ImageFolder: train/<class>/ and val/<class>/.
- STL-10: the official binary release (stl10_binary/: 96x96 column-major planes, labels 1..10), the
  test images as the validation split, optionally one official 1,000-image training fold.

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
from common.io import save_atomically

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


def read_image(path: str) -> Image.Image:
    """An image file as RGB; a file that does not decode is a one-line error naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
        raise UserError(f"{path} is not a readable image ({e}); remove or replace it") from None


def check_image(path: str) -> None:
    """A cheap check at load time, so a damaged file stops the run before training, not at the
    first evaluation: the header (all formats), every chunk checksum (PNG), and for a JPEG without
    its end marker a full decode (a truncated JPEG fails there). Full decodes of every file would
    double start-up on big folders; torchvision and timm check nothing up front."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 4096))
                ends = b"\xff\xd9" in f.read()
            if not ends:
                with Image.open(path) as im:
                    im.load()
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
        raise UserError(f"{path} is not a readable image ({e}); remove or replace it") from None


class FileImages(torch.utils.data.Dataset):
    def __init__(self, paths: list, targets: list, transform=None):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = read_image(self.paths[i])
        target = self.targets[i]
        target = torch.tensor(target, dtype=torch.float32) if np.ndim(target) else torch.tensor(int(target))
        return (self.transform(image) if self.transform else image), target

    def take(self, idx: list) -> "FileImages":
        return FileImages([self.paths[i] for i in idx], [self.targets[i] for i in idx])


# Everything a CIFAR batch pickle may name: numpy's array reconstruction (numpy 1 and 2 module
# names) and the codec call Python 3 uses for bytes under protocol 2. Dicts, lists, strings and
# numbers are pickle opcodes, not globals. Any other name is refused, so a file can never run code.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """A pickle reader that admits only what CIFAR batches hold (numpy arrays, lists, dicts,
    strings, numbers)."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (a CIFAR batch holds only numpy arrays, "
                                     f"lists, dicts, strings and numbers; this file is not one, or was tampered with)")


def _unpickle(path: str) -> dict:
    """A CIFAR batch as a dict with str keys (files pickled with str or with bytes keys)."""
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR batch (a pickled dict), found {type(batch).__name__}")
    return {_text(k): v for k, v in batch.items()}


def _text(value):
    """bytes -> str (CIFAR files written with bytes keys and names), anything else unchanged."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _field(batch: dict, key: str, path: str):
    if key not in batch:
        raise UserError(f"{path} has no {key!r} entry (found {sorted(map(str, batch))[:6]}); is it a CIFAR batch?")
    return batch[key]


def _cifar_labels(batch: dict, key: str, path: str, num_classes: int, num_images: int) -> np.ndarray:
    """The batch's labels as ints, each checked to lie in [0, num_classes)."""
    try:
        labels = np.asarray(_field(batch, key, path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: {key!r} should be a list of class numbers ({e})") from None
    if len(labels) != num_images:
        raise UserError(f"{path}: {len(labels)} {key!r} for {num_images} images; the batch is damaged")
    bad = np.nonzero((labels < 0) | (labels >= num_classes))[0]
    if len(bad):
        raise UserError(f"{path}: {key!r}[{bad[0]}] is {labels[bad[0]]}, outside the {num_classes} classes "
                        f"(0..{num_classes - 1}); {len(bad)} labels are out of range")
    return labels


def _cifar_images(batch: dict, path: str) -> np.ndarray:
    data = np.asarray(_field(batch, "data", path), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path}: 'data' should be (N, 3072) uint8 (R, G, B planes of 32x32), found {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _cifar_part(path: str, key: str, num_classes: int) -> ArrayImages:
    """One CIFAR batch file: images and their checked labels."""
    batch = _unpickle(path)
    images = _cifar_images(batch, path)
    return ArrayImages(images, _cifar_labels(batch, key, path, num_classes, len(images)))


def _class_names(path: str, key: str) -> list:
    names = [_text(n) for n in _field(_unpickle(path), key, path)]
    if not names:
        raise UserError(f"{path}: {key!r} is empty; expected the class names")
    return names


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
    classes = _class_names(os.path.join(folder, "batches.meta"), "label_names")
    parts = [_cifar_part(os.path.join(folder, name), "labels", len(classes)) for name in expected[:6]]
    train = ArrayImages(np.concatenate([p.images for p in parts[:5]]), np.concatenate([p.targets for p in parts[:5]]))
    return Split(train, parts[5], classes, False)


def load_cifar100(root: str, labels: str = "fine") -> Split:
    if labels not in ("fine", "coarse"):
        raise UserError(f"CIFAR-100 labels must be fine or coarse, got {labels!r}")
    folder = _find(root, "cifar-100-python")
    missing = [f for f in ("train", "test", "meta") if not os.path.exists(os.path.join(folder, f))]
    if missing:
        found = sorted(os.listdir(folder))[:6] if os.path.isdir(folder) else "nothing (no such folder)"
        raise UserError(f"CIFAR-100 at {root}: expected cifar-100-python/ with train, test, meta; missing {missing}, "
                        f"found {found}")
    classes = _class_names(os.path.join(folder, "meta"), f"{labels}_label_names")
    key = f"{labels}_labels"
    return Split(_cifar_part(os.path.join(folder, "train"), key, len(classes)),
                 _cifar_part(os.path.join(folder, "test"), key, len(classes)), classes, False)


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
            names = [n for n in sorted(os.listdir(os.path.join(folder, c))) if n.lower().endswith(IMG_EXTENSIONS)]
            if not names:
                raise UserError(f"image folder class {os.path.join(folder, c)} holds no images "
                                f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder")
            paths += [os.path.join(folder, c, n) for n in names]
            targets += [i] * len(names)
        for path in paths:
            check_image(path)
        if not paths:
            raise UserError(f"image folder {folder} holds no images in class subfolders")
        parts[split] = (classes, paths, targets)
    if parts["train"][0] != parts["val"][0]:
        raise UserError(f"image folder {root}: train has classes {parts['train'][0][:5]}..., val {parts['val'][0][:5]}...; "
                        f"they must match")
    return Split(FileImages(*parts["train"][1:]), FileImages(*parts["val"][1:]), parts["train"][0], False)


# --- STL-10, official binary release (stl10_binary/) ---------------------------------------------

STL10_SIZE = 96
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")


def _stl10_images(path: str) -> np.ndarray:
    """(N, 96, 96, 3) uint8 view of an STL-10 image file (memory-mapped: read as images are used). Each
    image is 3 channel planes, each column-major, so the planes read as (x, y) are transposed."""
    per_image = 3 * STL10_SIZE * STL10_SIZE
    size = os.path.getsize(path)
    if size == 0 or size % per_image:
        raise UserError(f"{path}: {size} bytes is not a whole number of 96x96x3 images ({per_image} bytes each)")
    planes = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // per_image, 3, STL10_SIZE, STL10_SIZE))
    return planes.transpose(0, 3, 2, 1)


def _stl10_labels(path: str, count: int, images: str) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != count:
        raise UserError(f"{path} holds {len(labels)} labels but {images} holds {count} images")
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise UserError(f"{path}: labels must be 1..10 (the official files), found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64) - 1  # 0..9 for training


def stl10_fold(folder: str, fold: int, n_train: int) -> list:
    """Training indices of an official 1,000-image fold (line `fold` of fold_indices.txt, 0-based)."""
    if not (isinstance(fold, int) and 0 <= fold <= 9):
        raise UserError(f"data.fold={fold!r}: STL-10 has the official folds 0..9 (or null for all training images)")
    path = os.path.join(folder, "fold_indices.txt")
    if not os.path.exists(path):
        raise UserError(f"data.fold={fold} needs {path} (in the official stl10_binary/); or set data.fold=null")
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) != 10:
        raise UserError(f"{path}: expected 10 lines of training indices (one per fold), found {len(lines)}")
    try:
        idx = [int(i) for i in lines[fold]]
    except ValueError:
        raise UserError(f"{path}: line {fold + 1} must hold whole-number indices") from None
    if not idx or min(idx) < 0 or max(idx) >= n_train:
        raise UserError(f"{path}: fold {fold} indices must lie in 0..{n_train - 1}")
    return idx


def load_stl10(root: str, fold: int | None = None) -> Split:
    """STL-10's labelled images: train (5,000, or one 1,000-image fold) and test (8,000) as the validation
    split; unlabeled_X.bin is not read."""
    folder = _find(root, "stl10_binary")
    missing = [f for f in STL10_FILES if not os.path.exists(os.path.join(folder, f))]
    if missing:
        found = sorted(os.listdir(folder))[:6] if os.path.isdir(folder) else "nothing (no such folder)"
        raise UserError(f"STL-10 at {root}: expected stl10_binary/ with {', '.join(STL10_FILES)}; missing {missing}, "
                        f"found {found}")
    with open(os.path.join(folder, "class_names.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    if len(classes) != 10:
        raise UserError(f"{os.path.join(folder, 'class_names.txt')}: expected 10 class names, found {len(classes)}")
    parts = {}
    for split in ("train", "test"):
        images_path = os.path.join(folder, f"{split}_X.bin")
        images = _stl10_images(images_path)
        parts[split] = ArrayImages(images, _stl10_labels(os.path.join(folder, f"{split}_y.bin"), len(images), images_path))
    train = parts["train"] if fold is None else parts["train"].take(stl10_fold(folder, fold, len(parts["train"])))
    return Split(train, parts["test"], classes, False)


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
        try:
            with Image.open(src) as im:
                im.draft("RGB", (size * 2, size * 2))  # JPEG decode at reduced scale: much faster for 4000 px images
                im = im.convert("RGB")
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
            raise UserError(f"{src} is not a readable image ({e}); remove it from the csv or replace it") from None
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
        save_atomically(dst, lambda tmp: im.save(tmp, "JPEG", quality=95))
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
    if fmt == "stl10":
        return load_stl10(path, data["fold"])
    raise UserError(f"unknown data.format {fmt!r}; use cifar10, cifar100, plant_pathology, imagefolder or stl10")


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
