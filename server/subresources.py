"""Bucket and object sub-resources this server has no configuration for.

Tools probe them (``aws s3 sync``, rclone, SDK helpers, consoles) and expect
what AWS answers for a bucket that never had the configuration: an empty
document (GetBucketVersioning, GetBucketLogging, ...), an owner-only ACL, or the
specific 404 code (GetBucketPolicy → NoSuchBucketPolicy, GetBucketEncryption →
ServerSideEncryptionConfigurationNotFoundError, ...).  Deleting a configuration
that does not exist is a no-op (204).  Setting one is NotImplemented: a clean
refusal, never a silent success that would lie about what is enforced.

``route`` returns None for requests that are not about these sub-resources.
The existence checks come first, as on AWS: NoSuchBucket, then NoSuchKey.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from server import errors, xml
from server.buckets import owner_id
from server.context import Context
from server.errors import InvalidRequest, NotImplemented_, S3Error
from server.http import Response

Operation = Callable[[Context], Awaitable[Response]]
XML_TYPE = [("content-type", "application/xml")]
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# sub-resource -> (operation name suffix, what GET answers: an element to return empty, or an error class)
BUCKET: dict[str, tuple[str, str | type[S3Error]]] = {
    "acl": ("Acl", "acl"),
    "versioning": ("Versioning", "VersioningConfiguration"),
    "logging": ("Logging", "BucketLoggingStatus"),
    "notification": ("NotificationConfiguration", "NotificationConfiguration"),
    "accelerate": ("AccelerateConfiguration", "AccelerateConfiguration"),
    "requestPayment": ("RequestPayment", "requestPayment"),
    "policy": ("Policy", errors.NoSuchBucketPolicy),
    "policyStatus": ("PolicyStatus", errors.NoSuchBucketPolicy),
    "lifecycle": ("LifecycleConfiguration", errors.NoSuchLifecycleConfiguration),
    "tagging": ("Tagging", errors.NoSuchTagSet),
    "cors": ("Cors", errors.NoSuchCORSConfiguration),
    "website": ("Website", errors.NoSuchWebsiteConfiguration),
    "encryption": ("Encryption", errors.ServerSideEncryptionConfigurationNotFoundError),
    "ownershipControls": ("OwnershipControls", errors.OwnershipControlsNotFoundError),
    "publicAccessBlock": ("PublicAccessBlock", errors.NoSuchPublicAccessBlockConfiguration),
    "object-lock": ("ObjectLockConfiguration", errors.ObjectLockConfigurationNotFoundError),
    "replication": ("Replication", errors.ReplicationConfigurationNotFoundError),
}
OBJECT: dict[str, tuple[str, str | type[S3Error]]] = {
    "acl": ("Acl", "acl"),
    "tagging": ("Tagging", "Tagging"),
    "retention": ("Retention", "object-lock"),
    "legal-hold": ("LegalHold", "object-lock"),
}


def route(method: str, bucket: str, key: str | None, query: dict[str, str]) -> tuple[Operation, str] | None:
    """(handler, operation name) for a sub-resource request this module answers, else None."""
    table = OBJECT if key is not None else BUCKET
    found = [name for name in table if name in query]
    if not found:
        return None
    name = found[0]
    suffix, answer = table[name]
    noun = "Object" if key is not None else "Bucket"
    if method == "GET":
        return _getter(answer), f"Get{noun}{suffix}"
    if method == "DELETE" and (not isinstance(answer, str) or name == "tagging"):
        return _deleter, f"Delete{noun}{suffix}"  # nothing configured, nothing to delete
    if method in ("PUT", "DELETE"):
        return _refuse(name), f"{'Put' if method == 'PUT' else 'Delete'}{noun}{suffix}"
    return None


async def _exists(ctx: Context) -> None:
    await ctx.storage.get_bucket(ctx.bucket)
    if ctx.key is not None:
        await ctx.storage.head_object(ctx.bucket, ctx.key)


def _getter(answer: str | type[S3Error]) -> Operation:
    async def get(ctx: Context) -> Response:
        await _exists(ctx)
        if not isinstance(answer, str):
            raise answer(BucketName=ctx.bucket)
        if answer == "object-lock":
            raise InvalidRequest("Bucket is missing Object Lock Configuration")
        if answer == "acl":
            return Response(200, XML_TYPE, owner_acl(ctx.auth.access_key_id))
        root = xml.element(answer)
        if answer == "requestPayment":
            root = xml.element("RequestPaymentConfiguration")
            xml.add(root, "Payer", "BucketOwner")
        elif answer == "Tagging":
            xml.add(root, "TagSet")
        return Response(200, XML_TYPE, xml.serialize(root))

    return get


async def _deleter(ctx: Context) -> Response:
    await _exists(ctx)
    return Response(204, [])


def _refuse(name: str) -> Operation:
    async def refuse(ctx: Context) -> Response:
        await _exists(ctx)
        raise NotImplemented_(f"Setting the {name!r} sub-resource is not implemented.")

    return refuse


def owner_acl(access_key_id: str) -> bytes:
    """AccessControlPolicy: the owner (the requesting key) has FULL_CONTROL, nobody else anything."""
    root = xml.element("AccessControlPolicy")
    xml.add_owner(root, owner_id(access_key_id), access_key_id)
    grant = xml.add(xml.add(root, "AccessControlList"), "Grant")
    grantee = xml.add(grant, "Grantee")
    grantee.set("xmlns:xsi", XSI)
    grantee.set("xsi:type", "CanonicalUser")
    xml.add(grantee, "ID", owner_id(access_key_id))
    xml.add(grantee, "DisplayName", access_key_id)
    xml.add(grant, "Permission", "FULL_CONTROL")
    return xml.serialize(root)
