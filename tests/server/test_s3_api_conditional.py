"""Conditional GET and HEAD: the pure rules, then the real server through boto3 and httpx."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from server.conditional import NOT_MODIFIED, Conditions, etag_matches, evaluate, parse_http_date
from server.errors import PreconditionFailed
from server.timefmt import http_date

ETAG = "0cc175b9c0f1b6a831c399e269772661"
MODIFIED = 1_700_000_000.6
BEFORE, SAME, AFTER = http_date(MODIFIED - 60), http_date(MODIFIED), http_date(MODIFIED + 60)


@pytest.mark.parametrize(
    "conditions, outcome",
    [
        (Conditions(), None),
        (Conditions(if_match=f'"{ETAG}"'), None),
        (Conditions(if_match='"other", "' + ETAG + '"'), None),
        (Conditions(if_match="*"), None),
        (Conditions(if_match='"other"'), 412),
        (Conditions(if_unmodified_since=SAME), None),  # whole seconds: 12:00:00.6 is not after 12:00:00
        (Conditions(if_unmodified_since=AFTER), None),
        (Conditions(if_unmodified_since=BEFORE), 412),
        (Conditions(if_none_match=f'"{ETAG}"'), NOT_MODIFIED),
        (Conditions(if_none_match=f'W/"{ETAG}"'), NOT_MODIFIED),
        (Conditions(if_none_match="*"), NOT_MODIFIED),
        (Conditions(if_none_match='"other"'), None),
        (Conditions(if_modified_since=SAME), NOT_MODIFIED),
        (Conditions(if_modified_since=AFTER), NOT_MODIFIED),
        (Conditions(if_modified_since=BEFORE), None),
        (Conditions(if_modified_since="not a date"), None),  # ignored, as RFC 7232 says
        # S3's documented combinations
        (Conditions(if_match=f'"{ETAG}"', if_unmodified_since=BEFORE), None),
        (Conditions(if_none_match=f'"{ETAG}"', if_modified_since=BEFORE), NOT_MODIFIED),
        (Conditions(if_none_match='"other"', if_modified_since=AFTER), None),
        (Conditions(if_match='"other"', if_none_match='"other"'), 412),
    ],
)
def test_evaluate(conditions: Conditions, outcome: int | None) -> None:
    if outcome == 412:
        with pytest.raises(PreconditionFailed):
            evaluate(conditions, ETAG, MODIFIED)
    else:
        assert evaluate(conditions, ETAG, MODIFIED) == outcome


def test_copy_source_conditions_fail_with_412_only() -> None:
    with pytest.raises(PreconditionFailed) as exc:
        evaluate(Conditions(if_none_match=f'"{ETAG}"'), ETAG, MODIFIED, copy_source=True)
    assert exc.value.extra == {"Condition": "x-amz-copy-source-if-none-match"}
    with pytest.raises(PreconditionFailed):
        evaluate(Conditions(if_modified_since=AFTER), ETAG, MODIFIED, copy_source=True)


def test_parsing_helpers() -> None:
    assert etag_matches(' "a" , W/"b"', "b") and not etag_matches('"a"', "b") and not etag_matches('""', "")
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    assert parse_http_date("yesterday") is None and parse_http_date(None) is None


@pytest.fixture
def stored(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"content")
    head = s3.head_object(Bucket=bucket, Key="k")
    return bucket, head["ETag"], head["LastModified"].timestamp()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_not_modified(http, stored, method):
    bucket, etag, modified = stored
    for headers in ({"if-none-match": etag}, {"if-modified-since": http_date(modified + 5)},
                    {"if-none-match": etag, "if-modified-since": http_date(modified - 3600)}):  # fmt: skip
        answer = http.request(method, f"/{bucket}/k", headers=headers)
        assert answer.status_code == 304, headers
        assert answer.content == b"" and answer.headers["etag"] == etag and "last-modified" in answer.headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_precondition_failed(http, stored, method):
    bucket, etag, modified = stored
    for headers in ({"if-match": '"nope"'}, {"if-unmodified-since": http_date(modified - 3600)},
                    {"if-match": '"nope"', "if-none-match": '"nope"'}):  # fmt: skip
        answer = http.request(method, f"/{bucket}/k", headers=headers)
        assert answer.status_code == 412, headers
        if method == "GET":
            assert b"<Code>PreconditionFailed</Code>" in answer.content


def test_conditions_that_hold_return_the_object(s3, stored):
    bucket, etag, modified = stored
    got = s3.get_object(Bucket=bucket, Key="k", IfMatch=etag, IfUnmodifiedSince=modified - 3600)
    assert got["Body"].read() == b"content"
    got = s3.get_object(Bucket=bucket, Key="k", IfNoneMatch='"other"', IfModifiedSince=modified + 3600)
    assert got["Body"].read() == b"content"
    got = s3.get_object(Bucket=bucket, Key="k", IfMatch=etag, Range="bytes=1-3")
    assert got["Body"].read() == b"ont"


def test_boto3_sees_304_and_412(s3, stored):
    bucket, etag, _ = stored
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=etag)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k", IfMatch='"nope"')
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # after an append the old ETag no longer matches
    s3.put_object(Bucket=bucket, Key="k", Body=b"+", WriteOffsetBytes=7)
    assert s3.get_object(Bucket=bucket, Key="k", IfNoneMatch=etag)["Body"].read() == b"content+"
