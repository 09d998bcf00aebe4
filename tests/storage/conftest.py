"""A local S3-compatible server for the session: moto's standalone server on 127.0.0.1 (a free
port), behind the fault proxy (fault_proxy.py). The pipeline reaches it through the proxy exactly as
it reaches S3, OBS or MinIO, by endpoint URL; `direct` (pyarrow straight to moto, never faulted)
sets up and inspects objects. Credentials are the fake ones of tests/conftest.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline import storage
from pipeline.storage import ObjectPath
from tests.storage.fault_proxy import FaultProxy

BUCKET = "data"
REGION = "us-east-1"


@dataclass
class S3:
    proxy: FaultProxy
    direct: pafs.S3FileSystem
    root: ObjectPath = field(default_factory=lambda: ObjectPath(BUCKET))  # this test's own prefix

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def settings(self, **overrides) -> storage.Settings:
        # Two attempts per request keep the "keeps failing" cases short; the behaviour is the same.
        return storage.Settings(**{"endpoint_url": self.endpoint, "region": REGION, "max_attempts": 2,
                                   **overrides})

    def put(self, where: ObjectPath | str, data: bytes) -> ObjectPath:
        where = storage.location(where)
        with self.direct.open_output_stream(where.fs_path) as out:
            out.write(data)
        return where

    def get(self, where: ObjectPath | str) -> bytes:
        with self.direct.open_input_file(storage.location(where).fs_path) as f:
            return f.read()

    def upload(self, folder: Path, prefix: ObjectPath) -> None:
        """Every file under a local folder; an empty folder becomes a prefix marker (a 'folder')."""
        for path in sorted(folder.rglob("*")):
            target = prefix / path.relative_to(folder).as_posix()
            if path.is_file():
                self.put(target, path.read_bytes())
            elif path.is_dir() and not any(path.iterdir()):
                self.direct.create_dir(target.fs_path)

    def keys(self, prefix: ObjectPath) -> list[str]:
        selector = pafs.FileSelector(prefix.fs_path, recursive=True, allow_not_found=True)
        return sorted(ObjectPath.parse(f"s3://{f.path}").relative_to(prefix).as_posix()
                      for f in self.direct.get_file_info(selector) if f.type == pafs.FileType.File)

    def writes(self) -> list:
        """Requests that changed something, from the proxy's log."""
        return [entry for entry in self.proxy.log if entry.method in ("PUT", "POST", "DELETE")]


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        direct = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", region=REGION,
                                   allow_bucket_creation=True)
        direct.create_dir(BUCKET)
        proxy = FaultProxy(port)
        try:
            yield S3(proxy, direct)
        finally:
            proxy.close()
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server):
    """The server, with a fresh prefix for this test, no faults, and this process set to use it."""
    s3_server.root = ObjectPath(BUCKET, f"t-{uuid.uuid4().hex[:10]}")
    s3_server.proxy.clear()
    storage.configure(s3_server.settings())
    yield s3_server
    storage.configure(None)
    storage.clear_local_cache()
    s3_server.proxy.clear()
