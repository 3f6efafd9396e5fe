"""User-facing errors shared by the trainers: one clear line, exit status 2, no traceback."""

import sys


class UserError(Exception):
    """A mistake the user can fix (bad config key, missing data, wrong weights file...)."""


def run_main(fn, *args, **kwargs):
    """Call an entry point; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
