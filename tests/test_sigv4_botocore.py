"""Property: our SigV4 agrees with botocore's, the signer most S3 clients run.

For random methods, paths, query strings, headers and bodies, botocore's
``S3SigV4Auth`` and our ``SigV4Auth`` produce the same Authorization header,
and our verifier accepts what botocore signed (and presigned).
"""

from __future__ import annotations

import hashlib
import string
from datetime import datetime, timezone
from unittest import mock
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
import httpx
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.auth import StaticKeyring, authenticate
from sink import presign, sigv4

ACCESS_KEY = "AKIAPROPERTYTEST"
SECRET = "pr0perty/Secret+Key/FOR/testing/0123456789"
KEYS = StaticKeyring({ACCESS_KEY: SECRET})
ENDPOINT = "http://s3.example.test:9000"

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALLER = settings(PROPERTY, max_examples=100)

# Text a key or query value may hold: anything but surrogates, with the awkward
# characters (space, +, %, /, ?, #, &, =, ~, $, non-ASCII) made likely.
awkward = st.sampled_from([" ", "+", "%", "%2F", "/", "?", "#", "&", "=", "~", "$", "é", "ሴ", "😀", "*", "'"])
any_char = st.characters(blacklist_categories=("Cs",))
text = st.lists(st.one_of(awkward, any_char), max_size=8).map("".join)
segments = st.lists(text, min_size=1, max_size=4)  # empty segments give "//" and a trailing "/"
query_pairs = st.lists(st.tuples(text.filter(bool), st.one_of(st.none(), text)), max_size=4)

# Header names and values: tokens and printable ASCII, so httpx and botocore
# carry them unchanged; names that the signers own are left out.
OWNED = {"host", "content-length", "authorization", "x-amz-date", "x-amz-content-sha256", "date",
         "x-amz-security-token", "transfer-encoding"}
header_name = st.tuples(
    st.sampled_from(["x-amz-meta-", "x-amz-", "X-Amz-Meta-", "content-", "", "x-amzn-"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=10),
).map("".join) | st.sampled_from(["Content-Type", "Content-MD5", "Range", "user-agent", "Expect", "x-amzn-trace-id"])
header_value = st.text(alphabet=string.printable[:95] + "\t", max_size=20)
headers = st.lists(
    st.tuples(header_name.filter(lambda n: n.lower() not in OWNED), header_value), max_size=5
)
moments = st.integers(min_value=946684800, max_value=4102444799)  # 2000 .. 2099
regions = st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2"])
methods = st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"])
tokens = st.one_of(st.none(), st.text(alphabet=string.ascii_letters + string.digits + "/+=", min_size=1, max_size=40))


def wire_path(parts: list[str]) -> str:
    """How an SDK puts a key on the wire: every byte but unreserved and '/' escaped."""
    return quote("/" + "/".join(parts), safe="/~")


def wire_query(pairs: list[tuple[str, str | None]]) -> str:
    return "&".join(quote(n, safe="-_.~") + ("" if v is None else "=" + quote(v, safe="-_.~")) for n, v in pairs)


def url_of(path: str, query: str) -> str:
    return f"{ENDPOINT}{path}" + (f"?{query}" if query else "")


def botocore_sign(request: httpx.Request, region: str, moment: int, token: str | None) -> AWSRequest:
    """botocore signs a request carrying exactly the headers httpx will send."""
    aws = AWSRequest(method=request.method, url=str(request.url), data=request.content)
    for name, value in request.headers.raw:
        aws.headers[name.decode()] = value.decode()
    signer = botocore.auth.S3SigV4Auth(Credentials(ACCESS_KEY, SECRET, token), "s3", region)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=datetime.fromtimestamp(moment, timezone.utc)):
        signer.add_auth(aws)
    return aws


@PROPERTY
@given(methods, segments, query_pairs, headers, st.binary(max_size=64), regions, moments, tokens)
def test_same_signature_as_botocore(method, parts, pairs, header_list, body, region, moment, token):
    path, query = wire_path(parts), wire_query(pairs)
    # httpx normalises "." and ".." segments away in URLs (the sink escapes dots for such keys).
    assume(not {".", ".."} & set(path.split("/")))
    request = httpx.Request(method, url_of(path, query), headers=header_list, content=body)
    assert request.url.raw_path == (path + (f"?{query}" if query else "")).encode()
    theirs = botocore_sign(request, region, moment, token)

    ours = sigv4.SigV4Auth(ACCESS_KEY, SECRET, region, session_token=token, clock=lambda: moment).sign(request)
    assert ours.headers["authorization"] == theirs.headers["Authorization"]

    # Our verifier accepts botocore's request, and names the body's hash.
    split = urlsplit(theirs.url)
    received = [(name.lower(), value) for name, value in theirs.headers.items()]
    result = authenticate(method, split.path, split.query, received, KEYS, now=moment + 899)
    assert result.access_key_id == ACCESS_KEY
    assert result.payload == hashlib.sha256(body).hexdigest()


@SMALLER
@given(st.lists(text.filter(lambda t: not set(t) & set("%?#") and all(c.isprintable() for c in t if c.isascii())), min_size=1, max_size=3), headers, moments)
def test_wire_escaping_does_not_change_the_signature(parts, header_list, moment):
    """httpx leaves '$', '+', "'" … raw on the wire; the server decodes and re-encodes, and so do we."""
    escaped = httpx.Request("PUT", url_of(wire_path(parts), ""), headers=header_list, content=b"x")
    loose = httpx.Request("PUT", url_of("/" + "/".join(parts), ""), headers=header_list, content=b"x")
    auth = sigv4.SigV4Auth(ACCESS_KEY, SECRET, "us-east-1", clock=lambda: moment)
    assert auth.sign(escaped).headers["authorization"] == auth.sign(loose).headers["authorization"]
    raw_path = loose.url.raw_path.decode("ascii")
    received = [(n.decode().lower(), v.decode()) for n, v in loose.headers.raw]
    assert authenticate("PUT", raw_path, "", received, KEYS, now=moment).payload == hashlib.sha256(b"x").hexdigest()


@SMALLER
@given(methods, segments, st.dictionaries(text.filter(bool), text, max_size=3), st.integers(1, 604800), regions, moments)
def test_presigned_urls_agree_with_botocore(method, parts, params, expires, region, moment):
    path, query = wire_path(parts), wire_query(list(params.items()))
    aws = AWSRequest(method=method, url=url_of(path, query))
    signer = botocore.auth.S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET), "s3", region, expires=expires)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=datetime.fromtimestamp(moment, timezone.utc)):
        signer.add_auth(aws)
    theirs = dict(parse_qsl(urlsplit(aws.url).query))["X-Amz-Signature"]

    ours_url = presign.presign_url(
        method, url_of(path, query), access_key_id=ACCESS_KEY, secret=SECRET, region=region, expires=expires, now=moment
    )
    ours = urlsplit(ours_url)
    assert dict(parse_qsl(ours.query))["X-Amz-Signature"] == theirs

    host = [("host", "s3.example.test:9000")]
    for url in (aws.url, ours_url):
        split = urlsplit(url)
        assert authenticate(method, split.path, split.query, host, KEYS, now=moment + expires).payload == sigv4.UNSIGNED_PAYLOAD
