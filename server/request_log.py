"""The request log's output: the lines of one turn of the trio loop leave in one write.

Every request logs one ``request`` line.  Written one by one, each line is a
write to stderr -- a pipe to journald or a collector -- that wakes the reader:
measured ~40 µs of the event loop's time per request, more than rendering the
line.  ``BatchedLines`` wraps the configured structlog logger and holds the
rendered lines until the loop is about to wait for I/O (a trio instrument's
``before_io_wait``): then they go out as one message, in order.  A line waits
at most one turn of the loop (they are short: everything runnable, then I/O),
and at most ``MAX_LINES`` are held.  A crash (kill -9) loses the lines of the
turn it interrupts.

Only the trio thread logs through it (the app's request log); outside a trio
run it writes through at once.

``RequestLog`` is the ``request`` event itself: structlog's configured
processors, level and logger, without a bound logger's layers in between.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
import trio

MAX_LINES = 256  # write out sooner than the turn's end when this many are held


class BatchedLines:
    """A structlog logger (``msg``, ``info``...) batching rendered lines per turn of the trio loop."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner  # the configured logger: its ``msg`` writes one line
        self._lines: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None  # the run whose instrument flushes us

    def __repr__(self) -> str:
        return f"BatchedLines(held={len(self._lines)}, inner={self._inner!r})"

    def msg(self, message: Any = None, *args: Any, **kwargs: Any) -> None:
        if args or kwargs or not isinstance(message, str) or not self._in_run():
            self.flush()
            self._inner.msg(message, *args, **kwargs)
            return
        lines = self._lines
        lines.append(message)
        if len(lines) >= MAX_LINES:
            self.flush()

    debug = info = warning = warn = error = err = critical = exception = fatal = failure = log = msg

    def flush(self) -> None:
        """Write the held lines now (one message: the inner logger adds the last newline)."""
        if self._lines:
            lines, self._lines = self._lines, []
            self._inner.msg("\n".join(lines))

    def _in_run(self) -> bool:
        """Whether a flush is sure to come: in a trio run, with our instrument in it."""
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return False
        if token is not self._token:
            trio.lowlevel.add_instrument(_FlushBeforeIOWait(self))
            self._token = token
        return True


class _FlushBeforeIOWait(trio.abc.Instrument):
    """Writes the lines of a turn just before the loop waits for I/O, and at the run's end."""

    def __init__(self, lines: BatchedLines) -> None:
        self._lines = lines

    def before_io_wait(self, timeout: float) -> None:
        self._lines.flush()

    def after_run(self) -> None:
        self._lines.flush()


class RequestLog:
    """``request_log(**fields)``: one ``request`` event at level info, rendered by the
    configured structlog processors and written through ``BatchedLines``.

    Why not a bound logger's ``info``: its layers (the level's method,
    ``_proxy_to_logger``, ``_process_event`` copying its context and keywords) cost
    a third of the event.  What they do is kept: the processors are the configured
    list itself (``structlog.testing.capture_logs`` edits it in place), the
    configured level decides, a processor may drop the event (``DropEvent``), and
    the last one's result reaches the logger as structlog passes it (a string
    alone, an ``(args, kwargs)`` tuple, or a dict of keywords).
    """

    def __init__(self, name: str) -> None:
        config = structlog.get_config()
        self._processors = config["processors"]
        self._logger = BatchedLines(config["logger_factory"](name))
        configured = structlog.wrap_logger(self._logger).bind()  # the configured wrapper knows the level
        self.enabled = getattr(configured, "is_enabled_for", lambda level: True)(logging.INFO)

    def __repr__(self) -> str:
        return f"RequestLog(enabled={self.enabled}, logger={self._logger!r})"

    def __call__(self, **fields: Any) -> None:
        if not self.enabled:
            return
        fields["event"] = "request"  # last, where a bound logger puts it
        logger = self._logger
        event: Any = fields
        try:
            for processor in self._processors:
                event = processor(logger, "info", event)
        except structlog.DropEvent:
            return
        if isinstance(event, (str, bytes, bytearray)):
            logger.msg(event)
        elif isinstance(event, tuple):
            logger.msg(*event[0], **event[1])
        else:
            logger.msg(**event)
