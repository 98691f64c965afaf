"""File identity: short files that grow, inode reuse, finding rotated files."""

from __future__ import annotations

import os
from pathlib import Path

from agent.fingerprint import (
    WINDOW,
    FileIdentity,
    find_in_directory,
    find_successor,
    grown,
    identity_of,
    matches,
    open_successor,
    probe_path,
)


def probe(path: Path):  # type: ignore[no-untyped-def]
    result = probe_path(str(path))
    assert result is not None
    return result


def test_identity_covers_the_first_window_bytes_only(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"x" * WINDOW + b"tail")
    first = probe(path).identity
    path.write_bytes(b"x" * WINDOW + b"other tail, longer")  # same inode, same head
    assert first.head_len == WINDOW
    p = probe(path)
    assert matches(first, p.dev, p.ino, p.head)


def test_short_file_identity_grows_and_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"")
    empty = probe(path).identity
    with path.open("ab") as f:
        f.write(b"first\n")
    p = probe(path)
    assert empty.head_len == 0 and matches(empty, p.dev, p.ino, p.head)
    short = grown(empty, p.head)
    assert short.head_len == 6
    with path.open("ab") as f:
        f.write(b"y" * 1000)
    p = probe(path)
    assert matches(short, p.dev, p.ino, p.head)  # the stored 6-byte prefix is still the file's start
    full = grown(short, p.head)
    assert full.head_len == WINDOW and full == p.identity
    assert grown(full, p.head + b"more") is full


def test_inode_reuse_is_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"2024-01-01 old file\n")
    old = probe(path).identity
    path.write_bytes(b"2024-02-02 new file\n")  # same dev and inode, other first bytes
    p = probe(path)
    assert (p.dev, p.ino) == (old.dev, old.ino)
    assert not matches(old, p.dev, p.ino, p.head)


def test_shorter_than_the_known_prefix_is_not_the_same_file() -> None:
    known = identity_of(1, 2, b"abcdef")
    assert not matches(known, 1, 2, b"abc")
    assert matches(known, 1, 2, b"abcdefgh")
    assert not matches(known, 1, 3, b"abcdef")


def test_identity_json_round_trip() -> None:
    identity = identity_of(64769, 123456, b"line\n")
    assert FileIdentity.from_json(identity.to_json()) == identity


def test_probe_of_missing_or_non_regular_paths_is_none(tmp_path: Path) -> None:
    assert probe_path(str(tmp_path / "missing")) is None
    assert probe_path(str(tmp_path)) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert probe_path(str(fifo)) is None  # opened non-blocking: no hang on a FIFO


def test_rotated_file_is_found_by_identity(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"content\n")
    identity = probe(path).identity
    path.rename(tmp_path / "app.log.1")
    path.write_bytes(b"new\n")
    assert find_in_directory(str(tmp_path), identity) == str(tmp_path / "app.log.1")
    (tmp_path / "app.log.1").unlink()
    assert find_in_directory(str(tmp_path), identity) is None


def test_successor_is_the_oldest_rotated_sibling_written_after(tmp_path: Path) -> None:
    def write(name: str, data: bytes, mtime_s: int) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        os.utime(path, (mtime_s, mtime_s))
        return path

    left_path = write("app.log.3", b"left\n", 100)
    left = probe(left_path)
    write("app.log.4", b"older\n", 50)
    write("app.log.2", b"next\n", 200)
    write("app.log.1", b"after that\n", 300)
    write("app.log.2.gz", b"compressed copy", 250)
    write("other.log", b"not a sibling\n", 150)
    write("app.log", b"current\n", 400)
    assert find_successor(str(tmp_path / "app.log"), left) == str(tmp_path / "app.log.2")
    seen = [probe(tmp_path / "app.log.2").identity]
    assert find_successor(str(tmp_path / "app.log"), left, seen) == str(tmp_path / "app.log.1")
    fd, opened, name = open_successor(str(tmp_path / "app.log"), left) or (None, None, None)
    assert name == str(tmp_path / "app.log.2") and opened is not None and opened.head == b"next\n"
    os.close(fd)  # type: ignore[arg-type]


def test_successor_without_siblings_is_the_path_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old\n")
    left = probe(path)
    path.unlink()
    assert find_successor(str(path), left) is None
    path.write_bytes(b"new\n")
    assert find_successor(str(path), left) == str(path)
