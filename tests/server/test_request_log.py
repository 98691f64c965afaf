"""The request log: one ``request`` line per request, written a turn of the event loop at a time."""

from __future__ import annotations

import io
import json

import httpx
import structlog
import trio
from structlog.testing import capture_logs

from server.request_log import MAX_LINES, BatchedLines, RequestLog
from sink.logs import configure_logging
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


async def test_lines_of_one_turn_leave_together_before_the_loop_waits():
    out = io.StringIO()
    lines = BatchedLines(structlog.PrintLogger(out))
    lines.info("one")
    lines.info("two")
    assert out.getvalue() == ""  # held while this turn runs
    await trio.lowlevel.checkpoint()  # the loop passes its I/O wait before this task runs again
    assert out.getvalue() == "one\ntwo\n"
    lines.info("three")
    await trio.lowlevel.checkpoint()
    assert out.getvalue() == "one\ntwo\nthree\n"


async def test_a_full_batch_leaves_at_once():
    out = io.StringIO()
    lines = BatchedLines(structlog.PrintLogger(out))
    for n in range(MAX_LINES):
        lines.info(str(n))
    assert out.getvalue().splitlines() == [str(n) for n in range(MAX_LINES)]


def test_outside_a_trio_run_lines_are_written_at_once():
    out = io.StringIO()
    lines = BatchedLines(structlog.PrintLogger(out))
    lines.info("alone")
    assert out.getvalue() == "alone\n"


def test_lines_held_at_the_end_of_a_run_are_written():
    out = io.StringIO()
    lines = BatchedLines(structlog.PrintLogger(out))

    async def log_and_return() -> None:
        lines.info("last")

    trio.run(log_and_return)
    assert out.getvalue() == "last\n"


FIELDS = dict(method="PUT", operation="PutObject", bucket="b", key="k", status=200, bytes_in=3, bytes_out=0,
              duration_ms=1.25, request_id="0123456789ABCDEF")


def test_the_request_event_renders_as_a_bound_loggers_would():
    out = io.StringIO()
    configure_logging("json", stream=out)
    RequestLog("tailbucket.server")(**FIELDS)
    structlog.get_logger("tailbucket.server").info("request", **FIELDS)
    ours, bound = (json.loads(line) for line in out.getvalue().splitlines())
    assert ours.pop("timestamp") and bound.pop("timestamp")
    assert list(ours.items()) == list(bound.items())  # same keys, same order
    assert ours["event"] == "request" and ours["level"] == "info"


def test_the_request_event_follows_the_configured_level_and_capture():
    out = io.StringIO()
    configure_logging("json", level="warning", stream=out)
    RequestLog("tailbucket.server")(**FIELDS)
    assert out.getvalue() == ""
    configure_logging("json", stream=out)
    request_log = RequestLog("tailbucket.server")
    with capture_logs() as logs:  # created before the capture, as the app's is
        request_log(**FIELDS)
    assert out.getvalue() == ""
    assert logs == [{**FIELDS, "event": "request", "log_level": "info"}]


def test_the_server_logs_every_request_once(make_server):
    server = make_server()
    auth = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION)
    with httpx.Client(base_url=server.url, auth=auth) as client:
        assert client.put("/logbucket").status_code == 200
        for n in range(20):
            headers = {"x-amz-write-offset-bytes": str(n * 3)}
            assert client.put("/logbucket/app.log", content=b"ab\n", headers=headers).status_code == 200
        assert client.get("/logbucket/missing").status_code == 404
    assert server.stop() == 0  # the log is read to its end
    requests = [e for e in server.events if e["event"] == "request"]
    assert [(e["operation"], e["status"]) for e in requests] == (
        [("CreateBucket", 200)] + [("PutObject", 200)] * 20 + [("GetObject", 404)]
    )
    assert {e["key"] for e in requests[1:21]} == {"app.log"}
    assert all(e["bytes_in"] == 3 for e in requests[1:21])
    assert len({e["request_id"] for e in requests}) == len(requests)
