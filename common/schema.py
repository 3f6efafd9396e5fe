"""Typed config schemas, checked once at load.

A stage's schema is a tree of dataclasses: one field per key, its type hint the allowed type, and
`key(...)` metadata for ranges. Defaults live in the stage's base.yaml (data, documented in one
place); the schema says what a value may be. `validate` returns the config as a plain nested dict in
which every key is present with its checked type (ints are int, floats float), so the code reads
`cfg["key"]` with no fallbacks or casts. Every problem is one line: the dotted key, what it must be
and what it was, and for an unknown key the nearest known ones.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from .errors import UserError

_RANGE = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def key(*, ge=None, gt=None, le=None, lt=None, length: int | None = None, check=None):
    """Field metadata: a numeric range (applies to list items too), a list length, or check(value)
    returning an error text (or None) for rules a type cannot say."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, length=length, check=check).items() if v is not None}
    return dataclasses.field(metadata=meta)


# --- sections both trainers share -------------------------------------------------------------

SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly")


def _known_optimizer(name: str) -> str | None:
    from timm.optim import list_optimizers  # timm only when a config is checked, not at import

    names = list_optimizers()
    if name.lower() in names:
        return None
    close = difflib.get_close_matches(name.lower(), names, n=3)
    return f"an optimiser timm knows (e.g. {', '.join(close or ['adamw', 'sgd', 'momentum'])})"


@dataclass
class Optim:
    opt: str = key(check=_known_optimizer)
    lr: Optional[float] = key(gt=0)          # null: base_lr x batch / lr_base_batch
    base_lr: float = key(gt=0)
    lr_base_batch: int = key(ge=1)
    weight_decay: float = key(ge=0)
    momentum: float = key(ge=0, lt=1)
    layer_decay: Optional[float] = key(gt=0, le=1)
    head_lr_scale: float = key(gt=0)
    sched: Literal[SCHEDULES] = key()
    warmup_epochs: float = key(ge=0)
    warmup_lr: float = key(ge=0)
    min_lr: float = key(ge=0)
    decay_epochs: float = key(gt=0)
    decay_rate: float = key(gt=0, le=1)
    clip_grad: Optional[float] = key(gt=0)


@dataclass
class Ema:
    enabled: bool = key()
    decay: float = key(gt=0, lt=1)


INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "random")


@dataclass
class Aug:
    """Augmentation keys both stages have (mixup, cutmix and label smoothing act in the engine)."""

    scale: list[float] = key(gt=0, le=1, length=2)
    interpolation: Literal[INTERPOLATIONS] = key()
    label_smoothing: float = key(ge=0, lt=1)
    mixup: float = key(ge=0)
    cutmix: float = key(ge=0)
    mixup_prob: float = key(ge=0, le=1)
    mixup_switch_prob: float = key(ge=0, le=1)


@dataclass
class Trainer:
    """Keys every training run has (both stages)."""

    seed: int = key(ge=0)
    model: str = key()
    model_kwargs: dict = key()
    img_size: int = key(ge=8)
    epochs: int = key(ge=1)
    batch_size: int = key(ge=1)
    drop_path: float = key(ge=0, lt=1)
    precision: Literal["no", "bf16", "fp16"] = key()
    device: Literal["auto", "cpu"] = key()
    grad_accum: int = key(ge=1)
    channels_last: bool = key()
    log_every: int = key(ge=1)
    eval_every: float = key(gt=0)      # epochs between validations; below 1 also inside epochs
    eval_batch: int = key(ge=1)
    checkpoint_every: int = key(ge=0)  # updates; 0 = only at epoch ends
    keep_checkpoints: int = key(ge=1)
    optim: Optim = key()
    ema: Ema = key()


def warmup_problem(cfg: dict) -> str | None:
    """A warm-up as long as the run: the learning rate only rises and the last epoch, the reported
    one, is trained at its peak. A quick `epochs=1` try may want that; a study's result must not."""
    warmup, epochs = cfg["optim"]["warmup_epochs"], cfg["epochs"]
    if warmup >= epochs:  # epochs >= 1, so a warm-up of 0 never is
        return (f"optim.warmup_epochs ({warmup:g}) is not less than epochs ({epochs}): the learning rate would "
                f"only rise and the run end at its peak; lower optim.warmup_epochs (e.g. {epochs / 4:g}) or raise epochs")
    return None


# --- checking ----------------------------------------------------------------------------------


def validate(cfg: dict, schema: type, where: str = "config", path: str = "") -> dict:
    """cfg checked against the dataclass `schema`: a new dict, values converted to their types.
    `path` (e.g. "pretrain[0].") prefixes the key names in messages, for a section of a larger file."""
    return _section(cfg, schema, path, where)


def _section(value, schema: type, path: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: {path or 'the config'} must be a mapping of keys, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=3)
            hint = f"; did you mean {', '.join(path + c for c in close)}?" if close else \
                f" (known keys here: {', '.join(fields)})"
            raise UserError(f"{where}: unknown key {path + str(name)!r}{hint}")
    missing = [name for name in fields if name not in value]
    if missing:
        raise UserError(f"{where}: key {path + missing[0]!r} is missing; start the file with `base: base.yaml` "
                        f"(the stage's base.yaml lists every key with its default)")
    return {name: _value(value[name], hints[name], fields[name].metadata, path + name, where) for name in fields}


def _value(value, hint, meta, path: str, where: str):
    if dataclasses.is_dataclass(hint):
        return _section(value, hint, path + ".", where)
    converted = _convert(value, hint, meta)
    if converted is _BAD:
        raise UserError(f"{where}: {path} must be {_describe(hint, meta)}, got {value!r}")
    problem = meta.get("check") and converted is not None and meta["check"](converted)
    if problem:
        raise UserError(f"{where}: {path} must be {problem}, got {value!r}")
    return converted


_BAD = object()


def _convert(value, hint, meta):
    """value as type `hint` (within meta's range), or _BAD."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _BAD
        for arg in (a for a in args if a is not type(None)):
            out = _convert(value, arg, meta)
            if out is not _BAD:
                return out
        return _BAD
    if origin is Literal:
        if value is False and "no" in args:  # YAML reads a bare `no` as false
            value = "no"
        return value if value in args else _BAD
    if origin is list:
        if not isinstance(value, (list, tuple)) or ("length" in meta and len(value) != meta["length"]):
            return _BAD
        items = [_convert(v, args[0], meta) for v in value]
        return _BAD if any(v is _BAD for v in items) else items
    if hint is dict or origin is dict:
        return dict(value) if isinstance(value, dict) else _BAD
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if hint in (int, float):
        number = _number(value, hint)
        return number if number is not _BAD and _in_range(number, meta) else _BAD
    raise TypeError(f"schema type {hint} is not supported")  # a schema bug, not a user error


def _number(value, hint):
    if isinstance(value, bool):
        return _BAD
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            return _BAD
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _BAD
    return float(value) if isinstance(value, (int, float)) and value == value else _BAD  # NaN is no number


def _in_range(x, meta) -> bool:
    return all(not (op in meta) or {"ge": x >= meta[op], "gt": x > meta[op], "le": x <= meta[op],
                                     "lt": x < meta[op]}[op] for op in _RANGE)


def _describe(hint, meta) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bounds = " and ".join(f"{_RANGE[op]} {meta[op]}" for op in _RANGE if op in meta)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, meta) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        size = f"{meta['length']} " if "length" in meta else ""
        element = _describe(args[0], {}).removeprefix("an ").removeprefix("a ")  # "an integer" -> integers
        return f"a list of {size}{element}s" + (f" each {bounds}" if bounds else "")
    if hint is dict or origin is dict:
        return "a mapping"
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]
    return f"{name} {bounds}" if bounds else name
