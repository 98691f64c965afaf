"""S3 XML bodies: shapes, escaping, encoding-type=url, safe parsing; and the time formats."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.errors import MalformedXML
from server.timefmt import http_date, iso8601, parse_http_date
from server.xml import (
    S3_NAMESPACE,
    ObjectEntry,
    error_body,
    list_buckets,
    list_objects_v1,
    list_objects_v2,
    location_constraint,
    parse_xml,
)

NS = {"s3": S3_NAMESPACE}
NASTY = 'logs/<a&b>"it\'s" ünïcödé ☃ 日本 \r\n\ttab+plus %20 /x'
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def _v2(**overrides) -> bytes:
    args = dict(
        bucket="logs",
        prefix="",
        delimiter=None,
        max_keys=1000,
        key_count=0,
        is_truncated=False,
        continuation_token=None,
        next_continuation_token=None,
        start_after=None,
        encoding_type=None,
        contents=[],
        common_prefixes=[],
    )
    args.update(overrides)
    return list_objects_v2(**args)


def _text(root: ET.Element, path: str) -> str | None:
    found = root.find(path, NS)
    assert found is not None, path
    return found.text


# -- errors and buckets ----------------------------------------------------------


def test_error_body_shape_without_namespace():
    body = error_body(
        "NoSuchKey", "The specified key does not exist.", resource="/b/k", request_id="REQ1", extra={"Key": "k"}
    )
    assert body.startswith(DECLARATION + b"\n")
    root = ET.fromstring(body)
    assert root.tag == "Error"
    assert [child.tag for child in root] == ["Code", "Message", "Key", "Resource", "RequestId"]
    assert [child.text for child in root] == ["NoSuchKey", "The specified key does not exist.", "k", "/b/k", "REQ1"]


def test_error_body_escapes_and_omits_absent_resource():
    root = ET.fromstring(error_body("InvalidArgument", 'offset <5> & "x"', request_id="R", host_id="H"))
    assert root.findtext("Message") == 'offset <5> & "x"'
    assert root.find("Resource") is None and root.findtext("HostId") == "H"


def test_list_buckets_shape():
    root = ET.fromstring(list_buckets([("alpha", 0.0), ("b<&>", 1379441273.25)], "owner-id", "owner"))
    assert root.tag == f"{{{S3_NAMESPACE}}}ListAllMyBucketsResult"
    assert _text(root, "s3:Owner/s3:ID") == "owner-id"
    assert _text(root, "s3:Owner/s3:DisplayName") == "owner"
    names = [b.findtext("s3:Name", namespaces=NS) for b in root.findall("s3:Buckets/s3:Bucket", NS)]
    dates = [b.findtext("s3:CreationDate", namespaces=NS) for b in root.findall("s3:Buckets/s3:Bucket", NS)]
    assert names == ["alpha", "b<&>"]
    assert dates == ["1970-01-01T00:00:00.000Z", "2013-09-17T18:07:53.250Z"]


def test_location_constraint():
    assert ET.fromstring(location_constraint("us-east-1")).text is None
    assert ET.fromstring(location_constraint("eu-west-1")).text == "eu-west-1"


# -- listings ----------------------------------------------------------------------


def test_list_objects_v2_shape():
    entries = [ObjectEntry("a.log", 1379441273.0, "abc123", 42), ObjectEntry("b.log", 1.5, "def-2", 0, "GLACIER")]
    body = _v2(
        prefix="",
        delimiter="/",
        max_keys=2,
        key_count=3,
        is_truncated=True,
        continuation_token="tok1",
        next_continuation_token="tok2",
        start_after="0",
        contents=entries,
        common_prefixes=["dir/"],
    )
    root = ET.fromstring(body)
    assert root.tag == f"{{{S3_NAMESPACE}}}ListBucketResult"
    assert b"<Prefix></Prefix>" in body  # AWS writes the empty element out
    assert _text(root, "s3:Name") == "logs"
    assert _text(root, "s3:KeyCount") == "3" and _text(root, "s3:MaxKeys") == "2"
    assert _text(root, "s3:IsTruncated") == "true"
    assert _text(root, "s3:ContinuationToken") == "tok1"
    assert _text(root, "s3:NextContinuationToken") == "tok2"
    assert _text(root, "s3:StartAfter") == "0" and _text(root, "s3:Delimiter") == "/"
    assert root.find("s3:EncodingType", NS) is None
    rows = root.findall("s3:Contents", NS)
    assert [[child.tag.split("}")[1] for child in row] for row in rows][0] == [
        "Key",
        "LastModified",
        "ETag",
        "Size",
        "StorageClass",
    ]
    assert [r.findtext("s3:ETag", namespaces=NS) for r in rows] == ['"abc123"', '"def-2"']
    assert [r.findtext("s3:LastModified", namespaces=NS) for r in rows] == [
        "2013-09-17T18:07:53.000Z",
        "1970-01-01T00:00:01.500Z",
    ]
    assert [r.findtext("s3:StorageClass", namespaces=NS) for r in rows] == ["STANDARD", "GLACIER"]
    assert _text(root, "s3:CommonPrefixes/s3:Prefix") == "dir/"


def test_list_objects_v2_minimal_and_owner():
    root = ET.fromstring(_v2())
    for absent in ("ContinuationToken", "NextContinuationToken", "StartAfter", "Delimiter", "Contents"):
        assert root.find(f"s3:{absent}", NS) is None, absent
    assert _text(root, "s3:IsTruncated") == "false"
    entry = ObjectEntry("k", 0.0, "e", 1)
    assert ET.fromstring(_v2(contents=[entry])).find("s3:Contents/s3:Owner", NS) is None
    owned = ET.fromstring(_v2(contents=[entry], fetch_owner=True, owner=("id1", "me")))
    assert _text(owned, "s3:Contents/s3:Owner/s3:ID") == "id1"


def test_keys_with_xml_specials_and_unicode_round_trip():
    root = ET.fromstring(_v2(prefix=NASTY, contents=[ObjectEntry(NASTY, 0, "e", 1)], common_prefixes=[NASTY]))
    assert _text(root, "s3:Prefix") == NASTY  # the CR survives (written as &#13;)
    assert _text(root, "s3:Contents/s3:Key") == NASTY
    assert _text(root, "s3:CommonPrefixes/s3:Prefix") == NASTY


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40))
def test_any_control_free_key_round_trips(key):
    root = ET.fromstring(_v2(contents=[ObjectEntry(key, 0, "e", 1)]))
    assert (_text(root, "s3:Contents/s3:Key") or "") == key


def test_encoding_type_url_encodes_key_fields_v2():
    from urllib.parse import unquote, unquote_plus

    body = _v2(
        prefix="a b/",
        delimiter="+",
        start_after="a b/0 1",
        encoding_type="url",
        contents=[ObjectEntry(NASTY + "\x01", 0, "e", 1)],
        common_prefixes=["a b/c+d+"],
    )
    root = ET.fromstring(body)
    assert _text(root, "s3:EncodingType") == "url"
    key = _text(root, "s3:Contents/s3:Key")
    assert key.isascii() and " " not in key and "+" not in key
    for decode in (unquote, unquote_plus):
        assert decode(key) == NASTY + "\x01"
        assert decode(_text(root, "s3:Prefix")) == "a b/"
        assert decode(_text(root, "s3:Delimiter")) == "+"
        assert decode(_text(root, "s3:StartAfter")) == "a b/0 1"
        assert decode(_text(root, "s3:CommonPrefixes/s3:Prefix")) == "a b/c+d+"
    assert _text(root, "s3:Name") == "logs"


def test_list_objects_v1_shape_and_encoding():
    root = ET.fromstring(
        list_objects_v1(
            bucket="logs",
            prefix="p q",
            delimiter="/",
            max_keys=1,
            is_truncated=True,
            marker="m n",
            next_marker="n o",
            encoding_type="url",
            contents=[ObjectEntry("p q/1", 0, "e", 5)],
            common_prefixes=["p q/d/"],
            owner=("id1", "me"),
        )
    )
    assert _text(root, "s3:Marker") == "m%20n" and _text(root, "s3:NextMarker") == "n%20o"
    assert _text(root, "s3:Prefix") == "p%20q"
    assert _text(root, "s3:Contents/s3:Key") == "p%20q/1"
    assert _text(root, "s3:Contents/s3:Owner/s3:DisplayName") == "me"
    assert _text(root, "s3:CommonPrefixes/s3:Prefix") == "p%20q/d/"
    assert root.find("s3:KeyCount", NS) is None


def test_botocore_parses_our_listing():
    """The real client: boto3 sets encoding-type=url itself and decodes the keys back."""
    import boto3
    from botocore.awsrequest import AWSResponse

    body = _v2(
        prefix="",
        encoding_type="url",
        key_count=1,
        contents=[ObjectEntry(NASTY, 1379441273.0, "abc", 7)],
        common_prefixes=["d ir/"],
        delimiter="/",
    )

    class _Raw:
        def stream(self, **_):
            yield body

    def before_send(request, **_):
        assert "encoding-type=url" in request.url
        return AWSResponse(request.url, 200, {"content-type": "application/xml"}, _Raw())

    client = boto3.client(
        "s3",
        endpoint_url="http://s3.example.test",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    client.meta.events.register("before-send.s3.ListObjectsV2", before_send)
    parsed = client.list_objects_v2(Bucket="logs", Delimiter="/")
    assert [o["Key"] for o in parsed["Contents"]] == [NASTY]
    assert parsed["Contents"][0]["ETag"] == '"abc"' and parsed["Contents"][0]["Size"] == 7
    assert parsed["Contents"][0]["LastModified"].timestamp() == 1379441273.0
    assert [p["Prefix"] for p in parsed["CommonPrefixes"]] == ["d ir/"]


# -- parsing request bodies ------------------------------------------------------


def test_parse_xml_with_and_without_namespace():
    with_ns = f'<Delete xmlns="{S3_NAMESPACE}"><Object><Key>a&amp;b</Key></Object><Quiet>true</Quiet></Delete>'
    without = "<Delete><Object><Key>a&amp;b</Key></Object><Quiet>true</Quiet></Delete>"
    for text in (with_ns, without):
        root = parse_xml(text.encode())
        assert root.tag == "Delete"
        assert root.findtext("Object/Key") == "a&b" and root.findtext("Quiet") == "true"
    kept = parse_xml(with_ns.encode(), strip_namespace=False)
    assert kept.tag == f"{{{S3_NAMESPACE}}}Delete"


def test_parse_xml_reads_utf8_and_declaration():
    root = parse_xml('<?xml version="1.0" encoding="UTF-8"?>\n<K>ünï ☃</K>'.encode())
    assert root.text == "ünï ☃"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Delete><Object><Key>&lol4;</Key></Object></Delete>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<!DOCTYPE x SYSTEM "http://example.test/x.dtd"><x/>',
        b"<!DOCTYPE x><x/>",
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://example.test/p">%p;]><x/>',
    ],
)
def test_parse_xml_refuses_doctype_and_entities(body):
    with pytest.raises(MalformedXML, match="DOCTYPE"):
        parse_xml(body)


@pytest.mark.parametrize(
    "body", [b"", b"   ", b"<a>", b"<a></b>", b"not xml", b"<a>&undefined;</a>", b"<a/><b/>", b"\xff\xfe<a/>"]
)
def test_parse_xml_refuses_malformed(body):
    with pytest.raises(MalformedXML):
        parse_xml(body)


def test_parse_xml_refuses_oversized():
    body = b"<a>" + b"x" * 100 + b"</a>"
    assert parse_xml(body, limit=len(body)).text == "x" * 100
    with pytest.raises(MalformedXML, match="exceeds"):
        parse_xml(body, limit=len(body) - 1)


# -- time formats ----------------------------------------------------------------


def test_iso8601_has_milliseconds_and_z():
    assert iso8601(1379441273.0) == "2013-09-17T18:07:53.000Z"
    assert iso8601(1379441273.9996) == "2013-09-17T18:07:53.999Z"  # truncated, not rounded up
    assert iso8601(1.001) == "1970-01-01T00:00:01.001Z"
    assert iso8601(0) == "1970-01-01T00:00:00.000Z"


def test_http_date_and_back():
    from server import xml as s3xml

    assert s3xml.http_date is http_date  # objects.py imports it from server.xml
    assert http_date(1445412480.7) == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT") == 1445412480.0
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0  # RFC 850, obsolete
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777.0  # asctime, obsolete
    assert parse_http_date("yesterday") is None and parse_http_date("") is None


@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trips(seconds):
    assert parse_http_date(http_date(seconds)) == seconds
