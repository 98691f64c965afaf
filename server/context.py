"""What an S3 operation gets to work with: the parsed request and the server's parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.http import Request

if TYPE_CHECKING:
    from server.auth import AuthResult
    from server.config import ServerConfig
    from server.metrics import ServerMetrics
    from server.storage import Storage


@dataclass(slots=True)
class Context:
    request: Request
    request_id: str
    bucket: str | None  # None: the service (ListBuckets)
    key: str | None  # None: a bucket operation
    query: dict[str, str]  # decoded query parameters (the first of repeated names)
    storage: "Storage"
    config: "ServerConfig"
    auth: "AuthResult"
    metrics: "ServerMetrics | None" = None  # the server's, for operations that count more than their request

    @property
    def resource(self) -> str:
        return "/" + "/".join(part for part in (self.bucket, self.key) if part is not None)
