"""Conditional requests: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.

Pure: no I/O.  The order is RFC 7232 section 6 (the one S3 documents for
GetObject/HeadObject and, with ``x-amz-copy-source-`` names, for CopyObject and
UploadPartCopy):

1. If-Match present: false → 412.  (If-Unmodified-Since is then ignored, which
   gives S3's documented combination: If-Match true + If-Unmodified-Since false
   → 200.)
2. Else If-Unmodified-Since: modified since → 412.
3. If-None-Match present: a match → 304 for GET/HEAD (412 for a copy source).
   (If-Modified-Since is then ignored: If-None-Match false + If-Modified-Since
   true → 304, as S3 documents.)
4. Else If-Modified-Since: not modified since → 304 (GET/HEAD only; a copy
   source answers 412).

Dates that do not parse are ignored, as RFC 7232 says; times compare in whole
seconds, the resolution of an HTTP date (an object modified at 12:00:00.7 was
not modified since 12:00:00).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

from server.errors import PreconditionFailed

NOT_MODIFIED = 304


@dataclass(frozen=True)
class Conditions:
    """The four conditional headers of one request (raw values, None when absent)."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @classmethod
    def from_headers(cls, header: Callable[[str], str | None], prefix: str = "") -> Conditions:
        """``prefix`` "x-amz-copy-source-" reads CopyObject's copy-source conditions."""
        return cls(
            header(prefix + "if-match"),
            header(prefix + "if-none-match"),
            header(prefix + "if-modified-since"),
            header(prefix + "if-unmodified-since"),
        )

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.if_match, self.if_none_match, self.if_modified_since,
                                           self.if_unmodified_since))  # fmt: skip


def etag_matches(header: str, etag: str) -> bool:
    """Whether a list of entity tags (``"a", W/"b"`` or ``*``) names ``etag`` (unquoted)."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        candidate = candidate.removeprefix("W/").strip().strip('"')
        if candidate and candidate == etag:
            return True
    return False


def parse_http_date(value: str | None) -> int | None:
    """POSIX seconds of an HTTP date, or None when absent or not a date."""
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 850 / asctime forms carry no zone: they are GMT
        return int(parsed.replace(tzinfo=timezone.utc).timestamp())
    return int(parsed.timestamp())


def evaluate(conditions: Conditions, etag: str, last_modified: float, *, copy_source: bool = False) -> int | None:
    """None: go on; 304: answer Not Modified; raises PreconditionFailed (412).

    ``copy_source``: conditions on a CopyObject/UploadPartCopy source, where
    every failed condition is a 412.
    """
    modified = int(last_modified)
    prefix = "x-amz-copy-source-" if copy_source else ""
    if conditions.if_match is not None:
        if not etag_matches(conditions.if_match, etag):
            raise PreconditionFailed(Condition=_name(prefix, "If-Match"))
    else:
        since = parse_http_date(conditions.if_unmodified_since)
        if since is not None and modified > since:
            raise PreconditionFailed(Condition=_name(prefix, "If-Unmodified-Since"))
    if conditions.if_none_match is not None:
        if etag_matches(conditions.if_none_match, etag):
            if copy_source:
                raise PreconditionFailed(Condition=_name(prefix, "If-None-Match"))
            return NOT_MODIFIED
    else:
        since = parse_http_date(conditions.if_modified_since)
        if since is not None and modified <= since:
            if copy_source:
                raise PreconditionFailed(Condition=_name(prefix, "If-Modified-Since"))
            return NOT_MODIFIED
    return None


def _name(prefix: str, header: str) -> str:
    return f"{prefix}{header.lower()}" if prefix else header
