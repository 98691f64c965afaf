"""Versions on an unversioned bucket: ListObjectVersions and the ``versionId=null`` parameter.

Buckets here are never versioned (GetBucketVersioning answers an empty
configuration, as AWS does for a bucket that never had versioning).  On such a
bucket AWS gives every object the version id ``null``: ListObjectVersions lists
each object once, ``IsLatest`` true, and requests may name ``versionId=null``.
Cleanup tools (rclone, "empty the bucket" scripts) rely on both.
"""

from __future__ import annotations

from collections.abc import Mapping

from server import xml_results
from server.buckets import XML_TYPE, collect_listing, list_params, owner_id
from server.context import Context
from server.errors import InvalidArgument
from server.http import Response

NULL_VERSION = "null"


def check_version_id(query: Mapping[str, str]) -> None:
    """Accept no version id or ``null``; any other cannot exist on an unversioned bucket."""
    version_id = query.get("versionId")
    if version_id is not None and version_id != NULL_VERSION:
        raise InvalidArgument("Invalid version id specified", ArgumentName="versionId", ArgumentValue=version_id)


async def list_object_versions(ctx: Context) -> Response:
    """``GET /bucket?versions``: key-marker / version-id-marker paging, delimiter, encoding-type=url."""
    await ctx.storage.get_bucket(ctx.bucket)
    q = ctx.query
    prefix, delimiter, max_keys, encoding = list_params(ctx)
    key_marker, version_marker = q.get("key-marker", ""), q.get("version-id-marker")
    if version_marker is not None:
        if not key_marker:
            raise InvalidArgument(
                "A version-id marker cannot be specified without a key marker.",
                ArgumentName="version-id-marker", ArgumentValue=version_marker,
            )  # fmt: skip
        if version_marker not in ("", NULL_VERSION):
            raise InvalidArgument(
                "Invalid version id specified", ArgumentName="version-id-marker", ArgumentValue=version_marker
            )
    # Each key has one version (null), so "after key-marker's versions" is "after key-marker".
    listing = await collect_listing(
        ctx.storage, ctx.bucket, prefix=prefix, delimiter=delimiter, start_after=key_marker, max_keys=max_keys
    )
    next_key = next_version = None
    if listing.truncated:
        next_key = listing.resume_after.removesuffix("\U0010ffff")
        last_is_object = bool(listing.contents) and listing.contents[-1].key == next_key
        next_version = NULL_VERSION if last_is_object else None
    body = xml_results.list_object_versions(
        bucket=ctx.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
        key_marker=key_marker, version_id_marker=version_marker or "",
        next_key_marker=next_key, next_version_id_marker=next_version, is_truncated=listing.truncated,
        encoding_type=encoding,
        versions=[xml_results.VersionEntry(o.key, o.last_modified, o.etag, o.size) for o in listing.contents],
        common_prefixes=listing.common_prefixes,
        owner=(owner_id(ctx.auth.access_key_id), ctx.auth.access_key_id),
    )  # fmt: skip
    return Response(200, XML_TYPE, body)
