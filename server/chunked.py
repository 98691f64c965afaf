"""Decoding ``Content-Encoding: aws-chunked`` request bodies.

boto3 and the aws CLI send object bodies in AWS's own chunked framing (not
HTTP's ``Transfer-Encoding: chunked``, although it looks alike)::

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n   ... repeated
    0[;chunk-signature=<64 hex>]\\r\\n                         the final chunk
    <name>:<value>\\r\\n ...                                  trailers, if announced
    x-amz-trailer-signature:<64 hex>\\r\\n                     signed-trailer mode only
    \\r\\n

(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html and
.../sigv4-streaming-trailers.html.)  ``x-amz-content-sha256`` names the mode,
``x-amz-decoded-content-length`` the exact size of the decoded data, and
``x-amz-trailer`` the trailer names.

``ChunkedDecoder`` is sans-IO: ``feed()`` bytes in, get data pieces out as soon
as they arrive (not after the whole chunk), so memory stays bounded by one
chunk-header line.  A chunk's signature can only be checked once its data is
complete; that is safe because storage commits only after the whole body was
decoded.  ``AwsChunkedBody`` is the thin async shell the router wraps around a
request body.

Refusals: truncated bodies and size mismatches are ``IncompleteBody``; broken
framing is ``InvalidRequest`` (AWS answers ``MalformedTrailerError`` for bad
trailers; ``server/errors.py`` does not have that code yet); chunk or trailer
signatures that do not verify are ``SignatureDoesNotMatch``, raised by the
verifier.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Collection
from enum import Enum
from typing import Protocol

import structlog

from server.errors import IncompleteBody, InvalidArgument, InvalidRequest, S3Error

log = structlog.get_logger()

KiB = 1024
MAX_HEADER_LINE = 4 * KiB  # "10000;chunk-signature=<64 hex>" is 87 bytes
MAX_TRAILER_BYTES = 8 * KiB  # all trailer lines together, signature included
_MAX_HEX_DIGITS = 16  # 2**64 - 1; x-amz-decoded-content-length bounds it further

_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,%d}" % _MAX_HEX_DIGITS)
_SIGNATURE = re.compile(rb"[0-9a-f]{64}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # RFC 9110 token, lower-cased
_TRAILER_SIGNATURE_NAME = "x-amz-trailer-signature"

Trailers = dict[str, str]
"""Trailing headers: lower-case name -> value with surrounding blanks removed."""


class ChunkVerifier(Protocol):
    """Checks the chained chunk signatures (implemented in ``server/auth.py``)."""

    def verify_chunk(self, chunk_sha256_hex: str, chunk_signature: str) -> None:
        """Check one chunk's signature, chained on the previous one; raise SignatureDoesNotMatch."""

    def verify_trailer(self, trailer_lines: list[tuple[str, str]], trailer_signature: str) -> None:
        """Check the trailer signature, chained on the final chunk's; raise SignatureDoesNotMatch."""


class _State(Enum):
    HEADER = "chunk header"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    FINAL_END = "CRLF after the final chunk"
    TRAILER = "trailers"
    DONE = "end of body"


class ChunkedDecoder:
    """Sans-IO aws-chunked decoder: ``feed()`` framed bytes, get the data back.

    ``signed``: chunks carry ``chunk-signature`` (checked by ``verifier`` when one
    is given).  ``expect_trailer``: trailer lines follow the final chunk.
    ``decoded_length``: the exact decoded size (``x-amz-decoded-content-length``).
    ``trailer_names``: if given, exactly these trailers must arrive.
    """

    def __init__(
        self,
        *,
        verifier: ChunkVerifier | None,
        signed: bool,
        expect_trailer: bool,
        decoded_length: int | None,
        trailer_names: Collection[str] | None = None,
    ) -> None:
        self._verifier = verifier
        self._signed = signed
        self._expect_trailer = expect_trailer
        self._decoded_length = decoded_length
        self._trailer_names = None if trailer_names is None else frozenset(n.lower() for n in trailer_names)
        self._state = _State.HEADER
        self._line = bytearray()  # a partial header/CRLF/trailer line, never chunk data
        self._remaining = 0  # data bytes left in the current chunk
        self._signature = ""  # of the current chunk
        self._hasher = hashlib.sha256()
        self._decoded = 0
        self._chunks = 0
        self._trailer_bytes = 0
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_signature: str | None = None
        self._trailers: Trailers = {}
        self._failed: S3Error | None = None

    def __repr__(self) -> str:
        return (
            f"ChunkedDecoder(state={self._state.value!r}, chunks={self._chunks}, "
            f"decoded={self._decoded}, decoded_length={self._decoded_length}, signed={self._signed})"
        )

    @property
    def trailers(self) -> Trailers:
        """The trailers received (complete once ``finish()`` returned)."""
        return dict(self._trailers)

    @property
    def decoded_bytes(self) -> int:
        return self._decoded

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Consume framed bytes; return the data pieces they completed, in order.

        After a refusal the decoder is dead: every later call raises the same error.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except S3Error as exc:
            self._failed = exc
            raise

    def _feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state is _State.DATA:
                take = min(self._remaining, end - pos)
                piece = data if take == end and type(data) is bytes else bytes(memoryview(data)[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._signed:
                    self._hasher.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._end_of_chunk_data()
            elif self._state is _State.DONE:
                raise InvalidRequest(f"{end - pos} bytes after the end of the aws-chunked body")
            else:
                line, pos = self._take_line(data, pos, end)
                if line is not None:
                    self._on_line(line)
        return out

    def finish(self) -> Trailers:
        """The body ended: check it was complete and return its trailers."""
        if self._failed is not None:
            raise self._failed
        if self._state is not _State.DONE:
            raise IncompleteBody(
                f"aws-chunked body ended inside the {self._state.value} after {self._decoded} decoded bytes"
            )
        return self.trailers

    # -- lines -------------------------------------------------------------

    def _line_limit(self) -> int:
        if self._state is _State.TRAILER:
            return MAX_TRAILER_BYTES - self._trailer_bytes
        if self._state in (_State.DATA_END, _State.FINAL_END):
            return 2
        return MAX_HEADER_LINE

    def _take_line(self, data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """Find the next LF within the line limit; return (line without CRLF, new pos)."""
        room = self._line_limit() - len(self._line)
        nl = data.find(b"\n", pos, min(end, pos + max(room, 0)))
        if nl < 0:
            if end - pos >= room:
                self._refuse_long_line()
            self._line += data[pos:end]
            return None, end
        self._line += data[pos : nl + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) < 2 or line[-2] != 0x0D:
            raise InvalidRequest(f"aws-chunked {self._state.value} line does not end with CRLF")
        if self._state is _State.TRAILER:
            self._trailer_bytes += len(line)
        return line[:-2], nl + 1

    def _refuse_long_line(self) -> None:
        if self._state is _State.TRAILER:
            raise InvalidRequest(f"aws-chunked trailers exceed {MAX_TRAILER_BYTES} bytes")
        if self._state in (_State.DATA_END, _State.FINAL_END):
            raise InvalidRequest(f"expected CRLF ({self._state.value}) in the aws-chunked body")
        raise InvalidRequest(f"aws-chunked chunk header longer than {MAX_HEADER_LINE} bytes")

    def _on_line(self, line: bytes) -> None:
        if self._state is _State.HEADER:
            self._on_header(line)
        elif self._state in (_State.DATA_END, _State.FINAL_END):
            if line:
                raise InvalidRequest(f"expected CRLF ({self._state.value}) in the aws-chunked body")
            self._state = _State.HEADER if self._state is _State.DATA_END else _State.DONE
        else:
            self._on_trailer_line(line)

    # -- chunks ------------------------------------------------------------

    def _on_header(self, line: bytes) -> None:
        size_field, _, extensions = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size_field):
            raise InvalidRequest(f"aws-chunked chunk size {size_field[:32]!r} is not a hex number")
        size = int(size_field, 16)
        self._signature = self._parse_signature(extensions) if self._signed else ""
        if self._decoded_length is not None and self._decoded + size > self._decoded_length:
            raise IncompleteBody(
                f"aws-chunked body carries more than x-amz-decoded-content-length={self._decoded_length} bytes"
            )
        self._chunks += 1
        self._hasher = hashlib.sha256()
        if size:
            self._remaining = size
            self._decoded += size
            self._state = _State.DATA
            return
        # The final, empty chunk.
        if self._decoded_length is not None and self._decoded != self._decoded_length:
            raise IncompleteBody(
                f"aws-chunked body decoded to {self._decoded} bytes, "
                f"x-amz-decoded-content-length says {self._decoded_length}"
            )
        self._verify_chunk()
        self._state = _State.TRAILER if self._expect_trailer else _State.FINAL_END

    def _parse_signature(self, extensions: bytes) -> str:
        name, eq, value = extensions.partition(b"=")
        if name != b"chunk-signature" or not eq:
            raise InvalidRequest("aws-chunked chunk header lacks ';chunk-signature='")
        if not _SIGNATURE.fullmatch(value):
            raise InvalidRequest("aws-chunked chunk-signature is not 64 lower-case hex digits")
        return value.decode("ascii")

    def _end_of_chunk_data(self) -> None:
        self._verify_chunk()
        self._state = _State.DATA_END

    def _verify_chunk(self) -> None:
        if self._signed and self._verifier is not None:
            self._verifier.verify_chunk(self._hasher.hexdigest(), self._signature)

    # -- trailers ----------------------------------------------------------

    def _on_trailer_line(self, line: bytes) -> None:
        if not line:
            self._end_of_trailers()
            return
        if self._trailer_signature is not None:
            raise InvalidRequest("aws-chunked trailer after x-amz-trailer-signature")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRequest("aws-chunked trailer is not ASCII") from None
        name, colon, value = text.partition(":")
        name, value = name.lower(), value.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"malformed aws-chunked trailer line {text[:64]!r}")
        if name == _TRAILER_SIGNATURE_NAME:
            if not self._signed:
                raise InvalidRequest("x-amz-trailer-signature in an unsigned aws-chunked body")
            if not _SIGNATURE.fullmatch(value.encode("ascii")):
                raise InvalidRequest("x-amz-trailer-signature is not 64 lower-case hex digits")
            self._trailer_signature = value
            return
        if name in self._trailers:
            raise InvalidRequest(f"aws-chunked trailer {name!r} sent twice")
        if self._trailer_names is not None and name not in self._trailer_names:
            raise InvalidRequest(f"aws-chunked trailer {name!r} was not announced in x-amz-trailer")
        self._trailers[name] = value
        self._trailer_lines.append((name, value))

    def _end_of_trailers(self) -> None:
        if self._trailer_names is not None:
            missing = sorted(self._trailer_names - self._trailers.keys())
            if missing:
                raise InvalidRequest(f"aws-chunked body lacks the trailer(s) announced: {', '.join(missing)}")
        if self._signed:
            if self._trailer_signature is None:
                raise InvalidRequest("aws-chunked body lacks x-amz-trailer-signature")
            if self._verifier is not None:
                self._verifier.verify_trailer(list(self._trailer_lines), self._trailer_signature)
        self._state = _State.DONE


class AwsChunkedBody:
    """Async iterator of decoded data over a framed request body.

    The router wraps the request body with it and hands it to storage;
    ``trailers`` is complete once iteration ended without an error.
    """

    def __init__(self, source: AsyncIterable[bytes], decoder: ChunkedDecoder) -> None:
        self._source = source.__aiter__()
        self._decoder = decoder
        self._finished = False

    def __repr__(self) -> str:
        return f"AwsChunkedBody({self._decoder!r}, finished={self._finished})"

    @property
    def trailers(self) -> Trailers:
        return self._decoder.trailers

    @property
    def decoder(self) -> ChunkedDecoder:
        return self._decoder

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def aclose(self) -> None:
        """Close the source (an async generator, say) when decoding stops early."""
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __anext__(self) -> bytes:
        """The data of the next source read that carried any, as one piece (at most one read's size)."""
        while not self._finished:
            try:
                data = await self._source.__anext__()
            except StopAsyncIteration:
                self._finished = True
                break
            pieces = self._decoder.feed(data)  # never holds empty pieces
            if pieces:
                return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._decoder.finish()
        log.debug("aws_chunked_decoded", decoder=repr(self._decoder))
        raise StopAsyncIteration


def decode_aws_chunked(source: AsyncIterable[bytes], decoder: ChunkedDecoder) -> AwsChunkedBody:
    """Wrap a framed body: iterate the result for decoded data, then read ``.trailers``."""
    return AwsChunkedBody(source, decoder)


# -- request headers ---------------------------------------------------------


def parse_trailer_names(value: str | None) -> frozenset[str]:
    """``x-amz-trailer``: comma-separated header names, lower-cased."""
    if value is None:
        return frozenset()
    names = frozenset(part.strip().lower() for part in value.split(",") if part.strip())
    bad = sorted(n for n in names if not _TOKEN.fullmatch(n))
    if bad:
        raise InvalidArgument(f"x-amz-trailer names an invalid header {bad[0][:64]!r}")
    return names


def stored_content_encoding(value: str | None) -> str | None:
    """``Content-Encoding`` to store: S3 drops ``aws-chunked`` from the list (None if nothing is left)."""
    if value is None:
        return None
    kept = [part.strip() for part in value.split(",") if part.strip() and part.strip().lower() != "aws-chunked"]
    return ", ".join(kept) or None
