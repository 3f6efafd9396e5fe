"""User-facing errors shared by every stage: one clear line, exit status 2, no traceback.

UserError is fractalgen's own class (trainers import fractalgen, never the reverse), so a mistake
reported by the renderer inside a trainer is handled the same way.
"""

import argparse
import os
import sys

from fractalgen.errors import UserError

__all__ = ["ArgumentParser", "UserError", "run_main"]


def run_main(fn, *args, **kwargs):
    """Call an entry point; a UserError becomes `error: <message>` on stderr and exit status 2 (or
    the error's own `exit_code`), Ctrl-C one line and exit status 130."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        _exit(f"error: {_message(e)}", getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        _exit("error: interrupted", 130)


def _message(e: UserError) -> str:
    """The error's own line; one raised in a DataLoader worker arrives re-raised by torch with the
    worker's traceback as its text, whose last line holds the original message."""
    text = str(e)
    if not text.startswith("Caught "):
        return text
    return text.rstrip().splitlines()[-1].split("UserError: ", 1)[-1]


def _exit(line: str, code: int):
    print(line, file=sys.stderr, flush=True)
    if _in_process_group():
        # other ranks may wait in a collective for this one: leave now (a normal exit can block in the
        # process group's shutdown); the launcher then ends the other ranks
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _in_process_group() -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return bool(torch and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UserError (one line, exit 2) and accepts
    key=value overrides anywhere among the options."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)
