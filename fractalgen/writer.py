"""Writing a dataset: webdataset shards, receipts, and the card; resumable, atomic, splittable.

Layout of an output folder:
    {kind}-000000.tar ...   complete shards (written as *.tmp-HOST-PID, renamed when complete)
    systems.json            the class systems every sample was drawn from
    dataset.json            the card, written once every shard is complete
    .fractalgen/job.json    the options this folder belongs to (other options are refused)
    .fractalgen/receipts/   one JSON per complete shard: name, first index, count, sha256

A shard is a pure function of (options, shard number), so re-running the same command skips
shards whose receipt matches the file, redoes the rest, and any split of the shard list over
processes (--workers) or machines (--part i/k) writes identical bytes.
"""

import errno
import fcntl
import glob
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tarfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from .card import (CARD, STATE_DIR, atomic_write, build_card, canonical, sha256_file, shard_name,
                   shard_ranges)
from .errors import UserError
from .kinds import KIND_TABLE, DatasetSpec, render_sample, with_new_defaults
from .png import encode_png
from .systems import save_systems

FORMATS = ("png", "webp", "jpg")
# Lossless PNG by default: readable everywhere, grayscale stays 1-channel, and our encoder (png.py)
# is ~4x faster than Pillow's PNG or lossless WebP at the same size. webp (lossless) and jpg
# (quality 95, lossy, ~4x smaller) are options.
DEFAULT_FORMAT = "png"
NOTES = [
    "class = index % classes; fractaldb instance = index // classes -> weight variant (instance % 25), "
    "flip ((instance // 25) % 4), random 3x3 patch per sample",
    "drawing window = bounding box of all points, each axis scaled to fill the canvas",
    "multi: each fractal is drawn directly at its pasted size with a full-size point density; a class is "
    "present when >= min_visible of its drawn pixels stay visible; boxes are [x0, y0, x1, y1) of visible pixels",
    "colour hue uses the full 0-1 circle (not OpenCV's 0-179 range)",
]


def encode(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "png":
        return encode_png(image)
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "webp":
        pil.save(buf, "WEBP", lossless=True, method=0, quality=0)
    else:
        pil.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def sample_fields(sample, fmt: str) -> dict:
    """The webdataset fields of one sample (extension -> bytes)."""
    return {fmt: encode(sample.image, fmt), "cls": str(sample.cls).encode(),
            "json": json.dumps(sample.meta, sort_keys=True).encode()}


def add_sample(tar: tarfile.TarFile, key: str, fields: dict) -> None:
    """Append one sample as webdataset members `key.ext`, with fixed metadata so shards are
    byte-identical across runs. (Plain tarfile: webdataset's TarWriter would import torch.)"""
    for ext in sorted(fields):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(fields[ext])
        info.mtime = 0
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(fields[ext]))


def job_description(spec: DatasetSpec, image_format: str, shard_size: int) -> dict:
    systems_sha = hashlib.sha256(canonical([s.tolist() for s in spec.systems])).hexdigest()
    return {"options": spec.options, "image_format": image_format, "shard_size": shard_size,
            "channels": spec.channels, "systems_sha256": systems_sha,
            "notes": NOTES + list(KIND_TABLE[spec.kind].notes)}


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--part must look like i/k (e.g. 0/4), got {text!r}") from None
    if k < 1 or not 0 <= i < k:
        raise UserError(f"--part {text}: need k >= 1 and 0 <= i < k")
    return i, k


def render_dataset(spec: DatasetSpec, out_dir: str, shard_size: int = 1000, workers: int | None = None,
                   image_format: str | None = None, part: tuple[int, int] = (0, 1), overwrite: bool = False,
                   progress: bool = True) -> dict | None:
    """Render (this part of) the dataset into out_dir. Returns the card once the dataset is complete,
    else None (other parts still running)."""
    image_format = image_format or DEFAULT_FORMAT
    if image_format not in FORMATS:
        raise UserError(f"unknown --format {image_format!r}; choose one of {', '.join(FORMATS)}")
    if shard_size <= 0:
        raise UserError(f"--shard-size must be positive, got {shard_size}")
    workers = workers or os.cpu_count() or 1
    job = job_description(spec, image_format, shard_size)
    try:
        _claim_folder(out_dir, job, overwrite)
        systems_path = os.path.join(out_dir, "systems.json")
        if not os.path.exists(systems_path):
            save_systems(systems_path, spec.systems, spec.systems_info)
        ranges = shard_ranges(spec.n, shard_size)
        mine = [s for s in range(len(ranges)) if s % part[1] == part[0]]
        todo = [s for s in mine if not _shard_done(out_dir, spec.kind, s)]
        done_samples = sum(ranges[s][1] for s in mine) - sum(ranges[s][1] for s in todo)
        bar = tqdm(total=sum(ranges[s][1] for s in mine), initial=done_samples, unit="img", disable=not progress,
                   desc=f"render {spec.kind}" + (f" part {part[0]}/{part[1]}" if part[1] > 1 else ""),
                   file=sys.stderr, smoothing=0.1, mininterval=0.5 if sys.stderr.isatty() else 30)
        tasks = [(s, *ranges[s]) for s in todo]
        with bar:
            for count in _run(spec, out_dir, image_format, tasks, workers):
                bar.update(count)
        return _finish(out_dir, spec.kind, job, ranges)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"disk full while writing {out_dir}; free space and re-run the same command "
                            f"(complete shards are kept)") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise UserError(f"cannot write to {out_dir} ({e.strerror}); choose a writable --out") from None
        raise


def _claim_folder(out_dir: str, job: dict, overwrite: bool) -> None:
    """Create the folder and record its job; refuse a folder that holds another job."""
    state = os.path.join(out_dir, STATE_DIR)
    job_path = os.path.join(state, "job.json")
    if overwrite and os.path.isdir(out_dir):
        for path in glob.glob(os.path.join(out_dir, "*.tar")) + [os.path.join(out_dir, CARD),
                                                                  os.path.join(out_dir, "systems.json")]:
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(state, ignore_errors=True)
    if os.path.exists(os.path.join(out_dir, CARD)) and not os.path.exists(job_path):
        raise UserError(f"{out_dir} holds a dataset without its render state; use another --out or --overwrite")
    os.makedirs(os.path.join(state, "receipts"), exist_ok=True)
    data = json.dumps(job, sort_keys=True, indent=1).encode()
    tmp = f"{job_path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, job_path)  # atomic "create if absent", also between machines sharing the folder
    except FileExistsError:
        pass
    finally:
        os.remove(tmp)
    with open(job_path, "rb") as f:
        existing = json.load(f)
    existing["options"] = with_new_defaults(existing["options"])  # a folder an older version started
    if canonical(existing) != canonical(job):
        differ = sorted(k for k in set(existing["options"]) | set(job["options"])
                        if existing["options"].get(k) != job["options"].get(k))
        differ += [k for k in ("image_format", "shard_size", "systems_sha256") if existing.get(k) != job.get(k)]
        legacy = KIND_TABLE[job["options"]["kind"]].legacy if job["options"].get("kind") in KIND_TABLE else {}
        changed = [f"--option {k}={str(legacy[k]).lower()}" for k in differ
                   if k in legacy and existing["options"].get(k) == legacy[k]]
        hint = f" (fractalgen's default changed since it was started: {' '.join(changed)} finishes it as begun)" \
            if changed else ""
        raise UserError(f"{out_dir} was rendered with other options (differs in: {', '.join(differ)}){hint}; "
                        f"use another --out, or --overwrite to replace it")


def _receipt_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, STATE_DIR, "receipts", name + ".json")


def _shard_done(out_dir: str, kind: str, shard: int) -> bool:
    name = shard_name(kind, shard)
    path, receipt = os.path.join(out_dir, name), _receipt_path(out_dir, name)
    if not (os.path.exists(path) and os.path.exists(receipt)):
        return False
    with open(receipt) as f:
        return json.load(f)["sha256"] == sha256_file(path)


# --- worker side: the spec is inherited (fork) or passed once (spawn), never per task

_WORKER: dict = {}


def _init_worker(spec, out_dir, image_format):
    _WORKER.update(spec=spec, out_dir=out_dir, image_format=image_format)


def _locked_temp(final: str):
    """This process's temporary file for `final`, created and held under an exclusive flock for as
    long as it is being written: the lock is what tells other renders it is in use. The name is
    unique per machine and process (renders on several machines may share the folder)."""
    tmp = f"{final}.tmp-{socket.gethostname()}-{os.getpid()}"
    while True:
        f = open(tmp, "wb")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if os.stat(tmp).st_ino == os.fstat(f.fileno()).st_ino:
                return tmp, f
        except FileNotFoundError:
            pass
        f.close()  # another render removed it as stale between our open and lock: make it again


def _remove_stale_temps(final: str, mine: str) -> None:
    """Remove temporary files of `final` left by killed renders; a temp whose writer still holds
    its lock (a render running at the same time) is left alone."""
    for path in glob.glob(final + ".tmp-*"):
        if path == mine:
            continue
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being written right now
            try:
                if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                    os.remove(path)
            except FileNotFoundError:
                pass


def _write_shard(task) -> int:
    shard, first, count = task
    spec, out_dir, fmt = _WORKER["spec"], _WORKER["out_dir"], _WORKER["image_format"]
    name = shard_name(spec.kind, shard)
    final = os.path.join(out_dir, name)
    tmp, f = _locked_temp(final)
    _remove_stale_temps(final, tmp)
    try:
        with f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for index in range(first, first + count):
                    s = render_sample(spec, index)
                    add_sample(tar, s.key, sample_fields(s, fmt))
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, final)  # still locked: nobody removes it before it has its final name
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # bytes: trainers check every shard's size against the card when a run starts (a cheap check)
    receipt = {"name": name, "first_index": first, "count": count, "sha256": sha256_file(final),
               "bytes": os.path.getsize(final)}
    atomic_write(_receipt_path(out_dir, name), json.dumps(receipt, sort_keys=True).encode())
    return count


def _run(spec, out_dir, image_format, tasks, workers):
    """Yield sample counts as shards complete, in-process for one worker, else in a process pool."""
    if not tasks:
        return
    if workers <= 1 or len(tasks) == 1:
        _init_worker(spec, out_dir, image_format)
        for task in tasks:
            yield _write_shard(task)
        return
    # fork is cheap and inherits the compiled kernels; kernels are single-threaded, so fork is safe
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    render_sample(spec, 0)  # compile (or load from cache) once before forking
    with ctx.Pool(min(workers, len(tasks)), _init_worker, (spec, out_dir, image_format)) as pool:
        yield from pool.imap_unordered(_write_shard, tasks)


def _finish(out_dir, kind, job, ranges) -> dict | None:
    """Write the card when every shard has its receipt (whichever part finishes last does it)."""
    receipts = []
    for s in range(len(ranges)):
        path = _receipt_path(out_dir, shard_name(kind, s))
        if not os.path.exists(path):
            return None
        with open(path) as f:
            receipts.append(json.load(f))
    card = build_card(job, receipts)
    data = json.dumps(card, sort_keys=True, indent=1).encode()
    card_path = os.path.join(out_dir, CARD)
    if not (os.path.exists(card_path) and open(card_path, "rb").read() == data):
        atomic_write(card_path, data)
    return card


def rate_split(spec: DatasetSpec, count: int, image_format: str) -> dict:
    """Seconds per image spent rendering, encoding and writing (for the benchmark's breakdown)."""
    t = {"render": 0.0, "encode": 0.0, "write": 0.0}
    with tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index in range(count):
            t0 = time.perf_counter()
            s = render_sample(spec, index)
            t1 = time.perf_counter()
            fields = sample_fields(s, image_format)
            t2 = time.perf_counter()
            add_sample(tar, s.key, fields)
            t3 = time.perf_counter()
            t["render"] += t1 - t0
            t["encode"] += t2 - t1
            t["write"] += t3 - t2
    return {k: v / count for k, v in t.items()}
