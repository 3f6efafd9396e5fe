"""User-facing errors shared by every stage: one clear line, exit status 2, no traceback.

UserError is fractalgen's own class (trainers import fractalgen, never the reverse), so a mistake
reported by the renderer inside a trainer is handled the same way.
"""

import sys

from fractalgen.errors import UserError

__all__ = ["UserError", "run_main"]


def run_main(fn, *args, **kwargs):
    """Call an entry point; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
