"""ListMultipartUploads (``GET /bucket?uploads``): a bucket's unfinished uploads.

Sorted by key, then by initiation time (as S3 lists several uploads of one
key); ``key-marker`` alone resumes after that key, with ``upload-id-marker``
after that upload of it.  ``delimiter`` rolls keys up into CommonPrefixes as
ListObjects does.  A bucket has few open uploads, so they are filtered here
rather than in SQL.
"""

from __future__ import annotations

from server.buckets import XML_TYPE, _group_of, _skip_group, list_params, owner_id
from server.context import Context
from server.errors import InvalidArgument
from server.http import Response
from server.uploads import Upload
from server.xml_multipart import UploadRow, list_uploads_result

MAX_UPLOADS = 1000


def _after_markers(uploads: list[Upload], key_marker: str, upload_id_marker: str, prefix: str, delimiter: str) -> list[Upload]:
    """The uploads past the markers (``uploads`` is in listing order)."""
    if not key_marker:
        return uploads
    if upload_id_marker:
        for i, upload in enumerate(uploads):
            if upload.key == key_marker and upload.upload_id == upload_id_marker:
                return uploads[i + 1:]
        return [u for u in uploads if u.key > key_marker]
    after = _skip_group(key_marker, prefix, delimiter)
    return [u for u in uploads if u.key > after]


async def list_multipart_uploads(ctx: Context) -> Response:
    await ctx.storage.get_bucket(ctx.bucket)
    q = ctx.query
    prefix, delimiter, _, encoding = list_params(ctx)
    raw = q.get("max-uploads", str(MAX_UPLOADS))
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidArgument("Provided max-uploads not an integer or within integer range", ArgumentName="max-uploads")
    max_uploads = min(int(raw), MAX_UPLOADS)
    key_marker, upload_id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    candidates = _after_markers(
        await ctx.storage.uploads.list_open(ctx.bucket, prefix), key_marker, upload_id_marker, prefix, delimiter
    )
    shown: list[Upload] = []
    prefixes: list[str] = []
    truncated = False
    next_key = next_id = None
    for upload in candidates:
        group = _group_of(upload.key, prefix, delimiter)
        if group is not None and prefixes and prefixes[-1] == group:
            continue
        if len(shown) + len(prefixes) >= max_uploads:
            truncated = True
            break
        if group is not None:
            prefixes.append(group)
            next_key, next_id = group, None
        else:
            shown.append(upload)
            next_key, next_id = upload.key, upload.upload_id
    rows = [
        UploadRow(u.key, u.upload_id, u.initiated, (owner_id(u.owner), u.owner),
                  u.checksum_algorithm.upper() if u.checksum_algorithm else None, u.checksum_type)
        for u in shown
    ]  # fmt: skip
    body = list_uploads_result(
        bucket=ctx.bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
        upload_id_marker=upload_id_marker, next_key_marker=next_key if truncated else None,
        next_upload_id_marker=next_id if truncated else None, max_uploads=max_uploads, truncated=truncated,
        encoding_type=encoding, uploads=rows, common_prefixes=prefixes,
    )  # fmt: skip
    return Response(200, XML_TYPE, body)
