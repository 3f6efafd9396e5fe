"""Pretraining data sources, each giving per-rank batches and a held-out validation loader.

- fractal shards written by fractalgen (the card is checked against the files),
- fractal samples rendered on the fly from the card's spec (no disk),
- ImageNet as an ILSVRC-2012 folder or as webdataset shards (jpg + cls).

Ranks read disjoint data: shards are dealt out by rank (shard s goes to rank s % world), on-the-fly
indices are dealt out the same way from one seeded permutation per epoch. Every rank yields exactly
steps_per_epoch batches, so DDP never waits on a rank that ran dry.
"""

import io
import json
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import fractalgen
from common.engine import step_seed
from common.errors import UserError
from pretrain.shards import shard_batches


class Source:
    """What the trainer needs from a data source."""

    num_classes: int
    multilabel: bool
    card_sha256: str | None = None
    description: dict

    def train_batches(self, epoch: int, skip: int):  # -> iterator of (images, targets) on CPU
        raise NotImplementedError

    def val_loader(self):
        raise NotImplementedError


def _targets(classes: list, cls: int, num_classes: int, multilabel: bool):
    if not multilabel:
        return torch.tensor(cls, dtype=torch.long)
    t = torch.zeros(num_classes)
    t[classes] = 1.0
    return t


def _collate(samples):
    """(images, targets, keys): keys identify the samples (for the per-rank sample log)."""
    images, targets, keys = zip(*samples)
    return torch.stack(images), torch.stack(targets), list(keys)


def _open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))  # skip probing every other format
    return image if image.mode == "RGB" else image.convert("RGB")


# --- fractal data: on the fly and from shards


class RenderedBatches(IterableDataset):
    """Batches rendered on the fly: epoch e visits every index of [0, n) once in a permutation
    seeded by (seed, e); batch s of rank r holds positions ((s * world + r) * B ...)."""

    def __init__(self, spec, transform, batch: int, rank: int, world: int, seed: int, epoch: int, skip: int, steps: int):
        super().__init__()
        self.spec, self.transform, self.batch = spec, transform, batch
        self.rank, self.world, self.seed, self.epoch, self.skip, self.steps = rank, world, seed, epoch, skip, steps

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.spec.n)
        for s in range(self.skip, self.steps):
            if s % nw != wid:  # the DataLoader returns worker batches round-robin, so order is kept
                continue
            first = (s * self.world + self.rank) * self.batch
            step_seed(self.seed, self.epoch, s, self.rank)  # augmentation draws keyed by position (exact resume)
            samples = []
            for pos in range(first, first + self.batch):
                sample = fractalgen.render_sample(self.spec, int(order[pos % len(order)]))
                samples.append((self.transform(_to_pil(sample.image)),
                                _targets(sample.classes, sample.cls, self.spec.num_classes, self.spec.multilabel),
                                sample.key))
            yield _collate(samples)


class RenderedIndices(torch.utils.data.Dataset):
    """A fixed index range rendered on the fly (the held-out validation split: indices >= n)."""

    def __init__(self, spec, transform, first: int, count: int):
        self.spec, self.transform, self.first, self.count = spec, transform, first, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        s = fractalgen.render_sample(self.spec, self.first + i)
        return self.transform(_to_pil(s.image)), _targets(s.classes, s.cls, self.spec.num_classes, self.spec.multilabel)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).convert("RGB")


class FractalSource(Source):
    """Fractal data: a fractalgen folder (shards, or its card's samples rendered on the fly) or a
    spec given in the config (data.render, rendered on the fly, no folder at all)."""

    def __init__(self, spec, card: dict, cfg: dict, transforms, batch: int, rank: int, world: int,
                 on_the_fly: bool, root: str | None = None):
        self.spec, self.card, self.root = spec, card, root
        self.num_classes, self.multilabel = spec.num_classes, spec.multilabel
        self.card_sha256 = card["card_sha256"]
        self.train_tf, self.val_tf = transforms
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.on_the_fly = on_the_fly
        self.val_count = int(cfg["data"]["val_samples"])
        # an epoch is n samples, or data.train_samples (a budget: fewer draws a subset, more cycles)
        self.epoch_samples = int(cfg["data"].get("train_samples") or spec.n)
        self.steps_per_epoch = self.epoch_samples // (batch * world)
        if self.steps_per_epoch < 1:
            raise UserError(f"an epoch of {self.epoch_samples} samples is less than one global batch "
                            f"({batch * world}); render more, raise data.train_samples or lower batch_size")
        if not on_the_fly:
            self._check_shards()
            names = [s["name"] for s in card["shards"]]
            if len(names) < world:
                raise UserError(f"{root} has {len(names)} shards for {world} processes; re-render with a smaller "
                                f"--shard-size so every process gets its own shards")
            self.rank_urls = [os.path.join(root, n) for n in names[rank::world]]
        self.description = {"kind": spec.kind, "path": os.path.abspath(root) if root else None, "n": spec.n,
                            "classes": self.num_classes, "card_sha256": self.card_sha256,
                            "mode": "on_the_fly" if on_the_fly else "shards"}

    @classmethod
    def from_folder(cls, path: str, cfg: dict, transforms, batch: int, rank: int, world: int, on_the_fly: bool):
        if not os.path.isdir(path):
            raise UserError(f"--data {path} is not a folder; point it at a fractalgen dataset folder (with dataset.json)")
        card = fractalgen.load_card(path)
        return cls(fractalgen.DatasetSpec.from_card(card, path), card, cfg, transforms, batch, rank, world,
                   on_the_fly, root=path)

    @classmethod
    def from_config(cls, cfg: dict, transforms, batch: int, rank: int, world: int):
        """data.render holds fractalgen options (kind, n, classes, size, points, ...)."""
        import hashlib

        opts = dict(cfg["data"]["render"])
        kind, n, classes = opts.pop("kind"), int(opts.pop("n")), int(opts.pop("classes"))
        systems = info = None
        if kind == "fractaldb":
            from fractalgen.search import search

            systems, info = search(classes, seed=int(opts.get("seed", 0)), workers=1, progress=False,
                                   size=int(opts.pop("search_size", 128)), points=int(opts.pop("search_points", 20_000)))
        spec = fractalgen.DatasetSpec.create(kind, n, classes, systems=systems, systems_info=info, **opts)
        card = {"card_sha256": hashlib.sha256(json.dumps(spec.options, sort_keys=True).encode()).hexdigest()}
        return cls(spec, card, cfg, transforms, batch, rank, world, on_the_fly=True)

    def _check_shards(self):
        for entry in self.card["shards"]:
            path = os.path.join(self.root, entry["name"])
            if not os.path.exists(path):
                raise UserError(f"{path} is listed in the card but missing; re-run the fractalgen render command")
            if os.path.getsize(path) == 0:
                raise UserError(f"{path} is empty; re-run the fractalgen render command")

    def train_batches(self, epoch: int, skip: int):
        if self.on_the_fly:
            ds = RenderedBatches(self.spec, self.train_tf, self.batch, self.rank, self.world, self.seed, epoch, skip,
                                 self.steps_per_epoch)
            return DataLoader(ds, batch_size=None, num_workers=self.workers, persistent_workers=False)
        return self._shard_loader(epoch, skip)

    def _shard_loader(self, epoch: int, skip: int):
        ext = self.card["image_ext"]
        num_classes, multilabel, tf = self.num_classes, self.multilabel, self.train_tf

        def to_triple(sample):  # only the fields the labels need are decoded (json only for multi-label)
            if multilabel:
                target = _targets(json.loads(sample["json"])["classes"], 0, num_classes, True)
            else:
                target = torch.tensor(int(sample["cls"]), dtype=torch.long)
            return tf(_open_image(sample[ext])), target, sample["__key__"]

        return shard_batches(self.rank_urls, to_triple, _collate, self.batch, self.workers, self.steps_per_epoch,
                             seed=(self.seed * 1_000_003 + epoch) * 1009 + self.rank, skip=skip)

    def val_loader(self):
        return RenderedIndices(self.spec, self.val_tf, self.spec.n, self.val_count)


# --- ImageNet


class ImageNetFolder(Source):
    """ILSVRC-2012 as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""

    def __init__(self, path: str, cfg: dict, transforms, batch: int, rank: int, world: int):
        from torchvision.datasets import ImageFolder

        train, val = os.path.join(path, "train"), os.path.join(path, "val")
        for folder in (train, val):
            if not os.path.isdir(folder):
                raise UserError(f"ImageNet folder {path} needs train/<class>/ and val/<class>/; {folder} is missing")
        try:
            self.train = ImageFolder(train, transform=transforms[0])
            self.val = ImageFolder(val, transform=transforms[1])
        except FileNotFoundError as e:
            raise UserError(f"ImageNet folder {path}: {e}") from None
        if self.train.classes != self.val.classes:
            raise UserError(f"ImageNet folder {path}: train has {len(self.train.classes)} classes, val "
                            f"{len(self.val.classes)}; they must match")
        self.num_classes, self.multilabel = len(self.train.classes), False
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.steps_per_epoch = len(self.train) // (batch * world)
        if self.steps_per_epoch < 1:
            raise UserError(f"{train} has {len(self.train)} images, fewer than one global batch ({batch * world})")
        self.description = {"kind": "imagenet-folder", "path": os.path.abspath(path), "classes": self.num_classes,
                            "train_images": len(self.train)}

    def train_batches(self, epoch: int, skip: int):
        # the same seeded permutation on every rank; rank r takes every world-th batch-sized block
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
        per_step = self.batch * self.world
        subset = [int(i) for s in range(skip, self.steps_per_epoch)
                  for i in order[s * per_step + self.rank * self.batch: s * per_step + (self.rank + 1) * self.batch]]
        return DataLoader(_Keyed(self.train, subset), batch_size=self.batch, shuffle=False,
                          num_workers=self.workers, drop_last=True, collate_fn=_collate)

    def val_loader(self):
        return self.val


class _Keyed(torch.utils.data.Dataset):
    """A subset of an ImageFolder whose items carry their file index as the key."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, cls = self.dataset[self.indices[i]]
        return image, torch.tensor(cls, dtype=torch.long), str(self.indices[i])


class ImageNetShards(Source):
    """ImageNet webdataset shards (jpg + cls per sample), e.g. the public imagenet-1k-wds layout:
    DIR/train/*.tar and DIR/val/*.tar (or shard lists given as brace patterns)."""

    def __init__(self, path: str, cfg: dict, transforms, batch: int, rank: int, world: int):
        import glob

        self.train_urls = sorted(glob.glob(os.path.join(path, "train", "*.tar")) or
                                 glob.glob(os.path.join(path, "*train*.tar")))
        self.val_urls = sorted(glob.glob(os.path.join(path, "val", "*.tar")) or
                               glob.glob(os.path.join(path, "*val*.tar")))
        if not self.train_urls or not self.val_urls:
            raise UserError(f"ImageNet shards {path}: expected train/*.tar and val/*.tar (or *train*.tar, *val*.tar)")
        if len(self.train_urls) < world:
            raise UserError(f"{path} has {len(self.train_urls)} train shards for {world} processes")
        self.num_classes = int(cfg["data"].get("num_classes") or 1000)
        self.multilabel = False
        self.train_tf, self.val_tf = transforms
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.steps_per_epoch = int(cfg["data"].get("train_samples") or 1_281_167) // (batch * world)
        self.rank_urls = self.train_urls[rank::world]
        self.description = {"kind": "imagenet-wds", "path": os.path.abspath(path), "classes": self.num_classes}

    def train_batches(self, epoch: int, skip: int):
        tf = self.train_tf

        def to_triple(sample):
            image = next(sample[k] for k in ("jpg", "jpeg", "png") if k in sample)
            return tf(_open_image(image)), torch.tensor(int(sample["cls"]), dtype=torch.long), sample["__key__"]

        return shard_batches(self.rank_urls, to_triple, _collate, self.batch, self.workers, self.steps_per_epoch,
                             seed=(self.seed * 1_000_003 + epoch) * 1009 + self.rank, skip=skip)

    def val_loader(self):
        return TarMembers(self.val_urls, self.val_tf)


class TarMembers(torch.utils.data.Dataset):
    """Map-style view of webdataset shards (image + cls): an index of member offsets, so every rank
    can take its slice and images are read and decoded only when asked for."""

    def __init__(self, urls: list, transform):
        import tarfile

        self.transform, self.items = transform, []
        for url in urls:
            found: dict = {}
            with tarfile.open(url) as tar:
                for m in tar:
                    key, _, ext = m.name.partition(".")
                    entry = found.setdefault(key, {})
                    if ext in ("jpg", "jpeg", "png"):
                        entry["image"] = (m.offset_data, m.size)
                    elif ext == "cls":
                        entry["cls"] = int(tar.extractfile(m).read())
            self.items += [(url, *e["image"], e["cls"]) for e in found.values() if "image" in e and "cls" in e]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        url, offset, size, cls = self.items[i]
        with open(url, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return self.transform(_open_image(data)), torch.tensor(cls, dtype=torch.long)


def make_source(cfg: dict, transforms, batch: int, rank: int, world: int) -> Source:
    data = cfg["data"]
    kind, path = data["source"], data.get("path")
    if kind == "render":
        return FractalSource.from_config(cfg, transforms, batch, rank, world)
    if not path:
        raise UserError(f"data.source={kind} needs a path: pass --data PATH")
    if not os.path.exists(path):
        raise UserError(f"--data {path} does not exist")
    if kind in ("shards", "on_the_fly"):
        return FractalSource.from_folder(path, cfg, transforms, batch, rank, world, on_the_fly=kind == "on_the_fly")
    if kind == "imagenet":
        if os.path.isdir(os.path.join(path, "train")) and not any(f.endswith(".tar") for f in os.listdir(os.path.join(path, "train"))):
            return ImageNetFolder(path, cfg, transforms, batch, rank, world)
        return ImageNetShards(path, cfg, transforms, batch, rank, world)
    raise UserError(f"unknown data.source {kind!r}; use shards, on_the_fly, render or imagenet")
