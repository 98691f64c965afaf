"""A request body as the client meant it: decoded, counted and verified.

Clients send bodies four ways (the ``x-amz-content-sha256`` header says
which): a signed payload (its SHA-256 must match at the end), unsigned,
aws-chunked with per-chunk signatures, and aws-chunked with trailing
checksums.  ``Payload`` hides the difference from the operations: iterate it
for the decoded bytes, then hand its ``check`` to storage, which calls it with
the body's digest before anything is committed.  Every failure raises an
S3Error from inside the iteration or the check, so a bad body never lands.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator, Callable

from server import checksums
from server.auth import AuthResult
from server.chunked import ChunkedDecoder
from server.errors import (
    BadDigest,
    EntityTooLarge,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    MissingContentLength,
    XAmzContentSHA256Mismatch,
)
from server.http import BODY_RECEIVE_SIZE, Request
from server.storage import BodyDigest
from sink import sigv4

STREAMING_MODES = {sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER, sigv4.STREAMING_UNSIGNED_TRAILER}
READ_SIZE = BODY_RECEIVE_SIZE  # a whole socket read at a time: splitting one copies it
NOT_CHECKSUM_VALUES = ("x-amz-checksum-type", "x-amz-checksum-mode", "x-amz-checksum-algorithm")


class Payload:
    """The decoded body of one request; ``length`` is its declared decoded size."""

    def __init__(self, request: Request, auth: AuthResult, *, max_body: int) -> None:
        payload_mode, chunk_verifier = auth.payload, auth.chunk_verifier
        self._request = request
        self._mode = payload_mode
        self._body_signature = auth.body_signature
        self._streaming = payload_mode in STREAMING_MODES
        self.length = self._declared_length(request)
        if self.length > max_body:
            raise EntityTooLarge(f"Your proposed upload of {self.length} bytes exceeds the maximum of {max_body}.")
        self._decoder = (
            ChunkedDecoder(
                verifier=chunk_verifier if payload_mode != sigv4.STREAMING_UNSIGNED_TRAILER else None,
                signed=payload_mode != sigv4.STREAMING_UNSIGNED_TRAILER,
                expect_trailer=payload_mode != sigv4.STREAMING_SIGNED,
                decoded_length=self.length,
            )
            if self._streaming
            else None
        )
        self._sha256 = hashlib.sha256() if not self._streaming and payload_mode != sigv4.UNSIGNED_PAYLOAD else None
        first = request.first_values()
        self.content_md5 = _content_md5(first.get("content-md5"))
        self.expected = _header_checksums(request)
        trailer = first.get("x-amz-trailer")
        trailer = trailer.strip().lower() if trailer else ""
        self._trailer_algorithm = _algorithm_of(trailer) if trailer else None
        self._hashers: dict[str, checksums.Hasher] = {}
        if self.expected or self._trailer_algorithm:
            algorithms = set(self.expected) | ({self._trailer_algorithm} if self._trailer_algorithm else set())
            self._hashers = {a: checksums.FACTORIES[a]() for a in algorithms if a != "crc32"}
        self.trailers: dict[str, str] = {}
        self.verified: dict[str, bytes] = {}
        self._hashed_elsewhere = False

    def hash_elsewhere(self) -> Callable[[bytes], None]:
        """Hand this body's hashing (its SHA-256, the checksums it names) to the
        receiver, which must pass every piece through the returned function once,
        in order, before ``check``; ``check`` then compares the SHA-256 too.
        Why: ``bodies.receive_body`` hashes a large body in a worker thread, and
        SHA-256 on the event loop (~0.7 ms per MiB here) stalled every connection."""
        self._hashed_elsewhere = True
        return self._hash

    @staticmethod
    def _declared_length(request: Request) -> int:
        decoded = request.first_values().get("x-amz-decoded-content-length")
        if decoded is not None:
            if not decoded.isascii() or not decoded.isdigit():
                raise InvalidArgument(f"x-amz-decoded-content-length is not a number: {decoded!r}")
            return int(decoded)
        if request.body.content_length is None:
            raise MissingContentLength()
        return request.body.content_length

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Pieces(self)

    def take_whole(self) -> bytes | None:
        """The whole decoded body, checked as iterating it would (hashed, ``_end``),
        when it has all arrived already; None otherwise: then iterate.  No await
        (``RequestBody.take_whole``).  aws-chunked bodies are always iterated."""
        if self._decoder is not None:
            return None
        data = self._request.body.take_whole()
        if data is None:
            return None
        if not self._hashed_elsewhere:
            self._hash(data)
        self._end()
        return data

    def _hash(self, piece: bytes) -> None:
        if self._sha256 is not None:
            self._sha256.update(piece)
        for hasher in self._hashers.values():
            hasher.update(piece)

    def _end(self) -> None:
        """The body ended: check what could only be checked at its end."""
        if self._decoder is not None:
            self.trailers = dict(self._decoder.finish())
        if not self._hashed_elsewhere:
            self._check_sha256()

    def _check_sha256(self) -> None:
        if self._body_signature is not None:  # curl < 8 signs the body's hash without sending it
            self._body_signature.verify(self._sha256.hexdigest())
        elif self._sha256 is not None and self._sha256.hexdigest() != self._mode:
            raise XAmzContentSHA256Mismatch(
                ClientComputedContentSHA256=self._mode, S3ComputedContentSHA256=self._sha256.hexdigest()
            )

    def check(self, digest: BodyDigest) -> None:
        """Refuse the body (before it is committed) if a digest the client gave does not match."""
        if self._hashed_elsewhere:
            self._check_sha256()
        if self.content_md5 is not None and digest.md5 != self.content_md5:
            raise BadDigest("The Content-MD5 you specified did not match what we received.")
        expected = dict(self.expected)
        if self._trailer_algorithm:
            value = self.trailers.get(checksums.header_name(self._trailer_algorithm))
            if value is None:
                raise InvalidRequest(f"The trailing {checksums.header_name(self._trailer_algorithm)} is missing.")
            expected[self._trailer_algorithm] = checksums.decode(self._trailer_algorithm, value)
        for algorithm, want in expected.items():
            got = digest.crc32.to_bytes(4, "big") if algorithm == "crc32" else self._hashers[algorithm].digest()
            if got != want:
                raise BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
        self.verified = expected

    def response_headers(self) -> list[tuple[str, str]]:
        """The checksums the client sent, echoed as S3 does on a successful PUT."""
        return [(checksums.header_name(a), checksums.encode(d)) for a, d in self.verified.items()]


class _Pieces:
    """Iterates a Payload: decoded pieces, each hashed as it is handed out; at the end,
    ``Payload._end``.  A class rather than an async generator: one runs per request,
    and trio keeps a record of every async generator started."""

    __slots__ = ("_payload", "_queued", "_ended")

    def __init__(self, payload: Payload) -> None:
        self._payload = payload
        self._queued: list[bytes] = []  # decoded pieces of the last read not handed out yet, last first
        self._ended = False

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        payload = self._payload
        while not self._queued:
            if self._ended:
                raise StopAsyncIteration
            data = await payload._request.body.read(READ_SIZE)
            if not data:
                self._ended = True
                payload._end()
                raise StopAsyncIteration
            if payload._decoder is None:
                if not payload._hashed_elsewhere:
                    payload._hash(data)
                return data
            self._queued = list(reversed(payload._decoder.feed(data)))
        piece = self._queued.pop()
        if not payload._hashed_elsewhere:
            payload._hash(piece)
        return piece


def _algorithm_of(header: str) -> str:
    algorithm = header.removeprefix(checksums.HEADER_PREFIX)
    if not header.startswith(checksums.HEADER_PREFIX) or algorithm not in checksums.FACTORIES:
        raise InvalidRequest(f"The checksum {header!r} is not supported.")
    return algorithm


def _header_checksums(request: Request) -> dict[str, bytes]:
    found = {}
    for name, value in request.headers:
        if name.startswith(checksums.HEADER_PREFIX) and name not in NOT_CHECKSUM_VALUES:
            algorithm = _algorithm_of(name)
            found[algorithm] = checksums.decode(algorithm, value)
    if len(found) > 1:
        raise InvalidRequest("Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    return found


def _content_md5(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise InvalidDigest()
    return digest
