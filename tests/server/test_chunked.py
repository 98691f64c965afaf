"""aws-chunked decoding: AWS's worked examples, botocore's own bodies, and refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
import zlib
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from server.chunked import (
    MAX_HEADER_LINE,
    MAX_TRAILER_BYTES,
    ChunkedDecoder,
    decode_aws_chunked,
    parse_trailer_names,
    stored_content_encoding,
)
from server.errors import (
    IncompleteBody,
    InvalidArgument,
    InvalidRequest,
    S3Error,
    SignatureDoesNotMatch,
)

EXAMPLES = json.loads(Path("/work/shared/sigv4-testsuite/s3-examples.json").read_text())
COMMON = EXAMPLES["common"]
PLAIN, TRAILER = EXAMPLES["streaming"]
EMPTY_SHA256 = COMMON["empty_payload_sha256"]


def _data(spec: dict) -> bytes:
    return spec["repeat"].encode() * spec["count"]


class ExampleVerifier:
    """The SigV4 chunk chain from the AWS docs, written here so the test owns it."""

    def __init__(self, seed_signature: str, signing_key: bytes | None = None) -> None:
        self.key = signing_key or bytes.fromhex(COMMON["signing_key_hex"])
        self.previous = seed_signature
        self.calls: list[tuple] = []

    def _sign(self, string_to_sign: str) -> str:
        return hmac.new(self.key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    def _check(self, kind: str, digest: str, signature: str) -> None:
        head = f"{kind}\n{COMMON['x_amz_date']}\n{COMMON['credential_scope']}\n{self.previous}\n"
        middle = f"{EMPTY_SHA256}\n" if kind.endswith("PAYLOAD") else ""
        expected = self._sign(head + middle + digest)
        if not hmac.compare_digest(expected, signature):
            raise SignatureDoesNotMatch(f"{kind} signature mismatch")
        self.previous = signature

    def verify_chunk(self, chunk_sha256_hex: str, chunk_signature: str) -> None:
        self.calls.append(("chunk", chunk_sha256_hex, chunk_signature))
        self._check("AWS4-HMAC-SHA256-PAYLOAD", chunk_sha256_hex, chunk_signature)

    def verify_trailer(self, trailer_lines: list[tuple[str, str]], trailer_signature: str) -> None:
        self.calls.append(("trailer", list(trailer_lines), trailer_signature))
        canonical = "".join(f"{name}:{value}\n" for name, value in trailer_lines)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        self._check("AWS4-HMAC-SHA256-TRAILER", digest, trailer_signature)


def sign_body(chunks: list[bytes], seed: str, trailers: list[tuple[str, str]] | None = None) -> bytes:
    """Frame and sign ``chunks`` (then the empty chunk) the way the SDKs do."""
    signer = ExampleVerifier(seed)
    out = bytearray()
    for data in [*chunks, b""]:
        digest = hashlib.sha256(data).hexdigest()
        head = f"AWS4-HMAC-SHA256-PAYLOAD\n{COMMON['x_amz_date']}\n{COMMON['credential_scope']}\n{signer.previous}\n"
        signature = signer._sign(head + f"{EMPTY_SHA256}\n{digest}")
        signer.previous = signature
        out += b"%x;chunk-signature=%s\r\n" % (len(data), signature.encode())
        if data:
            out += data + b"\r\n"
    if trailers is None:
        return bytes(out + b"\r\n")
    canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
    head = f"AWS4-HMAC-SHA256-TRAILER\n{COMMON['x_amz_date']}\n{COMMON['credential_scope']}\n{signer.previous}\n"
    signature = signer._sign(head + hashlib.sha256(canonical.encode()).hexdigest())
    for name, value in trailers:
        out += f"{name}:{value}\r\n".encode()
    return bytes(out + f"x-amz-trailer-signature:{signature}\r\n\r\n".encode())


def example_body(example: dict) -> bytes:
    out = bytearray()
    for chunk in example["chunks"]:
        out += chunk["frame_header"].encode() + _data(chunk["data"])
        if chunk["size"]:
            out += b"\r\n"
    if "trailer" not in example:
        return bytes(out + b"\r\n")
    for name, value in example["trailer"]["headers"]:
        out += f"{name}:{value}\r\n".encode()
    return bytes(out + f"x-amz-trailer-signature:{example['trailer']['signature']}\r\n\r\n".encode())


def decode(decoder: ChunkedDecoder, body: bytes, cuts: list[int] | None = None) -> bytes:
    """Feed ``body`` split at ``cuts`` (default: whole), finish, return the data."""
    bounds = [0, *sorted(set(cuts or [])), len(body)]
    out = bytearray()
    for start, end in zip(bounds, bounds[1:], strict=False):
        for piece in decoder.feed(body[start:end]):
            out += piece
    decoder.finish()
    return bytes(out)


def plain_decoder(verifier=None, decoded_length: int | None = 66560) -> ChunkedDecoder:
    verifier = verifier or ExampleVerifier(PLAIN["seed_signature"])
    return ChunkedDecoder(verifier=verifier, signed=True, expect_trailer=False, decoded_length=decoded_length)


def trailer_decoder(verifier=None, **kwargs) -> ChunkedDecoder:
    verifier = verifier or ExampleVerifier(TRAILER["seed_signature"])
    kwargs.setdefault("decoded_length", 66560)
    return ChunkedDecoder(verifier=verifier, signed=True, expect_trailer=True, **kwargs)


# -- AWS's worked examples --------------------------------------------------


def test_example_body_is_the_documented_one():
    body = example_body(PLAIN)
    assert len(body) == PLAIN["body_length"]
    assert hashlib.sha256(body).hexdigest() == PLAIN["body_sha256"]


def test_signed_example_decodes_and_verifier_sees_each_chunk_in_order():
    verifier = ExampleVerifier(PLAIN["seed_signature"])
    decoder = plain_decoder(verifier)
    assert decode(decoder, example_body(PLAIN)) == _data(PLAIN["decoded_content"])
    assert verifier.calls == [("chunk", c["data_sha256"], c["signature"]) for c in PLAIN["chunks"]]
    assert decoder.trailers == {} and decoder.done and decoder.decoded_bytes == 66560


def test_signed_trailer_example_decodes_with_its_trailer():
    verifier = ExampleVerifier(TRAILER["seed_signature"])
    decoder = trailer_decoder(verifier, trailer_names={"x-amz-checksum-crc32c"})
    assert decode(decoder, example_body(TRAILER)) == _data(TRAILER["decoded_content"])
    assert decoder.finish() == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    expected = [("chunk", c["data_sha256"], c["signature"]) for c in TRAILER["chunks"]]
    expected.append(("trailer", [("x-amz-checksum-crc32c", "sOO8/Q==")], TRAILER["trailer"]["signature"]))
    assert verifier.calls == expected


def test_data_comes_out_as_it_arrives_not_after_the_chunk():
    decoder = plain_decoder()
    body = example_body(PLAIN)
    header = len(PLAIN["chunks"][0]["frame_header"])
    assert decoder.feed(body[: header + 10]) == [b"a" * 10]
    assert decoder.feed(body[header + 10 : header + 30]) == [b"a" * 20]


def test_byte_at_a_time_gives_the_same_data():
    decoder = trailer_decoder()
    body = example_body(TRAILER)
    assert decode(decoder, body, cuts=list(range(1, len(body)))) == _data(TRAILER["decoded_content"])
    assert decoder.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=66823), max_size=12))
def test_random_splits_of_the_example_give_the_same_data(cuts):
    assert decode(plain_decoder(), example_body(PLAIN), cuts) == _data(PLAIN["decoded_content"])


def test_every_split_point_of_a_small_signed_trailer_body():
    chunks = [b"hello ", b"\r\n world", b"0;\r\n"]
    trailers = [("x-amz-checksum-crc32", "AAAAAA==")]
    body = sign_body(chunks, TRAILER["seed_signature"], trailers)
    for cut in range(len(body) + 1):
        for second in (cut, min(cut + 3, len(body))):
            decoder = trailer_decoder(decoded_length=sum(map(len, chunks)))
            assert decode(decoder, body, [cut, second]) == b"".join(chunks), (cut, second)
            assert decoder.trailers == {"x-amz-checksum-crc32": "AAAAAA=="}


# -- botocore's own bodies ---------------------------------------------------


def test_botocore_aws_chunked_wrapper_round_trip():
    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

    data = bytes(range(256)) * 1000 + b"tail"
    wrapper = AwsChunkedWrapper(
        io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32", chunk_size=64 * 1024
    )
    body = wrapper.read()
    decoder = ChunkedDecoder(verifier=None, signed=False, expect_trailer=True, decoded_length=len(data))
    assert decode(decoder, body, cuts=list(range(0, len(body), 4093))) == data
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert decoder.trailers == {"x-amz-checksum-crc32": crc}


def test_boto3_put_object_body_and_headers_decode():
    """Capture what boto3 really sends (https → aws-chunked with a trailing CRC32)."""
    import boto3
    from botocore.awsrequest import AWSResponse

    captured: dict = {}

    class _Raw:
        def stream(self, **_):
            yield b""

    def before_send(request, **_):
        headers = request.headers.items()
        captured["headers"] = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in headers}
        captured["body"] = request.body.read()
        return AWSResponse(request.url, 200, {}, _Raw())

    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example.test",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    client.meta.events.register("before-send.s3.PutObject", before_send)
    data = b"log line\n" * 30000
    client.put_object(Bucket="b", Key="k", Body=io.BytesIO(data))
    headers = captured["headers"]
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert headers["content-encoding"] == "aws-chunked" and stored_content_encoding("aws-chunked") is None
    decoder = ChunkedDecoder(
        verifier=None,
        signed=False,
        expect_trailer=True,
        decoded_length=int(headers["x-amz-decoded-content-length"]),
        trailer_names=parse_trailer_names(headers["x-amz-trailer"]),
    )
    assert decode(decoder, captured["body"], cuts=list(range(0, len(captured["body"]), 65536))) == data
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert decoder.trailers == {"x-amz-checksum-crc32": crc}


# -- refusals ------------------------------------------------------------------

BAD_SIG = "0" * 64


def _unsigned(decoded_length: int | None = None, **kwargs) -> ChunkedDecoder:
    return ChunkedDecoder(verifier=None, signed=False, expect_trailer=True, decoded_length=decoded_length, **kwargs)


def _signed_plain(decoded_length: int | None = None) -> ChunkedDecoder:
    return ChunkedDecoder(verifier=None, signed=True, expect_trailer=False, decoded_length=decoded_length)


@pytest.mark.parametrize(
    ("make", "body", "error", "words"),
    [
        (_unsigned, b"zz\r\n", InvalidRequest, "not a hex number"),
        (_unsigned, b"0x5\r\nhello\r\n", InvalidRequest, "not a hex number"),
        (_unsigned, b" 5\r\nhello\r\n", InvalidRequest, "not a hex number"),
        (_unsigned, b"\r\n", InvalidRequest, "not a hex number"),
        (_unsigned, b"1" * 17 + b"\r\n", InvalidRequest, "not a hex number"),
        (_unsigned, b"5\nhello\r\n", InvalidRequest, "CRLF"),
        (_unsigned, b"5\r\nhelloXY0\r\n\r\n", InvalidRequest, "expected CRLF"),
        (_unsigned, b"5\r\nhello\n0\r\n\r\n", InvalidRequest, "CRLF"),
        (_unsigned, b"5" * (MAX_HEADER_LINE + 1), InvalidRequest, "longer than"),
        (_unsigned, b"0\r\nx-amz-checksum-crc32\r\n\r\n", InvalidRequest, "malformed aws-chunked trailer"),
        (_unsigned, b"0\r\nbad name:1\r\n\r\n", InvalidRequest, "malformed aws-chunked trailer"),
        (_unsigned, b"0\r\na:1\r\nA:2\r\n\r\n", InvalidRequest, "sent twice"),
        (_unsigned, b"0\r\na:\xff\r\n\r\n", InvalidRequest, "not ASCII"),
        (_unsigned, b"0\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n", InvalidRequest, "unsigned"),
        (_unsigned, b"0\r\na:" + b"b" * MAX_TRAILER_BYTES + b"\r\n\r\n", InvalidRequest, "trailers exceed"),
        (_unsigned, b"0\r\n\r\nextra", InvalidRequest, "after the end"),
        (_signed_plain, b"5\r\nhello\r\n", InvalidRequest, "lacks ';chunk-signature='"),
        (_signed_plain, b"5;chunk-signature=abc\r\n", InvalidRequest, "64 lower-case hex"),
        (_signed_plain, b"5;chunk-sig=" + b"0" * 64 + b"\r\n", InvalidRequest, "lacks"),
        (_signed_plain, b"0;chunk-signature=" + b"0" * 64 + b"\r\nxx", InvalidRequest, "expected CRLF"),
    ],
)
def test_malformed_framing_is_refused(make, body, error, words):
    decoder = make()
    with pytest.raises(error, match=words):
        decoder.feed(body)
        decoder.finish()


def test_a_refused_decoder_stays_refused():
    decoder = _unsigned(decoded_length=5)
    with pytest.raises(InvalidRequest):
        decoder.feed(b"5\r\nhelloXX")
    with pytest.raises(InvalidRequest, match="expected CRLF"):
        decoder.feed(b"\r\n0\r\n\r\n")
    with pytest.raises(InvalidRequest, match="expected CRLF"):
        decoder.finish()


def test_many_small_trailer_lines_hit_the_trailer_limit():
    decoder = _unsigned()
    lines = b"".join(b"h%d:v\r\n" % i for i in range(MAX_TRAILER_BYTES // 4))
    with pytest.raises(InvalidRequest, match="trailers exceed"):
        decoder.feed(b"0\r\n" + lines)


@pytest.mark.parametrize("cut", [0, 3, 10, 66000, 66553, 66824 - 2, 66824 - 1])
def test_truncated_body_is_incomplete(cut):
    decoder = plain_decoder()
    decoder.feed(example_body(PLAIN)[:cut])
    with pytest.raises(IncompleteBody, match="ended inside"):
        decoder.finish()


def test_decoded_length_smaller_than_the_body():
    decoder = plain_decoder(decoded_length=65536 + 1023)
    with pytest.raises(IncompleteBody, match="more than x-amz-decoded-content-length=66559"):
        decoder.feed(example_body(PLAIN))


def test_decoded_length_larger_than_the_body():
    decoder = plain_decoder(decoded_length=66561)
    with pytest.raises(IncompleteBody, match="decoded to 66560 bytes"):
        decoder.feed(example_body(PLAIN))


def test_a_chunk_bigger_than_the_declared_length_is_refused_at_its_header():
    decoder = _unsigned(decoded_length=10)
    with pytest.raises(IncompleteBody):
        decoder.feed(b"ffffffff\r\n")


def test_bad_chunk_signature_is_signature_does_not_match():
    body = example_body(PLAIN).replace(PLAIN["chunks"][1]["signature"].encode(), BAD_SIG.encode())
    decoder = plain_decoder()
    with pytest.raises(SignatureDoesNotMatch):
        decoder.feed(body)


def test_altered_chunk_data_is_signature_does_not_match():
    body = bytearray(example_body(PLAIN))
    body[200] = ord("b")
    with pytest.raises(SignatureDoesNotMatch):
        plain_decoder().feed(bytes(body))


def test_reordered_chunks_break_the_chain():
    a = sign_body([b"first"], PLAIN["seed_signature"])
    b = sign_body([b"second"], PLAIN["seed_signature"])
    spliced = a[: a.index(b"0;")] + b[: b.index(b"0;")] + a[a.index(b"0;") :]
    with pytest.raises(SignatureDoesNotMatch):
        plain_decoder(decoded_length=None).feed(spliced)


def test_altered_trailer_is_signature_does_not_match():
    body = example_body(TRAILER).replace(b"sOO8/Q==", b"AAAAAA==")
    with pytest.raises(SignatureDoesNotMatch):
        trailer_decoder().feed(body)


def test_signed_trailer_without_its_signature():
    body = sign_body([b"abc"], TRAILER["seed_signature"], [("x-amz-checksum-crc32", "x")])
    body = body[: body.index(b"x-amz-trailer-signature")] + b"\r\n"
    with pytest.raises(InvalidRequest, match="lacks x-amz-trailer-signature"):
        trailer_decoder(decoded_length=3).feed(body)


def test_trailer_after_the_trailer_signature():
    body = sign_body([b"abc"], TRAILER["seed_signature"], [("x-amz-checksum-crc32", "x")])
    body = body[:-2] + b"late:1\r\n\r\n"
    with pytest.raises(InvalidRequest, match="after x-amz-trailer-signature"):
        trailer_decoder(decoded_length=3).feed(body)


def test_unannounced_and_missing_trailers():
    with pytest.raises(InvalidRequest, match="not announced"):
        _unsigned(trailer_names={"x-amz-checksum-crc32"}).feed(b"0\r\nx-amz-checksum-sha256:x\r\n\r\n")
    with pytest.raises(InvalidRequest, match="lacks the trailer"):
        _unsigned(trailer_names={"x-amz-checksum-crc32"}).feed(b"0\r\n\r\n")


def test_every_refusal_is_a_4xx_s3_error():
    """Garbage of any shape is a client error, never an escaping exception (a 500)."""
    samples = [b"\x00" * 100, b"\r\n" * 50, b"ffff;;;;\r\n", b"0;chunk-signature=\r\n", b"-1\r\n", "é\r\n".encode()]
    for body in samples:
        for make in (_unsigned, _signed_plain):
            with pytest.raises(S3Error) as info:
                decoder = make()
                decoder.feed(body)
                decoder.finish()
            assert 400 <= info.value.status < 500


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_bodies_only_ever_raise_s3_errors(body):
    for make in (_unsigned, _signed_plain):
        decoder = make(decoded_length=50)
        try:
            decoder.feed(body)
            decoder.finish()
        except S3Error as exc:
            assert 400 <= exc.status < 500


# -- headers ---------------------------------------------------------------


def test_trailer_names_header():
    assert parse_trailer_names(None) == frozenset()
    assert parse_trailer_names("x-amz-checksum-crc32, X-Amz-Checksum-SHA256") == {
        "x-amz-checksum-crc32",
        "x-amz-checksum-sha256",
    }
    with pytest.raises(InvalidArgument):
        parse_trailer_names("bad name")


def test_stored_content_encoding_drops_aws_chunked():
    assert stored_content_encoding("aws-chunked") is None
    assert stored_content_encoding("aws-chunked, gzip") == "gzip"
    assert stored_content_encoding("gzip,AWS-CHUNKED,br") == "gzip, br"
    assert stored_content_encoding(None) is None


# -- the async shell ---------------------------------------------------------


async def _pieces(body: bytes, size: int):
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_async_body_streams_data_then_has_trailers():
    body = decode_aws_chunked(_pieces(example_body(TRAILER), 1000), trailer_decoder())
    out = bytearray()
    with trio.fail_after(5):
        async for piece in body:
            assert piece
            out += piece
    assert bytes(out) == _data(TRAILER["decoded_content"])
    assert body.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}


async def test_async_body_gives_one_piece_per_source_read():
    chunks = [b"a", b"bc", b"def"] * 50
    body = decode_aws_chunked(_pieces(sign_body(chunks, PLAIN["seed_signature"]), 10**6), plain_decoder(None, 300))
    assert [piece async for piece in body] == [b"".join(chunks)]
    assert body.trailers == {}


async def test_async_body_raises_on_a_truncated_source():
    body = decode_aws_chunked(_pieces(example_body(PLAIN)[:-5], 4096), plain_decoder())
    with pytest.raises(IncompleteBody):
        async with aclosing(body):
            async for _ in body:
                pass


async def test_async_body_raises_on_a_bad_signature_before_the_end():
    raw = example_body(PLAIN).replace(PLAIN["chunks"][0]["signature"].encode(), BAD_SIG.encode())
    seen = 0
    with pytest.raises(SignatureDoesNotMatch):
        async with aclosing(decode_aws_chunked(_pieces(raw, 8192), plain_decoder())) as body:
            async for piece in body:
                seen += len(piece)
    assert seen <= 65536  # the first chunk's data streamed, nothing after it


# -- throughput ------------------------------------------------------------------


def test_throughput_sanity_for_64_kib_chunks():
    """32 MiB in 64 KiB signed chunks, fed in 64 KiB reads; print MB/s, assert only linearity."""
    data = b"x" * (64 * 1024)
    count = 512
    frame = b"10000;chunk-signature=" + b"0" * 64 + b"\r\n" + data + b"\r\n"
    body = frame * count + b"0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n"
    decoder = _signed_plain(decoded_length=len(data) * count)
    started = time.perf_counter()
    total = 0
    for start in range(0, len(body), 65536):
        total += sum(len(p) for p in decoder.feed(body[start : start + 65536]))
    decoder.finish()
    elapsed = time.perf_counter() - started
    assert total == len(data) * count
    print(f"aws-chunked decode: {total / elapsed / 1e6:.0f} MB/s")
