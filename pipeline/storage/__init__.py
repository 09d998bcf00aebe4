"""Where bytes live: local paths and `s3://bucket/key` URLs on S3-compatible object stores (AWS S3,
Huawei OBS, MinIO, Ceph...) behind one small interface. Manifests, audio, `manifest build` and the
output folder read and write through here, and nothing else opens a manifest value itself.

One concept per module: locations.py (paths and URLs), settings.py (how to reach the store),
s3.py (the store, its calls retried), errors.py, reading.py and input_files.py, writing.py and
atomic_files.py (local writes presented whole), listing.py, local_copies.py (for ffmpeg). Callers
use the names below as `storage.X`.
"""

from pipeline.storage.errors import AccessDenied, ObjectNotFound, StorageError, StorageUnavailable, WriteFailed
from pipeline.storage.input_files import ObjectFile, QuietLocalFile
from pipeline.storage.listing import list_names, list_versions, walk_files
from pipeline.storage.local_copies import clear_local_cache, local_copy
from pipeline.storage.locations import Location, ObjectPath, UnsupportedLocation, is_url, location
from pipeline.storage.reading import (Info, content_sha256, info, inject_read_faults, open_input, read_blocks,
                                      read_bytes, read_error, version)
from pipeline.storage.s3 import filesystem, is_transient, missing_detail
from pipeline.storage.settings import Settings, configure, current_settings
from pipeline.storage.writing import delete, delete_tree, make_dirs, table_writer, write_bytes, write_table

__all__ = ["AccessDenied", "Info", "Location", "ObjectFile", "ObjectNotFound", "ObjectPath", "QuietLocalFile",
           "Settings", "StorageError", "StorageUnavailable", "UnsupportedLocation", "WriteFailed", "clear_local_cache",
           "configure", "content_sha256", "current_settings", "delete", "delete_tree", "filesystem", "info",
           "inject_read_faults", "is_transient", "is_url", "list_names", "list_versions", "local_copy", "location",
           "make_dirs", "missing_detail", "open_input", "read_blocks", "read_bytes", "read_error", "table_writer",
           "version", "walk_files", "write_bytes",
           "write_table"]
