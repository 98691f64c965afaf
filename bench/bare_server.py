"""The Python ceiling: a bare trio + h11 server that answers every request 200 with no storage and no auth.

Run as ``python -m bench.bare_server``; it prints its port on stdout once listening.
"""

from __future__ import annotations

import h11
import trio


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.CLOSED and event is h11.NEED_DATA:
                    if conn.their_state is h11.IDLE:
                        return
                continue
            if isinstance(event, h11.EndOfMessage):
                out = conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                out += conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
        return


async def main() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)


if __name__ == "__main__":
    trio.run(main)
