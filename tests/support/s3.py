"""A real S3 test server (moto) and a fault-injecting HTTP proxy in front of it.

Project rule: S3 in tests is a real HTTP server addressed by endpoint URL, never patched
boto calls. Code under test gets ``AWS_ENDPOINT_URL_S3=<FaultProxy.url>``; the proxy forwards
to moto and, on demand, misbehaves the way S3 and the network between us and S3 misbehave.

Typical use::

    with MotoServer() as moto, FaultProxy(moto.url) as proxy:
        s3 = s3_client(proxy.url, max_attempts=1)
        proxy.inject("lost_response", method="PUT", path_contains="/bucket/key")
        ...

What each fault models (``FaultProxy.inject(kind, ...)``):

``status_500``
    S3 answers ``500 InternalError`` (a transient back-end failure). Nothing is written.
    botocore's standard retry mode retries it (50 ms base backoff).
``slowdown_503``
    S3 answers ``503 SlowDown`` (request-rate throttling on a prefix). Nothing is written.
    botocore retries it as a throttling error (1 s base backoff).
``reset``
    The TCP connection dies (RST) before any response: a NAT or load balancer dropping the
    flow, a crashed front end. The request never reaches S3, but the client cannot know that.
``stall``
    The request hangs for ``proxy.stall_seconds`` (default 5 s) before it reaches S3: a slow
    or congested path. A client with a shorter read timeout gives up, yet the request is then
    forwarded and applied anyway -- a write can land after the client saw a timeout.
``lost_response``
    The request reaches S3 and is applied, but the connection is reset before the response
    arrives. The classic ambiguous outcome: the client sees an error, the object exists.
    A retried ``PutObject(IfNoneMatch="*")`` then gets 412 for its own earlier write.
``corrupt_body``
    One byte of the request body flips in flight (bad NIC, memory, middlebox). S3 rejects
    such a body with ``400 BadDigest`` because the checksum the client sent does not match.
    moto does not check checksums, so the proxy plays S3's part: for *every* request it
    verifies ``Content-MD5`` and, on PUT/POST bodies (PutObject, UploadPart, ...),
    ``x-amz-checksum-{sha256,sha1,crc32}`` whether sent as headers or as aws-chunked
    trailers, and answers BadDigest without forwarding on a mismatch, injected or not.
    Signed payloads (``x-amz-content-sha256: <hex>``) are verified too
    (``400 XAmzContentSHA256Mismatch``), after the checksums, as S3 does.
``silent_put_loss``
    The client gets ``200 OK`` with a plausible ETag and the checksum headers it claimed,
    but nothing is stored: the "acknowledged but lost" write (a buggy S3-compatible store,
    a caching gateway, an eventually-consistent replica). Only a verifying HEAD catches it.

What botocore 1.44 actually sends for
``put_object(Body=bytes, ChecksumAlgorithm="SHA256", ChecksumSHA256=<b64>, IfNoneMatch="*")``
against an ``http://`` endpoint: a plain body with ``Content-Length``, no
``Transfer-Encoding``, no ``Content-Encoding``; headers ``x-amz-checksum-sha256: <b64>``,
``x-amz-sdk-checksum-algorithm: SHA256``, ``If-None-Match: *``, ``Expect: 100-continue``,
and a signed payload ``X-Amz-Content-SHA256: <hex sha256 of the body>``. botocore only
switches to ``Content-Encoding: aws-chunked`` + ``Transfer-Encoding: chunked`` with an
``x-amz-checksum-*`` trailer (``X-Amz-Trailer``, ``X-Amz-Decoded-Content-Length``,
``x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER``) over https and only when it
computes the checksum itself. The proxy nevertheless decodes HTTP chunked bodies and
aws-chunked bodies (with or without chunk signatures) and forwards a plain body with the
trailer checksums moved into headers, so either form works.

Store emulation (``FaultProxy(..., store=StoreBehaviour(...))`` or ``proxy.store = ...``):
persistent behaviours, unlike the one-shot faults, that make moto answer like one row of
docs/s3-compatible-stores.md -- see :data:`STORES` (``aws``, ``rgw16``, ``garage``, ``gcs``,
``b2``) and :class:`StoreBehaviour`.

Note: every ``ThreadedMotoServer`` in one process shares moto's global in-memory backend;
use ``MotoServer.reset()`` (moto's ``/moto-api/reset``) between tests.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from dataclasses import dataclass
from typing import Any, NamedTuple

import boto3
from botocore.config import Config

__all__ = [
    "FAULT_KINDS",
    "FaultProxy",
    "MotoServer",
    "RequestRecord",
    "STORES",
    "StoreBehaviour",
    "s3_client",
]

FAULT_KINDS = (
    "status_500",
    "slowdown_503",
    "reset",
    "stall",
    "lost_response",
    "corrupt_body",
    "silent_put_loss",
)


# --------------------------------------------------------------------------- moto server


class MotoServer:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 and a free port.

    ``port=0`` (default) lets the OS pick the port at bind time (no race); ``.url`` is
    ``http://127.0.0.1:PORT``. Context manager; ``.stop()`` is idempotent.
    """

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self._stopped = False
        _, self.port = self._server.get_host_and_port()
        # moto keeps one backend per process: start every server empty so that tests
        # cannot see each other's buckets.
        self.url = f"http://127.0.0.1:{self.port}"
        self.reset()

    def reset(self) -> None:
        """Drop all moto state (buckets, objects) -- shared by every server in the process."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def s3_client(
    endpoint_url: str,
    region: str = "us-east-1",
    *,
    max_attempts: int = 3,
    retry_mode: str = "standard",
    connect_timeout: float = 2.0,
    read_timeout: float = 5.0,
    **config_kwargs: Any,
):
    """A boto3 S3 client for a test endpoint: dummy credentials, path-style addressing.

    ``max_attempts`` is the TOTAL number of attempts, first one included (1 = no retries),
    like ``AWS_MAX_ATTEMPTS``. It is passed as ``retries["total_max_attempts"]``: botocore's
    ``Config(retries={"max_attempts": n})`` key counts *retries* (n + 1 attempts), a trap.
    Extra keyword arguments go to ``botocore.config.Config``.
    """
    config = Config(
        region_name=region,
        s3={"addressing_style": "path"},
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        **config_kwargs,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token=None,
        config=config,
    )


# --------------------------------------------------------------------------- body decoding

# Hop-by-hop headers and those the proxy recomputes.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}

# x-amz-checksum-<alg> request headers that carry a body checksum (not -mode / -type).
_CHECKSUM_HEADERS = {
    "x-amz-checksum-sha256": lambda b: hashlib.sha256(b).digest(),
    "x-amz-checksum-sha1": lambda b: hashlib.sha1(b).digest(),
    "x-amz-checksum-crc32": lambda b: struct.pack(">I", zlib.crc32(b) & 0xFFFFFFFF),
}


class _BadRequest(Exception):
    pass


def _read_http_chunked(rfile) -> tuple[bytes, list[tuple[str, str]]]:
    """Read an HTTP/1.1 chunked body; return (data, trailers)."""
    out = bytearray()
    while True:
        line = rfile.readline(65537)
        if not line:
            raise _BadRequest("eof in chunk size")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out += rfile.read(size)
        rfile.readline(3)  # CRLF after the data
    trailers = []
    while True:
        line = rfile.readline(65537)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        trailers.append((name.strip(), value.strip()))
    return bytes(out), trailers


def _decode_aws_chunked(data: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """Decode an aws-chunked payload (``hex[;chunk-signature=..]\\r\\n data \\r\\n ...
    0\\r\\n trailer: value\\r\\n \\r\\n``); return (data, trailers)."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise _BadRequest("bad aws-chunked framing")
        size = int(data[pos:eol].split(b";", 1)[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            break
        out += data[pos : pos + size]
        pos += size + 2
    trailers = []
    for line in data[pos:].split(b"\r\n"):
        if not line.strip():
            continue
        name, _, value = line.decode("latin-1").partition(":")
        trailers.append((name.strip(), value.strip()))
    return bytes(out), trailers


def _s3_error_xml(code: str, message: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


# --------------------------------------------------------------------------- store emulation


@dataclass(frozen=True)
class StoreBehaviour:
    """How the emulated store treats what the archive relies on.

    ``if_none_match``: ``honour`` (moto's own 412), ``ignore`` (the header is dropped: the PUT
    overwrites, as Garage <= 2.0 and GCS do) or ``501`` (NotImplemented, as B2).
    ``checksums``: ``verify`` (BadDigest on a mismatch, stored and returned on HEAD, as AWS),
    ``ignore`` (accepted, neither checked nor stored, none on HEAD: Ceph RGW 16, GCS) or
    ``reject`` (400 "Unsupported header", as B2). ``Content-MD5`` is always verified.
    ``generation_match``: honour GCS's ``x-goog-if-generation-match: 0`` as create-only.
    ``not_implemented``: bucket sub-resources (``publicAccessBlock``, ``encryption``) answered 501.
    ``refused``: sub-resources answered 400 InvalidArgument (RGW 16's default encryption).
    ``public_access_block_breaks_puts``: once a public access block is set, every object PUT is
    403 AccessDenied until it is deleted (Ceph tracker 49135).
    ``location_constraints``: ``any`` (moto checks them itself) or ``none`` (a constraint is 400
    InvalidLocationConstraint, as a Ceph zonegroup named ``default``).
    """

    if_none_match: str = "honour"
    checksums: str = "verify"
    generation_match: bool = False
    not_implemented: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    public_access_block_breaks_puts: bool = False
    location_constraints: str = "any"


#: The rows of docs/s3-compatible-stores.md this proxy can play.
STORES = {
    "aws": StoreBehaviour(),
    "rgw16": StoreBehaviour(checksums="ignore", refused=("encryption",), public_access_block_breaks_puts=True,
                            location_constraints="none"),
    "garage": StoreBehaviour(if_none_match="ignore", not_implemented=("publicAccessBlock", "encryption")),
    "gcs": StoreBehaviour(if_none_match="ignore", checksums="ignore", generation_match=True,
                          not_implemented=("publicAccessBlock", "encryption")),
    "b2": StoreBehaviour(if_none_match="501", checksums="reject", not_implemented=("publicAccessBlock",)),
}

_CHECKSUM_REQUEST = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


# --------------------------------------------------------------------------- proxy


class RequestRecord(NamedTuple):
    """One entry of ``FaultProxy.requests``: a plain 3-tuple.

    ``outcome`` is the fault kind (str) if one fired, else the HTTP status (int) returned
    to the client (including the proxy's own 400 BadDigest rejections).
    """

    method: str
    path: str
    outcome: int | str


class _Fault:
    __slots__ = ("kind", "remaining", "method", "path_contains", "skip")

    def __init__(self, kind: str, count: int, method: str | None, path_contains: str | None, skip: int = 0):
        self.kind = kind
        self.remaining = count
        self.method = method.upper() if method else None
        self.path_contains = path_contains
        self.skip = skip

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path_contains is None or self.path_contains in path


class _ProxyHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aborted: set[socket.socket] = set()
        self.aborted_lock = threading.Lock()

    def shutdown_request(self, request: Any) -> None:
        with self.aborted_lock:
            aborted = request in self.aborted
            self.aborted.discard(request)
        if aborted:  # no FIN first: closing with SO_LINGER=0 sends a bare RST
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _ProxyHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # ------------------------------------------------------------------ helpers

    def _abort(self) -> None:
        """Reset the client connection (TCP RST, no response) once the handler returns."""
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
        with self.server.aborted_lock:
            self.server.aborted.add(self.connection)
        self.close_connection = True

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes,
              reason: str | None = None, relay_length: bool = False) -> None:
        try:
            self.send_response_only(status, reason)
            has_len = False
            for name, value in headers:
                lname = name.lower()
                if lname in _HOP_BY_HOP and not (relay_length and lname == "content-length"):
                    continue
                has_len = has_len or lname == "content-length"
                self.send_header(name, value)
            if not has_len:
                self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and status not in (204, 304) and body:
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send_error_xml(self, status: int, code: str, message: str) -> None:
        rid = uuid.uuid4().hex[:16].upper()
        body = _s3_error_xml(code, message, rid)
        self._send(status, [("Content-Type", "application/xml"),
                            ("x-amz-request-id", rid)], body)

    def _read_body(self) -> tuple[bytes, list[tuple[str, str]]]:
        """Read the request body; return (plain body, headers to forward)."""
        headers = [(k, v) for k, v in self.headers.items()]
        lower = {k.lower(): v for k, v in headers}
        trailers: list[tuple[str, str]] = []
        if "chunked" in lower.get("transfer-encoding", "").lower():
            body, trailers = _read_http_chunked(self.rfile)
        elif "content-length" in lower:
            n = int(lower["content-length"])
            body = self.rfile.read(n) if n else b""
            if len(body) != n:
                raise _BadRequest("short body")
        else:
            body = b""

        encodings = [e.strip() for e in lower.get("content-encoding", "").split(",") if e.strip()]
        content_sha = lower.get("x-amz-content-sha256", "")
        extra: list[tuple[str, str]] = []
        drop: set[str] = set()
        if "aws-chunked" in encodings or content_sha.startswith("STREAMING-"):
            # Forward a plain body: S3's aws-chunked framing and trailer become headers.
            body, more = _decode_aws_chunked(body)
            trailers += more
            drop |= {"x-amz-trailer", "x-amz-decoded-content-length", "x-amz-content-sha256",
                     "content-encoding"}
            rest = [e for e in encodings if e != "aws-chunked"]
            if rest:
                extra.append(("Content-Encoding", ",".join(rest)))
            extra.append(("x-amz-content-sha256", "UNSIGNED-PAYLOAD"))
        trailers = [(k, v) for k, v in trailers if k.lower() != "x-amz-trailer-signature"]
        drop |= {k.lower() for k, _ in trailers}
        headers = [(k, v) for k, v in headers if k.lower() not in drop] + extra + trailers
        return body, headers

    def _verify(self, method: str, target: str, body: bytes,
                headers: list[tuple[str, str]]) -> tuple[str, str] | None:
        """Play S3's part: return (code, message) if a declared digest does not match."""
        lower = {k.lower(): v.strip() for k, v in headers}
        if "content-md5" in lower:
            if base64.b64encode(hashlib.md5(body).digest()).decode() != lower["content-md5"]:
                return "BadDigest", "The Content-MD5 you specified did not match what we received."
        query = urllib.parse.urlsplit(target).query
        is_complete_mpu = method == "POST" and "uploadId=" in query
        if method in ("PUT", "POST") and not is_complete_mpu and "x-amz-copy-source" not in lower:
            for name, fn in _CHECKSUM_HEADERS.items():
                if name in lower and base64.b64encode(fn(body)).decode() != lower[name]:
                    alg = name.rsplit("-", 1)[1].upper()
                    return ("BadDigest",
                            f"The {alg} you specified did not match the calculated checksum.")
        declared = lower.get("x-amz-content-sha256", "")
        if len(declared) == 64 and all(c in "0123456789abcdef" for c in declared.lower()):
            if hashlib.sha256(body).hexdigest() != declared.lower():
                return ("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' "
                        "header does not match what was computed.")
        return None

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        up = self.server.proxy._upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or method in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _emulate(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes) -> list[tuple[str, str]] | tuple[int, str, str]:
        """Apply the proxy's StoreBehaviour: the headers to forward, or an error (status, code, message)."""
        b = self.server.proxy.store
        split = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        lower = {k.lower(): v for k, v in headers}
        segments = [p for p in split.path.split("/") if p]
        is_object_put = method == "PUT" and len(segments) >= 2 and not query
        for sub in b.not_implemented:
            if sub in query:
                return 501, "NotImplemented", f"{sub} is not implemented by this store."
        for sub in b.refused:
            if sub in query and method == "PUT":
                return 400, "InvalidArgument", f"{sub} is not supported here."
        if method == "PUT" and len(segments) == 1 and not query and b.location_constraints == "none":
            if b"LocationConstraint" in body:
                return 400, "InvalidLocationConstraint", "The specified location-constraint is not valid."
            # moto takes the region from the signature's scope; a zonegroup store has none, so
            # sign-scope us-east-1 (moto does not check signatures)
            headers = [(k, re.sub(r"/\d{8}/[a-z0-9-]+/s3/", lambda m: m.group(0).split("/")[0] + "/"
                                  + m.group(0).split("/")[1] + "/us-east-1/s3/", v) if k.lower() == "authorization" else v)
                       for k, v in headers]
        if is_object_put and b.public_access_block_breaks_puts and self.server.proxy.public_access_block:
            return 403, "AccessDenied", "Access Denied"
        if is_object_put and b.checksums == "reject" and any(k.startswith(_CHECKSUM_REQUEST) for k in lower):
            name = next(k for k in lower if k.startswith(_CHECKSUM_REQUEST))
            return 400, "InvalidArgument", f"Unsupported header '{name}' received for this API call."
        if b.checksums == "ignore":
            headers = [(k, v) for k, v in headers if not k.lower().startswith(_CHECKSUM_REQUEST)
                       and k.lower() != "x-amz-checksum-mode"]
        if method == "PUT" and "if-none-match" in lower:
            if b.if_none_match == "501":
                return 501, "NotImplemented", "A header you provided implies functionality that is not implemented."
            if b.if_none_match == "ignore":
                headers = [(k, v) for k, v in headers if k.lower() != "if-none-match"]
        if method == "PUT" and "x-goog-if-generation-match" in lower:
            headers = [(k, v) for k, v in headers if k.lower() != "x-goog-if-generation-match"]
            if b.generation_match and lower["x-goog-if-generation-match"].strip() == "0":
                headers.append(("If-None-Match", "*"))
        return headers

    # ------------------------------------------------------------------ main

    def _proxy(self) -> None:
        proxy = self.server.proxy
        method, target = self.command, self.path
        fault = proxy._take(method, target)

        def log(outcome: int | str) -> None:
            proxy._log(RequestRecord(method, target, outcome))

        if fault == "reset":
            log(fault)
            self._abort()
            return
        if fault == "stall":
            time.sleep(proxy.stall_seconds)

        try:
            body, headers = self._read_body()
        except (_BadRequest, ValueError) as exc:
            self.close_connection = True
            log(400)
            self._send_error_xml(400, "IncompleteBody", str(exc))
            return

        emulated = self._emulate(method, target, headers, body)
        if isinstance(emulated, tuple):
            log(emulated[0])
            self._send_error_xml(*emulated)
            return
        headers = emulated

        if fault == "status_500":
            log(fault)
            self._send_error_xml(500, "InternalError",
                                 "We encountered an internal error. Please try again.")
            return
        if fault == "slowdown_503":
            log(fault)
            self._send_error_xml(503, "SlowDown", "Please reduce your request rate.")
            return
        if fault == "silent_put_loss":
            log(fault)
            rid = uuid.uuid4().hex[:16].upper()
            out = [("ETag", f'"{hashlib.md5(body).hexdigest()}"'), ("x-amz-request-id", rid)]
            out += [(k, v) for k, v in headers
                    if k.lower() in _CHECKSUM_HEADERS or k.lower() == "x-amz-checksum-type"]
            self._send(200, out, b"")
            return
        if fault == "corrupt_body":
            if body:
                mutable = bytearray(body)
                mutable[len(mutable) // 2] ^= 0x01
                body = bytes(mutable)
            else:
                body = b"\x00"

        bad = self._verify(method, target, body, headers)
        if bad is not None:
            log(fault or 400)
            self._send_error_xml(400, *bad)
            return

        try:
            status, reason, up_headers, data = self._forward(method, target, headers, body)
        except OSError as exc:
            log(fault or 502)
            if fault in ("lost_response", "stall"):
                self._abort()
            else:
                self._send_error_xml(502, "BadGateway", f"upstream failed: {exc}")
            return

        if fault == "lost_response":
            log(fault)
            self._abort()
            return
        log(fault or status)
        behaviour = proxy.store
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query, keep_blank_values=True)
        if "publicAccessBlock" in query and status < 300:
            proxy.public_access_block = method == "PUT"
        if behaviour.checksums != "verify":
            up_headers = [(k, v) for k, v in up_headers if not k.lower().startswith("x-amz-checksum-")]
        self._send(status, up_headers, data, reason=reason, relay_length=(method == "HEAD"))


class FaultProxy:
    """Threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream_url`` with fault injection.

    Attributes: ``url``, ``port``, ``upstream_url``, ``stall_seconds`` (settable),
    ``injected`` (dict kind -> times fired), ``requests`` (list of ``RequestRecord``).
    """

    def __init__(self, upstream_url: str, port: int = 0, stall_seconds: float = 5.0,
                 store: StoreBehaviour | str = "aws") -> None:
        self.store = STORES[store] if isinstance(store, str) else store
        self.public_access_block = False
        self.upstream_url = upstream_url.rstrip("/")
        self._upstream = urllib.parse.urlsplit(self.upstream_url)
        if self._upstream.scheme != "http":
            raise ValueError("FaultProxy forwards to http:// upstreams only")
        self.stall_seconds = stall_seconds
        self.injected: dict[str, int] = {k: 0 for k in FAULT_KINDS}
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._conns: set[socket.socket] = set()
        self._server = _ProxyHTTPServer(("127.0.0.1", port), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"FaultProxy:{self.port}", daemon=True,
        )
        self._thread.start()
        self._stopped = False

    # ---------------------------------------------------------------- injection API

    def inject(self, kind: str, count: int = 1, method: str | None = None,
               path_contains: str | None = None, skip: int = 0) -> None:
        """Queue ``count`` faults of ``kind`` for the next requests whose method equals
        ``method`` (any if None) and whose target (path + query) contains ``path_contains``,
        after letting ``skip`` such requests pass untouched.
        Queued faults are consumed in the order they were injected."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, count, method, path_contains, skip))

    def clear(self) -> None:
        """Drop all pending faults (counters and the request log are kept)."""
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take(self, method: str, target: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    self.injected[fault.kind] += 1
                    return fault.kind
        return None

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # wake handler threads parked on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
