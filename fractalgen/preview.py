"""Contact sheets: a grid of samples, each captioned with its class ids, for a person to look at."""

import io
import math
import os
import tarfile

import numpy as np
from PIL import Image, ImageDraw

from .card import atomic_write


def contact_sheet(images: list, captions: list, columns: int = 8, tile: int = 128) -> Image.Image:
    rows = math.ceil(len(images) / columns)
    label_h = 14
    sheet = Image.new("RGB", (columns * tile, rows * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * tile, (i // columns) * (tile + label_h)
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        sheet.paste(pil.convert("RGB").resize((tile, tile), Image.BILINEAR), (x, y))
        draw.text((x + 2, y + tile + 1), caption, fill="black")
    return sheet


def caption(meta: dict) -> str:
    classes = meta.get("classes", [meta.get("cls")])
    text = "cls " + ",".join(str(c) for c in classes)
    return text if len(text) <= 22 else text[:20] + ".."


def samples_from_shards(root: str, card: dict, count: int):
    """The first `count` (image, meta) pairs of a rendered folder, in index order."""
    import json

    out = []
    for entry in card["shards"]:
        with tarfile.open(os.path.join(root, entry["name"])) as tar:
            current = {}
            for member in tar:
                key, _, ext = member.name.partition(".")
                current.setdefault(key, {})[ext] = tar.extractfile(member).read()
                item = current[key]
                if card["image_ext"] in item and "json" in item:
                    out.append((Image.open(io.BytesIO(item[card["image_ext"]])), json.loads(item["json"])))
                    del current[key]
                    if len(out) >= count:
                        return out
    return out


def save_sheet(sheet: Image.Image, path: str) -> None:
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    atomic_write(path, buf.getvalue())
