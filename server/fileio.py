"""File calls the server and its commit process share, with nothing heavier than
ctypes to import (``server.commit_child`` stays small)."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable


def write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _load_syncfs() -> Callable[[int], None] | None:
    """syncfs(2) through libc (ctypes releases the GIL during the call), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs


syncfs = _load_syncfs()
