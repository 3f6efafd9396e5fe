"""Pretraining data sources, each giving per-rank batches and a held-out validation loader.

- fractal shards written by fractalgen (the card is checked against the files),
- fractal samples rendered on the fly from the card's spec (no disk),
- ImageNet as an ILSVRC-2012 folder or as webdataset shards (jpg + cls).

Ranks read disjoint data: shards are dealt out by rank (shard s goes to rank s % world), on-the-fly
indices are dealt out the same way from one seeded permutation per epoch. Every rank yields exactly
steps_per_epoch batches, so DDP never waits on a rank that ran dry.
"""

import os
import random

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import fractalgen
from common.engine import step_seed
from common.errors import UserError


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
    def __init__(self, path: str, cfg: dict, transforms, batch: int, rank: int, world: int, on_the_fly: bool):
        self.card = fractalgen.load_card(path) if os.path.isdir(path) else _fail_card(path)
        self.root = path
        self.spec = fractalgen.DatasetSpec.from_card(self.card, path)
        self.num_classes, self.multilabel = self.card["num_classes"], self.card["multilabel"]
        self.card_sha256 = self.card["card_sha256"]
        self.train_tf, self.val_tf = transforms
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.on_the_fly = on_the_fly
        self.val_count = int(cfg["data"]["val_samples"])
        self.steps_per_epoch = self.card["n"] // (batch * world)
        if self.steps_per_epoch < 1:
            raise UserError(f"dataset {path} has {self.card['n']} samples, fewer than one global batch "
                            f"({batch * world}); render more or lower batch_size")
        if not on_the_fly:
            self._check_shards()
            names = [s["name"] for s in self.card["shards"]]
            if len(names) < world:
                raise UserError(f"{path} has {len(names)} shards for {world} processes; re-render with a smaller "
                                f"--shard-size so every process gets its own shards")
            self.rank_urls = [os.path.join(path, n) for n in names[rank::world]]
        self.description = {"kind": self.card["kind"], "path": os.path.abspath(path), "n": self.card["n"],
                            "classes": self.num_classes, "card_sha256": self.card_sha256,
                            "mode": "on_the_fly" if on_the_fly else "shards"}

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

        def to_pair(sample):
            meta = sample["json"]
            return (tf(sample[ext].convert("RGB")), _targets(meta["classes"], meta["cls"], num_classes, multilabel),
                    sample["__key__"])

        seed = (self.seed * 1_000_003 + epoch) * 1009 + self.rank
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.rank_urls, seed=seed, deterministic=True),
            wds.tarfile_to_samples(),
            wds.shuffle(1000, initial=200, rng=random.Random(seed)),
            wds.decode("pil"),
            wds.map(to_pair),
            wds.batched(self.batch, collation_fn=_collate, partial=False),
        )
        loader = wds.WebLoader(pipeline, batch_size=None, num_workers=self.workers)
        loader = loader.with_epoch(self.steps_per_epoch)
        it = iter(loader)
        for _ in range(skip):  # resume mid-epoch: the stream is seeded by epoch, so skipping replays it
            next(it)
        return it

    def val_loader(self):
        ds = RenderedIndices(self.spec, self.val_tf, self.card["n"], self.val_count)
        return ds


def _fail_card(path):
    raise UserError(f"--data {path} is not a folder; point it at a fractalgen dataset folder (with dataset.json)")


class OnTheFlySpec:
    """Build a spec from config (no disk at all): data.render holds fractalgen render options."""

    @staticmethod
    def card(render: dict) -> tuple:
        opts = dict(render)
        kind, n, classes = opts.pop("kind"), int(opts.pop("n")), int(opts.pop("classes"))
        systems = info = None
        if kind == "fractaldb":
            from fractalgen.search import search

            systems, info = search(classes, seed=int(opts.get("seed", 0)), workers=1, progress=False,
                                   size=int(opts.pop("search_size", 128)), points=int(opts.pop("search_points", 20_000)))
        return fractalgen.DatasetSpec.create(kind, n, classes, systems=systems, systems_info=info, **opts)


class ConfigFractalSource(FractalSource):
    """On-the-fly fractal data described in the config itself (data.render), no folder at all."""

    def __init__(self, cfg: dict, transforms, batch: int, rank: int, world: int):
        self.spec = OnTheFlySpec.card(cfg["data"]["render"])
        self.card = {"n": self.spec.n, "kind": self.spec.kind}
        self.num_classes, self.multilabel = self.spec.num_classes, self.spec.multilabel
        import hashlib, json

        self.card_sha256 = hashlib.sha256(json.dumps(self.spec.options, sort_keys=True).encode()).hexdigest()
        self.train_tf, self.val_tf = transforms
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.on_the_fly = True
        self.val_count = int(cfg["data"]["val_samples"])
        self.steps_per_epoch = self.spec.n // (batch * world)
        if self.steps_per_epoch < 1:
            raise UserError(f"data.render.n={self.spec.n} is fewer than one global batch ({batch * world})")
        self.description = {"kind": self.spec.kind, "options": self.spec.options, "mode": "on_the_fly",
                            "card_sha256": self.card_sha256}


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
        seed = (self.seed * 1_000_003 + epoch) * 1009 + self.rank
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.rank_urls, seed=seed, deterministic=True),
            wds.tarfile_to_samples(),
            wds.shuffle(1000, initial=200, rng=random.Random(seed)),
            wds.decode("pil"),
            wds.to_tuple("jpg;jpeg;png", "cls", "__key__"),
            wds.map(lambda t: (tf(t[0].convert("RGB")), torch.tensor(int(t[1]), dtype=torch.long), t[2])),
            wds.batched(self.batch, collation_fn=_collate, partial=False),
        )
        it = iter(wds.WebLoader(pipeline, batch_size=None, num_workers=self.workers).with_epoch(self.steps_per_epoch))
        for _ in range(skip):
            next(it)
        return it

    def val_loader(self):
        samples = []
        for url in self.val_urls:  # small enough to index once; a Dataset lets every rank take a slice
            for sample in wds.WebDataset(url, shardshuffle=False).decode("pil").to_tuple("jpg;jpeg;png", "cls"):
                samples.append(sample)
        return _ListDataset(samples, self.val_tf)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, cls = self.items[i]
        return self.transform(image.convert("RGB")), torch.tensor(int(cls), dtype=torch.long)


def make_source(cfg: dict, transforms, batch: int, rank: int, world: int) -> Source:
    data = cfg["data"]
    kind, path = data["source"], data.get("path")
    if kind == "render":
        return ConfigFractalSource(cfg, transforms, batch, rank, world)
    if not path:
        raise UserError(f"data.source={kind} needs a path: pass --data PATH")
    if not os.path.exists(path):
        raise UserError(f"--data {path} does not exist")
    if kind in ("shards", "on_the_fly"):
        return FractalSource(path, cfg, transforms, batch, rank, world, on_the_fly=kind == "on_the_fly")
    if kind == "imagenet":
        if os.path.isdir(os.path.join(path, "train")) and not any(f.endswith(".tar") for f in os.listdir(os.path.join(path, "train"))):
            return ImageNetFolder(path, cfg, transforms, batch, rank, world)
        return ImageNetShards(path, cfg, transforms, batch, rank, world)
    raise UserError(f"unknown data.source {kind!r}; use shards, on_the_fly, render or imagenet")
