"""The glibc malloc tuning the server applies at start-up."""

from __future__ import annotations

import platform
import sys

import pytest

from sink.heap import keep_large_buffers_in_heap


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_thresholds() -> None:
    assert keep_large_buffers_in_heap() is True
