"""The agent's log event names, in one place: a stable vocabulary for people and tests.

Every event carries its context as keys (``stream``, ``path``, ``key``,
offsets), so a name says *what happened* and never needs formatting.  The
reading side (tailer, watcher, checkpoint) and the sink log their own events
(``file_rotated``, ``append_retry``, ``object_conflict``...); these are the
daemon's.
"""

from __future__ import annotations

# life of the process
AGENT_STARTING = "agent_starting"
AGENT_READY = "agent_ready"
AGENT_STOPPING = "agent_stopping"  # a stop signal: draining
AGENT_STOPPED = "agent_stopped"  # drained (or out of time) and the checkpoint written
AGENT_FAILED = "agent_failed"  # a fatal error: the process exits 1
DRAIN_TIMED_OUT = "drain_timed_out"  # appends still in flight at shutdown_timeout: left to the next start
CONFIG_RELOADED = "config_reloaded"
CONFIG_RELOAD_FAILED = "config_reload_failed"  # the old config stays in force
RELOAD_IGNORED_CHANGE = "reload_ignored_change"  # a section that only a restart applies
STATUS_LISTENING = "status_listening"
SIGNAL_RECEIVED = "signal_received"

# streams
STREAM_STARTED = "stream_started"
STREAM_STOPPED = "stream_stopped"  # its input was removed or changed by a reload
STREAM_ENDED = "stream_ended"  # its file was deleted and read to the end
FILE_UNREADABLE = "file_unreadable"  # a matching file the agent may not read (warned once per path and reason)
STREAM_SKIPPED = "stream_skipped"  # a path whose file another stream reads (a rotated name the glob matches)
STREAM_FAILED = "stream_failed"  # stopped for this run: a conflict or an impossible key
INTENT_RESOLVED = "intent_resolved"  # an append recorded before a restart: landed or not

# shipping
APPEND_ACKED = "append_acked"  # debug level: one per append
APPEND_REFUSED = "append_refused"  # a definite refusal (no bucket, access denied): retried after a pause
APPENDS_SHARED = "appends_shared"  # debug level: one per AppendObjects request, with how many landed
APPEND_GROUPS_OFF = "append_groups_off"  # the sink refused AppendObjects (not tailbucket's server): one PUT per append
STREAM_ROLLED = "stream_rolled"
APPEND_RATE_SET = "append_rate_set"  # debug level: the append rate sized to the CPU an append costs (agent.cpu_budget)
SINK_UNREADY = "sink_unready"
SINK_READY = "sink_ready"
