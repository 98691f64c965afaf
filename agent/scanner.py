"""Which files the inputs cover: globs (``**`` spans directories) minus excludes.

``Scanner.scan`` walks the file system (blocking: run it in a worker thread) and
is the truth; ``Scanner.match`` answers the same question for one path without
I/O, for filtering watcher events.  Both follow ``glob.glob(recursive=True)``:
``*``, ``?`` and ``[...]`` stay inside one path segment, ``**`` matches any
number of directories, and wildcards do not match a leading ``.``.

Excludes with a ``/`` match the whole path, others the file name only, so
``*.gz`` drops every compressed rotation wherever it lives.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

from agent.config import InputConfig


@dataclass(frozen=True)
class WatchRoot:
    """A directory to watch: the part of a glob before its first wildcard."""

    path: str
    recursive: bool  # the glob has wildcards below this directory's children


class Scanner:
    """The inputs' globs, compiled once."""

    def __init__(self, inputs: Sequence[InputConfig]) -> None:
        self.inputs = tuple(inputs)
        self._patterns = [(i, glob_to_regex(p)) for i, spec in enumerate(self.inputs) for p in spec.paths]
        self._excludes = [
            [(glob_to_regex(x) if "/" in x else None, x) for x in spec.exclude] for spec in self.inputs
        ]

    def match(self, path: str) -> int | None:
        """The index of the first input covering ``path``, or ``None`` (pure)."""
        for index, pattern in self._patterns:
            if pattern.fullmatch(path) and not self._excluded(index, path):
                return index
        return None

    def scan(self) -> dict[str, int]:
        """Every regular file the inputs cover now, mapped to its input's index.

        A path that two inputs cover belongs to the first.  Blocking.
        """
        found: dict[str, int] = {}
        for index, spec in enumerate(self.inputs):
            for pattern in spec.paths:
                for path in sorted(glob.iglob(pattern, recursive=True)):
                    path = os.path.normpath(path)
                    if path in found or self._excluded(index, path) or not _is_regular(path):
                        continue
                    found[path] = index
        return found

    def watch_roots(self) -> list[WatchRoot]:
        """Directories whose events matter, deepest static part of each glob."""
        roots: dict[str, bool] = {}
        for spec in self.inputs:
            for pattern in spec.paths:
                root = static_root(pattern)
                below = pattern[len(root) :].strip("/").split("/")
                recursive = len(below) > 1 or "**" in below
                roots[root] = roots.get(root, False) or recursive
        return [WatchRoot(path, recursive) for path, recursive in sorted(roots.items())]

    def _excluded(self, index: int, path: str) -> bool:
        name = os.path.basename(path)
        for regex, pattern in self._excludes[index]:
            if regex.fullmatch(path) if regex is not None else fnmatchcase(name, pattern):
                return True
        return False


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def static_root(pattern: str) -> str:
    """``/var/log/app`` for ``/var/log/app/*.log``: the directories before any wildcard."""
    parts = pattern.split("/")
    static: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        static.append(part)
    return "/".join(static) or "/"


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching what ``glob.glob(pattern, recursive=True)`` finds (no I/O)."""
    out: list[str] = []
    parts = pattern.split("/")
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if part == "**":
            # zero or more non-hidden directories (or, as the last part, files too)
            out.append(r"(?:(?!\.)[^/]*(?:/(?!\.)[^/]*)*)?" if last else r"(?:(?!\.)[^/]+/)*")
            continue
        segment = ("" if part.startswith(".") or not glob.has_magic(part) else r"(?!\.)") + _segment(part)
        out.append(segment if last else segment + "/")
    return re.compile("".join(out))


def _segment(part: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(part):
        char = part[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = part.find("]", index + 2 if part[index + 1 : index + 2] in ("!", "]") else index + 1)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = part[index + 1 : end]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)
