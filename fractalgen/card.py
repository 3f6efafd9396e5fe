"""The dataset card (dataset.json) and shard verification.

The card is built only from the job description and the per-shard receipts, with sorted keys and no
timestamps, so every complete render of the same options gives the same card bytes, however many
machines or workers shared the work.
"""

import hashlib
import io
import json
import os
import tarfile

from . import __version__
from .errors import UserError

CARD = "dataset.json"
CARD_FORMAT = "fractalgen-dataset/1"
STATE_DIR = ".fractalgen"  # job description and shard receipts while a render is in progress


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str, data: bytes) -> None:
    """Write under a temporary name, flush to disk, then rename: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def shard_name(kind: str, shard: int) -> str:
    return f"{kind}-{shard:06d}.tar"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """(first index, count) of every shard."""
    return [(first, min(shard_size, n - first)) for first in range(0, n, shard_size)]


def build_card(job: dict, receipts: list[dict]) -> dict:
    options = job["options"]
    card = {
        "format": CARD_FORMAT,
        "kind": options["kind"],
        "n": options["n"],
        "num_classes": options["classes"],
        "multilabel": options["kind"] == "multi",
        "size": options["size"],
        "channels": job["channels"],
        "image_ext": job["image_format"],
        "seed": options["seed"],
        "generator": {"name": "fractalgen", "version": __version__},
        "options": options,
        "shard_size": job["shard_size"],
        "systems": "systems.json",
        "systems_sha256": job["systems_sha256"],
        "notes": job["notes"],
        "shards": receipts,
    }
    card["card_sha256"] = hashlib.sha256(canonical(card)).hexdigest()
    return card


def load_card(root: str) -> dict:
    """Read DIR/dataset.json; a missing or corrupt card is a UserError that says what to do."""
    path = os.path.join(root, CARD)
    if not os.path.isdir(root):
        raise UserError(f"{root} is not a folder; render a dataset there with `fractalgen render --out {root}`")
    if not os.path.exists(path):
        state = os.path.join(root, STATE_DIR, "receipts")
        done = len(os.listdir(state)) if os.path.isdir(state) else 0
        hint = f" (a render is incomplete: {done} shards done; re-run its command)" if done else ""
        raise UserError(f"{root} has no {CARD}{hint}; render a dataset with `fractalgen render --out {root}`")
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); re-render the dataset") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise UserError(f"{path} is not a fractalgen dataset card (expected format {CARD_FORMAT!r})")
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    if hashlib.sha256(canonical(body)).hexdigest() != card.get("card_sha256"):
        raise UserError(f"{path} was edited after rendering (card_sha256 mismatch); re-render the dataset")
    return card


def check_shard(root: str, card: dict, entry: dict, deep: bool = True) -> str | None:
    """Why the shard is bad, or None. deep=True also reads every sample and checks its fields."""
    path = os.path.join(root, entry["name"])
    if not os.path.exists(path):
        return "missing"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from the card (modified or truncated)"
    if not deep:
        return None
    want = [f"{i:09d}" for i in range(entry["first_index"], entry["first_index"] + entry["count"])]
    fields = {card["image_ext"], "cls", "json"}
    seen: dict[str, set] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                seen.setdefault(key, set()).add(ext)
                if ext == "json":
                    meta = json.load(io.BytesIO(tar.extractfile(member).read()))
                    if meta.get("index") != int(key):
                        return f"sample {key}: json index {meta.get('index')} does not match its key"
    except (tarfile.TarError, ValueError, OSError) as e:
        return f"unreadable tar ({e})"
    if list(seen) != want:
        return f"holds keys {list(seen)[:3]}... but the card expects {want[:3]}... ({entry['count']} samples)"
    for key, exts in seen.items():
        if exts != fields:
            return f"sample {key} has fields {sorted(exts)}, expected {sorted(fields)}"
    return None
