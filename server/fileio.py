"""File calls the server and its commit process share, with nothing heavier than
ctypes to import (``server.commit_child`` stays small)."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any


def write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def linux_call(name: str, *argtypes: Any) -> Any:
    """libc's ``name`` (returning int; ctypes releases the GIL during the call), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _load_syncfs() -> Callable[[int], None] | None:
    """syncfs(2), raising OSError on failure, or None off Linux."""
    function = linux_call("syncfs", ctypes.c_int)
    if function is None:
        return None

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs


syncfs = _load_syncfs()
