"""The AppendObjects wire format (``sink.append_batch``): round trips and every refusal."""

import json

import pytest

from sink.append_batch import (MAX_ITEMS, MAX_KEY_BYTES, MAX_KEY_FIELD_BYTES, BatchFormatError, BatchItem, ItemResult,
                               decode_request, decode_results, encode_request, encode_results)


def test_a_request_round_trips_with_its_bodies_in_order():
    items = [BatchItem("a/b.log", 0, b"one\n", "AAAAAA=="), BatchItem("ü/../x", 17, b"two\nthree\n"),
             BatchItem("empty", 3, b"")]
    decoded = decode_request(encode_request(items))
    assert [(i.key, i.offset, bytes(i.body), i.crc32) for i in decoded] == [
        ("a/b.log", 0, b"one\n", "AAAAAA=="), ("ü/../x", 17, b"two\nthree\n", None), ("empty", 3, b"", None)]


def test_a_key_too_long_for_s3_is_well_formed_up_to_the_field_bound():
    """The server answers such an item alone (KeyTooLongError, as its PUT): the codec must let it through."""
    keys = ["k" * (MAX_KEY_BYTES + 1), "é" * (MAX_KEY_FIELD_BYTES // 2), "short"]  # the second: exactly the bound
    decoded = decode_request(encode_request([BatchItem(key, 0, b"x") for key in keys]))
    assert [(i.key, bytes(i.body)) for i in decoded] == [(key, b"x") for key in keys]


def test_results_round_trip():
    results = [ItemResult(200, size=10, etag="abc-2"), ItemResult(400, code="InvalidWriteOffset", message="no")]
    assert decode_results(encode_results(results), 2) == results


def _body(head: object, rest: bytes = b"") -> bytes:
    return json.dumps(head).encode() + b"\n" + rest


@pytest.mark.parametrize("body, says", [
    (b'{"appends": []}', "one line of JSON"),
    (b"{not json\n", "not JSON"),
    (_body([]), '"appends" list'),
    (_body({"appends": [{"key": "k", "offset": 0}]}), "non-negative integer"),
    (_body({"appends": [{"key": "k", "offset": -1, "length": 0}]}), "non-negative integer"),
    (_body({"appends": [{"key": "k", "offset": True, "length": 0}]}), "non-negative integer"),
    (_body({"appends": [{"key": "", "offset": 0, "length": 0}]}), "1 to 65536 bytes"),
    (_body({"appends": [{"key": 7, "offset": 0, "length": 0}]}), "1 to 65536 bytes"),
    (_body({"appends": [{"key": "é" * (MAX_KEY_FIELD_BYTES // 2) + "k", "offset": 0, "length": 0}]}),
     "1 to 65536 bytes"),
    (_body({"appends": [{"key": "k", "offset": 0, "length": 0, "extra": 1}]}), "expected key"),
    (_body({"appends": [{"key": "k", "offset": 0, "length": 0, "crc32": 5}]}), "base64 string"),
    (_body({"appends": [{"key": "k", "offset": 0, "length": 4}]}, b"abc"), "ends before"),
    (_body({"appends": [{"key": "k", "offset": 0, "length": 2}]}, b"abc"), "1 bytes follow"),
    (_body({"appends": [{"key": "k", "offset": 0, "length": 0}, {"key": "k", "offset": 0, "length": 0}]}),
     "more than once"),
    (_body({"appends": [{"key": f"k{n}", "offset": 0, "length": 0} for n in range(MAX_ITEMS + 1)]}), "at most"),
])
def test_malformed_requests_are_refused_with_the_reason(body, says):
    with pytest.raises(BatchFormatError, match=says):
        decode_request(body)


@pytest.mark.parametrize("body, count", [
    (b"<Error/>", 1),
    (b'{"results": [{"status": 200}]}', 1),  # a 200 without the size
    (b'{"results": []}', 1),
    (b'{"results": [{"size": 3}]}', 1),
])
def test_answers_that_are_not_results_are_refused(body, count):
    with pytest.raises(BatchFormatError):
        decode_results(body, count)
