"""A busy stream's next append is recorded while the current one is on the wire; a restart settles both.

FakeS3 holds each append at a gate until the test has looked at the disk, so
"while the PUT is unanswered" is a fact of the test, not a timing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from agent.checkpoint import Intent, StreamState, load_states, write_states
from sink.testing import FakeS3
from tests.agent.test_shipper import FILE, lines, shipping

STREAM = "/logs/a.log"
KEY = "h/logs/a.log"


class GatedS3(FakeS3):
    """FakeS3 that lets ``before_append`` run (and take its time) before each append is applied."""

    def __init__(self, before_append: Callable[[int, int], Awaitable[None]]) -> None:
        super().__init__()
        self.create_bucket("logs")
        self.before_append = before_append

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "x-amz-write-offset-bytes" in request.headers:
            await self.before_append(int(request.headers["x-amz-write-offset-bytes"]), int(request.headers["content-length"]))
        return await super().handle_async_request(request)


async def test_a_stream_behind_has_its_next_intent_on_disk_while_its_put_is_unanswered(tmp_path: Path) -> None:
    data = lines("x", 150)  # 1200 bytes: three full appends of 400
    state_dir = tmp_path / "state"
    ahead: list[tuple[int, int]] = []  # (PUT offset, r0 of the next intent on disk while it was unanswered)
    shipper_box = []

    async def before_append(offset: int, size: int) -> None:
        if offset + size == len(data):
            return  # the last append: nothing follows it
        await trio.testing.wait_all_tasks_blocked()  # the next intent is taken (its write may be in a thread)
        await shipper_box[0].checkpoint.save()  # whatever is staged is on disk once this returns
        on_disk = load_states(state_dir)[STREAM]
        assert on_disk.intent is not None and (on_disk.intent.r0, on_disk.intent.r1) == (offset, offset + size)
        assert on_disk.next_intent is not None, f"the PUT at {offset} went out with no next intent recorded"
        ahead.append((offset, on_disk.next_intent.r0))

    fake = GatedS3(before_append)
    async with shipping(tmp_path, fake, max_bytes=400) as h:
        shipper_box.append(h.shipper)
        h.add(STREAM)
        for i in range(0, len(data), 400):  # queued at once: the stream is behind
            await h.send(STREAM, data[i : i + 400])
        await h.shipped(STREAM, len(data))
    assert h.stored(KEY) == data
    assert ahead == [(0, 400), (400, 800)]
    assert h.on_disk()[STREAM] == StreamState(STREAM, KEY, FILE, len(data), len(data))
    assert h.shipper.budget.in_use == 0


@pytest.mark.parametrize(("landed", "offset"), [(0, 100), (1, 150), (2, 180)])
async def test_a_restart_with_two_intents_on_record_settles_by_the_length(tmp_path: Path, landed: int, offset: int) -> None:
    data = lines("y", 30)  # 240 bytes: [0, 100) in the object, then [100, 150) and [150, 180) recorded
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", KEY, data[: (100, 150, 180)[landed]])
    state = StreamState(STREAM, KEY, FILE, 100, 100).with_intent(Intent(FILE, 100, 150, 100, 150))
    (tmp_path / "state").mkdir()
    write_states(tmp_path / "state", {STREAM: state.with_intent(Intent(FILE, 150, 180, 150, 180))})
    async with shipping(tmp_path, fake) as h:
        h.add(STREAM, h.shipper.checkpoint.get(STREAM))
        settled = await h.shipper.resolve(STREAM)
        assert settled is not None and (settled.offset, settled.intent, settled.next_intent) == (offset, None, None)
        h.offsets[(STREAM, 1)] = offset  # the tailer reads again from the settled offset
        await h.send(STREAM, data[offset:])
    assert h.stored(KEY) == data
    assert h.on_disk()[STREAM] == StreamState(STREAM, KEY, FILE, len(data), len(data))


async def test_a_length_between_the_recorded_ones_is_a_conflict(tmp_path: Path) -> None:
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", KEY, b"z" * 160)
    state = StreamState(STREAM, KEY, FILE, 100, 100).with_intent(Intent(FILE, 100, 150, 100, 150))
    (tmp_path / "state").mkdir()
    write_states(tmp_path / "state", {STREAM: state.with_intent(Intent(FILE, 150, 180, 150, 180))})
    failed: list[str] = []
    async with shipping(tmp_path, fake, on_failed=failed.append) as h:
        h.add(STREAM, h.shipper.checkpoint.get(STREAM))
        assert await h.shipper.resolve(STREAM) is None
    assert failed == [STREAM]
    assert fake.object_bytes("logs", KEY) == b"z" * 160  # untouched
    assert "100 or 150 or 180" in (h.shipper.lane(STREAM).failed or "")  # type: ignore[union-attr]
