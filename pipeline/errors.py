"""Errors whose message is written for the user: the CLI prints them and exits with their code
(2 unless the error says otherwise), no traceback."""

from pipeline import exit_codes


class UserError(Exception):
    """Bad input to a whole run (job file, manifest, options); the message says what and where."""

    exit_code = exit_codes.INVALID  # rerunning will not help until it is fixed
