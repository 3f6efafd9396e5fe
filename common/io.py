"""Atomic file writing: a file under its final name is always complete (or absent).

Everything is written beside the target under a temporary name, flushed to disk and renamed over
it; a crash or a full disk leaves at most a stray `*.tmp-*` file, never a half-written result.
"""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w"):
    """`with atomic_write(path) as f: f.write(...)`: path appears only once the block succeeded."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".tmp-")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(path: str, obj, **dump_kwargs) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, **dump_kwargs)


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def save_atomically(path: str, save) -> None:
    """For libraries that write to a path themselves (safetensors, torch.save): save(tmp_path)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".tmp-")
    os.close(fd)
    try:
        save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_json(path: str, what: str):
    """A JSON file a user hands us (model.json, final.json): its content, or one clear error line."""
    from .errors import UserError

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror if isinstance(e, OSError) else e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}); re-create it") from None
