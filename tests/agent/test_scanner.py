"""Scanner: globs with **, excludes, hidden files; ``match`` agrees with ``scan``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_EXCLUDES, InputConfig
from agent.router import parse_template
from agent.scanner import Scanner, WatchRoot, glob_to_regex, static_root

KEY = parse_template("{path}")


def make(tmp_path: Path, *names: str) -> None:
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x\n")


def spec(*paths: str, exclude: tuple[str, ...] = DEFAULT_EXCLUDES, index: int = 0) -> InputConfig:
    return InputConfig(index=index, paths=paths, key=KEY, exclude=exclude)


def test_scan_globs_excludes_and_hidden(tmp_path: Path) -> None:
    make(tmp_path, "a.log", "b.log.1", "c.log.gz", ".hidden.log", "sub/d.log", "sub/deeper/e.log", ".git/f.log", "g.txt")
    (tmp_path / "dir.log").mkdir()
    scanner = Scanner([spec(f"{tmp_path}/**/*.log", f"{tmp_path}/*.log.*")])
    found = scanner.scan()
    names = sorted(str(Path(p).relative_to(tmp_path)) for p in found)
    assert names == ["a.log", "b.log.1", "sub/d.log", "sub/deeper/e.log"]
    for path in found:
        assert scanner.match(path) == 0
    for other in (".hidden.log", "c.log.gz", ".git/f.log", "g.txt"):
        assert scanner.match(f"{tmp_path}/{other}") is None


def test_first_input_wins_and_path_excludes(tmp_path: Path) -> None:
    make(tmp_path, "app/a.log", "app/skip/b.log", "web/c.log")
    scanner = Scanner(
        [
            spec(f"{tmp_path}/app/**/*.log", exclude=(f"{tmp_path}/app/skip/*",)),
            spec(f"{tmp_path}/*/*.log", index=1),
        ]
    )
    found = {str(Path(p).relative_to(tmp_path)): i for p, i in scanner.scan().items()}
    assert found == {"app/a.log": 0, "web/c.log": 1}
    assert scanner.match(f"{tmp_path}/app/skip/b.log") is None


def test_empty_exclude_ships_compressed_files(tmp_path: Path) -> None:
    make(tmp_path, "a.log.gz")
    assert len(Scanner([spec(f"{tmp_path}/*", exclude=())]).scan()) == 1


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("/a/*.log", ["/a/x.log", "/a/y.log"], ["/a/b/x.log", "/a/.x.log", "/b/x.log"]),
        ("/a/**/x.log", ["/a/x.log", "/a/b/x.log", "/a/b/c/x.log"], ["/a/.b/x.log", "/ax.log"]),
        ("/a/[!x]?.log", ["/a/yz.log"], ["/a/xz.log", "/a/y.log"]),
        ("/a/[ab].log", ["/a/a.log", "/a/b.log"], ["/a/c.log"]),
        ("/a/x+y(1).log", ["/a/x+y(1).log"], ["/a/xxy1.log"]),
    ],
)
def test_glob_regex(pattern: str, yes: list[str], no: list[str]) -> None:
    regex = glob_to_regex(pattern)
    assert all(regex.fullmatch(p) for p in yes)
    assert not any(regex.fullmatch(p) for p in no)


def test_watch_roots() -> None:
    assert static_root("/var/log/app/*.log") == "/var/log/app"
    assert static_root("/*.log") == "/"
    scanner = Scanner([spec("/var/log/app/*.log", "/var/log/*/x.log", "/srv/**/a.log", "/opt/x.log")])
    assert scanner.watch_roots() == [
        WatchRoot("/opt", False),
        WatchRoot("/srv", True),
        WatchRoot("/var/log", True),
        WatchRoot("/var/log/app", False),
    ]
