"""Reading webdataset shards fast: a tar reader that parses member headers straight from the
shard's bytes, and the seeded, resampled shard -> batch pipeline built on it.

Python's tarfile spends ~70 us per member building TarInfo objects; with three small members per
32 px sample that is most of a sample's decode time. Here a header is a 512-byte read, a slice and an int() - the
same samples webdataset's tarfile_to_samples yields (key = name up to the first dot of the base
name), at a fraction of the cost. ustar, pax (path records) and GNU long names are understood.
"""

import random
import sys
from typing import NamedTuple

import numpy as np
import webdataset as wds
from torch.utils.data import get_worker_info

from common.engine import seed_sample
from common.errors import UserError

BLOCK = 512


def _octal(field: bytes) -> int:
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _pax_path(records: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> path=<name>\\n" records)."""
    pos = 0
    while pos < len(records):
        space = records.index(b" ", pos)
        length = int(records[pos:space])
        key, _, value = records[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode()
        pos += length
    return None


def tar_members(stream):
    """(name, content) of every regular file of a tar archive read from a binary stream."""
    next_name = None
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK or header[0] == 0:  # end of archive
            return
        size, kind = _octal(header[124:136]), header[156:157]
        padded = stream.read((size + BLOCK - 1) // BLOCK * BLOCK)
        if len(padded) < size:
            raise EOFError(f"truncated tar member in {getattr(stream, 'name', 'a shard')}")
        content = padded[:size]
        if kind == b"x":
            next_name = _pax_path(content) or next_name
        elif kind == b"L":
            next_name = content.split(b"\0", 1)[0].decode()
        elif kind in (b"0", b"\0", b"7"):
            name = next_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode()
                if header[257:262] == b"ustar" and header[345] != 0:
                    name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
            next_name = None
            yield name, content
        else:  # directories, links, global headers: nothing to yield
            next_name = None


def _split_name(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (folder + "/" + stem if folder else stem), ext


def tar_samples(stream, url: str = ""):
    """webdataset samples ({"__key__", "__url__", ext: bytes}) of one shard, in order."""
    sample = None
    for name, content in tar_members(stream):
        key, ext = _split_name(name)
        if not ext:
            continue
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        sample[ext] = content
    if sample is not None:
        yield sample


# --- damaged data: skipped and counted up to a limit (the webdataset / open_clip policy), never a hang


class BadSample(NamedTuple):
    """A sample (or shard) that could not be used, named by shard and key."""

    where: str
    reason: str
    fatal: bool = False  # True: the run cannot go on (a label outside the classes, no sample at all)


class CorruptSample(Exception):
    """Raised by a decode function for bytes that do not decode: the sample is skipped and counted."""


class CorruptTally:
    """The damaged samples this rank skipped (distinct shard + key: resampling draws one again);
    past `limit` of them, or at a fatal one, the run stops with one line."""

    def __init__(self, limit: int):
        self.limit, self.seen = limit, {}

    @property
    def count(self) -> int:
        return len(self.seen)

    def add(self, bad: BadSample) -> None:
        if bad.fatal:
            raise UserError(f"{bad.where}: {bad.reason}")
        if bad.where in self.seen:
            return
        self.seen[bad.where] = bad.reason
        if len(self.seen) > self.limit:
            raise UserError(f"{len(self.seen)} damaged samples, more than data.max_corrupt={self.limit}; the last: "
                            f"{bad.where}: {bad.reason}; repair or re-render the data, or raise data.max_corrupt")
        print(f"warning: skipped damaged sample {bad.where}: {bad.reason} ({len(self.seen)} so far, "
              f"data.max_corrupt={self.limit})", file=sys.stderr)


def tallied(loader, tally: CorruptTally, skip: int = 0):
    """The batches of a loader that yields (batch or None, [BadSample]), damaged samples counted;
    the first `skip` batches are dropped (resuming mid-epoch replays the epoch's keyed stream)."""
    good = 0
    for i, (batch, bad) in enumerate(loader):
        for b in bad:
            tally.add(b)  # raises at a fatal one
        if batch is not None:  # None: every sample of the batch was damaged
            good += 1
            if i >= skip:
                yield batch
    if not good:
        raise UserError(f"a pass over the data gave no sample: all were damaged ({tally.count} skipped: "
                        f"{', '.join(list(tally.seen)[:2])}, ...)")


def _shard_reader(urls: list):
    """Pipeline stage: {"url"} -> that shard's samples. A damaged shard yields a BadSample naming it
    and the last good key; once every shard of the list has been read without one sample, a fatal
    BadSample (resampling empty shards would otherwise loop forever)."""
    empty: set = set()

    def stage(shards):
        for shard in shards:
            url, key, n = shard["url"], None, 0
            try:
                with open(url, "rb", buffering=1 << 20) as f:
                    for sample in tar_samples(f, url):
                        key, n = sample["__key__"], n + 1
                        yield sample
            except FileNotFoundError:
                yield BadSample(url, "the shard is missing", fatal=True)
                return
            except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
                where = f"{url} after sample {key}" if key else url
                yield BadSample(where, f"damaged tar ({e}); the rest of the shard is skipped")
            if n == 0:
                empty.add(url)
                if len(empty) == len(set(urls)):
                    yield BadSample(", ".join(sorted(empty)[:3]) + (", ..." if len(empty) > 3 else ""),
                                    f"none of the {len(empty)} shards holds a sample; re-create them", fatal=True)
                    return

    return stage


def _decode_stage(decode, key: tuple):
    """Pipeline stage: sample -> decode(sample), augmentation keyed by (key, worker, position), so a
    resumed run, which replays the epoch's stream, draws exactly what the uninterrupted one drew.
    In a DataLoader worker nothing else draws from the worker's generators: seeding once per stream
    is enough. In the main process (workers=0) training steps draw between batches: every sample is
    seeded (~40 us each, see docs/benchmarks.md). Undecodable samples become BadSamples."""

    def stage(items):
        info = get_worker_info()
        worker = info.id if info else 0
        if info:
            seed_sample(*key, worker)
        for position, item in enumerate(items):
            if isinstance(item, BadSample):
                yield item
                continue
            where = f"{item['__url__']} {item['__key__']}"
            if not info:
                seed_sample(*key, worker, position)
            try:
                yield decode(item)
            except CorruptSample as e:
                yield BadSample(where, str(e))
            except UserError as e:
                yield BadSample(where, str(e), fatal=True)

    return stage


def _batch_stage(collate, batch: int, max_bad_in_a_row: int):
    """Pipeline stage: decoded samples -> (collate(batch of them), BadSamples met since the last
    batch); a fatal BadSample, or more damaged samples in a row than the limit (no good sample is
    left to find), ends the stream with (None, [...])."""

    def stage(items):
        good, bad, in_a_row = [], [], 0
        for item in items:
            if isinstance(item, BadSample):
                bad.append(item)
                in_a_row += 1
                if item.fatal:
                    yield None, bad
                    return
                if in_a_row > max_bad_in_a_row:
                    yield None, bad + [BadSample(item.where, f"{in_a_row} damaged samples in a row and no good one; "
                                                             f"the last: {item.reason}", fatal=True)]
                    return
                continue
            in_a_row = 0
            good.append(item)
            if len(good) == batch:
                yield collate(good), bad
                good, bad = [], []

    return stage


def shard_batches(urls: list, decode, collate, batch: int, workers: int, steps: int, key: tuple, tally: CorruptTally,
                  skip: int = 0):
    """Endless, seeded resampling of this rank's shards -> shuffled samples -> batches of
    decode(sample); exactly `steps` batches (with_epoch on the loader counts per rank). `key` (seed,
    epoch, rank) seeds the shard draws, the shuffle and every sample's augmentation. Resuming
    mid-epoch replays the epoch's keyed stream and drops the first `skip` batches."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        _shard_reader(urls),
        wds.shuffle(1000, initial=200, rng=random.Random(seed)),
        _decode_stage(decode, key),  # decode reads and augments the raw bytes it needs
        _batch_stage(collate, batch, max(tally.limit, 1)),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers).with_epoch(steps)
    return tallied(loader, tally, skip)
