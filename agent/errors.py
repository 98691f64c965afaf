"""Every way the agent refuses or gives up, in one tree.

    AgentError                   base of everything the agent raises on purpose
    ├── ConfigError              the config is wrong; names the YAML path (``inputs[0].key``)
    ├── KeyTemplateError         an object-key template does not parse (wrapped in a ConfigError at load)
    ├── KeyRenderError           a rendered key would escape its prefix, hold empty or dot segments, or be too long
    ├── WatchError               ``watch: inotify`` was asked for and the kernel cannot give it
    ├── CheckpointError          the durable state cannot be read or written
    │   ├── CheckpointLocked     another agent holds the state directory
    │   └── CheckpointConflict   a state transition that would lose or repeat bytes (a bug upstream)
    └── StreamError              one stream must stop (its file or object is not what we expect)

Foreign exceptions (``OSError``, ``yaml.YAMLError``, ``json.JSONDecodeError``) are
translated at the module boundary with ``raise ... from exc`` so callers only catch
these.  Errors that stop a single stream never stop the agent: the caller logs them
with the stream's context and carries on with the other streams.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class: anything the agent raises deliberately."""


class ConfigError(AgentError):
    """Raised by ``agent.config`` when a value is missing, unknown or malformed.

    ``path`` is where in the YAML the problem is (``batch.max_wait``,
    ``inputs[1].paths[0]``; empty for the document itself).
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class KeyTemplateError(AgentError):
    """Raised by ``router.parse_template`` for an unknown field, bad brace or bad date format."""


class KeyRenderError(AgentError):
    """Raised by ``KeyTemplate.render`` when one file's values would make an unsafe key.

    The file cannot be shipped under that template; other files carry on.
    """


class WatchError(AgentError):
    """Raised by the watcher when ``watch: inotify`` was configured and inotify fails."""


class CheckpointError(AgentError):
    """Raised when the checkpoint file is unreadable, corrupt, of an unknown version, or cannot be written."""


class CheckpointLocked(CheckpointError):
    """Raised when another agent process holds the state directory's lock."""


class CheckpointConflict(CheckpointError):
    """Raised by the pure state transitions for a step that breaks exactly-once.

    Examples: recording a second intent while one is pending, an intent that does
    not start at the expected object length.  Seeing one means a bug upstream.
    """


class StreamError(AgentError):
    """Raised when one stream cannot go on (e.g. its object was changed by someone else)."""

    def __init__(self, stream: str, message: str) -> None:
        self.stream = stream
        super().__init__(f"{stream}: {message}")
