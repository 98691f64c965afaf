"""The AppendObjects wire format (``sink.append_batch``): round trips and every refusal."""

import json

import pytest

from sink.append_batch import (MAX_ITEMS, BatchFormatError, BatchItem, ItemResult, decode_request, decode_results,
                               encode_request, encode_results)


def test_a_request_round_trips_with_its_bodies_in_order():
    items = [BatchItem("a/b.log", 0, b"one\n", "AAAAAA=="), BatchItem("ü/../x", 17, b"two\nthree\n"),
             BatchItem("empty", 3, b"")]
    decoded = decode_request(encode_request(items))
    assert [(i.key, i.offset, bytes(i.body), i.crc32) for i in decoded] == [
        ("a/b.log", 0, b"one\n", "AAAAAA=="), ("ü/../x", 17, b"two\nthree\n", None), ("empty", 3, b"", None)]


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
    (_body({"appends": [{"key": "", "offset": 0, "length": 0}]}), "1 to 1024 bytes"),
    (_body({"appends": [{"key": "k" * 1025, "offset": 0, "length": 0}]}), "1 to 1024 bytes"),
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
