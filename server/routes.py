"""Routing of the S3 operations beyond the basic object and bucket ones.

``S3App.route`` asks here first: multipart uploads (``?uploads``,
``?uploadId``), DeleteObjects (``POST ?delete``), tailbucket's AppendObjects
(``POST ?appends``, ``server.batch_append``), ListObjectVersions
(``GET ?versions``), CopyObject / UploadPartCopy (``x-amz-copy-source``) and the
configuration sub-resources of ``server.subresources``.  None means "not one
of these": the app's own table decides.  Operation names are the S3 API's,
which ``server.policy`` grants by.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from server import batch_append, batch_delete, copy, multipart, subresources, upload_listing, versions
from server.context import Context
from server.errors import MethodNotAllowed
from server.http import Response

Operation = Callable[[Context], Awaitable[Response]]
Route = tuple[Operation, str]


def _only(method: str, allowed: dict[str, Route]) -> Route:
    if method not in allowed:
        raise MethodNotAllowed(f"The {method} method is not allowed against this resource.", Method=method)
    return allowed[method]


def route(method: str, bucket: str | None, key: str | None, query: dict[str, str], copying: bool = False) -> Route | None:
    """``copying``: the request has an ``x-amz-copy-source`` header."""
    if bucket is None:
        return None
    if key is None:
        if "uploads" in query:
            return _only(method, {"GET": (upload_listing.list_multipart_uploads, "ListMultipartUploads")})
        if "versions" in query:
            return _only(method, {"GET": (versions.list_object_versions, "ListObjectVersions")})
        if "delete" in query:
            return _only(method, {"POST": (batch_delete.delete_objects, "DeleteObjects")})
        if "appends" in query:
            return _only(method, {"POST": (batch_append.append_objects, "AppendObjects")})
        return subresources.route(method, bucket, key, query)
    if not query:  # the usual request (every append): no sub-resource to look for
        return (copy.copy_object, "CopyObject") if copying and method == "PUT" else None
    if "uploads" in query:
        return _only(method, {"POST": (multipart.create_multipart_upload, "CreateMultipartUpload")})
    if "uploadId" in query:
        part = (copy.upload_part_copy, "UploadPartCopy") if copying else (multipart.upload_part, "UploadPart")
        return _only(method, {
            "PUT": part,
            "POST": (multipart.complete_multipart_upload, "CompleteMultipartUpload"),
            "DELETE": (multipart.abort_multipart_upload, "AbortMultipartUpload"),
            "GET": (multipart.list_parts, "ListParts"),
        })  # fmt: skip
    if copying and method == "PUT" and not set(query) & set(subresources.OBJECT):
        return copy.copy_object, "CopyObject"
    return subresources.route(method, bucket, key, query)
