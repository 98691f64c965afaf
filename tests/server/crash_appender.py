"""Appends large random bodies to one object through Storage, forever, reporting
progress on stdout so tests/server/test_storage_crash.py can SIGKILL it mid-append.

    python tests/server/crash_appender.py DATA_DIR SEED

Lines (flushed one by one):
    begin <offset> <length> <sha256>   an append is about to start
    fed <bytes>                        the storage has taken this many of its body bytes
    ack <offset> <length> <sha256>     write_object returned: the append is durable
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import trio

from server.errors import NoSuchKey
from server.records import KiB, MiB
from server.storage import open_storage

BUCKET, KEY = "crash", "host/var/log/app.log"
CHUNK = 256 * KiB


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def feed(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]
        taken = start + CHUNK  # asked for more: the storage has handled this chunk
        if taken % MiB == 0:
            say(f"fed {taken}")


async def main(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with open_storage(data_dir) as storage:
        if BUCKET not in {b.name for b in await storage.list_buckets()}:
            await storage.create_bucket(BUCKET)
        try:
            offset = (await storage.head_object(BUCKET, KEY)).size
        except NoSuchKey:
            offset = 0
        while True:
            data = rng.randbytes(rng.randrange(3 * MiB, 6 * MiB))
            sha = hashlib.sha256(data).hexdigest()
            say(f"begin {offset} {len(data)} {sha}")
            info = await storage.write_object(BUCKET, KEY, feed(data), offset=offset)
            assert info.size == offset + len(data)
            say(f"ack {offset} {len(data)} {sha}")
            offset = info.size


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
