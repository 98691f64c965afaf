"""server.auth.authenticate: every refusal, the clock edges, presigned expiry, chunk chains."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest

from server.auth import (
    BODY_SIGNATURE_PENDING,
    AuthorizationQueryParametersError,
    BodySignature,
    ChunkVerifier,
    Session,
    StaticKeyring,
    authenticate,
)
from server.errors import (
    AccessDenied,
    ExpiredToken,
    InvalidToken,
    AuthorizationHeaderMalformed,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    NotImplemented_,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)
from sink import presign, sigv4

AKID, SECRET, REGION = "AKIDTEST", "test/secret+key", "eu-west-3"
KEYS = StaticKeyring({AKID: SECRET})
T = 1700000000.0  # the signing time
AMZ_DATE = sigv4.amz_date_of(T)
BODY_SHA = hashlib.sha256(b"hello").hexdigest()


def sign(
    method: str = "PUT",
    path: str = "/bucket/key",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    *,
    payload: str = BODY_SHA,
    when: float = T,
    secret: str = SECRET,
    akid: str = AKID,
    region: str = REGION,
    service: str = "s3",
    unsigned: list[tuple[str, str]] = (),
    date_header: bool = False,
) -> list[tuple[str, str]]:
    """A header-signed request's headers (all of ``headers`` signed, ``unsigned`` added after)."""
    amz_date = sigv4.amz_date_of(when)
    base = [("host", "s3.test:9000")] + (headers or [])
    if date_header:
        base.append(("date", datetime.fromtimestamp(when, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")))
    else:
        base.append(("x-amz-date", amz_date))
    if payload is not None:
        base.append(("x-amz-content-sha256", payload))
    names = [n for n, _ in base]
    authz = sigv4.authorization_header(
        method, path, query, base, names, payload or "", amz_date=amz_date,
        access_key_id=akid, secret=secret, region=region, service=service,
    )  # fmt: skip
    return base + list(unsigned) + [("authorization", authz)]


def auth(headers, *, method="PUT", path="/bucket/key", query="", now=T, **kw):
    return authenticate(method, path, query, headers, KEYS, now=now, **kw)


def with_authorization(headers, value):
    return [(n, value if n == "authorization" else v) for n, v in headers]


def test_a_signed_request_is_accepted():
    result = auth(sign())
    assert (result.access_key_id, result.payload, result.chunk_verifier) == (AKID, BODY_SHA, None)


def test_anonymous_is_access_denied():
    with pytest.raises(AccessDenied):
        auth([("host", "s3.test")])


@pytest.mark.parametrize(
    "value, error",
    [
        ("Bearer abc", AccessDenied),
        ("", AccessDenied),
        ("AWS AKIDTEST:c2lnbmF0dXJl", InvalidRequest),  # SigV2: refused as S3 does in SigV4-only regions
    ],
)
def test_other_schemes_are_refused(value, error):
    with pytest.raises(error):
        auth(with_authorization(sign(), value))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a.replace(", Signature=", ", Sig="),
        lambda a: a.replace("/aws4_request", "/aws5_request"),
        lambda a: a.replace(f"{AKID}/", ""),
        lambda a: a.replace(f"/{AMZ_DATE[:8]}/", "/2023-11/"),
        lambda a: a[:-1] + "Z",
        lambda a: a + ", Signature=" + "0" * 64,
        lambda a: a.replace("SignedHeaders=host;", "SignedHeaders=Host;"),
        lambda a: a.replace("SignedHeaders=host;", "SignedHeaders=;"),
        lambda a: a.replace(", ", " "),
    ],
    ids=["no-signature", "terminator", "short-credential", "date-format", "not-hex", "twice", "upper-case", "empty", "no-commas"],
)
def test_malformed_authorization(mangle):
    headers = sign()
    value = dict(headers)["authorization"]
    with pytest.raises(AuthorizationHeaderMalformed):
        auth(with_authorization(headers, mangle(value)))


def test_both_separators_are_accepted():
    headers = sign()
    value = dict(headers)["authorization"]
    assert auth(with_authorization(headers, value.replace(", ", ","))).access_key_id == AKID
    assert auth(with_authorization(headers, value.replace(", ", " ,  "))).access_key_id == AKID


def test_header_and_query_auth_together_is_invalid():
    with pytest.raises(InvalidArgument):
        auth(sign(), query="X-Amz-Algorithm=AWS4-HMAC-SHA256")


def unsigned_hash_request(body_hash: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Signed as curl < 8 signs: the body's hash in the canonical request, no x-amz-content-sha256 sent."""
    base = [("host", "s3.test"), ("x-amz-date", AMZ_DATE)] + headers
    authz = sigv4.authorization_header(
        "PUT", "/bucket/key", "", base, ["host", "x-amz-date"], body_hash,
        amz_date=AMZ_DATE, access_key_id=AKID, secret=SECRET, region=REGION,
    )  # fmt: skip
    return base + [("authorization", authz)]


@pytest.mark.parametrize("framing", [[], [("content-length", "0")]], ids=["no-body", "empty-body"])
def test_missing_content_sha256_means_the_empty_body_when_there_is_none(framing):
    result = auth(unsigned_hash_request(sigv4.EMPTY_SHA256, framing))
    assert result.payload == sigv4.EMPTY_SHA256 and result.body_signature is None
    with pytest.raises(SignatureDoesNotMatch):
        auth(unsigned_hash_request(BODY_SHA, framing))


@pytest.mark.parametrize("framing", [[("content-length", "5")], [("transfer-encoding", "chunked")]])
def test_missing_content_sha256_defers_the_signature_to_the_body(framing):
    result = auth(unsigned_hash_request(BODY_SHA, framing))
    assert result.payload == BODY_SIGNATURE_PENDING and result.chunk_verifier is None
    assert isinstance(result.body_signature, BodySignature)
    result.body_signature.verify(BODY_SHA)
    with pytest.raises(SignatureDoesNotMatch):
        result.body_signature.verify(hashlib.sha256(b"hellp").hexdigest())
    # Everything else is still checked before the body is read.
    with pytest.raises(RequestTimeTooSkewed):
        auth(unsigned_hash_request(BODY_SHA, framing), now=T + 901)


def test_curl_7_88_request_is_accepted():
    """Captured from curl 7.88.1: --aws-sigv4 "aws:amz:us-east-1:s3" --user AK:SK --data-binary hello."""
    headers = [
        ("host", "127.0.0.1:18765"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AK/20261125/us-east-1/s3/aws4_request, "
         "SignedHeaders=host;x-amz-date;x-amz-write-offset-bytes, "
         "Signature=a27a00c56fd23feb6c198e69b33d446f03b921df219f757b0b1890ad6c3e5ea2"),
        ("x-amz-date", "20261125T151832Z"),
        ("user-agent", "curl/7.88.1"),
        ("accept", "*/*"),
        ("x-amz-write-offset-bytes", "1024"),
        ("content-length", "5"),
        ("content-type", "application/x-www-form-urlencoded"),
    ]  # fmt: skip
    when = sigv4_time("20261125T151832Z")
    result = authenticate("POST", "/b/k", "", headers, StaticKeyring({"AK": "SK"}), now=when)
    assert result.payload == BODY_SIGNATURE_PENDING
    result.body_signature.verify(hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(SignatureDoesNotMatch):
        result.body_signature.verify(hashlib.sha256(b"hellO").hexdigest())


def sigv4_time(amz_date: str) -> float:
    return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("value", ["abc", "0" * 63, "g" * 64, "unsigned-payload", "STREAMING-AWS4-HMAC-SHA256-PAYLOADX"])
def test_bad_content_sha256_is_invalid_argument(value):
    with pytest.raises(InvalidArgument) as info:
        auth(sign(payload=value))
    assert info.value.extra["ArgumentName"] == "x-amz-content-sha256"


def test_sigv4a_streaming_is_not_implemented():
    with pytest.raises(NotImplemented_):
        auth(sign(payload="STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"))


@pytest.mark.parametrize("mode", [sigv4.UNSIGNED_PAYLOAD, sigv4.STREAMING_UNSIGNED_TRAILER])
def test_unsigned_modes_have_no_chunk_verifier(mode):
    result = auth(sign(payload=mode))
    assert result.payload == mode and result.chunk_verifier is None


def test_upper_case_payload_hash_is_reported_lower_case():
    assert auth(sign(payload=BODY_SHA.upper())).payload == BODY_SHA


def test_date_header_stands_in_for_x_amz_date():
    assert auth(sign(date_header=True)).access_key_id == AKID


@pytest.mark.parametrize("value", [None, "20231114T221320", "20230230T000000Z", "2023-11-14T22:13:20Z"])
def test_missing_or_invalid_date_is_access_denied(value):
    headers = [(n, v) for n, v in sign() if n != "x-amz-date"]
    if value is not None:
        headers.append(("x-amz-date", value))
    with pytest.raises(AccessDenied, match="Date or x-amz-date"):
        auth(headers)


def test_credential_date_must_match_request_date():
    headers = sign()
    value = dict(headers)["authorization"].replace(f"/{AMZ_DATE[:8]}/", "/20231113/")
    with pytest.raises(AuthorizationHeaderMalformed, match="Invalid credential date"):
        auth(with_authorization(headers, value))


def test_credential_service_must_be_s3():
    with pytest.raises(AuthorizationHeaderMalformed, match="service"):
        auth(sign(service="ec2"))


def test_region_is_checked_only_when_configured():
    assert auth(sign(region="ap-south-1")).access_key_id == AKID
    with pytest.raises(AuthorizationHeaderMalformed) as info:
        auth(sign(region="ap-south-1"), region=REGION)
    assert info.value.extra == {"Region": REGION}
    assert auth(sign(), region=REGION).access_key_id == AKID


def test_unknown_access_key():
    with pytest.raises(InvalidAccessKeyId) as info:
        auth(sign(akid="AKIDNOBODY"))
    assert info.value.extra["AWSAccessKeyId"] == "AKIDNOBODY"


def test_wrong_secret_does_not_match_and_says_what_was_signed():
    with pytest.raises(SignatureDoesNotMatch) as info:
        auth(sign(secret="not-the-secret"))
    assert info.value.extra["StringToSign"].startswith(f"AWS4-HMAC-SHA256\n{AMZ_DATE}\n")
    assert info.value.extra["CanonicalRequest"].startswith("PUT\n/bucket/key\n")


@pytest.mark.parametrize("change", [{"method": "POST"}, {"path": "/bucket/kez"}, {"query": "x=1"}])
def test_any_signed_part_changed_does_not_match(change):
    with pytest.raises(SignatureDoesNotMatch):
        auth(sign(), **change)


@pytest.mark.parametrize("offset", [-900, 0, 900])
def test_clock_skew_up_to_15_minutes_is_accepted(offset):
    assert auth(sign(), now=T + offset).access_key_id == AKID
    assert auth(sign(), now=datetime.fromtimestamp(T + offset, timezone.utc)).access_key_id == AKID


@pytest.mark.parametrize("offset", [-901, 901, 86400])
def test_clock_skew_beyond_15_minutes_is_refused(offset):
    with pytest.raises(RequestTimeTooSkewed) as info:
        auth(sign(), now=T + offset)
    assert info.value.extra["RequestTime"] == AMZ_DATE
    assert info.value.extra["MaxAllowedSkewMilliseconds"] == "900000"


def test_unsigned_amz_headers_are_refused():
    with pytest.raises(AccessDenied) as info:
        auth(sign(unsigned=[("x-amz-write-offset-bytes", "5"), ("x-amz-meta-a", "b")]))
    assert info.value.extra["HeadersNotSigned"] == "x-amz-meta-a, x-amz-write-offset-bytes"
    # Other unsigned headers are the client's business (botocore leaves user-agent, expect unsigned).
    assert auth(sign(unsigned=[("user-agent", "x"), ("expect", "100-continue")])).access_key_id == AKID


def test_unsigned_content_sha256_is_tolerated_as_on_aws():
    headers = [("host", "s3.test"), ("x-amz-date", AMZ_DATE)]
    authz = sigv4.authorization_header(
        "GET", "/b", "", headers, ["host", "x-amz-date"], sigv4.UNSIGNED_PAYLOAD,
        amz_date=AMZ_DATE, access_key_id=AKID, secret=SECRET, region=REGION,
    )  # fmt: skip
    received = headers + [("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD), ("authorization", authz)]
    assert auth(received, method="GET", path="/b").payload == sigv4.UNSIGNED_PAYLOAD


def test_host_must_be_signed():
    headers = [("x-amz-date", AMZ_DATE), ("x-amz-content-sha256", BODY_SHA)]
    authz = sigv4.authorization_header(
        "PUT", "/bucket/key", "", headers, ["x-amz-date", "x-amz-content-sha256"], BODY_SHA,
        amz_date=AMZ_DATE, access_key_id=AKID, secret=SECRET, region=REGION,
    )  # fmt: skip
    with pytest.raises(AccessDenied) as info:
        auth([("host", "s3.test")] + headers + [("authorization", authz)])
    assert info.value.extra["HeadersNotSigned"] == "host"


def test_repeated_headers_are_signed_joined():
    headers = sign(headers=[("x-amz-meta-a", "1"), ("x-amz-meta-a", "2")])
    assert auth(headers).access_key_id == AKID
    swapped = [(n, {"1": "2", "2": "1"}[v] if n == "x-amz-meta-a" else v) for n, v in headers]
    with pytest.raises(SignatureDoesNotMatch):
        auth(swapped)


def test_values_are_trimmed_alike_whether_gathered_or_looked_up():
    # Each name once: the verifier looks values up by name (Request.first_values); the signer gathered them.
    headers = sign(headers=[("x-amz-meta-note", " a  b \t c "), ("x-amz-meta-other", "d")])
    assert auth(headers).access_key_id == AKID
    assert auth(headers, first_values=dict(reversed(headers))).access_key_id == AKID
    changed = [(n, "a b c" if n == "x-amz-meta-other" else v) for n, v in headers]
    with pytest.raises(SignatureDoesNotMatch):
        auth(changed, first_values=dict(reversed(changed)))


# --- S3 Express session tokens ------------------------------------------------

SESSION = Session("AKIDSESSION", "session-secret", expires_at=T + 300)


def session_request(token: str = "tok") -> list[tuple[str, str]]:
    return sign(akid=SESSION.access_key_id, secret=SESSION.secret, headers=[("x-amz-s3session-token", token)])


def test_session_token_resolves_the_secret():
    result = auth(session_request(), sessions={"tok": SESSION}.get)
    assert result.access_key_id == "AKIDSESSION"


@pytest.mark.parametrize(
    "sessions, now, error",
    [(None, T, InvalidToken), ({}.get, T, InvalidToken),
     ({"tok": Session("AKIDOTHER", "session-secret", T + 300)}.get, T, InvalidToken),
     ({"tok": SESSION}.get, T + 300, ExpiredToken)],
    ids=["no-sessions", "unknown-token", "other-key", "expired"],
)
def test_bad_session_token_is_refused_so_the_client_renews_it(sessions, now, error):
    with pytest.raises(error, match="token"):
        auth(session_request(), sessions=sessions, now=now)


# --- presigned URLs ------------------------------------------------------------


def presigned(expires: int = 3600, *, path: str = "/bucket/key", method: str = "GET") -> tuple[str, str]:
    url = presign.presign_url(method, f"http://s3.test:9000{path}?versionId=3", access_key_id=AKID, secret=SECRET,
                            region=REGION, expires=expires, now=T)  # fmt: skip
    split = url.split("?", 1)
    return split[0].removeprefix("http://s3.test:9000"), split[1]


def qauth(path, query, *, now=T, headers=(("host", "s3.test:9000"),), method="GET"):
    return authenticate(method, path, query, list(headers), KEYS, now=now)


def test_presigned_url_is_accepted_until_it_expires():
    path, query = presigned(3600)
    assert "versionId=3" in query
    assert qauth(path, query).payload == sigv4.UNSIGNED_PAYLOAD
    assert qauth(path, query, now=T + 3600).access_key_id == AKID
    with pytest.raises(AccessDenied, match="Request has expired") as info:
        qauth(path, query, now=T + 3601)
    assert info.value.extra["X-Amz-Expires"] == "3600"


def test_presigned_url_from_the_future_is_refused():
    path, query = presigned()
    assert qauth(path, query, now=T - 900).access_key_id == AKID
    with pytest.raises(AccessDenied, match="not valid yet"):
        qauth(path, query, now=T - 901)


def test_presigned_url_is_bound_to_method_path_and_host():
    path, query = presigned()
    for change in ({"method": "PUT"}, {"path": path + "x"}, {"headers": [("host", "s3.test:9001")]}):
        with pytest.raises(SignatureDoesNotMatch):
            qauth(**{"path": path, "query": query, **change})


@pytest.mark.parametrize(
    "edit",
    [
        lambda q: q.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""),
        lambda q: q.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
        lambda q: q.replace("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
        lambda q: q.replace("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
        lambda q: q.replace("X-Amz-Expires=3600", "X-Amz-Expires=1e3"),
        lambda q: q.replace("X-Amz-Date=", "X-Amz-Date=x"),
        lambda q: q.replace("aws4_request", "aws4_requests"),
        lambda q: q.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders="),
    ],
    ids=["no-algorithm", "algorithm", "over-a-week", "negative", "not-a-number", "date", "terminator", "signed-headers"],
)
def test_malformed_presigned_parameters(edit):
    path, query = presigned()
    with pytest.raises(AuthorizationQueryParametersError):
        qauth(path, edit(query))


def test_presigned_with_unsigned_amz_header_is_refused():
    path, query = presigned()
    with pytest.raises(AccessDenied, match="not signed"):
        qauth(path, query, headers=[("host", "s3.test:9000"), ("x-amz-acl", "public-read")])


def test_presign_rejects_out_of_range_expiry():
    for expires in (0, 604801):
        with pytest.raises(ValueError):
            presign.presign_url("GET", "http://h/b/k", access_key_id=AKID, secret=SECRET, region=REGION, expires=expires)


# --- chunked uploads -------------------------------------------------------------


def chunk_chain(seed: str, chunks: list[bytes]) -> list[str]:
    key = sigv4.signing_key(SECRET, AMZ_DATE[:8], REGION, "s3")
    scope = sigv4.credential_scope(AMZ_DATE[:8], REGION, "s3")
    signatures, previous = [], seed
    for chunk in chunks:
        previous = sigv4.signature(key, sigv4.chunk_string_to_sign(AMZ_DATE, scope, previous, hashlib.sha256(chunk).hexdigest()))
        signatures.append(previous)
    return signatures


def streaming(mode: str) -> tuple[ChunkVerifier, str]:
    headers = sign(payload=mode, headers=[("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "6")])
    result = auth(headers)
    assert result.payload == mode and isinstance(result.chunk_verifier, ChunkVerifier)
    return result.chunk_verifier, sigv4.parse_authorization(dict(headers)["authorization"]).signature


CHUNKS = [b"abc", b"def", b""]


def digest(chunk: bytes) -> str:
    return hashlib.sha256(chunk).hexdigest()


def test_chunk_chain_verifies_in_order():
    verifier, seed = streaming(sigv4.STREAMING_SIGNED)
    for chunk, signature in zip(CHUNKS, chunk_chain(seed, CHUNKS)):
        verifier.verify_chunk(digest(chunk), signature)
    assert verifier.chunks_verified == 3


def test_chunks_out_of_order_or_replayed_are_refused():
    verifier, seed = streaming(sigv4.STREAMING_SIGNED)
    signatures = chunk_chain(seed, CHUNKS)
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(digest(CHUNKS[1]), signatures[1])  # skipped the first
    verifier.verify_chunk(digest(CHUNKS[0]), signatures[0])  # a refusal does not advance the chain
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(digest(CHUNKS[0]), signatures[0])  # replayed
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(digest(b"abd"), signatures[1])  # altered data
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_chunk(digest(CHUNKS[1]), "\udcff" * 64)  # undecodable junk from the wire


def test_trailer_is_chained_from_the_final_chunk():
    verifier, seed = streaming(sigv4.STREAMING_SIGNED_TRAILER)
    signatures = chunk_chain(seed, CHUNKS)
    for chunk, signature in zip(CHUNKS, signatures):
        verifier.verify_chunk(digest(chunk), signature)
    trailer = [("x-amz-checksum-crc32", "NSRBwg==")]
    key = sigv4.signing_key(SECRET, AMZ_DATE[:8], REGION, "s3")
    scope = sigv4.credential_scope(AMZ_DATE[:8], REGION, "s3")
    good = sigv4.signature(key, sigv4.trailer_string_to_sign(AMZ_DATE, scope, signatures[-1], trailer))
    stale = sigv4.signature(key, sigv4.trailer_string_to_sign(AMZ_DATE, scope, signatures[0], trailer))
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_trailer(trailer, stale)
    with pytest.raises(SignatureDoesNotMatch):
        verifier.verify_trailer([("x-amz-checksum-crc32", "AAAAAA==")], good)
    verifier.verify_trailer([("X-Amz-Checksum-Crc32", " NSRBwg== ")], good)  # canonical: lower-case, trimmed
