"""Bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, ListObjects (v1 and v2), GetBucketLocation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from server import xml
from server.context import Context
from server.errors import InvalidArgument, InvalidBucketName
from server.http import Response
from server.storage import ObjectInfo, Storage

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3express", "--table-s3")
MAX_KEYS = 1000
XML_TYPE = [("content-type", "application/xml")]


def validate_bucket_name(name: str) -> None:
    """S3's general-purpose bucket naming rules (directory-bucket names ending in ``--x-s3`` are allowed too)."""
    problem = None
    if not _BUCKET_NAME.fullmatch(name):
        problem = "must be 3-63 characters of lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"
    elif ".." in name or ".-" in name or "-." in name:
        problem = "must not contain '..', '.-' or '-.'"
    elif name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        problem = "uses a reserved prefix or suffix"
    else:
        try:
            ipaddress.IPv4Address(name)
            problem = "must not be formatted as an IP address"
        except ValueError:
            pass
    if problem:
        raise InvalidBucketName(f"The specified bucket is not valid: {problem}.", BucketName=name)


def owner_id(access_key: str) -> str:
    """A stable canonical user id for a key, shaped like S3's (64 hex characters)."""
    return hashlib.sha256(access_key.encode()).hexdigest()


async def list_buckets(ctx: Context) -> Response:
    buckets = await ctx.storage.list_buckets()
    owner = ctx.auth.access_key_id
    body = xml.list_buckets([(b.name, b.created) for b in buckets], owner_id(owner), owner)
    return Response(200, XML_TYPE, body)


async def create_bucket(ctx: Context) -> Response:
    validate_bucket_name(ctx.bucket)
    body = await ctx.request.body.read(64 * 1024)  # CreateBucketConfiguration: location only
    if body.strip():
        xml.parse_xml(body)
    try:
        await ctx.storage.create_bucket(ctx.bucket, owner=ctx.auth.access_key_id)
    except Exception as exc:
        # S3 in us-east-1 answers 200 when you create a bucket you already own.
        if getattr(exc, "code", None) != "BucketAlreadyOwnedByYou" or ctx.config.region != "us-east-1":
            raise
    return Response(200, [("location", f"/{ctx.bucket}")])


async def head_bucket(ctx: Context) -> Response:
    await ctx.storage.get_bucket(ctx.bucket)
    return Response(200, [("x-amz-bucket-region", ctx.config.region)])


async def delete_bucket(ctx: Context) -> Response:
    await ctx.storage.delete_bucket(ctx.bucket)
    await ctx.storage.uploads.abort_bucket(ctx.bucket)  # a later bucket of that name starts clean
    return Response(204, [])


async def get_bucket_location(ctx: Context) -> Response:
    await ctx.storage.get_bucket(ctx.bucket)
    region = "" if ctx.config.region == "us-east-1" else ctx.config.region
    return Response(200, XML_TYPE, xml.location_constraint(region))


@dataclass
class Listing:
    contents: list[ObjectInfo]
    common_prefixes: list[str]
    truncated: bool
    resume_after: str  # where the next page starts (exclusive)


async def collect_listing(
    storage: Storage, bucket: str, *, prefix: str, delimiter: str, start_after: str, max_keys: int
) -> Listing:
    """One page of keys, rolling keys that share ``prefix…delimiter`` up into one common prefix."""
    contents: list[ObjectInfo] = []
    prefixes: list[str] = []
    after = _skip_group(start_after, prefix, delimiter)
    if max_keys == 0:  # S3 answers an empty, untruncated page (a truncated one would make paginators loop)
        return Listing(contents, prefixes, False, after)
    while True:
        page = await storage.list_objects(bucket, prefix=prefix, start_after=after, limit=max_keys + 1)
        for info in page:
            if len(contents) + len(prefixes) >= max_keys:
                return Listing(contents, prefixes, True, after)
            common = _group_of(info.key, prefix, delimiter)
            if common is None:
                contents.append(info)
                after = info.key
            elif prefixes and prefixes[-1] == common:
                after = info.key  # a key past the skip marker, still in the group already listed
            else:
                prefixes.append(common)
                after = _skip_group(info.key, prefix, delimiter)
                break  # ask again from past the whole group
        else:
            if len(page) <= max_keys:
                return Listing(contents, prefixes, False, after)


def _group_of(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into, or None when it is listed on its own."""
    if not delimiter or not key.startswith(prefix):
        return None
    cut = key.find(delimiter, len(prefix))
    return None if cut < 0 else key[: cut + len(delimiter)]


def _skip_group(after: str, prefix: str, delimiter: str) -> str:
    """Resume past every key of the group ``after`` belongs to (a marker may name a common prefix)."""
    common = _group_of(after, prefix, delimiter)
    return max(after, common + "\U0010ffff") if common is not None else after


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8", "surrogatepass")).decode("ascii")


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidArgument("The continuation token provided is incorrect", ArgumentName="continuation-token") from None


def _max_keys(ctx: Context) -> int:
    raw = ctx.query.get("max-keys", str(MAX_KEYS))
    if not raw.isascii() or not raw.isdigit():
        raise InvalidArgument("Provided max-keys not an integer or within integer range", ArgumentName="max-keys")
    return min(int(raw), MAX_KEYS)


def _encoding(ctx: Context) -> str | None:
    encoding = ctx.query.get("encoding-type")
    if encoding not in (None, "url"):
        raise InvalidArgument("Invalid Encoding Method specified in Request", ArgumentName="encoding-type")
    return encoding


def list_params(ctx: Context) -> tuple[str, str, int, str | None]:
    """(prefix, delimiter, max-keys, encoding-type) of a listing request, checked."""
    q = ctx.query
    return q.get("prefix", ""), q.get("delimiter", ""), _max_keys(ctx), _encoding(ctx)


async def list_objects(ctx: Context) -> Response:
    """ListObjectsV2 with ``list-type=2``, else ListObjects (v1)."""
    await ctx.storage.get_bucket(ctx.bucket)
    q = ctx.query
    prefix, delimiter, max_keys, encoding = list_params(ctx)
    v2 = q.get("list-type") == "2"
    if v2:
        token = q.get("continuation-token")
        start = _untoken(token) if token is not None else q.get("start-after", "")
    else:
        start = q.get("marker", "")
    listing = await collect_listing(
        ctx.storage, ctx.bucket, prefix=prefix, delimiter=delimiter, start_after=start, max_keys=max_keys
    )
    entries = [xml.ObjectEntry(o.key, o.last_modified, o.etag, o.size) for o in listing.contents]
    owner = ctx.auth.access_key_id
    common = dict(
        bucket=ctx.bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys, is_truncated=listing.truncated,
        encoding_type=encoding, contents=entries, common_prefixes=listing.common_prefixes,
    )
    if v2:
        body = xml.list_objects_v2(
            **common,
            key_count=len(entries) + len(listing.common_prefixes),
            continuation_token=q.get("continuation-token"),
            next_continuation_token=_token(listing.resume_after) if listing.truncated else None,
            start_after=q.get("start-after"),
            fetch_owner=q.get("fetch-owner") == "true",
            owner=(owner_id(owner), owner),
        )
    else:
        next_marker = listing.resume_after.removesuffix("\U0010ffff") if listing.truncated and delimiter else None
        body = xml.list_objects_v1(**common, marker=q.get("marker", ""), next_marker=next_marker,
                                   owner=(owner_id(owner), owner))
    return Response(200, XML_TYPE, body)
