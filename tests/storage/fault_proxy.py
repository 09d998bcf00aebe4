"""A small HTTP proxy in front of the local S3 server (moto) that answers chosen requests with an S3
error instead of forwarding them: how the tests make an object store deny a read or throttle it,
exactly as a client sees it from a real store. Everything else is forwarded unchanged, and every
request is logged (method, path, status, response bytes) so tests can count what a run did."""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_HEADERS = {"transfer-encoding", "connection", "content-length", "expect", "server", "date"}


@dataclass
class Fault:
    method: str  # GET, HEAD, PUT...
    key: str  # a substring of the request path (/bucket/key?query)
    status: int
    code: str  # the S3 error code in the body, e.g. SlowDown, AccessDenied
    times: int | None = None  # how many requests it answers; None: all of them
    hits: int = 0


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    status: int
    size: int  # response body bytes


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, key: str, status: int, code: str, times: int | None = None) -> Fault:
        fault = Fault(method, key, status, code, times)
        with self.lock:
            self.faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self.lock:
            self.faults.remove(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.key in path and (fault.times is None or fault.hits < fault.times):
                    fault.hits += 1
                    return fault
        return None

    def _record(self, entry: Logged) -> None:
        with self.lock:
            self.log.append(entry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-answer is not the test's concern


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue for uploads as S3 clients expect

        def log_message(self, *args):
            pass

        def _body(self) -> bytes | None:
            if self.headers.get("Content-Length"):
                return self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                # The SDK streams uploads chunked; forward the de-chunked payload (its own
                # aws-chunked framing, which the server decodes, is inside).
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size + 2)[:size])
                while self.rfile.readline() not in (b"\r\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return None

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            proxy._record(Logged(self.command, self.path, status, 0 if self.command == "HEAD" else len(body)))

        def _handle(self):
            body = self._body()
            fault = proxy._fault_for(self.command, self.path)
            if fault is not None:
                error = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{fault.code}</Code>"
                         f"<Message>injected by the test proxy</Message></Error>").encode()
                self._answer(fault.status, [("Content-Type", "application/xml")], error, len(error))
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
                length = int(response.getheader("Content-Length") or 0) if self.command == "HEAD" else len(data)
                self._answer(response.status, kept, data, length)
            finally:
                upstream.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    return Handler
