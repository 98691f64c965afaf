"""The two timestamp spellings S3 uses, in one place so every response agrees.

- XML bodies (``LastModified``, ``CreationDate``): ISO 8601 in UTC with
  milliseconds and ``Z``, e.g. ``2013-09-17T18:07:53.000Z``.
- HTTP headers (``Last-Modified``, ``Date``): the RFC 9110 IMF-fixdate,
  e.g. ``Wed, 21 Oct 2015 07:28:00 GMT``.

Both truncate (never round) sub-second parts, so a stored time never appears
to lie in the future of itself.
"""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def iso8601(epoch: float) -> str:
    """``2013-09-17T18:07:53.000Z`` for a POSIX timestamp (UTC, milliseconds truncated)."""
    seconds = math.floor(epoch)
    # Via microseconds so float noise (1.001 - 1 = 0.000999...) does not lose a millisecond.
    millis = min(round((epoch - seconds) * 1_000_000) // 1000, 999)
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"


def http_date(epoch: float) -> str:
    """``Wed, 21 Oct 2015 07:28:00 GMT`` (IMF-fixdate; locale-independent names)."""
    t = time.gmtime(math.floor(epoch))
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def parse_http_date(value: str) -> float | None:
    """A POSIX timestamp from an HTTP date header (``If-Modified-Since`` ...), or None if unparsable.

    RFC 9110 says a recipient ignores an invalid date in a conditional header,
    hence None instead of an error.
    """
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000" or no zone: RFC 9110 dates are GMT
        return parsed.replace(tzinfo=UTC).timestamp()
    return parsed.timestamp()
