"""Configs are data: YAML files with `base:` inheritance, overridden by `key=value` arguments.

The resolved config is written into every run folder (config.yaml) so any result can be re-made.
"""

import copy
import difflib
import os

import yaml

from .errors import UserError
from .io import write_text


def merge(base: dict, over: dict) -> dict:
    """base with over laid on top, nested mappings merged key by key (neither input is changed)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: str, seen: tuple = ()) -> dict:
    if path in seen:
        raise UserError(f"config {path} inherits from itself (base: chain {' -> '.join(seen)})")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    bases = cfg.pop("base", None) or []
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = merge(merged, _read(os.path.join(os.path.dirname(path), base), seen + (path,)))
    return merge(merged, cfg)


def _keys(cfg: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += _keys(value, prefix + key + ".")
    return out


def _has(node, name: str) -> bool:
    """Whether node holds `name`: a key of a mapping, or an entry's number in a list ("pretrain.0")."""
    if isinstance(node, list):
        return name.isdigit() and int(name) < len(node)
    return isinstance(node, dict) and name in node


def apply_override(cfg: dict, text: str) -> None:
    """Apply one `a.b=value` (value parsed as YAML) to cfg; the key must already exist. A key may itself
    hold dots (a study's `finetune.overrides.optim.lr` reaches the key "optim.lr"), and a number picks
    an entry of a list (`pretrain.0.kinds=[single]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"override {text!r} must look like key=value")
    node, rest = cfg, key
    while not _has(node, rest):
        head, dot, tail = rest.partition(".")
        if isinstance(node, list) and not _has(node, head):
            raise UserError(f"override {key!r}: {head!r} is not an entry of a list of {len(node)} "
                            f"(0 to {len(node) - 1})")
        if not dot or not _has(node, head):
            close = difflib.get_close_matches(key, _keys(cfg), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"config has no key {key!r}{hint}")
        node, rest = node[int(head) if isinstance(node, list) else head], tail
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node[int(rest) if isinstance(node, list) else rest] = value


def load_config(path: str, overrides: list[str] = (), schema: type | None = None) -> dict:
    """The file (with its bases) and the overrides, checked against `schema` (a dataclass from
    common/schema.py) when given: every key present, typed and in range, unknown keys refused."""
    cfg = _read(path)
    for text in overrides:
        apply_override(cfg, text)
    if schema is None:
        return cfg
    from .schema import validate

    return validate(cfg, schema, where=f"{path}{' + overrides' if overrides else ''}")


def dump(cfg: dict) -> str:
    """The config as the YAML written into run folders (and printed by --print-config)."""
    return yaml.safe_dump(cfg, sort_keys=False)


def save_config(cfg: dict, run_dir: str, name: str = "config.yaml") -> str:
    path = os.path.join(run_dir, name)
    write_text(path, dump(cfg))  # atomic: the folder's config is complete or absent
    return path
