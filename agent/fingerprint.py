"""A log file's identity: device + inode + a digest of its first bytes.

Paths lie (rotation renames, deletes and recreates them), so a stream follows
an identity, never a path (Vector's fingerprinting rests on the same idea).

* device + inode tell apart every file that exists at the same moment;
* the digest of the first ``WINDOW`` bytes tells a reused inode (old file
  deleted, new file given the same number) from the file we knew.

Why 256 bytes: the digest only has to separate two files that had the same
inode at different times; their first line (with its timestamp) nearly always
differs well within 256 bytes.  It is one small ``pread`` of a page that is in
the cache anyway, and a short file reaches its full identity after a few lines.

Short files: the identity records how many bytes its digest covers
(``head_len``).  A later look at the file matches when its first ``head_len``
bytes hash the same; the identity then *grows* (``grown``) to the longer prefix
until it covers the whole window.  An empty file's identity (``head_len`` 0)
matches any file on the same inode: the weakest case, and harmless, since an
empty file had nothing shipped from it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Iterable
from pathlib import PurePosixPath

WINDOW = 256
COMPRESSED = (".gz", ".zst", ".bz2", ".xz", ".lz4", ".zip")


@dataclass(frozen=True)
class FileIdentity:
    dev: int
    ino: int
    head_len: int  # how many first bytes ``head_digest`` covers; < WINDOW while the file was shorter
    head_digest: str  # hex BLAKE2b-128 of those bytes

    def to_json(self) -> dict[str, int | str]:
        return {"dev": self.dev, "ino": self.ino, "head_len": self.head_len, "head_digest": self.head_digest}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FileIdentity:
        dev, ino, head_len, digest = data["dev"], data["ino"], data["head_len"], data["head_digest"]
        if not (isinstance(dev, int) and isinstance(ino, int) and isinstance(head_len, int) and isinstance(digest, str)):
            raise ValueError(f"not a file identity: {data!r}")
        return cls(dev, ino, head_len, digest)

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}:{self.head_len}:{self.head_digest[:12]}"


@dataclass(frozen=True)
class Probe:
    """What one look at an open file saw."""

    dev: int
    ino: int
    size: int
    nlink: int  # 0: the file was deleted while we hold it open
    head: bytes  # its first min(size, WINDOW) bytes
    mtime_ns: int = 0

    @property
    def identity(self) -> FileIdentity:
        return identity_of(self.dev, self.ino, self.head)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def identity_of(dev: int, ino: int, head: bytes) -> FileIdentity:
    """The identity of a file on (dev, ino) whose first bytes are ``head``."""
    head = head[:WINDOW]
    return FileIdentity(dev, ino, len(head), _digest(head))


def matches(known: FileIdentity, dev: int, ino: int, head: bytes) -> bool:
    """Is the file on (dev, ino) starting with ``head`` the file ``known`` names?"""
    if (dev, ino) != (known.dev, known.ino) or len(head) < known.head_len:
        return False
    return _digest(head[: known.head_len]) == known.head_digest


def grown(known: FileIdentity, head: bytes) -> FileIdentity:
    """``known`` extended to cover more of ``head`` (the caller checked ``matches``)."""
    if len(head) <= known.head_len or known.head_len >= WINDOW:
        return known
    return identity_of(known.dev, known.ino, head)


# -- blocking helpers (call through trio.to_thread.run_sync) --------------------


def probe_fd(fd: int) -> Probe:
    """fstat + the first bytes of an open file."""
    st = os.fstat(fd)
    head = os.pread(fd, WINDOW, 0) if st.st_size else b""
    return Probe(st.st_dev, st.st_ino, st.st_size, st.st_nlink, head, st.st_mtime_ns)


def open_regular(path: str) -> tuple[int, Probe]:
    """Open ``path`` read-only and probe it; ``IsADirectoryError`` etc. for non-regular files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return fd, probe_fd(fd)
    except BaseException:
        os.close(fd)
        raise


def probe_path(path: str) -> Probe | None:
    """Probe the file at ``path`` now; ``None`` if there is no readable regular file there."""
    try:
        fd, probe = open_regular(path)
    except OSError:
        return None
    os.close(fd)
    return probe


def unreadable_reason(path: str) -> str | None:
    """Why an existing file at ``path`` cannot be read (e.g. "Permission denied"); None if it is gone or readable."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def find_in_directory(directory: str, known: FileIdentity) -> str | None:
    """A path in ``directory`` that holds ``known`` (a rotated sibling such as ``app.log.1``)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        try:
            if entry.inode() != known.ino or not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        probe = probe_path(entry.path)
        if probe is not None and matches(known, probe.dev, probe.ino, probe.head):
            return entry.path
    return None


def find_successor(path: str, left: Probe, seen: Iterable[FileIdentity] = ()) -> str | None:
    """The file to read after ``left`` stopped being ``path``'s file (blocking).

    Normally that is the new file at ``path``.  But when the file rotated more
    than once while we were not reading (server down: the log file is the
    buffer), the files in between are rotated siblings (``app.log.1``,
    ``app.log-20240101``, ``app.1.log``) last written no earlier than ``left``;
    the oldest comes first (by mtime, then inode).  ``seen`` names files already
    read, which a coarse file-system clock may show with the same mtime.
    Compressed siblings are copies, never read.
    """
    directory, base = os.path.split(path)
    stem = PurePosixPath(base).stem
    prefixes = tuple({base + sep for sep in ".-_"} | ({stem + "."} if stem != base else set()))
    seen_inodes = {(i.dev, i.ino): i for i in seen}
    candidates: list[tuple[int, int, int, str]] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        entries = []
    for entry in entries:
        name = entry.name
        if name == base or not name.startswith(prefixes) or name.endswith(COMPRESSED):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) != (left.dev, left.ino) and st.st_mtime_ns >= left.mtime_ns:
            candidates.append((st.st_mtime_ns, st.st_ino, st.st_dev, entry.path))
    for _, ino, dev, candidate in sorted(candidates):
        known = seen_inodes.get((dev, ino))
        probe = probe_path(candidate) if known is not None else None
        if known is not None and probe is not None and matches(known, probe.dev, probe.ino, probe.head):
            continue  # read already
        return candidate
    return path if os.path.lexists(path) else None


def open_successor(path: str, left: Probe, seen: Iterable[FileIdentity] = ()) -> tuple[int, Probe, str] | None:
    """Open ``find_successor``'s answer, checking it still holds once open (blocking).

    Rotation may go on while we look: the file opened at ``path`` may have been
    renamed to a sibling a moment later, with another file before it.  So look
    again after opening and retry until both looks agree.
    """
    seen = tuple(seen)
    opened: tuple[int, Probe, str] | None = None
    for _ in range(8):
        candidate = find_successor(path, left, seen)
        if candidate is None:
            break
        try:
            fd, probe = open_regular(candidate)
        except OSError:
            continue
        if opened is not None:
            os.close(opened[0])
        opened = (fd, probe, candidate)
        again = find_successor(path, left, seen)
        try:
            st = os.stat(again) if again is not None else None
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (probe.dev, probe.ino):
            return opened
    return opened
