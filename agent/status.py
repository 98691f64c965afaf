"""The agent's ``http.listen`` endpoint: ``/metrics``, ``/health``, ``/ready``.

A tiny trio + h11 responder (the agent must not import ``server``): GET and
HEAD only, one small request at a time per connection, keep-alive, and a
deadline on every read so an idle or slow client cannot hold a task forever.
What to answer is decided by the ``respond`` callable it is given, so this
module knows nothing about the agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import h11
import structlog
import trio

from agent import events

log = structlog.get_logger()
READ_TIMEOUT = 10.0  # seconds a connection may take to send its next request
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Responder = Callable[[str], Awaitable[Reply]]  # path (query removed) -> reply


async def serve_status(
    host: str, port: int, respond: Responder, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on ``host:port`` (0: any free port) until cancelled; ``started`` with the bound address."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    address = (bound[0], bound[1])
    log.info(events.STATUS_LISTENING, address=f"{address[0]}:{address[1]}")
    task_status.started(address)
    await trio.serve_listeners(lambda stream: _serve_connection(stream, respond), listeners)


async def _serve_connection(stream: trio.SocketStream, respond: Responder) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        while True:
            request = await _next_event(conn, stream)
            if not isinstance(request, h11.Request):
                return
            while not isinstance(event := await _next_event(conn, stream), h11.EndOfMessage):
                if not isinstance(event, h11.Data):
                    return
            reply = await _answer(request, respond)
            headers = [("content-type", reply.content_type), ("content-length", str(len(reply.body)))]
            await _send(conn, stream, h11.Response(status_code=reply.status, headers=headers))
            if request.method != b"HEAD":
                await _send(conn, stream, h11.Data(data=reply.body))
            await _send(conn, stream, h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        return
    finally:
        await stream.aclose()


async def _answer(request: h11.Request, respond: Responder) -> Reply:
    if request.method not in (b"GET", b"HEAD"):
        return Reply(405, b"only GET and HEAD\n")
    path = request.target.decode("ascii", "replace").split("?", 1)[0]
    return await respond(path)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.fail_after(READ_TIMEOUT):
            data = await stream.receive_some(MAX_REQUEST_BYTES)
        conn.receive_data(data)


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: object) -> None:
    data = conn.send(event)  # type: ignore[arg-type]
    if data:
        await stream.send_all(data)
