"""Pretraining data sources, each giving per-rank batches and a held-out validation loader.

- fractal shards written by fractalgen (the card is checked against the files),
- fractal samples rendered on the fly from the card's spec (no disk),
- ImageNet as an ILSVRC-2012 folder or as webdataset shards (jpg + cls).

Ranks read disjoint data: shards are dealt out by rank (shard s goes to rank s % world), on-the-fly
indices are dealt out the same way from one seeded permutation per epoch. Every rank yields exactly
steps_per_epoch batches, so DDP never waits on a rank that ran dry.

Augmentation in the DataLoader workers is seeded per sample (or per batch, on the fly) from (seed,
epoch, rank, position), so a resumed run trains on exactly the pixels of the uninterrupted one.
Damaged samples are named by shard (or file) and key, skipped and counted (`corrupt`, logged in
metrics.jsonl) up to data.max_corrupt per rank; past it, or at a label outside the classes, the run
stops with one line.
"""

import functools
import io
import json
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import fractalgen
from common.engine import seed_sample, step_seed
from common.errors import UserError
from fractalgen.card import sha256_file
from pretrain.shards import BadSample, CorruptSample, CorruptTally, shard_batches, tallied


class Source:
    """What the trainer needs from a data source."""

    num_classes: int
    multilabel: bool
    card_sha256: str | None = None
    description: dict
    tally: CorruptTally  # damaged samples this rank skipped

    @property
    def corrupt(self) -> int:
        """How many damaged samples this rank skipped so far (for metrics.jsonl)."""
        return self.tally.count

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
    """Decoded now (Pillow is lazy), so damaged bytes fail here, not inside the augmentation."""
    image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP"))  # skip probing every other format
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_classes(classes: list, num_classes: int, where: str) -> None:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"{where}: class {bad[0]} is outside the {num_classes} classes (0..{num_classes - 1}); "
                        f"the data does not match its card or data.num_classes")


def decode_sample(sample: dict, image_exts: tuple, num_classes: int, multilabel: bool, transform):
    """A webdataset sample -> (image tensor, target, key). Bytes that do not decode raise
    CorruptSample (skipped and counted); a label outside the classes raises UserError (the run stops)."""
    where = f"{sample['__url__']} {sample['__key__']}"
    data = next((sample[e] for e in image_exts if e in sample), None)
    if data is None:
        raise CorruptSample(f"no {'/'.join(image_exts)} image (found {sorted(k for k in sample if k[:2] != '__')})")
    try:  # only the fields the labels need are decoded (json only for multi-label)
        classes = json.loads(sample["json"])["classes"] if multilabel else [int(sample["cls"])]
    except (KeyError, ValueError, TypeError) as e:
        raise CorruptSample(f"unreadable label ({type(e).__name__}: {e})") from None
    _check_classes(classes, num_classes, where)
    try:
        image = _open_image(data)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged bytes
        raise CorruptSample(f"image does not decode ({e})") from None
    return transform(image), _targets(classes, classes[0], num_classes, multilabel), sample["__key__"]


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
        self.seed, self.workers = cfg["seed"], cfg["data"]["workers"]
        self.tally = CorruptTally(cfg["data"]["max_corrupt"])
        self.on_the_fly = on_the_fly
        self.val_count = cfg["data"]["val_samples"]
        # an epoch is n samples, or data.train_samples (a budget: fewer draws a subset, more cycles)
        self.epoch_samples = cfg["data"]["train_samples"] or spec.n
        self.steps_per_epoch = self.epoch_samples // (batch * world)
        if self.steps_per_epoch < 1:
            raise UserError(f"an epoch of {self.epoch_samples} samples is less than one global batch "
                            f"({batch * world}); render more, raise data.train_samples or lower batch_size")
        if not on_the_fly:
            names = [s["name"] for s in card["shards"]]
            if len(names) < world:
                raise UserError(f"{root} has {len(names)} shards for {world} processes; re-render with a smaller "
                                f"--shard-size so every process gets its own shards")
            self._check_shards(cfg["data"]["verify"])
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
        if fractalgen.kinds.uses_searched_systems(kind):  # fractaldb, ofdb
            from fractalgen.search import search

            systems, info = search(classes, seed=int(opts.get("seed", 0)), workers=1, progress=False,
                                   size=int(opts.pop("search_size", 128)), points=int(opts.pop("search_points", 20_000)))
        spec = fractalgen.DatasetSpec.create(kind, n, classes, systems=systems, systems_info=info, **opts)
        card = {"card_sha256": hashlib.sha256(json.dumps(spec.options, sort_keys=True).encode()).hexdigest()}
        return cls(spec, card, cfg, transforms, batch, rank, world, on_the_fly=True)

    def _check_shards(self, verify: str):
        """Every shard against the card: present and of its size (cheap, always; cards from before
        sizes were recorded: at least 3 tar members of 1 KiB per sample); with verify=sha256 also
        re-hashed. Every rank checks every shard, so a bad shard stops all ranks alike (none is left
        waiting for the others); the hashing runs in threads (hashlib releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        redo = "re-run the fractalgen render command (it redoes damaged shards)"
        paths = [os.path.join(self.root, entry["name"]) for entry in self.card["shards"]]
        for path, entry in zip(paths, self.card["shards"]):
            if not os.path.exists(path):
                raise UserError(f"{path} is listed in the card but missing; {redo}")
            size, expected = os.path.getsize(path), entry.get("bytes")
            if expected is not None and size != expected:
                raise UserError(f"{path} has {size} bytes, the card says {expected} (truncated or changed after "
                                f"rendering); {redo}")
            if expected is None and size < entry["count"] * 3 * 1024:
                raise UserError(f"{path} has {size} bytes, too few for its {entry['count']} samples (truncated); "
                                f"{redo}")
        if verify == "sha256":
            with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
                for path, entry, digest in zip(paths, self.card["shards"], pool.map(sha256_file, paths)):
                    if digest != entry["sha256"]:
                        raise UserError(f"{path}: sha256 differs from the card (changed after rendering); {redo}")

    def train_batches(self, epoch: int, skip: int):
        if self.on_the_fly:
            ds = RenderedBatches(self.spec, self.train_tf, self.batch, self.rank, self.world, self.seed, epoch, skip,
                                 self.steps_per_epoch)
            return DataLoader(ds, batch_size=None, num_workers=self.workers, persistent_workers=False)
        return self._shard_loader(epoch, skip)

    def _shard_loader(self, epoch: int, skip: int):
        decode = functools.partial(decode_sample, image_exts=(self.card["image_ext"],), num_classes=self.num_classes,
                                   multilabel=self.multilabel, transform=self.train_tf)
        return shard_batches(self.rank_urls, decode, _collate, self.batch, self.workers, self.steps_per_epoch,
                             key=(self.seed, epoch, self.rank), tally=self.tally, skip=skip)

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
        self.train_tf = transforms[0]
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = cfg["seed"], cfg["data"]["workers"]
        self.tally = CorruptTally(cfg["data"]["max_corrupt"])
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
        files = _KeyedFiles(self.train.samples, subset, self.train_tf, key=(self.seed, epoch, self.rank),
                            first_position=skip * self.batch, batch=self.batch)
        loader = DataLoader(files, batch_size=self.batch, shuffle=False, num_workers=self.workers, drop_last=True,
                            collate_fn=_collate_good)
        return tallied(loader, self.tally)

    def val_loader(self):
        return self.val


class _KeyedFiles(torch.utils.data.Dataset):
    """Some of an ImageFolder's (path, class) samples; items carry their file index as the key, are
    augmented under a seed keyed by (key, position of their batch in the epoch) (exact resume,
    whichever worker runs them), and a file that does not decode becomes a BadSample naming it."""

    def __init__(self, samples: list, indices: list, transform, key: tuple, first_position: int, batch: int):
        self.samples, self.indices, self.transform = samples, indices, transform
        self.key, self.first_position, self.batch = key, first_position, batch

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        if i % self.batch == 0:  # a batch is read by one process, in order: seeding its first item keys them all
            seed_sample(*self.key, self.first_position + i)
        path, cls = self.samples[self.indices[i]]
        try:
            with open(path, "rb") as f:
                image = _open_image(f.read())
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
            return BadSample(path, f"image does not decode ({e})")
        return self.transform(image), torch.tensor(cls, dtype=torch.long), str(self.indices[i])


def _collate_good(items):
    """(batch of the decoded items or None, the BadSamples among them)."""
    good = [i for i in items if not isinstance(i, BadSample)]
    return (_collate(good) if good else None), [i for i in items if isinstance(i, BadSample)]


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
        self.num_classes = cfg["data"]["num_classes"] or 1000
        self.multilabel = False
        self.train_tf, self.val_tf = transforms
        self.batch, self.rank, self.world = batch, rank, world
        self.seed, self.workers = cfg["seed"], cfg["data"]["workers"]
        self.tally = CorruptTally(cfg["data"]["max_corrupt"])
        self.steps_per_epoch = (cfg["data"]["train_samples"] or 1_281_167) // (batch * world)
        self.rank_urls = self.train_urls[rank::world]
        self.description = {"kind": "imagenet-wds", "path": os.path.abspath(path), "classes": self.num_classes}

    def train_batches(self, epoch: int, skip: int):
        decode = functools.partial(decode_sample, image_exts=("jpg", "jpeg", "png"), num_classes=self.num_classes,
                                   multilabel=False, transform=self.train_tf)
        return shard_batches(self.rank_urls, decode, _collate, self.batch, self.workers, self.steps_per_epoch,
                             key=(self.seed, epoch, self.rank), tally=self.tally, skip=skip)

    def val_loader(self):
        return TarMembers(self.val_urls, self.val_tf, self.num_classes)


class TarMembers(torch.utils.data.Dataset):
    """Map-style view of webdataset shards (image + cls): an index of member offsets, so every rank
    can take its slice and images are read and decoded only when asked for."""

    def __init__(self, urls: list, transform, num_classes: int):
        import tarfile

        self.transform, self.items = transform, []
        for url in urls:
            found: dict = {}
            try:
                with tarfile.open(url) as tar:
                    for m in tar:
                        key, _, ext = m.name.partition(".")
                        entry = found.setdefault(key, {})
                        if ext in ("jpg", "jpeg", "png"):
                            entry["image"] = (m.offset_data, m.size)
                        elif ext == "cls":
                            entry["cls"] = _label(tar.extractfile(m).read(), f"{url} {key}")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise UserError(f"{url}: damaged tar ({e}); repair or replace the shard") from None
            for key, e in found.items():
                if "image" in e and "cls" in e:
                    _check_classes([e["cls"]], num_classes, f"{url} {key}")
                    self.items.append((url, key, *e["image"], e["cls"]))
        if not self.items:
            raise UserError(f"the validation shards {', '.join(urls[:3])} hold no image+cls samples")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        url, key, offset, size, cls = self.items[i]
        with open(url, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        try:
            image = _open_image(data)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged bytes
            raise UserError(f"{url} {key}: image does not decode ({e}); repair or replace the shard") from None
        return self.transform(image), torch.tensor(cls, dtype=torch.long)


def _label(data: bytes, where: str) -> int:
    try:
        return int(data)
    except ValueError:
        raise UserError(f"{where}: cls {data[:20]!r} is not a class number") from None


def make_source(cfg: dict, transforms, batch: int, rank: int, world: int) -> Source:
    data = cfg["data"]
    kind, path = data["source"], data["path"]
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
