"""User-facing errors shared by every stage: one clear line, exit status 2, no traceback.

UserError is fractalgen's own class (trainers import fractalgen, never the reverse), so a mistake
reported by the renderer inside a trainer is handled the same way.
"""

import argparse
import sys

from fractalgen.errors import UserError

__all__ = ["ArgumentParser", "UserError", "run_main"]


def run_main(fn, *args, **kwargs):
    """Call an entry point; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UserError (one line, exit 2) and accepts
    key=value overrides anywhere among the options."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)
