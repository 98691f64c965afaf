"""SigV4 known answers: AWS's generic test suite and the S3 worked examples.

Both directions for every vector: our signer reproduces the published
canonical request / string to sign / Authorization, and our verifier accepts
the signed request and refuses it after a one-bit change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server import auth as server_auth
from server.auth import StaticKeyring, authenticate, check_signature
from server.errors import AccessDenied, SignatureDoesNotMatch
from sink import presign, sigv4

SUITE = Path(__file__).resolve().parents[1].parent / "shared" / "sigv4-testsuite"
pytestmark = pytest.mark.skipif(not SUITE.is_dir(), reason=f"SigV4 test vectors not found at {SUITE} (shared/ sits beside the clone)")

# Fixed inputs of the generic suite (its README).
AMZ_DATE = "20150830T123600Z"
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"


@dataclass
class RawRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def payload_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def parse_raw_request(text: str) -> RawRequest:
    """A .req/.sreq file: request line, ``Name:value`` headers (obs-fold allowed), blank line, body."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].rsplit(" ", 1)[0]  # drop HTTP/1.1; the target may hold a raw space
    method, target = request_line.split(" ", 1)
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # obsolete line folding continues the previous value
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        elif line:
            name, _, value = line.partition(":")
            headers.append((name, value))
    return RawRequest(method, path, query, headers, body.encode())


def suite_cases() -> list[Path]:
    if not SUITE.is_dir():
        return []
    return sorted(p for p in SUITE.rglob("*") if p.is_dir() and (p / f"{p.name}.req").exists())


CASES = suite_cases()


def case_file(case: Path, ext: str) -> str:
    return (case / f"{case.name}.{ext}").read_text(encoding="utf-8")


def is_generic_path_case(case: Path) -> bool:
    return case.parent.name == "normalize-path"


def request_to_sign(case: Path) -> RawRequest:
    request = parse_raw_request(case_file(case, "req"))
    if case.name == "get-vanilla-with-session-token":
        # The suite hands the token to the signer separately (README).
        request.headers.append(("X-Amz-Security-Token", SESSION_TOKEN))
    return request


def signed_request(case: Path) -> RawRequest:
    if case.name == "get-vanilla-with-session-token":
        # Its .sreq carries get-vanilla's stale Authorization line (README); use .authz.
        request = request_to_sign(case)
        request.headers.append(("Authorization", case_file(case, "authz")))
        return request
    return parse_raw_request(case_file(case, "sreq"))


def test_suite_is_complete():
    assert len(CASES) == 34


@pytest.mark.parametrize("case", CASES, ids=lambda p: str(p.relative_to(SUITE)))
def test_suite_signer(case: Path):
    request = request_to_sign(case)
    names = [name for name, _ in request.headers]
    s3 = not is_generic_path_case(case)
    creq = sigv4.canonical_request(request.method, request.path, request.query, request.headers, names, request.payload_hash, s3=s3)
    assert creq == case_file(case, "creq")
    scope = sigv4.credential_scope(AMZ_DATE[:8], "us-east-1", "service")
    assert sigv4.string_to_sign(AMZ_DATE, scope, creq) == case_file(case, "sts")
    authz = sigv4.authorization_header(
        request.method, request.path, request.query, request.headers, names, request.payload_hash,
        amz_date=AMZ_DATE, access_key_id=ACCESS_KEY, secret=SECRET, region="us-east-1", service="service", s3=s3,
    )  # fmt: skip
    assert authz == case_file(case, "authz")


def verify_suite_request(request: RawRequest, *, s3: bool, amz_date: str = AMZ_DATE) -> None:
    authorization = next(v for n, v in request.headers if n.lower() == "authorization")
    headers = [(n.lower(), v) for n, v in request.headers if n.lower() != "authorization"]
    check_signature(
        request.method, request.path, request.query, headers, sigv4.parse_authorization(authorization.strip()), SECRET,
        amz_date=amz_date, payload_hash=request.payload_hash, s3=s3,
    )  # fmt: skip


def flip_bit(text: str, index: int = -1) -> str:
    chars = list(text)
    chars[index] = chr(ord(chars[index]) ^ 1)
    return "".join(chars)


def flip_hex(text: str) -> str:
    """One bit off in the last hex digit (a signature stays well-formed)."""
    return text[:-1] + format(int(text[-1], 16) ^ 1, "x")


@pytest.mark.parametrize("case", CASES, ids=lambda p: str(p.relative_to(SUITE)))
def test_suite_verifier(case: Path):
    s3 = not is_generic_path_case(case)
    verify_suite_request(signed_request(case), s3=s3)

    # One bit off in the signature, a signed header value, or the body: refused.
    tampered = signed_request(case)
    tampered.headers = [(n, flip_hex(v) if n.lower() == "authorization" else v) for n, v in tampered.headers]
    with pytest.raises(SignatureDoesNotMatch):
        verify_suite_request(tampered, s3=s3)
    tampered = signed_request(case)
    tampered.headers = [(n, flip_bit(v) if n.lower() == "x-amz-date" else v) for n, v in tampered.headers]
    with pytest.raises(SignatureDoesNotMatch):
        verify_suite_request(tampered, s3=s3)
    tampered = signed_request(case)
    tampered.body = tampered.body[:-1] + bytes([tampered.body[-1] ^ 1]) if tampered.body else b"\x01"
    with pytest.raises(SignatureDoesNotMatch):
        verify_suite_request(tampered, s3=s3)


def test_generic_path_rules_differ_from_s3():
    # S3 keeps dot segments and double slashes and encodes once; generic SigV4 does not.
    assert sigv4.canonical_uri("//example//", s3=False) == "/example/"
    assert sigv4.canonical_uri("//example//") == "//example//"
    assert sigv4.canonical_uri("/a/../b/./c") == "/a/../b/./c"
    assert sigv4.canonical_uri("/a%20b", s3=False) == "/a%2520b"
    assert sigv4.canonical_uri("/a%20b") == "/a%20b"


# --- the S3 worked examples -------------------------------------------------

S3 = json.loads((SUITE / "s3-examples.json").read_text()) if SUITE.is_dir() else {"common": {}, "header_signed": [], "presigned": [], "streaming": []}
COMMON = S3["common"]
S3_NOW = 1369353600.0  # 20130524T000000Z


def s3_keys() -> StaticKeyring:
    return StaticKeyring({COMMON["access_key_id"]: COMMON["secret_access_key"]})


def example_request(example: dict) -> tuple[str, str, str, list[tuple[str, str]]]:
    request = example["request"]
    path, _, query = request["request_target"].partition("?")
    return request["method"], path, query, [(name.lower(), value) for name, value in request["headers"]]


def data_of(spec: dict) -> bytes:
    return spec["repeat"].encode() * spec["count"]


def test_s3_signing_key():
    key = sigv4.signing_key(COMMON["secret_access_key"], COMMON["date_stamp"], COMMON["region"], COMMON["service"])
    assert key.hex() == COMMON["signing_key_hex"]


@pytest.mark.parametrize("example", S3["header_signed"], ids=lambda e: e["name"])
def test_s3_header_signed_signer(example: dict):
    method, path, query, headers = example_request(example)
    names = example["signed_headers"].split(";")
    payload = dict(headers)["x-amz-content-sha256"]
    creq = sigv4.canonical_request(method, path, query, headers, names, payload)
    assert creq == example["canonical_request"]
    assert hashlib.sha256(creq.encode()).hexdigest() == example["canonical_request_sha256"]
    assert sigv4.string_to_sign(COMMON["x_amz_date"], COMMON["credential_scope"], creq) == example["string_to_sign"]
    authz = sigv4.authorization_header(
        method, path, query, headers, names, payload, amz_date=COMMON["x_amz_date"],
        access_key_id=COMMON["access_key_id"], secret=COMMON["secret_access_key"], region="us-east-1",
    )  # fmt: skip
    assert sigv4.parse_authorization(authz) == sigv4.parse_authorization(example["authorization"])
    assert sigv4.parse_authorization(authz).signature == example["signature"]


@pytest.mark.parametrize("name", ["get_object", "get_bucket_lifecycle", "list_objects"])
def test_s3_examples_through_httpx_auth(name: str):
    """The httpx Auth signs exactly these requests' headers, so it must reproduce them."""
    example = next(e for e in S3["header_signed"] if e["name"] == name)
    _, path, query, headers = example_request(example)
    extra = [(n, v) for n, v in headers if n not in ("host", "x-amz-date", "x-amz-content-sha256")]
    request = httpx.Request("GET", f"http://examplebucket.s3.amazonaws.com{path}{'?' + query if query else ''}", headers=extra)
    auth = sigv4.SigV4Auth(COMMON["access_key_id"], COMMON["secret_access_key"], "us-east-1", clock=lambda: S3_NOW)
    signed = next(auth.auth_flow(request))
    assert sigv4.parse_authorization(signed.headers["authorization"]).signature == example["signature"]


@pytest.mark.parametrize("example", S3["header_signed"], ids=lambda e: e["name"])
def test_s3_header_signed_verifier(example: dict):
    method, path, query, headers = example_request(example)
    signed = headers + [("authorization", example["authorization"])]
    result = authenticate(method, path, query, signed, s3_keys(), now=S3_NOW)
    assert result.access_key_id == COMMON["access_key_id"]
    assert result.payload == dict(headers)["x-amz-content-sha256"]
    assert result.chunk_verifier is None

    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, path, query, headers + [("authorization", flip_hex(example["authorization"]))], s3_keys(), now=S3_NOW)
    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, flip_bit(path), query, signed, s3_keys(), now=S3_NOW)
    tampered = [(n, flip_bit(v) if n == "host" else v) for n, v in signed]
    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, path, query, tampered, s3_keys(), now=S3_NOW)


@pytest.mark.parametrize("example", S3["presigned"], ids=lambda e: e["name"])
def test_s3_presigned(example: dict):
    url = presign.presign_url(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", access_key_id=COMMON["access_key_id"],
        secret=COMMON["secret_access_key"], region="us-east-1", expires=86400, now=S3_NOW,
    )  # fmt: skip
    assert url == example["url"]
    method, path, query, headers = example_request(example)
    unsigned = sigv4.canonical_query(query, exclude=["X-Amz-Signature"])
    assert sigv4.canonical_request(method, path, unsigned, headers, ["host"], sigv4.UNSIGNED_PAYLOAD) == example["canonical_request"]

    for moment in (S3_NOW, S3_NOW + 86400):
        assert authenticate(method, path, query, headers, s3_keys(), now=moment).payload == sigv4.UNSIGNED_PAYLOAD
    with pytest.raises(AccessDenied, match="Request has expired"):
        authenticate(method, path, query, headers, s3_keys(), now=S3_NOW + 86401)
    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, path, flip_hex(query), headers, s3_keys(), now=S3_NOW)
    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, path, query.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401"), headers, s3_keys(), now=S3_NOW)


@pytest.mark.parametrize("example", S3["streaming"], ids=lambda e: e["name"])
def test_s3_streaming_signer(example: dict):
    method, path, query, headers = example_request(example)
    headers = [(n, v) for n, v in headers if n != "authorization"]
    names = example["signed_headers"].split(";")
    mode = dict(headers)["x-amz-content-sha256"]
    authz = sigv4.authorization_header(
        method, path, query, headers, names, mode, amz_date=COMMON["x_amz_date"],
        access_key_id=COMMON["access_key_id"], secret=COMMON["secret_access_key"], region="us-east-1",
    )  # fmt: skip
    assert sigv4.parse_authorization(authz).signature == example["seed_signature"]

    key = bytes.fromhex(COMMON["signing_key_hex"])
    previous = example["seed_signature"]
    for chunk in example["chunks"]:
        digest = hashlib.sha256(data_of(chunk["data"])).hexdigest()
        assert digest == chunk["data_sha256"]
        sts = sigv4.chunk_string_to_sign(COMMON["x_amz_date"], COMMON["credential_scope"], previous, digest)
        assert sts == chunk["string_to_sign"]
        previous = sigv4.signature(key, sts)
        assert previous == chunk["signature"]
    if "trailer" in example:
        trailer = example["trailer"]
        lines = [tuple(pair) for pair in trailer["headers"]]
        assert sigv4.canonical_trailer(lines) == trailer["canonical_trailer"]
        sts = sigv4.trailer_string_to_sign(COMMON["x_amz_date"], COMMON["credential_scope"], previous, lines)
        assert sts == trailer["string_to_sign"]
        assert sigv4.signature(key, sts) == trailer["signature"]


@pytest.mark.parametrize("example", S3["streaming"], ids=lambda e: e["name"])
def test_s3_streaming_verifier(example: dict):
    method, path, query, headers = example_request(example)
    result = authenticate(method, path, query, headers, s3_keys(), now=S3_NOW)
    assert result.payload == dict(headers)["x-amz-content-sha256"]
    verifier = result.chunk_verifier
    assert isinstance(verifier, server_auth.ChunkVerifier)
    digests = [hashlib.sha256(data_of(c["data"])).hexdigest() for c in example["chunks"]]

    # A chunk one bit off (data or signature) is refused; the chain stays where it was.
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(flip_bit(digests[0]), example["chunks"][0]["signature"])
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(digests[0], flip_hex(example["chunks"][0]["signature"]))
    for digest, chunk in zip(digests, example["chunks"]):
        verifier.verify_chunk(digest, chunk["signature"])
    if "trailer" in example:
        lines = [tuple(pair) for pair in example["trailer"]["headers"]]
        with pytest.raises(SignatureDoesNotMatch):
            verifier.verify_trailer([(n, flip_bit(v)) for n, v in lines], example["trailer"]["signature"])
        verifier.verify_trailer(lines, example["trailer"]["signature"])

    tampered = [(n, flip_bit(v) if n == "x-amz-decoded-content-length" else v) for n, v in headers]
    with pytest.raises(SignatureDoesNotMatch):
        authenticate(method, path, query, tampered, s3_keys(), now=S3_NOW)
