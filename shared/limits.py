"""Every timing and size limit both ends read, in one place.

Timings are a frozen dataclass rather than module constants so that tests (and operators)
can pass a scaled copy: ``Timings().scaled(0.01)`` runs heartbeats and leases in
milliseconds without a single sleep in the test itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "KIB",
    "MAX_API_BODY_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_LOG_BATCH_BYTES",
    "MAX_LOG_BATCH_LINES",
    "MAX_LOG_LINE_BYTES",
    "MAX_LOG_PAGE_BYTES",
    "MAX_OUTPUT_BYTES",
    "MAX_SCRIPT_BYTES",
    "MAX_STREAM_REQUESTS",
    "MAX_STREAM_REQUEST_CHARS",
    "MIB",
    "MIN_MASKED_SECRET_LEN",
    "SPOOL_TASK_BYTES",
    "SPOOL_TOTAL_BYTES",
    "Timings",
    "stream_requests_full",
]

KIB = 1024
MIB = 1024 * KIB

# Request bodies on the user API (task submissions carry scripts).
MAX_API_BODY_BYTES = 2 * MIB
MAX_SCRIPT_BYTES = 1 * MIB
# One WebSocket frame: an assignment carries the task (a script of up to 1 MiB, its sealed
# secrets) and a log batch up to MAX_LOG_BATCH_BYTES, so a frame is bounded by those.
MAX_FRAME_BYTES = 4 * MIB
# A log batch posted by a delegate, and the lines in it.
MAX_LOG_BATCH_BYTES = 1 * MIB
MAX_LOG_BATCH_LINES = 1000
# Log batches and results one delegate stream may have in flight at the manager (received,
# reply not yet written), in number and in the characters of their frames. The manager stops
# reading a stream past either; the delegate keeps under both (a request past them goes over
# HTTPS), so its heartbeats do not wait behind store work. The count is high enough for a
# delegate of 256 slots whose results all end at once (a result is a few hundred
# characters); the characters bound the memory a stream holds to a few large log batches
# (was 32 requests of up to 4 MiB each).
MAX_STREAM_REQUESTS = 256
MAX_STREAM_REQUEST_CHARS = 8 * MIB


def stream_requests_full(
    in_flight: int,
    chars: int,
    frame_chars: int,
    *,
    limit: int = MAX_STREAM_REQUESTS,
    budget: int = MAX_STREAM_REQUEST_CHARS,
) -> bool:
    """Whether a stream with ``in_flight`` requests of ``chars`` characters has no room for
    one more of ``frame_chars``: the one rule both ends judge by. A request enters the
    delegate's count before the manager's, and leaves it once its reply arrives, which is
    when the manager is writing it: a delegate that sends only when there is room finds the
    manager's stream paused at most for the moment a reply takes to be written."""
    if in_flight >= limit:
        return True
    # One request alone always has room: a frame is at most MAX_FRAME_BYTES.
    return in_flight > 0 and chars + frame_chars > budget


# A longer line is split into several; a log line is not a channel for bulk data.
MAX_LOG_LINE_BYTES = 16 * KIB
# A page of a task's log read through the API (and a batch of a followed log): the text of
# its lines, in bytes. The line limit of a page stays too; whichever is reached first ends it.
MAX_LOG_PAGE_BYTES = 4 * MIB
# The $TETHER_OUTPUT file a shell task writes its output variables to.
MAX_OUTPUT_BYTES = 256 * KIB
# Shorter values would mask ordinary words; the task log says when one is skipped.
MIN_MASKED_SECRET_LEN = 4
# The delegate's disk spool for log lines and results the manager could not take yet: per
# task attempt and in all. A full spool drops the middle of a task's log, never silently.
SPOOL_TASK_BYTES = 64 * MIB
SPOOL_TOTAL_BYTES = 512 * MIB


@dataclass(frozen=True, slots=True)
class Timings:
    """Protocol timings in seconds. The manager sends its own to each delegate at register."""

    heartbeat_interval: float = 10.0
    # A delegate silent this long has lost its session and the leases of its tasks.
    lost_after: float = 30.0
    # Long-poll wait: under the 30-60 s idle limits common in corporate proxies.
    poll_wait: float = 25.0
    # While polling, how often the delegate tries the WebSocket again.
    stream_retry: float = 60.0
    # Reconnect backoff: exponential from base, capped, with full jitter.
    reconnect_base: float = 0.5
    reconnect_max: float = 60.0
    task_timeout: float = 600.0
    queue_timeout: float = 300.0
    # SIGTERM to SIGKILL when a task is cancelled or times out.
    kill_grace: float = 10.0
    # On SIGTERM, how long running tasks may go on before they are cancelled.
    shutdown_grace: float = 30.0
    # Lifetime of a delegate's session credential; it re-registers with its token after.
    session_ttl: float = 3600.0
    # How often the manager looks for tokens revoked on the host, behind its back.
    revocation_check: float = 2.0
    # How long a partial log line may wait for its newline before it is shipped.
    log_flush: float = 0.1
    # How often the manager sweeps leases, queue and run timeouts.
    sweep_interval: float = 1.0
    # A secret operation (a connection test, a key wrap) waits this long for a delegate to
    # take it and as long again for it to finish: KMS calls are slow, but a user waits.
    secret_op_timeout: float = 60.0

    def scaled(self, factor: float) -> Timings:
        """Every timing multiplied by ``factor`` (tests use 0.01 and less)."""
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)}
        )
