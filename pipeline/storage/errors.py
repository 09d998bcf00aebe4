"""Storage errors. Object-store failures are raised as ObjectNotFound (a FileNotFoundError),
AccessDenied (a PermissionError) or StorageUnavailable (transient: still failing after the SDK's
retries and ours), local write failures as WriteFailed, all StorageErrors, so callers map them to
reason codes as they map local OSErrors.
"""

from __future__ import annotations

from pipeline import exit_codes
from pipeline.errors import UserError


class StorageError(OSError, UserError):
    """An object store refused or failed an operation; the message names the object and why. A
    UserError too: when the manifest or OUT cannot be read or written, the command prints the
    message and stops (committed work stays; the rerun resumes), with no traceback."""


class ObjectNotFound(StorageError, FileNotFoundError):
    pass


class AccessDenied(StorageError, PermissionError):
    pass


class StorageUnavailable(StorageError):
    """Transient: throttling, 5xx, timeouts or dropped connections outlasted every retry. A run it
    ends exits 75, which schedulers retry: the next run resumes (configuration errors stay 2)."""

    exit_code = exit_codes.STORAGE_UNAVAILABLE


class WriteFailed(StorageError):
    """A local write failed (a full disk, a read-only or unwritable folder): nothing was presented
    under the target's name; the message says which file and why."""
