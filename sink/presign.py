"""Presigned URLs: a request signed in its query string (SigV4 query auth), for clients without our signer.

https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
"""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

from sink.sigv4 import (
    ALGORITHM,
    UNSIGNED_PAYLOAD,
    amz_date_of,
    canonical_query,
    canonical_request,
    canonical_uri,
    credential_scope,
    signature,
    signing_key,
    string_to_sign,
    uri_encode,
)


def presign_url(
    method: str,
    url: str,
    *,
    access_key_id: str,
    secret: str,
    region: str,
    expires: int,
    service: str = "s3",
    session_token: str | None = None,
    now: datetime | float | None = None,
) -> str:
    """A query-signed (presigned) URL, valid ``expires`` seconds; signs only ``host``.

    The URL comes back with its path and query in canonical form, so what is
    sent is exactly what was signed.
    """
    if not 1 <= expires <= 604800:
        raise ValueError(f"expires must be 1..604800 seconds, not {expires}")
    amz_date = amz_date_of(time.time() if now is None else now)
    scope = credential_scope(amz_date[:8], region, service)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{parts.port}"
    auth_params = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key_id}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if session_token is not None:
        auth_params.append(("X-Amz-Security-Token", session_token))
    extra = "&".join(f"{uri_encode(n, encode_slash=True)}={uri_encode(v, encode_slash=True)}" for n, v in auth_params)
    query = canonical_query(f"{parts.query}&{extra}" if parts.query else extra)
    path = canonical_uri(parts.path)
    creq = canonical_request(method, path, query, [("host", host)], ["host"], UNSIGNED_PAYLOAD)
    sig = signature(signing_key(secret, amz_date[:8], region, service), string_to_sign(amz_date, scope, creq))
    return urlunsplit((parts.scheme, parts.netloc, path, f"{query}&X-Amz-Signature={sig}", ""))
