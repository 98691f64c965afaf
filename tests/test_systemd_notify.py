"""The sd_notify protocol against a real unix datagram socket as $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from sink.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, without blocking."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages


def wait_for(sock: socket.socket, predicate, timeout: float = 20.0) -> list[str]:
    """Datagrams until one satisfies ``predicate`` (a deadline, not a sleep)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    messages = []
    while not messages or not predicate(messages[-1]):
        messages.append(sock.recv(4096).decode())
    return messages


def test_without_notify_socket_nothing_happens():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")  # no error, no effect


def test_states_are_sent(notify_socket):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    notifier.ready("shipping 12 files, 0 B behind")
    notifier.status("shipping 13 files, 0 B behind")
    notifier.reloading()
    notifier.stopping()
    ready, status, reloading, stopping = received(sock)
    assert ready == "READY=1\nSTATUS=shipping 12 files, 0 B behind"
    assert status == "STATUS=shipping 13 files, 0 B behind"
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=") and reloading.rsplit("=", 1)[1].isdigit()
    assert stopping == "STOPPING=1"


def test_abstract_socket_address():
    name = f"tailbucket-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert received(sock) == ["READY=1\nSTATUS=up"]
    finally:
        sock.close()


def test_watchdog_for_another_pid_is_ignored():
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier(env).watchdog_interval is None
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.5


async def test_watchdog_pings_at_half_the_timeout(notify_socket, autojump_clock):
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run_watchdog)
        await trio.sleep(3.5)  # virtual time: pings at 0, 1, 2 and 3 s
        assert received(sock) == ["WATCHDOG=1"] * 4
        nursery.cancel_scope.cancel()


def test_server_speaks_the_protocol(make_server, notify_socket):
    path, sock = notify_socket
    srv = make_server(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    messages = wait_for(sock, lambda m: m.startswith("READY=1"))
    assert f"127.0.0.1:{srv.port}" in messages[-1]
    pings = wait_for(sock, lambda m: m == "WATCHDOG=1")
    pings += wait_for(sock, lambda m: m == "WATCHDOG=1")
    assert pings.count("WATCHDOG=1") >= 2
    assert srv.stop() == 0
    assert "STOPPING=1" in wait_for(sock, lambda m: m == "STOPPING=1")
