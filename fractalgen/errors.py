"""The one exception type for mistakes a user can fix (bad options, bad files, full disk)."""


class UserError(Exception):
    """Raised for bad input; the CLI prints it as one line and exits with status 2."""
