"""Writing: whole files and objects presented only when complete, streamed Parquet, folders and
deletes, for local paths and objects alike.

Local writes go to a temporary file beside the target that is fsynced and renamed
(atomic_files.py). An object is uploaded from bytes already in memory: below the multipart size
as one PutObject (the whole object or nothing), above it in parts completed at close. A failed or
killed write leaves no object, or at worst one that no commit record names: output/sink.py builds
its commit protocol on that, since object stores have no rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.atomic_files import atomic_file, write_atomic
from pipeline.storage.errors import ObjectNotFound
from pipeline.storage.input_files import MAX_BLOCK
from pipeline.storage.locations import Location, ObjectPath
from pipeline.storage.s3 import no_bucket_detail, s3_filesystem, with_retries


def write_bytes(where: Location, data: bytes) -> None:
    """Readers see the old content or the new, never a mix: locally a temporary file renamed into
    place; on an object store one upload of `data`, which becomes visible only when complete."""
    if isinstance(where, ObjectPath):
        def upload():
            out = s3_filesystem().open_output_stream(where.fs_path)
            out.write(data)
            out.close()  # the upload happens (or completes) here: before this, no object exists

        # One attempt here (the SDK retries each request): a large object goes up in parts, and
        # a failed multipart upload may still be completed by its stream's destructor, which a
        # second attempt could race. What a failed write leaves is never committed (see sink).
        try:
            with_retries(upload, where, attempts=1)
        except ObjectNotFound:
            why = no_bucket_detail(where) or "the store says it does not exist"
            raise ObjectNotFound(f"cannot write {where}: {why}") from None
        return
    write_atomic(where, lambda tmp: Path(tmp).write_bytes(data))


def write_table(where: Location, table: pa.Table, **options) -> None:
    """A Parquet file (options go to pyarrow.parquet.write_table), written as write_bytes does."""
    if isinstance(where, ObjectPath):
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, **options)
        write_bytes(where, buffer.getvalue().to_pybytes())
        return
    write_atomic(where, lambda tmp: pq.write_table(table, tmp, **options))


@contextmanager
def table_writer(where: Location, schema: pa.Schema, **options) -> Iterator[pq.ParquetWriter]:
    """A Parquet file written piece by piece (writer.write_table, writer.write_batch), with
    bounded memory, and presented only once complete: locally a temporary file beside the target,
    fsynced and renamed; on an object store a local temporary file uploaded at the end (one
    multipart upload, visible only when complete). Nothing is presented if the block raises."""
    if isinstance(where, ObjectPath):
        fd, tmp = tempfile.mkstemp(prefix="pipeline-upload-", suffix=".parquet")
        os.close(fd)
        try:
            with pq.ParquetWriter(tmp, schema, **options) as writer:
                yield writer

            def upload():
                with open(tmp, "rb") as source:
                    out = s3_filesystem().open_output_stream(where.fs_path)
                    shutil.copyfileobj(source, out, MAX_BLOCK)
                    out.close()

            with_retries(upload, where, attempts=1)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    with atomic_file(where) as tmp, pq.ParquetWriter(tmp, schema, **options) as writer:
        yield writer


def make_dirs(where: Location) -> None:
    """Create a local folder and its parents; object stores have no folders to create."""
    if isinstance(where, Path):
        where.mkdir(parents=True, exist_ok=True)


def delete(where: Location) -> None:
    """Remove one file or object; a missing one is fine."""
    if isinstance(where, ObjectPath):
        def remove():
            try:
                s3_filesystem().delete_file(where.fs_path)
            except FileNotFoundError:
                pass

        with_retries(remove, where)
        return
    where.unlink(missing_ok=True)


def delete_tree(where: Location) -> None:
    """Remove a folder (or every object under a prefix) and all it holds; a missing one is fine."""
    if isinstance(where, ObjectPath):
        with_retries(lambda: s3_filesystem().delete_dir_contents(where.fs_path, missing_dir_ok=True), where)
        return
    shutil.rmtree(where, ignore_errors=True)
