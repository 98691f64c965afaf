"""kill -9 the server in the middle of large appends: acknowledged bytes survive, torn ones never show."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY

BODY = 4 * 1024 * 1024


def body_for(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (BODY // 32)


@pytest.mark.slow
# httpx leaves its request-body generator unclosed when the peer vanishes mid-upload (which is the point here).
@pytest.mark.filterwarnings("ignore:Exception ignored in.*ByteStream:pytest.PytestUnraisableExceptionWarning")
async def test_kill_9_during_appends(make_server):
    srv = make_server()
    auth = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, unsigned_payload=True)
    async with httpx.AsyncClient(auth=auth, timeout=30) as client:
        assert (await client.put(f"{srv.url}/crash")).status_code == 200
        expected = b""
        for round_ in range(3):
            acked = trio.Event()
            state = {"size": len(expected), "acks": 0, "in_flight": None}

            async def appender() -> None:
                i = 0
                while True:
                    data = body_for(round_ * 1000 + i)
                    state["in_flight"] = data
                    try:
                        r = await client.put(f"{srv.url}/crash/obj", content=data,
                                             headers={"x-amz-write-offset-bytes": str(state["size"])})
                    except httpx.TransportError:
                        return
                    assert r.status_code == 200, r.text
                    state["size"] += len(data)
                    state["acks"] += 1
                    state["acked_data"] = state.get("acked_data", b"") + data
                    if state["acks"] == 3:
                        acked.set()
                    i += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(appender)
                with trio.fail_after(30):
                    await acked.wait()
                srv.kill()  # while the fourth append is on the wire
            srv.restart()
            expected += state["acked_data"]
            head = await client.head(f"{srv.url}/crash/obj")
            size = int(head.headers["content-length"])
            assert size in (len(expected), len(expected) + BODY), (size, len(expected))
            got = (await client.get(f"{srv.url}/crash/obj")).content
            assert got[: len(expected)] == expected
            if size > len(expected):  # the in-flight append was committed before the kill: whole, never torn
                assert got[len(expected):] == state["in_flight"]
                expected = got
