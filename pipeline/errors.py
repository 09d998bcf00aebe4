"""Errors whose message is written for the user: the CLI prints them and exits 2, no traceback."""


class UserError(Exception):
    """Bad input to a whole run (job file, manifest, options); the message says what and where."""
