"""The tailer's read step: whole lines come back as their own bytes, made in the worker thread."""

from __future__ import annotations

import os
from pathlib import Path

from agent.fingerprint import matches, probe_fd
from agent.tailer import _read_and_look, _read_lines


def _fd(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_whole_lines_come_back_as_new_bytes_and_the_partial_line_stays(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "a.log", b"one\ntwo\nthr")
    buffer = bytearray(64)
    try:
        read, cut, data = _read_lines(fd, buffer, 0, 64, 0)
        assert (read, cut, data) == (11, 8, b"one\ntwo\n")
        assert buffer[8:11] == b"thr"  # held for its newline
    finally:
        os.close(fd)


def test_a_held_partial_line_is_part_of_the_next_chunk(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "a.log", b"one\nthree\nfo")
    buffer = bytearray(64)
    buffer[:2] = b"th"  # held from an earlier read at file offset 4
    try:
        read, cut, data = _read_lines(fd, buffer, 2, 62, 4)
        assert (read, cut, data) == (6, 6, b"three\n")
    finally:
        os.close(fd)


def test_a_line_longer_than_the_buffer_is_left_to_the_caller(tmp_path: Path) -> None:
    fd = _fd(tmp_path / "a.log", b"x" * 20)
    buffer = bytearray(8)
    try:
        assert _read_lines(fd, buffer, 0, 8, 0) == (8, 8, None)  # cut at the full buffer: no newline to check
        assert _read_lines(fd, bytearray(64), 0, 64, 0) == (20, 0, None)  # nothing to send yet
    finally:
        os.close(fd)


def test_a_read_that_reaches_the_end_brings_the_look_with_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    fd = _fd(path, b"one\ntwo\n")
    identity = probe_fd(fd).identity
    try:
        read, cut, data, look = _read_and_look(fd, bytearray(4), 0, 4, 0, str(path), identity)
        assert (read, cut, data, look) == (4, 4, b"one\n", None)  # the buffer filled: more may follow
        read, cut, data, look = _read_and_look(fd, bytearray(64), 0, 64, 4, str(path), identity)
        assert (read, cut, data) == (4, 4, b"two\n")
        assert look is not None
        probe, at_path = look
        assert probe.size == 8 and at_path == (probe.dev, probe.ino, 8)
    finally:
        os.close(fd)


def test_a_file_rewritten_past_our_offset_is_not_read_there(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    fd = _fd(path, b"a\n")
    identity = probe_fd(fd).identity
    try:
        path.write_bytes(b"b\nc\nd\n")  # truncated and written again: same inode, longer than our offset 2
        read, cut, data, look = _read_and_look(fd, bytearray(64), 0, 64, 2, str(path), identity)
        assert (read, cut, data) == (0, 0, None)
        assert look is not None and not matches(identity, look[0].dev, look[0].ino, look[0].head)
    finally:
        os.close(fd)
